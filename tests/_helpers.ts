/**
 * @module
 * Test helpers shared by every suite: a real server on a real port (0) with
 * real Deno KV (`:memory:` unless the test gives a path), and a WebSocket test
 * client whose `next()` awaits the next frame with a deadline. Everything is
 * `await using`-disposable so sockets, servers and KV handles never leak.
 */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { loadConfig } from "../src/config.ts";
import { Logger } from "../src/log.ts";
import { createServer, type Server } from "../src/server.ts";
import { nodeServeOptions, serveNode } from "../src/node_server.ts";
import type { KvLatency } from "../bench/latency_kv.ts";

/** A running server for one test. */
export interface TestServer extends AsyncDisposable {
  /** http://127.0.0.1:PORT/ */
  readonly url: string;
  /** ws://127.0.0.1:PORT/ */
  readonly wsUrl: string;
  readonly port: number;
  readonly server: Server;
  close(): Promise<void>;
}

/** Options for {@link startServer}. */
export interface StartOptions {
  /**
   * Environment for loadConfig; defaults: MLES_KV=":memory:", MLES_LOG_LEVEL="error",
   * per-address limits off (an empty value gives a setting its real default).
   */
  env?: Record<string, string>;
  /** An open KV handle to use (the test closes it). */
  kv?: Deno.Kv;
  /** Port to listen on (default 0 = any free port). */
  port?: number;
  /** Receives the server's log lines (default: the level from env, to stderr). */
  log?: Logger;
  /**
   * "deno": `Deno.serve` + `Deno.upgradeWebSocket` (`deno serve`, Deploy);
   * "node": `deno task start`'s node:http + ws (src/node_server.ts).
   * Default: MLES_TEST_TRANSPORT, else "deno".
   */
  transport?: "deno" | "node";
}

