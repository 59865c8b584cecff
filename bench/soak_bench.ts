/**
 * @module
 * `deno task bench:soak`: the adversary soak of issue 12. A real server
 * process started as users start it (`deno task start`: defaults, a fresh
 * KV file), two members chatting on `chat` (20 frames/s each way, each
 * frame stamped with a sequence and its send time), and beside them an
 * adversary mix from 127.0.0.1, run in a separate process (so the chat's
 * own event loop only carries the chat):
 * - flood: a publisher sending 4 KiB frames as fast as its socket takes
 *   them on its own channel, with two subscribers reading as fast as they can;
 * - nonreaders: raw TCP members that stop reading after the upgrade (half in
 *   `chat`, half in the flood channel), writing an empty PONG every 2 s (so
 *   keepalive never drops them) and joining again when the server cut them off;
 * - silent: sockets that upgrade and never send a header (opened again when
 *   the server closes them);
 * - big: sockets whose first frame announces 60 MiB (opened again when closed);
 * - joinspam: joins of new channels, four at a time, as fast as they complete.
 *
 * Figures: the chat's p99 latency in each phase as a ratio to the quiet run
 * of the same chat in the same process (median and min-max over repeats or
 * 10 s windows), frames lost / duplicated / reordered, the server's VmRSS at
 * start, peak and after the adversaries left, whether it is alive at the end;
 * and the fairness figure: the chat's p99 while only the flood runs, against
 * the quiet chat (issue 12 targets: mix within 3x, flood alone within 2x, RSS
 * after within 20 % of start). Two reference figures beside them: the same
 * flood aimed at another server process on this machine (what the shared
 * cores alone cost the chat), and RSS after a 5 s warm-up mix (the start
 * with one-time costs paid: compiled code, buffer pools, KV caches).
 *
 * Per-address limits stay at their defaults (1,024 sockets, 600 joins a
 * minute, 600 new channels an hour): the mix holds about 110 sockets from
 * 127.0.0.1 at a time, so none needs raising. The join budget is one
 * address's: once join spam has spent it, the adversaries' own joins are
 * refused too (1008), as they would be for a real attacker on one address.
 *
 *   deno task bench:soak [--seconds 60] [--repeats 3] [--alone] [--only flood,...]
 *
 * `--alone` adds one run per adversary kind, each on a fresh server, to say
 * which adversary costs what. The file also exports the pieces that
 * tests/soak_adversary_test.ts runs for about 15 s.
 */
import { parseArgs } from "node:util";
import {
  allReady,
  clientTextFrame,
  header,
  TestClient,
  upgradeRequest,
} from "../tests/_helpers.ts";

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const REPO = new URL("..", import.meta.url).pathname;

/** The adversary kinds, in the order they start. */
export const KINDS = [
  "flood",
  "nonreaders",
  "silent",
  "big",
  "joinspam",
] as const;
/** One adversary kind. */
export type Kind = typeof KINDS[number];

/** How many of each adversary run at once. */
export interface MixOptions {
  /** Raw members that never read (half in `chat`, half in the flood channel). */
  nonreaders: number;
  /** Sockets that upgrade and never send a header. */
  silent: number;
  /** Sockets whose first frame announces 60 MiB. */
  big: number;
  /** Join-spam loops running at once. */
  joinspam: number;
}

/** The default mix: about 110 sockets from one address at a time. */
export const DEFAULT_MIX: MixOptions = {
  nonreaders: 16,
  silent: 64,
  big: 16,
  joinspam: 4,
};

// ---------------------------------------------------------------------------
// The server process

