/**
 * @module
 * The transport edge: routes one HTTP request. WebSocket upgrades on any
 * path that offer the `mles-websocket` subprotocol become sessions; an
 * upgrade without it is refused with 400 and no socket. Plain HTTP gets
 * `/healthz`, `/metrics` and static files. Imports: close, metrics (type), session.
 */
import { CLOSE, type Close } from "./close.ts";
import { closeQuietly, runSession, type SessionContext } from "./session.ts";
import type { Metrics } from "./metrics.ts";

/** How long a client has to complete a close the server started. */
const CLOSE_GRACE_MS = 2000;

/** The subprotocol every Mles client offers and the server echoes (SPEC section 1). */
export const SUBPROTOCOL = "mles-websocket";

/**
 * Counts new connections per client IP in fixed one-minute windows: one map,
 * replaced lazily when its minute is over, so memory stays bounded by the
 * number of IPs seen in the current minute and no timer is needed.
 */
class ConnectionRate {
  readonly #limit: number;
  #current = new Map<string, number>();
  #since = Date.now();

  constructor(perMinute: number) {
    this.#limit = perMinute;
  }

  /** Counts one connection from `ip`; false if that exceeds the limit this minute. */
  allow(ip: string): boolean {
    const now = Date.now();
    if (now - this.#since >= 60_000) {
      this.#current = new Map();
      this.#since = now;
    }
    const n = (this.#current.get(ip) ?? 0) + 1;
    this.#current.set(ip, n);
    return n <= this.#limit;
  }
}

/** A short hash of a channel name (names may be 4 KiB; a collision only makes a limit laxer). */
function channelHash(channel: string): number {
  let h1 = 0xdeadbeef, h2 = 0x41c6ce57;
  for (let i = 0; i < channel.length; i++) {
    const c = channel.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

/**
 * Per-address budgets for joins (a token bucket of `joinsPerMinute`,
 * refilled evenly) and for different channels joined per hour (each one
 * can leave rows in KV for MLES_CHANNEL_TTL_DAYS). State for an address is
 * dropped once its bucket is full again and its hour is over, so memory
 * follows the addresses active in the last hour.
 */
class JoinRate {
  readonly #joins: number;
  readonly #channels: number;
  readonly #byIp = new Map<
    string,
    { tokens: number; at: number; hour: number; channels: Set<number> }
  >();
  #sweptAt = performance.now();

  constructor(joinsPerMinute: number, channelsPerHour: number) {
    this.#joins = joinsPerMinute;
    this.#channels = channelsPerHour;
  }

  /** Counts a join of `channel` from `ip`; the close to send when it is over a budget. */
  admit(ip: string, channel: string): Close | undefined {
    const now = performance.now();
    if (now - this.#sweptAt > 60_000) this.#sweep(now);
    let st = this.#byIp.get(ip);
    if (!st) {
      st = { tokens: this.#joins, at: now, hour: now, channels: new Set() };
      this.#byIp.set(ip, st);
    }
    if (this.#joins > 0) {
      st.tokens = Math.min(this.#joins, st.tokens + (now - st.at) * this.#joins / 60_000);
      st.at = now;
      if (st.tokens < 1) return CLOSE.tooManyJoins(this.#joins);
      st.tokens -= 1;
    }
    if (this.#channels > 0) {
      if (now - st.hour >= 3_600_000) {
        st.hour = now;
        st.channels.clear();
      }
      const h = channelHash(channel);
      if (!st.channels.has(h)) {
        if (st.channels.size >= this.#channels) return CLOSE.tooManyChannels(this.#channels);
        st.channels.add(h);
      }
    }
    return undefined;
  }

  #sweep(now: number): void {
    this.#sweptAt = now;
    for (const [ip, st] of this.#byIp) {
      const full = this.#joins <= 0 ||
        st.tokens + (now - st.at) * this.#joins / 60_000 >= this.#joins;
      if (full && (this.#channels <= 0 || now - st.hour >= 3_600_000)) this.#byIp.delete(ip);
    }
  }
}

/** What the HTTP edge needs from the server. */
export interface HttpContext {
  readonly session: SessionContext;
  readonly metrics: Metrics;
  /** Gauges for /metrics, read at scrape time. */
  readonly gauges: () => Record<string, { help: string; value: number }>;
  /** Per-IP new connections per minute (0 = unlimited). */
  readonly rateLimitPerMinute: number;
  /** Open sockets per isolate (0 = unlimited). */
  readonly maxConnections: number;
  /** Open sockets per client address (0 = unlimited). */
  readonly maxSocketsPerIp?: number;
  /** Joins per client address per minute (0 = unlimited). */
  readonly joinRatePerMinute?: number;
  /** Different channels joined per client address per hour (0 = unlimited). */
  readonly channelRatePerHour?: number;
  /** Bearer token for /metrics, or undefined. */
  readonly metricsToken: string | undefined;
  /** True when the history store answers. */
  readonly healthy: () => Promise<boolean>;
  /** Peering bridges and their states, shown by /healthz. */
  readonly peers?: () => { peer: string; channel: string; state: string }[] | undefined;
  /** Serves a file for GET/HEAD, or undefined when there is none. */
  readonly staticFiles?: (req: Request) => Promise<Response | undefined>;
}

/**
 * What a transport that upgrades by itself (node_server.ts) can do beyond
 * the WebSocket API; `Deno.upgradeWebSocket` can do neither.
 */
export interface TransportControls {
  /** Ends the TCP connection now (a client that never answers our close). */
  readonly forceClose?: () => void;
  /** Stops reading the client for `ms` (0: reads again now): paces a client over its rates. */
  readonly pauseReading?: (ms: number) => void;
}

/** A request handler plus the means to stop it. */
export interface HttpHandler {
  fetch(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> | Response;
  /**
   * Refuses new upgrades (503), closes every open socket with 1001 and
   * resolves when their close handshakes are done (or after `waitMs`).
   */
  closeSockets(waitMs?: number): Promise<void>;
  /** Open WebSockets (joined or not). */
  readonly socketCount: number;
  /**
   * For a transport that upgrades by itself (node_server.ts): the refusal
   * to send for this upgrade request, or undefined to go on.
   */
  admitUpgrade(req: Request, peer: string): Response | undefined;
  /** Runs a session on a socket that transport upgraded; see {@link createHttpHandler}. */
  adoptSocket(socket: WebSocket, peer: string, controls?: TransportControls): void;
}

function offersSubprotocol(req: Request): boolean {
  const offered = req.headers.get("sec-websocket-protocol");
  if (!offered) return false;
  return offered.split(",").some((p) => p.trim() === SUBPROTOCOL);
}

function peerOf(info?: Deno.ServeHandlerInfo): string {
  try {
    const a = info?.remoteAddr as Deno.NetAddr | undefined;
    return a?.hostname ?? "unknown";
  } catch {
    return "unknown"; // the request is already closed
  }
}

/**
 * Which upgrades are accepted (shutdown, subprotocol, connection rate per
 * address, open sockets per isolate and per address), and the open sockets
 * those limits count.
 */
class Admission {
  /** Set by shutdown: every later upgrade is refused with 503. */
  closing = false;
  /** Open sockets (joined or not) until they close or are given up on. */
  readonly sockets = new Set<WebSocket>();
  readonly #ctx: HttpContext;
  readonly #perIp = new Map<string, number>();
  readonly #rate: ConnectionRate | undefined;

  constructor(ctx: HttpContext) {
    this.#ctx = ctx;
    this.#rate = ctx.rateLimitPerMinute > 0
      ? new ConnectionRate(ctx.rateLimitPerMinute)
      : undefined;
  }

  /** Why an upgrade from `peer` is refused (a Response to send), or undefined to accept it. */
  check(req: Request, peer: string): Response | undefined {
    const ctx = this.#ctx;
    if (this.closing) return this.#refuse(503, "Server is shutting down", peer);
    if (!offersSubprotocol(req)) {
      return this.#refuse(
        400,
        `Cannot upgrade: offer the WebSocket subprotocol ${SUBPROTOCOL}`,
        peer,
      );
    }
    if (this.#rate && !this.#rate.allow(peer)) {
      return this.#refuse(
        429,
        `Too many connections: limit is ${ctx.rateLimitPerMinute} per minute per address`,
        peer,
        { "retry-after": "60" },
      );
    }
    if (ctx.maxConnections > 0 && this.sockets.size >= ctx.maxConnections) {
      return this.#refuse(503, `Too many connections: limit is ${ctx.maxConnections} here`, peer, {
        "retry-after": "5",
      });
    }
    const perIpLimit = ctx.maxSocketsPerIp ?? 0;
    if (perIpLimit > 0 && (this.#perIp.get(peer) ?? 0) >= perIpLimit) {
      return this.#refuse(
        429,
        `Too many open connections: limit is ${perIpLimit} per address`,
        peer,
        { "retry-after": "5" },
      );
    }
    return undefined;
  }

  /** Counts an accepted socket from `peer` against the limits. */
  add(socket: WebSocket, peer: string): void {
    this.sockets.add(socket);
    this.#perIp.set(peer, (this.#perIp.get(peer) ?? 0) + 1);
  }

  /** Stops counting a socket {@link add} counted; call it once per socket. */
  remove(socket: WebSocket, peer: string): void {
    this.sockets.delete(socket);
    const n = (this.#perIp.get(peer) ?? 1) - 1;
    if (n <= 0) this.#perIp.delete(peer);
    else this.#perIp.set(peer, n);
  }

  #refuse(status: number, message: string, peer: string, headers?: HeadersInit): Response {
    this.#ctx.session.log.warn("upgrade refused", { peer, status, reason: message });
    this.#ctx.metrics.reject(status);
    return new Response(message + "\n", { status, headers });
  }
}

/** The session context, with the per-address join budgets when any is set. */
function withJoinBudgets(ctx: HttpContext): SessionContext {
  const joinsPerMinute = ctx.joinRatePerMinute ?? 0;
  const channelsPerHour = ctx.channelRatePerHour ?? 0;
  if (joinsPerMinute <= 0 && channelsPerHour <= 0) return ctx.session;
  const joins = new JoinRate(joinsPerMinute, channelsPerHour);
  return { ...ctx.session, admitJoin: (ip, channel) => joins.admit(ip, channel) };
}

/**
 * Runs a session on a socket upgraded by `Deno.upgradeWebSocket` or by
 * another transport (node_server.ts). The socket counts against the limits
 * until it closes. `forceClose`, when the transport has one, tears the TCP
 * connection down at once: it is used when a client never completes a close
 * the server started.
 */
function adoptSocket(
  ctx: HttpContext,
  admission: Admission,
  session: SessionContext,
  socket: WebSocket,
  peer: string,
  controls: TransportControls = {},
): void {
  const { forceClose } = controls;
  ctx.metrics.connections++;
  admission.add(socket, peer);
  let counted = true;
  const uncount = () => {
    if (!counted) return;
    counted = false;
    admission.remove(socket, peer);
  };
  let stuck: ReturnType<typeof setTimeout> | undefined;
  socket.addEventListener("close", () => {
    clearTimeout(stuck);
    uncount();
  });
  // Deno keeps a server socket CLOSING for as long as the client neither
  // answers the close nor drops TCP (denoland/deno#27924), and offers no way
  // to force it shut. Such a socket stops counting here after a grace
  // period, so silent clients cannot use up MLES_MAX_CONNECTIONS. A
  // transport that can (node_server.ts) closes the TCP connection instead.
  const onClosing = () => {
    if (stuck !== undefined) return;
    stuck = setTimeout(() => {
      if (socket.readyState === WebSocket.CLOSED || !counted) return;
      if (forceClose) return forceClose();
      uncount();
      ctx.metrics.abandonedSockets++;
      ctx.session.log.warn("client never completed the close; socket no longer counted", {
        peer,
      });
    }, CLOSE_GRACE_MS);
  };
  runSession(socket, session, peer, onClosing, controls.pauseReading);
}

/** Upgrades an admitted request (`mles-websocket` echoed) and hands the socket to `adopt`. */
function upgrade(
  ctx: HttpContext,
  admission: Admission,
  adopt: (socket: WebSocket, peer: string) => void,
  req: Request,
  info?: Deno.ServeHandlerInfo,
): Response {
  // Read the peer before upgrading: the request is gone afterwards.
  const peer = peerOf(info);
  const refused = admission.check(req, peer);
  if (refused) return refused;
  const { socket, response } = Deno.upgradeWebSocket(req, {
    protocol: SUBPROTOCOL,
    // Deno pings after idleTimeout/2 of silence and closes after idleTimeout:
    // this gives the Mles 24 s ping cadence with one keepalive, not two.
    idleTimeout: ctx.session.config.pingIntervalS * 2,
  });
  adopt(socket, peer);
  return response;
}

/** `/healthz`: 200 `{status: "ok"}` when the store answers, else 503; never cached. */
async function healthz(ctx: HttpContext): Promise<Response> {
  const ok = await ctx.healthy();
  const peers = ctx.peers?.();
  const body = { status: ok ? "ok" : "unavailable", kv: ok, ...(peers ? { peers } : {}) };
  return Response.json(body, {
    status: ok ? 200 : 503,
    headers: { "cache-control": "no-store" },
  });
}

/** `/metrics` in Prometheus text format; 401 without the bearer token when one is set. */
async function metrics(ctx: HttpContext, req: Request): Promise<Response> {
  if (
    ctx.metricsToken !== undefined &&
    req.headers.get("authorization") !== `Bearer ${ctx.metricsToken}`
  ) {
    return new Response("Unauthorized: send Authorization: Bearer <MLES_METRICS_TOKEN>\n", {
      status: 401,
      headers: { "www-authenticate": "Bearer" },
    });
  }
  return new Response(await ctx.metrics.render(ctx.gauges()), {
    headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
  });
}

/** Plain HTTP: GET/HEAD of /healthz, /metrics or a static file, else 404; other methods 405. */
async function serveHttp(ctx: HttpContext, req: Request): Promise<Response> {
  if (req.method !== "GET" && req.method !== "HEAD") {
    return new Response("Method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
  }
  const { pathname } = new URL(req.url);
  if (pathname === "/healthz") return await healthz(ctx);
  if (pathname === "/metrics") return await metrics(ctx, req);
  const file = await ctx.staticFiles?.(req);
  return file ?? new Response("Not found\n", { status: 404 });
}

/** Closes every socket with 1001; resolves when their close handshakes are done or after `waitMs`. */
async function closeAll(sockets: Iterable<WebSocket>, waitMs: number): Promise<void> {
  const done = [...sockets].map((s) =>
    new Promise<void>((resolve) => {
      s.addEventListener("close", () => resolve(), { once: true });
      closeQuietly(s, CLOSE.shuttingDown);
      if (s.readyState === WebSocket.CLOSED) resolve();
    })
  );
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    Promise.all(done),
    new Promise<void>((r) => timer = setTimeout(r, waitMs)),
  ]);
  clearTimeout(timer);
}

/**
 * Builds the request handler used by `deno serve`, `Deno.serve` and Deploy:
 * WebSocket upgrades through {@link Admission} to a session, everything else
 * to the HTTP routes.
 */
export function createHttpHandler(ctx: HttpContext): HttpHandler {
  const admission = new Admission(ctx);
  const session = withJoinBudgets(ctx);
  const adopt = (socket: WebSocket, peer: string, controls?: TransportControls) =>
    adoptSocket(ctx, admission, session, socket, peer, controls);
  return {
    fetch: async (req, info) => {
      if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
        return upgrade(ctx, admission, adopt, req, info);
      }
      return await serveHttp(ctx, req);
    },
    admitUpgrade: (req, peer) => admission.check(req, peer),
    adoptSocket: adopt,
    closeSockets(waitMs = 1000) {
      admission.closing = true;
      return closeAll(admission.sockets, waitMs);
    },
    get socketCount() {
      return admission.sockets.size;
    },
  };
}