/** Starts a server on 127.0.0.1 with the given environment. */
export async function startServer(
  options: StartOptions = {},
): Promise<TestServer> {
  const config = loadConfig({
    MLES_KV: ":memory:",
    MLES_LOG_LEVEL: "error",
    // Every test client is 127.0.0.1: per-address limits are off unless a
    // test sets them (tests/limits_test.ts runs them at their defaults).
    MLES_MAX_CONNECTIONS_PER_IP: "0",
    MLES_JOIN_RATE: "0",
    MLES_CHANNEL_RATE: "0",
    ...options.env,
  });
  const server = await createServer(config, {
    kv: options.kv,
    log: options.log,
  });
  // MLES_TEST_TRANSPORT=node runs a suite on `deno task start`'s transport
  // (node:http + ws) instead of Deno.serve (`deno serve`, Deploy).
  const transport = options.transport ??
    (Deno.env.get("MLES_TEST_TRANSPORT") === "node" ? "node" : "deno");
  let port: number;
  let stop: () => Promise<void>;
  if (transport === "node") {
    const node = await serveNode(nodeServeOptions(config, {
      handler: server.http,
      metrics: server.metrics,
      log: options.log ?? new Logger(config.logLevel),
      port: options.port ?? 0,
      hostname: "127.0.0.1",
      maxSockets: 10_000,
    }));
    port = node.port;
    stop = () => node.close();
  } else {
    const http = Deno.serve(
      { port: options.port ?? 0, hostname: "127.0.0.1", onListen() {} },
      server.fetch,
    );
    port = http.addr.port;
    stop = () => http.shutdown();
  }
  let closed: Promise<void> | undefined;
  const close = () =>
    closed ??= (async () => {
      await server.close();
      await stop();
    })();
  return {
    url: `http://127.0.0.1:${port}/`,
    wsUrl: `ws://127.0.0.1:${port}/`,
    port,
    server,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** A frame as the test client received it. */
export type Received = string | Uint8Array;

/** How a connection ended. */
export interface Closed {
  code: number;
  reason: string;
}

/** A WebSocket client for tests: queued frames, `next()` with a deadline, disposable. */
export class TestClient implements AsyncDisposable {
  readonly ws: WebSocket;
  readonly #frames: Received[] = [];
  #waiter: PromiseWithResolvers<Received> | undefined;
  readonly #closed = Promise.withResolvers<Closed>();
  /** Resolves with the close code and reason once the connection has ended. */
  readonly closed: Promise<Closed> = this.#closed.promise;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onmessage = (ev) => {
      const f = typeof ev.data === "string" ? ev.data : new Uint8Array(ev.data as ArrayBuffer);
      if (this.#waiter) {
        const w = this.#waiter;
        this.#waiter = undefined;
        w.resolve(f);
      } else this.#frames.push(f);
    };
    ws.onclose = (ev) => {
      this.#closed.resolve({ code: ev.code, reason: ev.reason });
      this.#waiter?.reject(new Error(`closed ${ev.code} ${ev.reason}`));
      this.#waiter = undefined;
    };
    ws.onerror = () => {};
  }

  /**
   * Opens a connection offering `mles-websocket` (or `protocols`) and, when
   * `header` is given, sends it (objects are JSON-encoded) as the first frame.
   */
  static async open(
    url: string,
    header?: Record<string, unknown> | string,
    protocols: string | string[] = "mles-websocket",
  ): Promise<TestClient> {
    const ws = new WebSocket(url, protocols);
    const c = new TestClient(ws);
    const opened = Promise.withResolvers<void>();
    ws.onopen = () => opened.resolve();
    const early = c.closed.then((cl) => {
      throw new Error(`connection closed before open: ${cl.code} ${cl.reason}`);
    });
    await Promise.race([opened.promise, early]);
    if (header !== undefined) {
      ws.send(typeof header === "string" ? header : JSON.stringify(header));
    }
    return c;
  }

  /** Sends a text (string) or binary (bytes) frame. */
  send(data: string | Uint8Array): void {
    this.ws.send(data as string);
  }

  /** The next frame received, waiting at most `ms`. Rejects on timeout or close. */
  next(ms = 5000): Promise<Received> {
    const f = this.#frames.shift();
    if (f !== undefined) return Promise.resolve(f);
    if (this.ws.readyState >= WebSocket.CLOSING) {
      return Promise.reject(new Error("connection is closed"));
    }
    const w = Promise.withResolvers<Received>();
    this.#waiter = w;
    const t = setTimeout(() => {
      if (this.#waiter === w) this.#waiter = undefined;
      w.reject(new Error(`no frame within ${ms} ms`));
    }, ms);
    return w.promise.finally(() => clearTimeout(t));
  }

  /** The next `n` frames, in order. */
  async take(n: number, ms = 5000): Promise<Received[]> {
    const out: Received[] = [];
    for (let i = 0; i < n; i++) out.push(await this.next(ms));
    return out;
  }

  /** Frames received and not yet taken. */
  get pending(): number {
    return this.#frames.length;
  }

  /** Waits for the close, at most `ms`. */
  async waitClosed(ms = 5000): Promise<Closed> {
    let t: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, rej) => {
      t = setTimeout(() => rej(new Error(`not closed within ${ms} ms`)), ms);
    });
    try {
      return await Promise.race([this.closed, timeout]);
    } finally {
      clearTimeout(t);
    }
  }

  /** Closes (if open) and waits for the close to complete. */
  async close(): Promise<void> {
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close();
    await this.closed;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** An Mles header object. */
export function header(
  uid: string,
  channel: string,
  extra: Record<string, unknown> = {},
) {
  return { uid, channel, ...extra };
}

/**
 * Polls `cond` (sync or async) every few ms; resolves true once it holds,
 * false once `ms` have passed without it. The one polling loop of the tests:
 * {@link waitFor} is this with a rejection.
 */
export async function eventually(
  cond: () => boolean | Promise<boolean>,
  ms: number,
): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Polls `cond` every few ms until it holds; rejects after `ms` naming `what`. */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  what: string,
  ms = 5000,
): Promise<void> {
  if (!await eventually(cond, ms)) throw new Error(`timed out waiting for ${what}`);
}

/**
 * Reads frames from `c` until `done(kept)` holds, keeping those `keep`
 * accepts (default: all); rejects after `ms` saying how many it kept.
 */
