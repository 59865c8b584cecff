/**
 * @module
 * A terminal Mles client, like `mles-client` (SPEC sections 1-4 and 6).
 *
 *     deno task client [--uid U] [--channel C] [--key K] [--raw] <ws-url>
 *     deno task client --proxy <ws-url2> [--uid U] [--channel C] [--key K] [--proxy-key K2] <ws-url>
 *
 * Interactive mode joins `channel` as `uid` (subprotocol `mles-websocket`,
 * header `{uid, channel, auth}` where auth is always sent: SipHash of
 * uid || channel || key, the key from `--key` or `MLES_KEY`, or none). It
 * prints the history and then every live frame, one per line:
 * - a TEXT frame that is a JSON header `{uid, channel}`: `<uid> joined`;
 * - a TEXT frame that is JSON with string `uid` and `text`: `<uid>: <text>`;
 * - other text as it is; binary as `[binary N bytes]`.
 * Control characters other than tab and newline are shown escaped (`\u001b`),
 * so a frame cannot drive the terminal. Each non-empty stdin line is sent as
 * a TEXT frame `{"uid":"<uid>","text":"<line>"}` (`--raw`: the line as is).
 * End of input closes the connection and exits 0.
 *
 * Proxy mode (`--proxy`) joins the same channel on both servers with one
 * stable uid (`--uid`, default `mles-proxy-<random>`) and forwards every
 * frame both ways with its type, through one shared duplicate window
 * (src/dedupe.ts), so nothing loops. It prints counters to stderr every
 * second when stderr is a terminal, and a final line on exit (SIGINT/SIGTERM).
 *
 * Both modes reconnect after a disconnect through src/link.ts (capped
 * exponential backoff with jitter, the one the peering bridge uses). Exit
 * status: 0 at end of input (interactive) or on SIGINT/SIGTERM (proxy), 130
 * on SIGINT/SIGTERM in interactive mode, 2 for a usage error.
 * Imports: node:util (argument parsing; `@std/cli` is on JSR, which we
 * cannot reach), src/auth, src/dedupe, src/frame (type), src/link,
 * src/retry (type).
 */
import { parseArgs } from "node:util";
import { mlesAuth } from "./src/auth.ts";
import { Dedupe } from "./src/dedupe.ts";
import type { Frame } from "./src/frame.ts";
import { Link, type LinkEvent } from "./src/link.ts";
import type { BackoffOptions } from "./src/retry.ts";

const USAGE = `Usage:
  deno task client [--uid U] [--channel C] [--key K] [--raw] <ws-url>
  deno task client --proxy <ws-url2> [--uid U] [--channel C] [--key K] [--proxy-key K2] <ws-url>

  --uid U          user id (default: $USER; in proxy mode mles-proxy-<random>)
  --channel C      channel to join (default: mles)
  --key K          the server's MLES_KEY, for the auth value (default: $MLES_KEY)
  --raw            send stdin lines as they are instead of {"uid","text"} JSON
  --proxy URL2     forward the channel between <ws-url> (a) and URL2 (b)
  --proxy-key K2   the MLES_KEY of URL2 (default: the --key value)`;

// ---- options --------------------------------------------------------------

/** Validated command line. */
export interface CliOptions {
  readonly url: string;
  readonly uid: string;
  readonly channel: string;
  /** Key of `url`'s server, or undefined for a server without MLES_KEY. */
  readonly key: string | undefined;
  readonly raw: boolean;
  /** Proxy mode: the second server. */
  readonly proxy: string | undefined;
  /** Key of the second server. */
  readonly proxyKey: string | undefined;
}

/** A command line that cannot run; `message` says why (usage follows it). */
export class UsageError extends Error {
  override name = "UsageError";
}

const PRINTABLE_ASCII = /^[\x20-\x7e]+$/;

function checkUrl(name: string, value: string): string {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw new UsageError(`${name} must be a ws:// or wss:// URL: got ${JSON.stringify(value)}`);
  }
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new UsageError(`${name} must be a ws:// or wss:// URL: got ${JSON.stringify(value)}`);
  }
  return u.href;
}

/**
 * Parses `argv` (without the program name). `env` supplies defaults for the
 * uid (`USER`) and key (`MLES_KEY`). Guarantees a ws/wss URL, and a uid and
 * channel the server accepts (non-empty ASCII; printable, so they can be shown).
 * Returns null for `--help`.
 * @throws {UsageError} naming the offending flag and value.
 */
