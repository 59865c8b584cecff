/**
 * @module
 * The self-hosted transport (`deno task start`): `node:http` (or
 * `node:https`) with `npm:ws` in front of the same {@link HttpHandler} that
 * `deno serve` and Deno Deploy call. It exists because `Deno.serve` plus
 * `Deno.upgradeWebSocket` cannot, in Deno 2.9, do what a public server on
 * its own descriptors needs (README "Limits" has the evidence):
 *
 * - bound a message before it is buffered (fastwebsockets' 64 MiB frame
 *   limit is not configurable there, and fragments are joined unbounded);
 *   here the first frame is bounded by MLES_MAX_HEADER_BYTES and later ones
 *   by MLES_MAX_FRAME_BYTES, at the frame header, with close 1009;
 * - close on protocol errors with the RFC's code (1002, 1007) and refuse
 *   unmasked client frames;
 * - give a descriptor back when a client never answers our close (`ws`
 *   destroys the TCP connection after `closeTimeout`);
 * - see a TCP connection before its first request: idle connections and
 *   slow headers are closed within a bound, connections beyond the
 *   descriptor budget or the per-address share are closed at once, so
 *   `accept` never meets EMFILE (which ends `Deno.serve`'s accept loop and
 *   the process with it).
 *
 * Imports: node:http, node:https, node:net, npm:ws, close, config (type), http, log (type),
 * metrics (type).
 */
import * as http from "node:http";
import * as https from "node:https";
import type { Socket } from "node:net";
import { type WebSocket as NodeWebSocket, WebSocketServer } from "ws";
import { CLOSE } from "./close.ts";
import type { Config } from "./config.ts";
import { type HttpHandler, SUBPROTOCOL } from "./http.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";

/** Where and for whom {@link serveNode} serves (what the configuration does not say). */
export interface NodeServeSite {
  readonly handler: HttpHandler;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly port: number;
  /** Address to listen on (default: every address). */
  readonly hostname?: string;
  /** PEM certificate and key: serve https:// and wss://. */
  readonly tls?: { cert: string; key: string };
  /** TCP connections this process keeps open at once; more are closed at accept. */
  readonly maxSockets: number;
  /** Called once listening. */
  readonly onListen?: (addr: { hostname: string; port: number }) => void;
}

/** Options for {@link serveNode}. */
export interface NodeServeOptions extends NodeServeSite {
  /** The WebSocket subprotocol to echo. */
  readonly subprotocol: string;
  /** Largest first frame (the Mles header), bounded before it is buffered. */
  readonly maxHeaderBytes: number;
  /** Largest later frame, bounded before it is buffered. */
  readonly maxFrameBytes: number;
  /** TCP connections one address keeps open at once (0 = no per-address bound). */
  readonly maxSocketsPerIp: number;
  /** A connection with no HTTP request (or between requests) is closed after this many ms. */
  readonly idleTimeoutMs: number;
  /** A request's headers must arrive within this many ms. */
  readonly headersTimeoutMs: number;
  /** A client that never answers the server's close is cut off after this many ms. */
  readonly closeTimeoutMs: number;
  /**
   * A WebSocket that sends no message and no pong for this many ms is
   * pinged, and closed 1001 if it stays silent as long again (MLES_PING_INTERVAL_S;
   * `Deno.upgradeWebSocket`'s idleTimeout of twice this on the other path).
   */
  readonly pingIntervalMs: number;
}

/**
 * The options `deno task start` serves with, from the configuration: the
 * header and frame bounds, the per-address share, the idle, header and close
 * timeouts, and the Mles keepalive. The one place they are spelled.
 */
export function nodeServeOptions(config: Config, site: NodeServeSite): NodeServeOptions {
  return {
    ...site,
    subprotocol: SUBPROTOCOL,
    maxHeaderBytes: config.maxHeaderBytes,
    maxFrameBytes: config.maxFrameBytes,
    maxSocketsPerIp: config.maxConnectionsPerIp,
    idleTimeoutMs: config.headerTimeoutMs,
    headersTimeoutMs: config.headerTimeoutMs,
    closeTimeoutMs: 2000,
    pingIntervalMs: config.pingIntervalS * 1000,
  };
}