export async function collect(
  c: TestClient,
  done: (frames: Received[]) => boolean,
  ms = 20_000,
  keep: (frame: Received) => boolean = () => true,
): Promise<Received[]> {
  const frames: Received[] = [];
  const deadline = Date.now() + ms;
  while (!done(frames)) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out after ${frames.length} frames`);
    const f = await c.next(left);
    if (keep(f)) frames.push(f);
  }
  return frames;
}

/** A data frame of the peering tests: a JSON text `{"p": publisher, "n": seq}`. */
export const isData = (f: Received): f is string => typeof f === "string" && f.startsWith('{"p"');

/**
 * Data frames `c` receives until `until` holds, then any that arrive within
 * `quietMs` more (a late duplicate shows up there: proving an absence needs
 * some bound where no marker must come after every path).
 */
export async function collectData(
  c: TestClient,
  until: (data: string[]) => boolean,
  ms = 20_000,
  quietMs = 500,
): Promise<string[]> {
  const data = await collect(c, (fs) => until(fs as string[]), ms, isData) as string[];
  try {
    for (;;) {
      const f = await c.next(quietMs);
      if (isData(f)) data.push(f);
    }
  } catch { /* quiet */ }
  return data;
}

/**
 * Each client sends "ready:<name>" and waits to hear every other's: Mles has
 * no join acknowledgement, so this is how a test knows joins are done and
 * frames cross (a peering ring included) before it starts counting.
 * Resolves, per client, the other frames it read meanwhile (history, in order).
 */
export async function allReady(clients: TestClient[], names: string[]): Promise<Received[][]> {
  clients.forEach((c, i) => c.send(`ready:${names[i]}`));
  const isReady = (f: Received) => typeof f === "string" && f.startsWith("ready:");
  return await Promise.all(clients.map(async (c, i) => {
    const others = names.filter((_, j) => j !== i).map((n) => `ready:${n}`);
    const read = await collect(c, (fs) => others.every((r) => fs.includes(r)), 15_000);
    return read.filter((f) => !isReady(f));
  }));
}

/** Clients opened together and closed together. */
export interface Group extends AsyncDisposable {
  readonly clients: TestClient[];
}

/**
 * Opens one client per header, one after the other, each waiting until its
 * join has completed before the next opens, so every history is known:
 * the k-th client's history holds the headers of the k-1 before it.
 */
export async function joinInOrder(
  s: TestServer,
  ...headers: Record<string, unknown>[]
): Promise<Group> {
  const clients: TestClient[] = [];
  for (const h of headers) {
    const before = s.server.hub.joinedCount;
    clients.push(await TestClient.open(s.wsUrl, h));
    await waitFor(
      () => s.server.hub.joinedCount > before,
      `join of ${JSON.stringify(h)}`,
    );
  }
  return {
    clients,
    async [Symbol.asyncDispose]() {
      await Promise.all(clients.map((c) => c.close()));
    },
  };
}

/** A server isolate running in a Web Worker (own KV handle, own port). */
export interface IsolateServer {
  readonly wsUrl: string;
  readonly url: string;
  close(): Promise<void>;
}

/** A set of isolates sharing one KV file, like `deno serve --parallel`. */
export interface Isolates extends AsyncDisposable {
  readonly isolates: IsolateServer[];
  readonly kvPath: string;
  close(): Promise<void>;
}

/**
 * Starts `n` server isolates in Web Workers, each with its own KV handle on
 * the same SQLite file (`kvPath`, default: a new temp file removed on close).
 */
export async function startIsolates(
  n: number,
  env: Record<string, string> = {},
  kvPath?: string,
  latency?: (i: number) => KvLatency | undefined,
): Promise<Isolates> {
  const dir = kvPath ? undefined : await Deno.makeTempDir({ prefix: "mles-isolates-" });
  const path = kvPath ?? `${dir}/kv.sqlite3`;
  const isolates: IsolateServer[] = [];
  for (let i = 0; i < n; i++) {
    const w = new Worker(new URL("./_isolate_worker.ts", import.meta.url), {
      type: "module",
    });
    const started = Promise.withResolvers<number>();
    w.onmessage = (ev) => {
      if (ev.data?.error) started.reject(new Error(ev.data.error));
      else started.resolve(ev.data.port);
    };
    // Every test client is 127.0.0.1: per-address limits off unless the test sets them.
    const perAddressOff = {
      MLES_MAX_CONNECTIONS_PER_IP: "0",
      MLES_JOIN_RATE: "0",
      MLES_CHANNEL_RATE: "0",
    };
    w.postMessage({ env: { ...perAddressOff, ...env, MLES_KV: path }, latency: latency?.(i) });
    const port = await started.promise;
    let closed: Promise<void> | undefined;
    isolates.push({
      wsUrl: `ws://127.0.0.1:${port}/`,
      url: `http://127.0.0.1:${port}/`,
      close: () =>
        closed ??= (async () => {
          const done = Promise.withResolvers<void>();
          w.onmessage = (ev) => ev.data === "closed" && done.resolve();
          w.postMessage("close");
          await done.promise;
          w.terminate();
        })(),
    });
  }
  let closing: Promise<void> | undefined;
  const close = () =>
    closing ??= (async () => {
      await Promise.all(isolates.map((i) => i.close()));
      if (dir) await Deno.remove(dir, { recursive: true });
    })();
  return { isolates, kvPath: path, close, [Symbol.asyncDispose]: close };
}