/** A server started with `deno task start`. */
export interface MlesProcess {
  readonly port: number;
  readonly wsUrl: string;
  /** The pid of the `deno run ... start.ts` process (the task runner's child). */
  readonly pid: number;
  /** Its stderr lines so far. */
  readonly log: string[];
  /** The process still runs (not exited, not a zombie). */
  alive(): boolean;
  /** VmRSS of the server process in bytes (NaN once gone). */
  rss(): number;
  /** SIGTERM to the server process, then waits for the task to end. */
  stop(): Promise<void>;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Child pids of `pid` (every thread's children). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
      const text = Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/children`)
        .trim();
      if (text) out.push(...text.split(/\s+/).map(Number));
    }
  } catch { /* gone */ }
  return out;
}

/** The first descendant of `pid` whose command line runs start.ts. */
function findServerPid(pid: number): number | undefined {
  const todo = [pid];
  while (todo.length > 0) {
    const p = todo.shift()!;
    try {
      const cmd = Deno.readTextFileSync(`/proc/${p}/cmdline`).split("\0");
      if (p !== pid && cmd.some((a) => a.endsWith("start.ts"))) return p;
    } catch { /* gone */ }
    todo.push(...childrenOf(p));
  }
  return undefined;
}

/** VmRSS of `pid` in bytes, NaN if it is gone. */
export function rssOf(pid: number): number {
  try {
    const m = Deno.readTextFileSync(`/proc/${pid}/status`).match(
      /VmRSS:\s+(\d+) kB/,
    );
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

function aliveOf(pid: number): boolean {
  try {
    const m = Deno.readTextFileSync(`/proc/${pid}/status`).match(
      /State:\s+(\S)/,
    );
    return m !== null && m[1] !== "Z" && m[1] !== "X";
  } catch {
    return false;
  }
}

/**
 * Starts `deno task --quiet start` in the repository with a fresh KV file
 * (removed on stop) and `env` over the defaults; resolves once it listens.
 */
export async function startMles(
  env: Record<string, string> = {},
): Promise<MlesProcess> {
  const dir = await Deno.makeTempDir({ prefix: "mles-soak-" });
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "start"],
    cwd: REPO,
    env: {
      PORT: String(port),
      MLES_KV: `${dir}/kv.sqlite3`,
      NO_COLOR: "1",
      ...env,
    },
    stdin: "null",
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
        if (log.length < 10_000) log.push(l);
        if (l.includes("listening on")) listening.resolve();
      }
    }
    listening.reject(new Error(`server on ${port} ended: ${log.join("\n")}`));
  })();
  const timer = setTimeout(
    () => listening.reject(new Error("not listening within 30 s")),
    30_000,
  );
  try {
    await listening.promise;
  } catch (err) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await child.status;
    throw err;
  } finally {
    clearTimeout(timer);
  }
  const pid = findServerPid(child.pid);
  if (pid === undefined) {
    throw new Error(`no start.ts process under pid ${child.pid}`);
  }
  let stopped: Promise<void> | undefined;
  return {
    port,
    wsUrl: `ws://127.0.0.1:${port}/`,
    pid,
    log,
    alive: () => aliveOf(pid),
    rss: () => rssOf(pid),
    stop: () =>
      stopped ??= (async () => {
        for (const p of [pid, child.pid]) {
          try {
            Deno.kill(p, "SIGTERM");
          } catch { /* already gone */ }
        }
        const t = setTimeout(() => {
          try {
            Deno.kill(pid, "SIGKILL");
          } catch { /* gone */ }
        }, 10_000);
        await child.status;
        clearTimeout(t);
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      })(),
  };
}

// ---------------------------------------------------------------------------
// The chat

/** What one direction of the chat saw. */
export interface ChatCounts {
  sent: number;
  received: number;
  duplicated: number;
  reordered: number;
  /** Sent but never received (counted at the end, after a drain). */
  lost: number;
}

/** One direction of the chat: what one member sent and the other received. */
interface Direction {
  sent: number;
  seen: Set<number>;
  max: number;
  received: number;
  duplicated: number;
  reordered: number;
}

/**
 * Two members on one channel, each sending `rate` frames a second to the
 * other (`seq|sendTime|padding`, 100 bytes). Latencies are kept per phase
 * label; {@link Chat.phase} switches the label.
 */