/** A running self-hosted server. */
export interface NodeServer {
  readonly port: number;
  /** TCP connections open now (HTTP and WebSocket). */
  readonly openSockets: number;
  /** Stops listening and destroys every connection still open. */
  close(): Promise<void>;
}

/**
 * The soft and hard RLIMIT_NOFILE of this process, after raising the soft
 * limit to the hard one where the OS allows it (Deno already does that at
 * start; this makes it explicit and reads the result). Uses libc's
 * getrlimit/setrlimit through FFI (`--allow-ffi`; Deno answers reads of
 * /proc/self/limits only with --allow-all). Undefined where neither is
 * available (no permission, Windows).
 */
export function descriptorLimit(): { soft: number; hard: number } | undefined {
  const lib = Deno.build.os === "linux"
    ? "libc.so.6"
    : Deno.build.os === "darwin"
    ? "libSystem.dylib"
    : undefined;
  const resource = Deno.build.os === "linux" ? 7 : 8; // RLIMIT_NOFILE
  if (!lib) return undefined;
  let dl;
  try {
    dl = Deno.dlopen(lib, {
      getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
      setrlimit: { parameters: ["i32", "buffer"], result: "i32" },
    });
  } catch {
    return undefined;
  }
  try {
    const r = new BigUint64Array(2); // struct rlimit { rlim_t cur, max }
    if (dl.symbols.getrlimit(resource, r) !== 0) return undefined;
    if (r[0] < r[1]) {
      const want = new BigUint64Array([r[1], r[1]]);
      // macOS refuses more than OPEN_MAX for an unlimited hard limit: keep what we have then.
      if (dl.symbols.setrlimit(resource, want) === 0) dl.symbols.getrlimit(resource, r);
    }
    const n = (v: bigint) =>
      v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
    return { soft: n(r[0]), hard: n(r[1]) };
  } finally {
    dl.close();
  }
}

/**
 * Descriptors kept back from client connections for KV (SQLite file, WAL,
 * shared memory), static files, peering links, logs and the runtime.
 */
export function descriptorReserve(limit: number): number {
  // Deno's accept loop takes every connection the kernel has queued (up to
  // the listen backlog) before the first is seen here, and a refused one
  // gives its descriptor back a turn later: two backlogs must fit in the
  // reserve, or accept meets EMFILE, and after EMFILE Deno 2.9's listener
  // (libs/core/uv_compat/tcp.rs, `while let Poll::Ready(Ok(..))`) drops the
  // error and is never polled again.
  return Math.max(2 * LISTEN_BACKLOG + 48, Math.min(1024, Math.floor(limit / 10)));
}

/** Connections the kernel queues for accept. */
export const LISTEN_BACKLOG = 128;

/** The client's address as `Deno.serve` spells it (IPv4 without the `::ffff:` of a dual-stack socket). */
function addressOf(socket: Socket): string {
  const a = socket.remoteAddress ?? "unknown";
  return a.startsWith("::ffff:") && a.includes(".") ? a.slice(7) : a;
}

const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  429: "Too Many Requests",
  503: "Service Unavailable",
};

/** Answers an upgrade we refuse on the raw socket (there is no ServerResponse for it). */
async function refuseUpgrade(socket: Socket, res: Response): Promise<void> {
  const body = new Uint8Array(await res.arrayBuffer());
  let head = `HTTP/1.1 ${res.status} ${STATUS_TEXT[res.status] ?? "Error"}\r\n`;
  res.headers.forEach((v, k) => head += `${k}: ${v}\r\n`);
  head += `content-length: ${body.byteLength}\r\nconnection: close\r\n\r\n`;
  socket.end(Buffer.concat([Buffer.from(head, "latin1"), body]));
}