export function parseCli(
  argv: string[],
  env: Record<string, string | undefined> = {},
): CliOptions | null {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        uid: { type: "string" },
        channel: { type: "string" },
        key: { type: "string" },
        raw: { type: "boolean", default: false },
        proxy: { type: "string" },
        "proxy-key": { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const v = parsed.values;
  if (v.help) return null;
  if (parsed.positionals.length !== 1) {
    throw new UsageError(`Expected one server URL: got ${parsed.positionals.length}`);
  }
  const url = checkUrl("The server URL", parsed.positionals[0]);
  const proxy = v.proxy === undefined ? undefined : checkUrl("--proxy", v.proxy);
  if (proxy !== undefined && v.raw) throw new UsageError("--raw applies to interactive mode only");
  if (proxy === undefined && v["proxy-key"] !== undefined) {
    throw new UsageError("--proxy-key needs --proxy");
  }
  const user = env.USER !== undefined && PRINTABLE_ASCII.test(env.USER) ? env.USER : "anonymous";
  const uid = v.uid ?? (proxy !== undefined ? `mles-proxy-${randomHex(4)}` : user);
  const channel = v.channel ?? "mles";
  for (const [name, value] of [["--uid", uid], ["--channel", channel]]) {
    if (!PRINTABLE_ASCII.test(value)) {
      throw new UsageError(
        `${name} must be non-empty printable ASCII: got ${JSON.stringify(value)}`,
      );
    }
  }
  const key = v.key ?? env.MLES_KEY;
  return {
    url,
    uid,
    channel,
    key,
    raw: v.raw,
    proxy,
    proxyKey: v["proxy-key"] ?? key,
  };
}

function randomHex(bytes: number): string {
  return [...crypto.getRandomValues(new Uint8Array(bytes))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- frames ---------------------------------------------------------------

/**
 * The first frame for `uid` in `channel`: JSON `{uid, channel, auth}` with
 * auth = {@link mlesAuth}(uid, channel, key). Always carries auth, as
 * mles-client does; a keyless server accepts it since it matches.
 */
export function headerText(uid: string, channel: string, key: string | undefined): string {
  return JSON.stringify({ uid, channel, auth: mlesAuth(uid, channel, key) });
}

/** The frame a stdin line becomes: `{"uid","text"}` JSON, or the line itself with `raw`. */
export function lineToFrame(uid: string, line: string, raw: boolean): Frame {
  return { kind: "text", data: raw ? line : JSON.stringify({ uid, text: line }) };
}

// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;

/** Control characters except tab and newline, escaped as `\uXXXX`. */
function printable(s: string): string {
  return s.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/**
 * One line of terminal output for a received frame: `<uid> joined` for a
 * JSON header (string uid and channel, no text), `<uid>: <text>` for JSON
 * with string uid and text, `[binary N bytes]` for binary, any other text as
 * it is. Control characters other than tab and newline come out escaped.
 */
export function formatFrame(frame: Frame): string {
  if (frame.kind === "binary") return `[binary ${frame.data.length} bytes]`;
  let msg: unknown;
  try {
    msg = JSON.parse(frame.data);
  } catch {
    return printable(frame.data);
  }
  if (msg !== null && typeof msg === "object" && !Array.isArray(msg)) {
    const m = msg as Record<string, unknown>;
    if (typeof m.uid === "string" && typeof m.text === "string") {
      return printable(`${m.uid}: ${m.text}`);
    }
    if (typeof m.uid === "string" && typeof m.channel === "string" && !("text" in m)) {
      return printable(`${m.uid} joined`);
    }
  }
  return printable(frame.data);
}

// ---- interactive mode -----------------------------------------------------

/**
 * Hides the history a server replays after a reconnect (SPEC 6: clients
 * SHOULD drop duplicate frames). Every frame shown or sent is remembered;
 * after {@link ReplayFilter.reconnected}, remembered frames are hidden until
 * the first new one or until `windowMs` has passed, whichever comes first.
 * Outside that window nothing is hidden, so a message that merely repeats an
 * earlier one is still shown. Exported for tests.
 */
export class ReplayFilter {
  readonly #known = new Dedupe();
  readonly #windowMs: number;
  #replayUntil = 0;

  constructor(windowMs = 3000) {
    this.#windowMs = windowMs;
  }

  /** Records a frame this client sent (or its header): the server may replay it. */
  remember(frame: Frame): void {
    this.#known.firstSight(frame.kind, frame.data);
  }

  /** A new connection has opened: its first frames may be a replay. */
  reconnected(now = Date.now()): void {
    this.#replayUntil = now + this.#windowMs;
  }

  /** True if `frame` should be shown; records it either way. */
  accept(frame: Frame, now = Date.now()): boolean {
    const known = !this.#known.firstSight(frame.kind, frame.data);
    if (known && now < this.#replayUntil) return false;
    this.#replayUntil = 0;
    return true;
  }
}

async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    const lines = rest.split("\n");
    rest = lines.pop()!;
    for (const l of lines) yield l.replace(/\r$/, "");
  }
  if (rest) yield rest;
}

function describeClose(e: Extract<LinkEvent, { type: "closed" | "failed" }>): string {
  const why = e.type === "closed" && e.reason ? ` ${JSON.stringify(e.reason)}` : "";
  const what = e.type === "closed" && e.opened ? `closed (${e.code}${why})` : "cannot connect";
  return `${what}; reconnecting in ${(e.retryInMs / 1000).toFixed(1)} s`;
}

/** Resolves on the first SIGINT or SIGTERM. */
function signalled(): Promise<string> {
  const { promise, resolve } = Promise.withResolvers<string>();
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    try {
      Deno.addSignalListener(sig, () => resolve(sig));
    } catch { /* SIGTERM cannot be listened to on Windows */ }
  }
  return promise;
}

function logLine(line: string): void {
  console.error(`mles-client: ${line}`);
}

async function interactive(o: CliOptions): Promise<number> {
  const header = headerText(o.uid, o.channel, o.key);
  const replay = new ReplayFilter();
  replay.remember({ kind: "text", data: header });
  let opens = 0;
  const link = new Link({
    url: o.url,
    header,
    onFrame: (f) => {
      if (replay.accept(f)) console.log(formatFrame(f));
    },
    onEvent: (e) => {
      if (e.type === "open") {
        if (opens++ > 0) replay.reconnected();
        logLine(`connected to ${o.url} as ${o.uid} in ${o.channel}`);
      } else if (e.type === "closed" || e.type === "failed") logLine(describeClose(e));
    },
  });
  link.start();
  const input = (async () => {
    for await (const line of readLines(Deno.stdin.readable)) {
      if (line === "") continue;
      const f = lineToFrame(o.uid, line, o.raw);
      replay.remember(f);
      link.send(f);
    }
    return "eof";
  })();
  const why = await Promise.race([input, signalled()]);
  if (why === "eof" && !await link.flushed(5000)) logLine("could not send everything before exit");
  await link.close();
  return why === "eof" ? 0 : 130;
}

// ---- proxy mode -----------------------------------------------------------

/** The two servers of a proxy: `a` is the main URL, `b` the `--proxy` one. */
export type Side = "a" | "b";

/** Proxy counters. */
export interface ProxyStats {
  /** Frames received from a and forwarded to b. */
  aToB: number;
  /** Frames received from b and forwarded to a. */
  bToA: number;
  /** Frames dropped because the window had seen them (or they were our own headers). */
  duplicates: number;
}

/**
 * The proxy's forwarding decision, without sockets. Every frame received on
 * either side passes one shared {@link Dedupe}: the first time a frame (type
 * + bytes) is seen it goes to the other side, later copies are dropped. This
 * is what stops loops when the servers are also connected some other way (a
 * second proxy, server peering): a frame comes back as a duplicate and stops.
 * The proxy's own header texts are always dropped (servers replay them in
 * history after a reconnect). Exported for tests.
 */
export class ProxyCore {
  readonly stats: ProxyStats = { aToB: 0, bToA: 0, duplicates: 0 };
  readonly #window: Dedupe;
  readonly #own: Set<string>;

  constructor(window: Dedupe = new Dedupe(), ownHeaders: string[] = []) {
    this.#window = window;
    this.#own = new Set(ownHeaders);
  }

  /** The side to forward `frame` (received from `from`) to, or null to drop it. Counts either way. */
  route(from: Side, frame: Frame): Side | null {
    if (
      (frame.kind === "text" && this.#own.has(frame.data)) ||
      !this.#window.firstSight(frame.kind, frame.data)
    ) {
      this.stats.duplicates++;
      return null;
    }
    if (from === "a") this.stats.aToB++;
    else this.stats.bToA++;
    return from === "a" ? "b" : "a";
  }
}

/** Options for {@link startProxy}. */
export interface ProxyOptions {
  a: string;
  b: string;
  uid: string;
  channel: string;
  keyA?: string;
  keyB?: string;
  backoff?: BackoffOptions;
  onEvent?: (side: Side, event: LinkEvent) => void;
}

/** A running proxy. */
export interface Proxy extends AsyncDisposable {
  /** Live counters, plus frames dropped from a full outbox while a side was down. */
  readonly stats: Readonly<ProxyStats> & { readonly lost: number };
  /** Resolves once both sides have opened and sent their header at least once. */
  readonly opened: Promise<void>;
  /** Stops both links and waits for their sockets to close. */
  close(): Promise<void>;
}

/**
 * Joins `channel` on servers a and b as `uid` and forwards frames both ways
 * through a {@link ProxyCore}. Each side reconnects on its own; frames for a
 * side that is down wait in its bounded outbox. On (re)connect a server
 * replays its history: frames the window has not seen are forwarded (this
 * resynchronizes the other server, SPEC 6), the rest are dropped.
 */
export function startProxy(o: ProxyOptions): Proxy {
  const headers = {
    a: headerText(o.uid, o.channel, o.keyA),
    b: headerText(o.uid, o.channel, o.keyB),
  };
  const core = new ProxyCore(new Dedupe(), [headers.a, headers.b]);
  const opened = { a: Promise.withResolvers<void>(), b: Promise.withResolvers<void>() };
  const links = {} as Record<Side, Link>;
  for (const side of ["a", "b"] as const) {
    links[side] = new Link({
      url: o[side],
      header: headers[side],
      backoff: o.backoff,
      onFrame: (f) => {
        const to = core.route(side, f);
        if (to) links[to].send(f);
      },
      onEvent: (e) => {
        if (e.type === "open") opened[side].resolve();
        o.onEvent?.(side, e);
      },
    });
  }
  links.a.start();
  links.b.start();
  let closing: Promise<void> | undefined;
  const close = () => closing ??= Promise.all([links.a.close(), links.b.close()]).then(() => {});
  const stats = {
    get aToB() {
      return core.stats.aToB;
    },
    get bToA() {
      return core.stats.bToA;
    },
    get duplicates() {
      return core.stats.duplicates;
    },
    get lost() {
      return links.a.lost + links.b.lost;
    },
  };
  return {
    stats,
    opened: Promise.all([opened.a.promise, opened.b.promise]).then(() => {}),
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** The counters as one line, e.g. `forwarded a->b 2, b->a 1, dropped duplicates 0`. */
export function formatStats(s: Readonly<ProxyStats> & { readonly lost?: number }): string {
  const lost = s.lost ? `, lost while down ${s.lost}` : "";
  return `forwarded a->b ${s.aToB}, b->a ${s.bToA}, dropped duplicates ${s.duplicates}${lost}`;
}

async function proxyMode(o: CliOptions): Promise<number> {
  const tty = Deno.stderr.isTerminal();
  const clear = tty ? "\r\x1b[K" : "";
  const write = (s: string) => Deno.stderr.writeSync(new TextEncoder().encode(s));
  const proxy = startProxy({
    a: o.url,
    b: o.proxy!,
    uid: o.uid,
    channel: o.channel,
    keyA: o.key,
    keyB: o.proxyKey,
    onEvent: (side, e) => {
      const url = side === "a" ? o.url : o.proxy!;
      if (e.type === "open") {
        write(`${clear}mles-client: ${side}: connected to ${url} as ${o.uid}\n`);
      }
      if (e.type === "closed" || e.type === "failed") {
        write(`${clear}mles-client: ${side}: ${describeClose(e)}\n`);
      }
    },
  });
  const ticker = tty ? setInterval(() => write(`${clear}${formatStats(proxy.stats)}`), 1000) : 0;
  const sig = await signalled();
  clearInterval(ticker);
  await proxy.close();
  write(`${clear}mles-client: ${sig}: ${formatStats(proxy.stats)}\n`);
  return 0;
}

// ---- entry ----------------------------------------------------------------

function env(): Record<string, string | undefined> {
  try {
    return { USER: Deno.env.get("USER"), MLES_KEY: Deno.env.get("MLES_KEY") };
  } catch {
    return {}; // no --allow-env: no defaults from the environment
  }
}

/** Runs the client with `argv`; resolves with the exit code (2 for a usage error). */
export async function main(argv: string[]): Promise<number> {
  let o: CliOptions | null;
  try {
    o = parseCli(argv, env());
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`mles-client: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (o === null) {
    console.log(USAGE);
    return 0;
  }
  return o.proxy !== undefined ? await proxyMode(o) : await interactive(o);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