/** The bytes of an HTTP WebSocket upgrade request, offering `protocol` unless it is null. */
export function upgradeRequest(
  port: number,
  protocol: string | null = "mles-websocket",
  path = "/",
): Uint8Array {
  const lines = [
    `GET ${path} HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
  ];
  if (protocol !== null) lines.push(`Sec-WebSocket-Protocol: ${protocol}`);
  return new TextEncoder().encode(lines.join("\r\n") + "\r\n\r\n");
}

/** Sends an upgrade request over raw TCP and returns the response head as text. */
export async function rawUpgrade(
  port: number,
  protocol: string | null = "mles-websocket",
) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(upgradeRequest(port, protocol, "/any/path"));
  const buf = new Uint8Array(4096);
  const n = await conn.read(buf);
  conn.close();
  return new TextDecoder().decode(buf.subarray(0, n ?? 0));
}

/** A masked client TEXT frame (payload < 64 KiB), as a raw client sends it. */
export function clientTextFrame(text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  const long = payload.length >= 126;
  const frame = new Uint8Array((long ? 8 : 6) + payload.length);
  frame[0] = 0x81;
  frame[1] = 0x80 | (long ? 126 : payload.length);
  if (long) {
    frame[2] = payload.length >> 8;
    frame[3] = payload.length & 0xff;
  }
  frame.set(payload, long ? 8 : 6); // mask key 0,0,0,0: payload unchanged
  return frame;
}

/** A server running as a real process (`deno task start`). */
export interface Proc {
  readonly port: number;
  readonly url: string;
  readonly child: Deno.ChildProcess;
  /** Its stderr lines so far (JSON log lines and the listening line). */
  readonly log: string[];
  /** SIGTERM, then waits for the exit. Safe to call twice. */
  stop(): Promise<void>;
}

/** Ports this test process has handed out: never handed out twice. */
const handedOut = new Set<number>();

/**
 * A port that was free a moment ago, for a process that must know its
 * peers' ports before it starts. Never the same port twice in one test
 * process; another process may still take it before the child binds, so
 * {@link startProcess} retries on a fresh port when it picked the port.
 */
export function freePort(): number {
  for (;;) {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    return port;
  }
}

/**
 * Starts `deno task start` with `env` on `port`; resolves once it listens
 * (or rejects with its log). Without a `port`, picks one with
 * {@link freePort} and, if another process took it meanwhile, tries again
 * on a fresh one (at most 3 times).
 */
export async function startProcess(env: Record<string, string>, port?: number): Promise<Proc> {
  if (port !== undefined) return await startProcessOn(env, port);
  for (let attempt = 1;; attempt++) {
    try {
      return await startProcessOn(env, freePort());
    } catch (err) {
      if (attempt >= 3 || !/AddrInUse|address already in use/i.test(String(err))) throw err;
    }
  }
}

async function startProcessOn(env: Record<string, string>, port: number): Promise<Proc> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "start"],
    cwd: new URL("..", import.meta.url).pathname,
    env: { PORT: String(port), NO_COLOR: "1", MLES_LOG_LEVEL: "info", ...env },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log: string[] = [];
  const listening = Promise.withResolvers<void>();
  (async () => {
    let rest = "";
    for await (
      const chunk of child.stderr.pipeThrough(new TextDecoderStream())
    ) {
      rest += chunk;
      const lines = rest.split("\n");
      rest = lines.pop()!;
      for (const l of lines) {
        log.push(l);
        if (l.includes("listening on")) listening.resolve();
      }
    }
    listening.reject(new Error(`server on ${port} ended: ${log.join("\n")}`));
  })();
  let stopped: Promise<void> | undefined;
  const proc: Proc = {
    port,
    url: `ws://127.0.0.1:${port}/`,
    child,
    log,
    stop: () =>
      stopped ??= (async () => {
        try {
          child.kill("SIGTERM");
        } catch { /* already exited */ }
        await child.status;
      })(),
  };
  try {
    await listening.promise;
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return proc;
}

/**
 * A full V8 garbage collection, so memory readings compare live memory, not
 * GC timing. `--expose-gc` cannot be passed to `deno test` from inside a test
 * file, but V8 honours it at run time for contexts created afterwards (the
 * Node idiom). A no-op if the runtime refuses.
 */
export const gc: () => void = (() => {
  try {
    setFlagsFromString("--expose-gc");
    const fn = runInNewContext("gc");
    if (typeof fn === "function") return fn as () => void;
  } catch { /* no run-time GC: readings after a settle only */ }
  return () => {};
})();

/**
 * RSS after a full GC, the lowest of four readings 100 ms apart: the
 * allocator returns freed pages lazily, and no event says it has. A
 * measurement, not a wait for something to happen.
 */
export async function settledRss(): Promise<number> {
  let rss = Infinity;
  for (let k = 0; k < 4; k++) {
    gc();
    await new Promise((r) => setTimeout(r, 100));
    rss = Math.min(rss, Deno.memoryUsage().rss);
  }
  return rss;
}

/** Reads a gauge (or counter) of this isolate from GET /metrics; the body is always consumed. */
export async function gauge(s: TestServer, name: string): Promise<number> {
  const res = await fetch(new URL("/metrics", s.url));
  const body = await res.text();
  const m = body.match(new RegExp(`^${name}\\{[^}]*\\} (\\d+)$`, "m"));
  if (!m) throw new Error(`${name} not in /metrics`);
  return Number(m[1]);
}