function toRequest(
  req: http.IncomingMessage,
  scheme: string,
  body?: Uint8Array,
): Request {
  const headers = new Headers();
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    try {
      headers.append(req.rawHeaders[i], req.rawHeaders[i + 1]);
    } catch { /* a header Headers refuses: leave it out */ }
  }
  const host = req.headers.host ?? "localhost";
  let url: string;
  try {
    url = new URL(req.url ?? "/", `${scheme}://${host}`).href;
  } catch {
    url = `${scheme}://localhost/`;
  }
  if (body !== undefined) {
    return new Request(url, { method: "POST", headers, body: body as Uint8Array<ArrayBuffer> });
  }
  return new Request(url, { method: req.method === "HEAD" ? "HEAD" : "GET", headers });
}

/** A POST body (the peer sync endpoint's), at most MAX_POST_BYTES; undefined if larger. */
function readBody(req: http.IncomingMessage): Promise<Uint8Array | undefined> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let n = 0;
    req.on("data", (c: Buffer) => {
      n += c.length;
      if (n > MAX_POST_BYTES) {
        req.destroy();
        resolve(undefined);
      } else parts.push(c);
    });
    req.on("end", () => resolve(new Uint8Array(Buffer.concat(parts))));
    req.on("error", () => resolve(undefined));
  });
}

/** Largest POST body read (the peer sync endpoint takes a small JSON object). */
const MAX_POST_BYTES = 64 * 1024;

async function writeResponse(res: Response, out: http.ServerResponse, head: boolean) {
  const headers: Record<string, string | string[]> = {};
  res.headers.forEach((v, k) => {
    if (k === "set-cookie") headers[k] = res.headers.getSetCookie();
    else headers[k] = v;
  });
  out.writeHead(res.status, headers);
  if (head || !res.body) {
    await res.body?.cancel();
    out.end();
    return;
  }
  const reader = res.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (out.destroyed) break;
      if (!out.write(value)) {
        await new Promise<void>((resolve) => {
          out.once("drain", resolve);
          out.once("close", resolve);
        });
      }
    }
  } finally {
    reader.cancel().catch(() => {});
    out.end();
  }
}

/**
 * What this transport reads and sets on ws's per-socket frame parser (ws 8,
 * lib/receiver.js): {@link boundMessages}, {@link copyFullReads} and
 * {@link burstGuard}.
 */
interface WsReceiver {
  /** Largest message; ws checks it at each frame header, before the payload is buffered. */
  _maxPayload: number;
  /** Bytes the message announced so far (every frame header read, this one included). */
  _totalPayloadLength: number;
  /** The message's opcode (a continuation frame carries its first frame's). */
  _opcode: number;
  /** True: every message of a read is emitted at once; false: one per task (setImmediate). */
  _allowSynchronousEvents: boolean;
  /** Bytes read from the socket and not parsed yet. */
  _bufferedBytes: number;
  /** Takes a chunk read from the socket (ws's `data` handler calls it). */
  write(chunk: Buffer, ...rest: unknown[]): boolean;
  prependListener(event: "error", listener: (err: Error & { code?: string }) => void): void;
  on(event: "error", listener: () => void): void;
}

/** ws's frame parser of `ws`; throws if the pinned ws version no longer has one. */
function receiverOf(ws: NodeWebSocket): WsReceiver {
  const receiver = (ws as unknown as { _receiver?: WsReceiver })._receiver;
  if (!receiver) {
    throw new Error("ws has no _receiver: the pinned ws version changed its internals");
  }
  return receiver;
}

/**
 * Bounds each message at its frame header, before its payload is buffered:
 * the first one (the Mles header) by `maxHeaderBytes`, later ones by
 * `maxFrameBytes`. ws refuses a message over its `maxPayload` inside its
 * parser and closes 1009 with no reason; the close here goes first, with
 * the code and reason session.ts sends on the `Deno.serve` path (close.ts),
 * so both transports look the same on the wire, and is logged and counted
 * the same way. ws's own close that follows is then a no-op.
 */