export class Chat {
  readonly #a: TestClient;
  readonly #b: TestClient;
  readonly #timers: ReturnType<typeof setInterval>[] = [];
  readonly #lat = new Map<string, number[]>();
  #label = "warmup";
  readonly #dirs: Direction[] = [0, 1].map(() => ({
    sent: 0,
    seen: new Set<number>(),
    max: -1,
    received: 0,
    duplicated: 0,
    reordered: 0,
  }));
  #stopped: Promise<ChatCounts> | undefined;
  /** Close codes if a chat member was closed (never, if all goes well). */
  readonly closes: string[] = [];

  private constructor(a: TestClient, b: TestClient) {
    this.#a = a;
    this.#b = b;
  }

  /** Joins both members of `channel` and waits until each has heard the other. */
  static async open(wsUrl: string, channel = "chat"): Promise<Chat> {
    const a = await TestClient.open(wsUrl, header("alice", channel));
    const b = await TestClient.open(wsUrl, header("bob", channel));
    await allReady([a, b], ["alice", "bob"]);
    return new Chat(a, b);
  }

  /** Starts sending and receiving. */
  start(rate = 20): void {
    const pad = "x".repeat(100);
    const members = [this.#a, this.#b];
    members.forEach((m, i) => {
      const dir = this.#dirs[i]; // frames sent by member i
      this.#timers.push(setInterval(() => {
        if (m.ws.readyState !== WebSocket.OPEN) return;
        m.send(
          `${dir.sent++}|${performance.now().toFixed(3)}|${pad}`.slice(0, 100),
        );
      }, 1000 / rate));
      const other = members[1 - i];
      other.closed.then((c) => this.closes.push(`${i === 0 ? "bob" : "alice"}: ${c.code}`));
      this.#receive(other, dir);
    });
  }

  async #receive(c: TestClient, dir: Direction): Promise<void> {
    for (;;) {
      let f;
      try {
        f = await c.next(3_600_000);
      } catch {
        return; // closed
      }
      if (typeof f !== "string" || !/^\d+\|/.test(f)) continue; // headers, ready frames
      const [seqText, sentText] = f.split("|");
      const seq = Number(seqText);
      const lat = performance.now() - Number(sentText);
      if (dir.seen.has(seq)) {
        dir.duplicated++;
        continue;
      }
      dir.seen.add(seq);
      dir.received++;
      if (seq < dir.max) dir.reordered++;
      dir.max = Math.max(dir.max, seq);
      let l = this.#lat.get(this.#label);
      if (!l) this.#lat.set(this.#label, l = []);
      l.push(lat);
    }
  }

  /** Latencies from now on count under `label`. */
  phase(label: string): void {
    this.#label = label;
  }

  /** The latencies (ms) received under `label`. */
  latencies(label: string): number[] {
    return this.#lat.get(label) ?? [];
  }

  /** Stops sending, waits up to `drainMs` for what is in flight, and counts. */
  stop(drainMs = 5000): Promise<ChatCounts> {
    return this.#stopped ??= this.#stop(drainMs);
  }

  async #stop(drainMs: number): Promise<ChatCounts> {
    for (const t of this.#timers) clearInterval(t);
    const deadline = Date.now() + drainMs;
    while (
      Date.now() < deadline && this.#dirs.some((d) => d.received < d.sent)
    ) {
      await sleep(20);
    }
    const counts = {
      sent: 0,
      received: 0,
      duplicated: 0,
      reordered: 0,
      lost: 0,
    };
    for (const d of this.#dirs) {
      counts.sent += d.sent;
      counts.received += d.received;
      counts.duplicated += d.duplicated;
      counts.reordered += d.reordered;
      for (let s = 0; s < d.sent; s++) if (!d.seen.has(s)) counts.lost++;
    }
    await Promise.all([this.#a.close(), this.#b.close()]);
    return counts;
  }
}

/** The `p`-th percentile (0..100) of `xs`, NaN if empty. */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

// ---------------------------------------------------------------------------
// The adversaries (run in their own process: `--role adversary`)

/** What the adversary process reports when it ends. */
export interface AdversaryReport {
  kinds: Kind[];
  floodFramesSent: number;
  floodFramesRead: number;
  floodJoins: number;
  nonreaderJoins: number;
  silentOpened: number;
  bigOpened: number;
  joinsTried: number;
  /** Close codes (or "refused" / "reset") seen, per kind. */
  closes: Record<string, Record<string, number>>;
}

async function runAdversaries(
  port: number,
  kinds: Kind[],
  seconds: number,
  mix: MixOptions,
): Promise<AdversaryReport> {
  const wsUrl = `ws://127.0.0.1:${port}/`;
  const end = performance.now() + seconds * 1000;
  const running = () => performance.now() < end;
  const report: AdversaryReport = {
    kinds,
    floodFramesSent: 0,
    floodFramesRead: 0,
    floodJoins: 0,
    nonreaderJoins: 0,
    silentOpened: 0,
    bigOpened: 0,
    joinsTried: 0,
    closes: {},
  };
  const closed = (kind: string, what: string | number) => {
    const k = report.closes[kind] ??= {};
    k[String(what)] = (k[String(what)] ?? 0) + 1;
  };
  const conns = new Set<Deno.Conn>();
  const tag = `${Deno.pid}`;
  const tasks: Promise<void>[] = [];

  /** Opens a raw upgrade and reads the 101; undefined (counted) if refused. */
  const rawOpen = async (kind: string): Promise<Deno.Conn | undefined> => {
    let conn: Deno.Conn;
    try {
      conn = await Deno.connect({ hostname: "127.0.0.1", port });
    } catch {
      closed(kind, "connect-failed");
      await sleep(100);
      return undefined;
    }
    try {
      await conn.write(upgradeRequest(port));
      const buf = new Uint8Array(1024);
      const n = await conn.read(buf);
      if (
        n === null ||
        !new TextDecoder().decode(buf.subarray(0, n)).includes(" 101 ")
      ) {
        throw new Error("refused");
      }
      conns.add(conn);
      return conn;
    } catch {
      closed(kind, "refused");
      try {
        conn.close();
      } catch { /* closed */ }
      await sleep(100);
      return undefined;
    }
  };
  const drop = (conn: Deno.Conn) => {
    conns.delete(conn);
    try {
      conn.close();
    } catch { /* closed */ }
  };
  /** Reads until EOF or the end of the run; "eof" if the server ended it. */
  const readToEnd = async (conn: Deno.Conn): Promise<"eof" | "stopped"> => {
    const buf = new Uint8Array(16 * 1024);
    const stop = sleep(Math.max(0, end - performance.now())).then(() => "stopped" as const);
    for (;;) {
      const r = await Promise.race([conn.read(buf).catch(() => null), stop]);
      if (r === "stopped") return r;
      if (r === null) return "eof";
    }
  };

  if (kinds.includes("flood")) {
    const channel = `flood-${tag}`;
    const chunk = new Uint8Array(Number(Deno.env.get("SOAK_FLOOD_BYTES") ?? 4096));
    const subscriber = async (i: number) => {
      while (running()) {
        let c: TestClient;
        try {
          c = await TestClient.open(wsUrl, header(`sub${i}`, channel));
        } catch {
          closed("flood-sub", "refused");
          await sleep(500);
          continue;
        }
        for (;;) {
          try {
            await c.next(Math.max(1, end - performance.now()));
            report.floodFramesRead++;
          } catch {
            break;
          }
        }
        if (c.ws.readyState !== WebSocket.OPEN) {
          closed("flood-sub", (await c.closed).code);
        }
        await c.close();
      }
    };
    const flooder = async () => {
      await sleep(200); // subscribers first
      while (running()) {
        let c: TestClient;
        try {
          c = await TestClient.open(wsUrl, header("flooder", channel));
          report.floodJoins++;
        } catch {
          closed("flood", "refused");
          await sleep(500);
          continue;
        }
        while (running() && c.ws.readyState === WebSocket.OPEN) {
          while (
            c.ws.bufferedAmount < MiB && running() &&
            c.ws.readyState === WebSocket.OPEN
          ) {
            chunk[0] = report.floodFramesSent & 0xff;
            c.ws.send(chunk);
            report.floodFramesSent++;
          }
          await sleep(1);
        }
        if (c.ws.readyState !== WebSocket.OPEN) {
          const cl = await c.closed;
          closed("flood", `${cl.code} ${cl.reason.slice(0, 24)}`);
          await sleep(500); // a flooder reconnects, but not in a hot loop
        }
        await c.close();
      }
    };
    tasks.push(subscriber(0), subscriber(1), flooder());
  }

  if (kinds.includes("nonreaders")) {
    const nonreader = async (i: number) => {
      const channel = i % 2 === 0 ? "chat" : `flood-${tag}`;
      let gen = 0;
      while (running()) {
        const conn = await rawOpen("nonreaders");
        if (!conn) continue;
        await conn.write(
          clientTextFrame(JSON.stringify(header(`nr${i}-${gen++}`, channel))),
        );
        report.nonreaderJoins++;
        const pong = new Uint8Array([0x8a, 0x80, 0, 0, 0, 0]); // empty masked PONG
        let cut = false;
        while (running() && !cut) {
          await sleep(2000);
          try {
            await conn.write(pong);
          } catch {
            cut = true; // the server tore it down
          }
        }
        if (cut) closed("nonreaders", "reset");
        drop(conn);
      }
    };
    for (let i = 0; i < mix.nonreaders; i++) tasks.push(nonreader(i));
  }

  if (kinds.includes("silent")) {
    const silent = async () => {
      while (running()) {
        const conn = await rawOpen("silent");
        if (!conn) continue;
        report.silentOpened++;
        if (await readToEnd(conn) === "eof") closed("silent", "eof");
        drop(conn);
      }
    };
    for (let i = 0; i < mix.silent; i++) tasks.push(silent());
  }

  if (kinds.includes("big")) {
    const big = async () => {
      while (running()) {
        const conn = await rawOpen("big");
        if (!conn) continue;
        report.bigOpened++;
        const head = new Uint8Array(14);
        head[0] = 0x82;
        head[1] = 0x80 | 127;
        new DataView(head.buffer).setBigUint64(2, BigInt(60 * MiB));
        try {
          await conn.write(head);
          const part = new Uint8Array(64 * 1024);
          for (let sent = 0; sent < 4 * MiB && running(); sent += part.length) {
            await conn.write(part);
          }
        } catch { /* refused mid-frame: expected */ }
        if (await readToEnd(conn) === "eof") closed("big", "eof");
        drop(conn);
      }
    };
    for (let i = 0; i < mix.big; i++) tasks.push(big());
  }

  if (kinds.includes("joinspam")) {
    let n = 0;
    const spam = async () => {
      while (running()) {
        const i = n++;
        report.joinsTried++;
        const ws = new WebSocket(wsUrl, "mles-websocket");
        const done = Promise.withResolvers<void>();
        ws.onopen = () => {
          ws.send(JSON.stringify(header(`spam${i}`, `spam-${tag}-${i}`)));
          setTimeout(() => ws.close(), 20);
        };
        ws.onclose = (ev) => {
          closed("joinspam", `${ev.code} ${ev.reason.slice(0, 24)}`);
          done.resolve();
        };
        ws.onerror = () => {};
        const t = setTimeout(() => ws.close(), 5000);
        await done.promise;
        clearTimeout(t);
      }
    };
    for (let i = 0; i < mix.joinspam; i++) tasks.push(spam());
  }

  console.log(JSON.stringify({ event: "start" }));
  await Promise.all(tasks);
  for (const c of conns) drop(c);
  return report;
}

/** A running adversary process. */
export interface Adversaries {
  /** Resolves once its loops have started. */
  readonly started: Promise<void>;
  /** Resolves with its report once it has closed everything and exited. */
  readonly done: Promise<AdversaryReport>;
}

/** Runs `kinds` against `port` for `seconds` in a child process. */
export function spawnAdversaries(
  port: number,
  kinds: readonly Kind[],
  seconds: number,
  mix: MixOptions = DEFAULT_MIX,
): Adversaries {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--config",
      `${REPO}deno.json`,
      new URL(import.meta.url).pathname,
      "--role",
      "adversary",
      "--port",
      String(port),
      "--kinds",
      kinds.join(","),
      "--seconds",
      String(seconds),
      "--mix",
      JSON.stringify(mix),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const started = Promise.withResolvers<void>();
  const done = (async () => {
    let report: AdversaryReport | undefined;
    let rest = "";
    for await (
      const chunk of child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      rest += chunk;
      const lines = rest.split("\n");
      rest = lines.pop()!;
      for (const l of lines) {
        const msg = JSON.parse(l);
        if (msg.event === "start") started.resolve();
        if (msg.event === "report") report = msg.report;
      }
    }
    const status = await child.status;
    started.resolve();
    if (!report) {
      throw new Error(
        `adversary process ended (${status.code}) without a report`,
      );
    }
    return report;
  })();
  return { started: started.promise, done };
}

// ---------------------------------------------------------------------------
// The bench

const fmtMiB = (n: number) => `${(n / MiB).toFixed(0)} MiB`;
const fmtRatio = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const med = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  return s.length > 1
    ? `${med.toFixed(2)}x (min ${s[0].toFixed(2)}, max ${
      s[s.length - 1].toFixed(2)
    }, n=${s.length})`
    : `${med.toFixed(2)}x`;
};

