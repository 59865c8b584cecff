/**
 * @module
 * The transport edge: routes one HTTP request. WebSocket upgrades on any
 * path that offer the `mles-websocket` subprotocol become sessions; an
 * upgrade without it is refused with 400 and no socket. Plain HTTP gets
 * `/healthz`, `/metrics` and static files. Imports: session, config (type),
 * close, metrics, log.
 */
import { CLOSE } from "./close.ts";
import { closeQuietly, runSession, type SessionContext } from "./session.ts";
import type { Metrics } from "./metrics.ts";

/** The subprotocol every Mles client offers and the server echoes (SPEC section 1). */
export const SUBPROTOCOL = "mles-websocket";

/** What the HTTP edge needs from the server. */
export interface HttpContext {
  readonly session: SessionContext;
  readonly metrics: Metrics;
  /** Gauges for /metrics, read at scrape time. */
  readonly gauges: () => Record<string, { help: string; value: number }>;
  /** True when the history store answers. */
  readonly healthy: () => Promise<boolean>;
  /** Serves a file for GET/HEAD, or undefined when there is none. */
  readonly staticFiles?: (req: Request) => Promise<Response | undefined>;
}

/** A request handler plus the means to stop it. */
export interface HttpHandler {
  fetch(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> | Response;
  /** Refuses new upgrades (503) and closes every open socket with 1001. */
  closeSockets(): void;
  /** Open WebSockets (joined or not). */
  readonly socketCount: number;
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

/** Builds the request handler used by `deno serve`, `Deno.serve` and Deploy. */
export function createHttpHandler(ctx: HttpContext): HttpHandler {
  const sockets = new Set<WebSocket>();
  let closing = false;

  const upgrade = (req: Request, info?: Deno.ServeHandlerInfo): Response => {
    // Read the peer before upgrading: the request is gone afterwards.
    const peer = peerOf(info);
    if (closing) return new Response("Server is shutting down\n", { status: 503 });
    if (!offersSubprotocol(req)) {
      ctx.session.log.warn("upgrade refused", {
        peer,
        reason: `subprotocol ${SUBPROTOCOL} not offered`,
      });
      ctx.metrics.reject(400);
      return new Response(`Cannot upgrade: offer the WebSocket subprotocol ${SUBPROTOCOL}\n`, {
        status: 400,
      });
    }
    const { socket, response } = Deno.upgradeWebSocket(req, {
      protocol: SUBPROTOCOL,
      // Deno pings after idleTimeout/2 of silence and closes after idleTimeout:
      // this gives the Mles 24 s ping cadence with one keepalive, not two.
      idleTimeout: ctx.session.config.pingIntervalS * 2,
    });
    ctx.metrics.connections++;
    sockets.add(socket);
    socket.addEventListener("close", () => sockets.delete(socket));
    runSession(socket, ctx.session, peer);
    return response;
  };

  const fetch = async (req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> => {
    if (req.headers.get("upgrade")?.toLowerCase() === "websocket") return upgrade(req, info);
    const { pathname } = new URL(req.url);
    if (req.method === "GET" || req.method === "HEAD") {
      if (pathname === "/healthz") {
        const ok = await ctx.healthy();
        return Response.json({ status: ok ? "ok" : "unavailable", kv: ok }, {
          status: ok ? 200 : 503,
          headers: { "cache-control": "no-store" },
        });
      }
      if (pathname === "/metrics") {
        return new Response(ctx.metrics.render(ctx.gauges()), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      }
      const file = await ctx.staticFiles?.(req);
      if (file) return file;
      return new Response("Not found\n", { status: 404 });
    }
    return new Response("Method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
  };

  return {
    fetch,
    closeSockets() {
      closing = true;
      for (const s of sockets) closeQuietly(s, CLOSE.shuttingDown);
    },
    get socketCount() {
      return sockets.size;
    },
  };
}