function boundMessages(ws: NodeWebSocket, o: NodeServeOptions, peer: string): void {
  const receiver = receiverOf(ws);
  let first = true;
  receiver._maxPayload = o.maxHeaderBytes;
  ws.once("message", () => {
    first = false;
    receiver._maxPayload = o.maxFrameBytes;
  });
  receiver.prependListener("error", (err) => {
    if (err.code !== "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH") return;
    const bytes = receiver._totalPayloadLength;
    // As parseHeader decides: a binary header is refused for its type, whatever its size.
    const close = !first
      ? CLOSE.frameTooBig(bytes, o.maxFrameBytes)
      : receiver._opcode === 0x2
      ? CLOSE.headerNotText
      : CLOSE.headerTooBig(bytes, o.maxHeaderBytes);
    o.log.warn(first ? "connection refused" : "frame refused", {
      peer,
      code: close.code,
      reason: close.reason,
    });
    o.metrics.reject(close.code);
    ws.close(close.code, close.reason);
  });
  // After any protocol error (a message over its bound, invalid UTF-8, a
  // bad opcode) nothing more from this client can be parsed, and ws would
  // read and drop the rest: up to the 60 MiB such a client announced, at
  // the cost of everyone else's reads. Instead the socket is no longer read
  // and is ended once our close frame is out (ws destroys it after its
  // closeTimeout if the client never finishes).
  receiver.on("error", () => {
    setImmediate(() => { // after ws's own handler has resumed the socket
      const socket = (ws as unknown as { _socket?: Socket })._socket;
      socket?.pause();
      socket?.end();
    });
  });
}

/**
 * The reason `Deno.upgradeWebSocket` closes an idle socket with (Deno 2.9,
 * ext/websocket/01_websocket.js), sent here too so both transports read the same.
 */
const IDLE_REASON = "No response from ping frame.";

/**
 * The Mles keepalive (SPEC section 5) as `Deno.upgradeWebSocket`'s
 * idleTimeout does it on the other path: after `intervalMs` with no message
 * and no pong (a client's pings do not count), an empty ping; after as long
 * again, close 1001 and the TCP connection closed once the close frame is
 * out, without waiting for the client's answer.
 */
function keepAlive(ws: NodeWebSocket, socket: Socket, intervalMs: number): void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const silent = (then: () => void) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (ws.readyState === ws.OPEN) then();
    }, intervalMs);
  };
  const arm = () =>
    silent(() => {
      ws.ping();
      silent(() => {
        ws.close(1001, IDLE_REASON);
        socket.end(() => ws.terminate());
      });
    });
  arm();
  ws.on("message", arm);
  ws.on("pong", arm);
  ws.once("close", () => clearTimeout(timer));
}

/** Creates the HTTP(S) server with the slow-header and idle bounds. */
function createServer(o: NodeServeOptions): http.Server {
  const server = o.tls
    ? https.createServer({ cert: o.tls.cert, key: o.tls.key, connectionsCheckingInterval: 1000 })
    : http.createServer({ connectionsCheckingInterval: 1000 });
  // Slow headers and idle connections: headersTimeout bounds the time to a
  // whole request head, the socket timeout any silence (ws turns it off on
  // upgrade; the Mles ping keeps a WebSocket in check from then on).
  server.headersTimeout = o.headersTimeoutMs;
  server.requestTimeout = Math.max(o.headersTimeoutMs, 30_000);
  server.keepAliveTimeout = Math.min(5_000, o.idleTimeoutMs);
  return server;
}

/** The WebSocket side: frames bounded by MLES_MAX_FRAME_BYTES, the subprotocol required. */
function createWss(o: NodeServeOptions): WebSocketServer {
  return new WebSocketServer({
    noServer: true,
    maxPayload: o.maxFrameBytes,
    closeTimeout: o.closeTimeoutMs,
    perMessageDeflate: false,
    // Messages of a read are emitted at once (ws's default, which keeps
    // fan-out fast); burstGuard switches a socket that sends in bulk to one
    // message per task.
    allowSynchronousEvents: true,
    // ws answers pings itself and tears a connection down, with no close
    // frame, once this many pongs wait to be written. Its default (60) cut
    // off clients that send a burst of pings and read the pongs (a hundred
    // pings in one write), which Deno.upgradeWebSocket serves; this bound
    // still drops a client that floods pings without reading (at most
    // 4096 pongs of <= 127 bytes wait, beyond the kernel's buffer).
    maxPendingAutoPongs: 4096,
    handleProtocols: (protocols: Set<string>) =>
      protocols.has(o.subprotocol) ? o.subprotocol : false,
  });
}