/** Lowest VmRSS over `ms`, sampled every 250 ms: freed pages return lazily. */
async function lowRss(p: MlesProcess, ms: number): Promise<number> {
  let low = Infinity;
  for (const end = Date.now() + ms; Date.now() < end;) {
    low = Math.min(low, p.rss());
    await sleep(250);
  }
  return low;
}

interface RunResult {
  quietP99: number[];
  /** The same flood against another server process: what the machine alone costs the chat. */
  calibRatios: number[];
  floodRatios: number[];
  mixRatios: number[];
  rssStart: number;
  /** After a 5 s warm-up mix and 15 s of settling (one-time costs paid: code, pools, caches). */
  rssWarm: number;
  rssPeak: number;
  rssAfter: number;
  counts: ChatCounts;
  alive: boolean;
  reports: AdversaryReport[];
  chatCloses: string[];
}

/**
 * One server: `repeats` x (quiet, flood alone), then quiet, the adversary
 * mix for `seconds` (p99 per 10 s window), the adversaries leave, quiet
 * again. Ratios are each phase's chat p99 over the median quiet p99.
 */
async function benchRun(
  kinds: readonly Kind[],
  seconds: number,
  repeats: number,
  quietS: number,
): Promise<RunResult> {
  const p = await startMles();
  const chat = await Chat.open(p.wsUrl);
  chat.start(20);
  try {
    await sleep(2000);
    const rssStart = await lowRss(p, 2000);
    const reports: AdversaryReport[] = [];
    const quietLabels: string[] = [];
    const quiet = async (label: string) => {
      chat.phase(label);
      quietLabels.push(label);
      await sleep(quietS * 1000);
    };
    const floodLabels: string[] = [];
    const calibLabels: string[] = [];
    const other = repeats > 0 ? await startMles() : undefined;
    try {
      for (let r = 0; r < repeats; r++) {
        await quiet(`quiet${r}`);
        // Calibration: the same flood against another server process on this machine.
        const calib = spawnAdversaries(other!.port, ["flood"], quietS);
        await calib.started;
        chat.phase(`calib${r}`);
        calibLabels.push(`calib${r}`);
        await calib.done;
        chat.phase("between");
        await sleep(1000);
        const adv = spawnAdversaries(p.port, ["flood"], quietS);
        await adv.started;
        chat.phase(`flood${r}`);
        floodLabels.push(`flood${r}`);
        reports.push(await adv.done);
        chat.phase("between");
        await sleep(1000);
      }
    } finally {
      await other?.stop();
    }
    // Warm-up: the mix for 5 s, then settling, so that "after" can be read
    // against a start that has paid the one-time costs too.
    const warm = spawnAdversaries(p.port, kinds, 5);
    await warm.started;
    chat.phase("warmup");
    await warm.done;
    await sleep(15_000);
    const rssWarm = await lowRss(p, 2000);
    await quiet("quietBeforeMix");
    let rssPeak = p.rss();
    const sampler = setInterval(
      () => rssPeak = Math.max(rssPeak, p.rss()),
      250,
    );
    const adv = spawnAdversaries(p.port, kinds, seconds);
    await adv.started;
    const windows = Math.max(1, Math.round(seconds / 10));
    const mixLabels: string[] = [];
    const t0 = Date.now();
    for (let w = 0; w < windows; w++) {
      chat.phase(`mix${w}`);
      mixLabels.push(`mix${w}`);
      await sleep(
        Math.max(0, t0 + ((w + 1) * seconds * 1000) / windows - Date.now()),
      );
    }
    chat.phase("leaving");
    reports.push(await adv.done);
    clearInterval(sampler);
    // The server closes what the adversaries left: silent sockets within the
    // header timeout (10 s) plus 2 s for the close; then memory settles.
    await sleep(15_000);
    await quiet("quietAfter");
    const rssAfter = await lowRss(p, 5000);
    const chatCloses = [...chat.closes]; // before our own close
    const counts = await chat.stop();
    const p99 = (l: string) => percentile(chat.latencies(l), 99);
    const quietP99 = quietLabels.map(p99);
    const base = percentile(quietP99, 50);
    return {
      quietP99,
      calibRatios: calibLabels.map((l) => p99(l) / base),
      floodRatios: floodLabels.map((l) => p99(l) / base),
      mixRatios: mixLabels.map((l) => p99(l) / base),
      rssStart,
      rssWarm,
      rssPeak,
      rssAfter,
      counts,
      alive: p.alive(),
      reports,
      chatCloses,
    };
  } finally {
    await chat.stop(0).catch(() => {});
    await p.stop();
  }
}