/**
 * Refused connections, logged once per burst: a line when a burst starts
 * and a summary once a second passes without a refusal.
 */
class RefusalLog {
  readonly #o: NodeServeOptions;
  readonly #open: () => number;
  #burst:
    | {
      since: number;
      count: number;
      seen: number;
      reason: string;
      timer: ReturnType<typeof setTimeout>;
    }
    | undefined;

  constructor(o: NodeServeOptions, open: () => number) {
    this.#o = o;
    this.#open = open;
  }

  /** Counts (metric) and logs a refused connection. */
  refused(reason: string, peer: string): void {
    this.#o.metrics.refusedSockets++;
    if (this.#burst) {
      this.#burst.count++;
      return;
    }
    this.#o.log.warn("refusing connections", {
      reason,
      peer,
      open: this.#open(),
      limit: this.#o.maxSockets,
    });
    const timer = setTimeout(() => this.#end(), 1000);
    this.#burst = { since: Date.now(), count: 1, seen: 1, reason, timer };
  }

  #end(): void {
    const b = this.#burst;
    if (!b) return;
    if (b.count !== b.seen) {
      b.seen = b.count;
      b.timer = setTimeout(() => this.#end(), 1000);
      return;
    }
    this.#o.log.warn("stopped refusing connections", {
      reason: b.reason,
      refused: b.count,
      ms: Date.now() - b.since,
      open: this.#open(),
    });
    this.#burst = undefined;
  }

  /** Stops the summary timer. */
  close(): void {
    if (this.#burst) clearTimeout(this.#burst.timer);
    this.#burst = undefined;
  }
}

/**
 * Open TCP connections, within the descriptor budget and the per-address
 * share. A connection over the share is answered the way http.ts answers an
 * upgrade over MLES_MAX_CONNECTIONS_PER_IP on the `Deno.serve` path (same
 * status, header and text), without reading its request; it keeps counting
 * toward the budget until it is gone (at most 1 s).
 */
class Connections {
  readonly sockets = new Set<Socket>();
  /** Connections over the per-address share: their requests are neither served nor upgraded. */
  readonly overShare = new WeakSet<Socket>();
  readonly #perIp = new Map<string, number>();
  readonly #o: NodeServeOptions;
  readonly #log: RefusalLog;

  constructor(o: NodeServeOptions, log: RefusalLog) {
    this.#o = o;
    this.#log = log;
  }