function printRun(title: string, r: RunResult, seconds: number): void {
  const c = r.counts;
  const lines = [
    `${title}`,
    `  quiet chat p99: ${r.quietP99.map((x) => x.toFixed(2)).join(", ")} ms`,
    r.floodRatios.length
      ? `  flood alone (fairness, target 2x): chat p99 ratio ${fmtRatio(r.floodRatios)}`
      : `  flood alone (fairness): not run`,
    r.calibRatios.length
      ? `  calibration, the same flood against another server process: chat p99 ratio ${
        fmtRatio(r.calibRatios)
      }`
      : `  calibration: not run`,
    `  adversary mix, ${seconds} s in 10 s windows (target 3x): chat p99 ratio ${
      fmtRatio(r.mixRatios)
    }`,
    `  chat frames: sent ${c.sent}, received ${c.received}, lost ${c.lost}, duplicated ${c.duplicated}, reordered ${c.reordered}; chat members closed: ${
      r.chatCloses.length ? r.chatCloses.join(", ") : "none"
    }`,
    `  server RSS: start ${fmtMiB(r.rssStart)}, after a 5 s warm-up ${fmtMiB(r.rssWarm)}, peak ${
      fmtMiB(r.rssPeak)
    }, after ${fmtMiB(r.rssAfter)} (${
      ((r.rssAfter / r.rssStart - 1) * 100).toFixed(0)
    } % over start, ${
      ((r.rssAfter / r.rssWarm - 1) * 100).toFixed(0)
    } % over the warmed start; target 20 %)`,
    `  server alive at the end: ${r.alive}`,
  ];
  const mix = r.reports[r.reports.length - 1];
  lines.push(
    `  adversaries: flood sent ${mix.floodFramesSent} x 4 KiB (read ${mix.floodFramesRead} by its subscribers, ${mix.floodJoins} joins), ` +
      `${mix.nonreaderJoins} non-reader joins, ${mix.silentOpened} silent sockets, ${mix.bigOpened} big first frames, ${mix.joinsTried} spam joins`,
    `  closes seen by adversaries: ${JSON.stringify(mix.closes)}`,
  );
  console.log(lines.join("\n"));
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      role: { type: "string", default: "bench" },
      port: { type: "string" },
      kinds: { type: "string" },
      seconds: { type: "string", default: "60" },
      repeats: { type: "string", default: "3" },
      quiet: { type: "string", default: "10" },
      mix: { type: "string" },
      alone: { type: "boolean", default: false },
      only: { type: "string" },
    },
  });
  const seconds = Number(values.seconds);
  if (values.role === "adversary") {
    const kinds = values.kinds!.split(",") as Kind[];
    const mix = values.mix ? JSON.parse(values.mix) as MixOptions : DEFAULT_MIX;
    const report = await runAdversaries(
      Number(values.port),
      kinds,
      seconds,
      mix,
    );
    console.log(JSON.stringify({ event: "report", report }));
    Deno.exit(0);
  }
  const repeats = Number(values.repeats);
  const quietS = Number(values.quiet);
  const kinds = values.only ? values.only.split(",") as Kind[] : [...KINDS];
  console.log(
    `bench:soak: deno task start (defaults, fresh KV), chat 20 frames/s each way; ` +
      `${repeats} x (quiet ${quietS} s, flood alone ${quietS} s), mix [${
        kinds.join(", ")
      }] ${seconds} s`,
  );
  printRun(
    `all of [${kinds.join(", ")}]`,
    await benchRun(kinds, seconds, repeats, quietS),
    seconds,
  );
  if (values.alone) {
    for (const k of kinds) {
      // No flood-alone phase first: its memory would be counted against this kind.
      printRun(`${k} alone`, await benchRun([k], seconds, 0, quietS), seconds);
    }
  }
}