  /** Takes a new connection, or refuses it (closed at once, or a 429 over the share). */
  accept(socket: Socket): void {
    const peer = addressOf(socket);
    if (this.sockets.size >= this.#o.maxSockets) {
      socket.destroy();
      return this.#log.refused("descriptor budget", peer);
    }
    const n = this.#perIp.get(peer) ?? 0;
    if (this.#o.maxSocketsPerIp > 0 && n >= this.#o.maxSocketsPerIp) {
      this.#log.refused("per-address share", peer);
      return this.#refuseOverShare(socket);
    }
    this.sockets.add(socket);
    this.#perIp.set(peer, n + 1);
    // Silence before a request (or between requests) ends the connection;
    // ws turns this off on upgrade, where the Mles ping takes over.
    socket.setTimeout(this.#o.idleTimeoutMs);
    socket.on("timeout", () => socket.destroy());
    socket.once("close", () => {
      this.sockets.delete(socket);
      const left = (this.#perIp.get(peer) ?? 1) - 1;
      if (left <= 0) this.#perIp.delete(peer);
      else this.#perIp.set(peer, left);
    });
  }

  #refuseOverShare(socket: Socket): void {
    this.overShare.add(socket);
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    socket.resume(); // read and drop the request: unread input would turn our close into a reset
    setTimeout(() => socket.destroy(), 1000).unref?.();
    const res = new Response(
      `Too many open connections: limit is ${this.#o.maxSocketsPerIp} per address\n`,
      { status: 429, headers: { "retry-after": "5" } },
    );
    refuseUpgrade(socket, res).catch(() => socket.destroy());
  }
}

/** Serves one plain HTTP request through the handler (POST bodies bounded). */
async function serveRequest(
  o: NodeServeOptions,
  scheme: string,
  req: http.IncomingMessage,
  res: http.ServerResponse,
): Promise<void> {
  const peer = addressOf(req.socket);
  let body: Uint8Array | undefined;
  if (req.method === "POST") {
    body = await readBody(req);
    if (body === undefined) return void res.writeHead(413).end();
  }
  const request = toRequest(req, scheme, body);
  const info = {
    remoteAddr: { transport: "tcp", hostname: peer, port: req.socket.remotePort ?? 0 },
  } as unknown as Deno.ServeHandlerInfo;
  try {
    await writeResponse(await o.handler.fetch(request, info), res, req.method === "HEAD");
  } catch (err) {
    o.log.error("request failed", { peer, error: err });
    if (!res.headersSent) res.writeHead(500).end();
    else res.destroy();
  }
}

/** Upgrades one request, or refuses it the way the `Deno.serve` path does. */
function serveUpgrade(
  o: NodeServeOptions,
  scheme: string,
  wss: WebSocketServer,
  req: http.IncomingMessage,
  socket: Socket,
  head: Buffer,
): void {
  const peer = addressOf(socket);
  socket.on("error", () => socket.destroy());
  if (req.headers.upgrade?.toLowerCase() !== "websocket") return void socket.destroy();
  const refusal = o.handler.admitUpgrade(toRequest(req, scheme), peer);
  if (refusal) return void refuseUpgrade(socket, refusal).catch(() => socket.destroy());
  wss.handleUpgrade(req, socket, head, (ws: NodeWebSocket) => {
    copyFullReads(ws);
    boundMessages(ws, o, peer);
    burstGuard(ws);
    keepAlive(ws, socket, o.pingIntervalMs);
    ws.binaryType = "arraybuffer";
    // `ws` is a WebSocket as far as the session is concerned: the same
    // readyState numbers, on* handlers and events with `data`/`code`/`reason`,
    // send(string | bytes), close(code, reason) and bufferedAmount.
    o.handler.adoptSocket(ws as unknown as WebSocket, peer, {
      forceClose: () => ws.terminate(),
      pauseReading: pacer(ws),
    });
  });
}

/** The read buffer Deno 2.9's node:net reads a socket into (ext/node/ops/stream_wrap.rs). */
const READ_SLAB_BYTES = 65536;

/**
 * Keeps ws from holding Deno's read buffers. Deno 2.9 reads a node:net
 * socket into 64 KiB slabs from a per-thread pool that keeps up to 128 of
 * them (8 MiB) for the life of the process; a read that fills its slab is
 * handed to JavaScript as the slab itself, which goes back to the pool only
 * when V8 collects it. ws keeps read chunks until it has parsed them (a
 * paced or burst-guarded socket keeps them for a while), so such slabs
 * outlived young-generation collections and, after an attack, the pool sat
 * full. A full read is copied before ws keeps it (one 64 KiB copy per full
 * read; partial reads arrive copied already): in a 20 s adversary mix the
 * slabs left in the pool went from 121 to 62 (heaptrack, BENCHMARKS.md
 * "Memory after an attack").
 */
function copyFullReads(ws: NodeWebSocket): void {
  const receiver = receiverOf(ws);
  const write = receiver.write.bind(receiver);
  receiver.write = (chunk: Buffer, ...rest: unknown[]) =>
    write(
      chunk.byteLength === READ_SLAB_BYTES && chunk.buffer.byteLength === READ_SLAB_BYTES
        ? Buffer.from(chunk)
        : chunk,
      ...rest,
    );
}

/** Messages one socket may have emitted in one turn of the event loop before it is read slowly. */
export const BURST_MESSAGES = 64;

/**
 * One socket's share of a turn of the event loop. Deno 2.9 reads up to 32
 * x 64 KiB from a busy socket per turn, and ws emits every message of a
 * read at once: a client sending in bulk (thousands of small frames, or
 * megabytes) held the loop for tens of milliseconds while everyone else's
 * frames waited. A socket that emits more than {@link BURST_MESSAGES}
 * messages in one turn is switched to one message per task until what it
 * sent has been parsed; its unparsed bytes then stop ws reading it (TCP
 * holds the client back). Ordinary clients, a publisher with a window of
 * frames in flight included, never reach it and keep ws's fast path.
 */
function burstGuard(ws: NodeWebSocket): void {
  const receiver = receiverOf(ws);
  let seen = -1;
  let count = 0;
  ws.on("message", () => {
    const t = currentTurn();
    if (t !== seen) {
      seen = t;
      count = 0;
      // Back to the fast path once the backlog is parsed.
      if (!receiver._allowSynchronousEvents && receiver._bufferedBytes < 64 * 1024) {
        receiver._allowSynchronousEvents = true;
      }
    }
    if (++count > BURST_MESSAGES) receiver._allowSynchronousEvents = false;
  });
}

/** The event loop's turn, advanced by one shared setImmediate (not one per socket). */
let turn = 0;
let turnScheduled = false;
function currentTurn(): number {
  if (!turnScheduled) {
    turnScheduled = true;
    setImmediate(() => {
      turnScheduled = false;
      turn++;
    });
  }
  return turn;
}

/**
 * Stops reading a client for a while (the session paces a client over its
 * rates, the hub holds back a flooding publisher): ws pauses the TCP
 * socket, so the kernel's buffers fill and TCP holds the client back; what
 * ws already read still arrives. A pause never shortens one already
 * running; 0 reads again at once.
 */
function pacer(ws: NodeWebSocket): (ms: number) => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let until = 0;
  const resume = () => {
    clearTimeout(timer);
    timer = undefined;
    until = 0;
    if (ws.isPaused) ws.resume();
  };
  ws.once("close", () => clearTimeout(timer));
  return (ms) => {
    if (ms <= 0) return resume();
    if (ws.readyState !== ws.OPEN) return;
    const at = performance.now() + ms;
    if (at <= until) return;
    until = at;
    clearTimeout(timer);
    ws.pause();
    timer = setTimeout(resume, ms);
  };
}

/**
 * Serves `handler` with node:http and npm:ws. Resolves once listening.
 * @throws when the port cannot be bound.
 */
export async function serveNode(o: NodeServeOptions): Promise<NodeServer> {
  const scheme = o.tls ? "https" : "http";
  const server = createServer(o);
  const wss = createWss(o);
  const open = { count: () => 0 };
  const log = new RefusalLog(o, () => open.count());
  const c = new Connections(o, log);
  open.count = () => c.sockets.size;
  server.on("connection", (socket: Socket) => c.accept(socket));
  // An error on the listening socket (EMFILE at accept among others) must
  // never end the process: count it, log it once per burst, keep serving.
  server.on("error", (err: Error) => log.refused(`listen error: ${err.message}`, "-"));
  server.on("clientError", (_err: Error, socket: Socket) => socket.destroy());
  server.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (!c.overShare.has(req.socket)) void serveRequest(o, scheme, req, res);
  });
  server.on("upgrade", (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
    if (!c.overShare.has(socket)) serveUpgrade(o, scheme, wss, req, socket, head);
  });

  const { promise, resolve, reject } = Promise.withResolvers<void>();
  server.once("error", reject);
  server.listen({ port: o.port, host: o.hostname, backlog: LISTEN_BACKLOG }, () => resolve());
  await promise;
  server.off("error", reject);
  const addr = server.address() as { address: string; port: number };
  o.onListen?.({ hostname: addr.address, port: addr.port });

  return {
    port: addr.port,
    get openSockets() {
      return c.sockets.size;
    },
    async close() {
      log.close();
      const closed = new Promise<void>((r) => server.close(() => r()));
      wss.close();
      for (const s of c.sockets) s.destroy();
      await closed;
    },
  };
}
