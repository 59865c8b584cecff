/**
 * @module
 * `deno task bench`: every workload on every candidate server, interleaved
 * (A B C D, A B C D, ...) for `--reps` repetitions, the server pinned to
 * core 0 (`taskset -c 0`) and the load generator to core 1. Reports the median
 * and min-max of each figure and its ratio to the Deno baseline relay; writes
 * every run and every summary as JSON lines to bench/out/, and the tables as
 * Markdown beside them. Installs the npm packages the Node and Bun candidates
 * need (bench/package-lock.json, bench/baselines/package-lock.json).
 *
 *   deno task bench [--only W1,W3] [--reps 3] [--seconds 3] [--warmup 1]
 *                   [--candidates deno-baseline,ours] [--gen deno|node] [--verbose]
 *
 * Imports: candidates, workloads, load_core (/proc helpers).
 */
import { parseArgs } from "node:util";
import { busy, coreTicks } from "./load_core.mjs";
import { errorText } from "../src/retry.ts";
import { type Candidate, candidates, installDeps, ROOT, waitReady } from "./candidates.ts";
import { type Workload, workloadCandidates, WORKLOADS } from "./workloads.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    only: { type: "string" },
    reps: { type: "string", default: "3" },
    seconds: { type: "string", default: "3" },
    warmup: { type: "string", default: "1" },
    candidates: { type: "string" },
    gen: { type: "string", default: "node" },
    settle: { type: "string", default: "3" },
    "max-seconds": { type: "string", default: "570" },
    out: { type: "string" },
    "no-install": { type: "boolean", default: false },
    verbose: { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (flags.help) {
  console.log(
    `deno task bench [--only ${WORKLOADS.map((w) => w.id).join(",")}] [--reps 3] [--seconds 3]
  [--warmup 1] [--candidates deno-baseline,node-ws,bun,ours,ours-deno,ours-unpaced,ours-memory,ours-multi]
  [--gen deno|node]
  [--settle 3] [--max-seconds 570] [--out bench/out/NAME.jsonl] [--no-install] [--verbose]
--candidates: run exactly these on every selected workload (default: each
  workload's own list; ours-memory (MLES_BUS=memory) and ours-unpaced (publish
  rates off) only on request).
--settle S: before each run wait up to S s (45 s in all) for both cores to be
  under 25% busy (the machine is shared); the load seen is recorded.
Default: every workload except ${WORKLOADS.filter((w) => w.optional).map((w) => w.id).join(", ")}.`,
  );
  Deno.exit(0);
}
const REPS = Math.max(1, Number(flags.reps));
const only = flags.only?.split(",").map((s) => s.trim().toUpperCase());
const selected = WORKLOADS.filter((w) => only ? only.includes(w.id) : !w.optional);
if (only) {
  const unknown = only.filter((id) => !WORKLOADS.some((w) => w.id === id));
  if (unknown.length) {
    console.error(
      `Unknown workload ${unknown.join(", ")}: pick from ${WORKLOADS.map((w) => w.id).join(", ")}`,
    );
    Deno.exit(2);
  }
}

const started = performance.now();
/** What is left of --settle's 45 s in all. */
let settleBudgetMs = 45_000;
const log = (s: string) => console.error(s);
const elapsed = () => `${((performance.now() - started) / 1000).toFixed(0)}s`;

/** One run's record: the generator's JSON result plus where and how it ran. */
// deno-lint-ignore no-explicit-any -- parsed JSON from the generator, read loosely
type Run = Record<string, any>;

/** The figures summarized per (workload, candidate), from one run's record. */
const FIGURES: Record<string, (r: Run) => number | undefined> = {
  deliveriesPerSecond: (r) => r.deliveriesPerSecond,
  p50: (r) => r.latencyUs?.p50 / 1000,
  p99: (r) => r.latencyUs?.p99 / 1000,
  p999: (r) => r.latencyUs?.p999 / 1000,
  serverCpu: (r) => r.serverCpu,
  generatorCpu: (r) => r.generatorCpu,
  perGenCore: (r) => r.generatorCpu ? r.deliveriesPerSecond / r.generatorCpu : undefined,
  otherBusy: (r) =>
    r.coreBusy
      ? Math.max(0, r.coreBusy[0] - (r.serverCpu ?? 0)) +
        Math.max(0, r.coreBusy[1] - (r.generatorCpu ?? 0))
      : undefined,
  rssPerConnectionKiB: (r) => r.rssPerConnectionKiB,
  rssAfterMiB: (r) => r.rssAfterKiB ? r.rssAfterKiB / 1024 : undefined,
  joinSeconds: (r) => r.joinSeconds,
  kvCommitsPerFrameIn: (r) => r.metrics?.kvCommitsPerFrameIn,
  kvReadsPerFrameOut: (r) => r.metrics?.kvReadsPerFrameOut,
  recvMeanLowMs: (r) => r.receiverMeanUs?.min / 1000,
  recvMeanHighMs: (r) => r.receiverMeanUs?.max / 1000,
  isolates: (r) => r.metrics?.isolates,
};

// --- set-up ---------------------------------------------------------------

const installErrors = flags["no-install"] ? {} : await installDeps(log);
const allCandidates = await candidates(installErrors);
if (flags.gen === "node" && !nodeGeneratorRuns()) {
  log(
    "the Node generator cannot run here (node or bench/node_modules missing): using Deno's",
  );
  flags.gen = "deno";
}
const wantCands = flags.candidates?.split(",").map((s) => s.trim());
const machine = await machineInfo();
const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
const outPath = flags.out ?? `${ROOT}/bench/out/bench-${stamp}.jsonl`;
Deno.mkdirSync(outPath.slice(0, outPath.lastIndexOf("/")), { recursive: true });
const out = await Deno.open(outPath, {
  create: true,
  write: true,
  truncate: true,
});
const writeLine = (o: unknown) => out.writeSync(new TextEncoder().encode(JSON.stringify(o) + "\n"));
const tmp = await Deno.makeTempDir({ prefix: "mles-bench-" });
writeLine({ kind: "machine", ...machine, flags });
log(
  `machine: ${machine.cpu}, ${machine.nproc} cores, kernel ${machine.kernel}`,
);
log(
  `runtimes: ${Object.entries(machine.runtimes).map(([k, v]) => `${k} ${v}`).join(", ")}`,
);
for (const c of allCandidates) {
  if (c.skip) {
    log(`skip ${c.name}: ${c.skip}`);
    writeLine({ kind: "skip", candidate: c.name, reason: c.skip });
  }
}

// --- runs -----------------------------------------------------------------

const runs: Run[] = [];
const plan: { w: Workload; c: Candidate; gen: string; rep: number }[] = [];
for (const w of selected) {
  // --candidates replaces every selected workload's own list.
  const cands = (wantCands ?? workloadCandidates(w))
    .map((n) => {
      const c = allCandidates.find((c) => c.name === n);
      if (!c) {
        throw new Error(
          `Unknown candidate ${n}: pick from ${allCandidates.map((c) => c.name).join(", ")}`,
        );
      }
      return c;
    })
    .filter((c) => !c.skip);
  const gens = w.generators ?? [flags.gen!];
  for (let rep = 1; rep <= REPS; rep++) {
    for (const c of cands) {
      for (const gen of gens) plan.push({ w, c, gen, rep });
    }
  }
}
log(`${plan.length} runs, results to ${outPath.slice(ROOT.length + 1)}`);

let n = 0;
let cut = 0;
const limitS = Number(flags["max-seconds"]);
for (const p of plan) {
  n++;
  // Stay inside the time limit: skip runs that would not finish before it.
  const same = runs.filter((r) => r.workload === p.w.id);
  const guess = same.length ? same.reduce((a, r) => a + r.runSeconds, 0) / same.length : 10;
  if ((performance.now() - started) / 1000 + guess > limitS) {
    cut++;
    continue;
  }
  const t = performance.now();
  const preBusy = await settle();
  const r: Run = { ...await runOne(p.w, p.c, p.gen, p.rep), preBusy };
  r.runSeconds = round((performance.now() - t) / 1000, 2);
  runs.push(r);
  writeLine(r);
  log(
    `[${n}/${plan.length} ${elapsed()}] ${p.w.id} ${p.c.name}${
      p.w.generators ? ` (${p.gen} gen)` : ""
    } rep ${p.rep}: ${brief(r)}`,
  );
}

// --- summary --------------------------------------------------------------

const md: string[] = [];
md.push(
  `Machine: ${machine.cpu}, ${machine.nproc} cores, kernel ${machine.kernel}; ` +
    Object.entries(machine.runtimes).map(([k, v]) => `${k} ${v}`).join(", ") +
    ".",
);
md.push(
  `Run: ${stamp}, ${REPS} reps, ${flags.seconds} s measured after ${flags.warmup} s warm-up, generator ${flags.gen}; median (min-max).`,
);
for (const w of selected) {
  const rows = summarize(w);
  if (rows.length === 0) continue;
  md.push("", `### ${w.id}: ${w.title}`, "", ...table(w, rows));
}
if (cut) {
  md.push(
    "",
    `- ${cut} of ${plan.length} runs skipped to stay within --max-seconds ${limitS}`,
  );
}
const skipped = allCandidates.filter((c) => c.skip);
if (skipped.length) {
  md.push(
    "",
    ...skipped.map((c) => `- skipped ${c.name}: ${c.skip}`),
  );
}
const mdText = md.join("\n") + "\n";
Deno.writeTextFileSync(outPath.replace(/\.jsonl$/, "") + ".md", mdText);
out.close();
await Deno.remove(tmp, { recursive: true }).catch(() => {});
console.log(mdText);
log(`done in ${elapsed()}: ${outPath.slice(ROOT.length + 1)} (+ .md)`);

// --- helpers --------------------------------------------------------------

/** Starts the candidate, runs the generator against it, stops it. */
async function runOne(
  w: Workload,
  c: Candidate,
  gen: string,
  rep: number,
): Promise<Run> {
  const port = freePort();
  const base = {
    kind: "run",
    workload: w.id,
    candidate: c.name,
    generator: gen,
    rep,
    port,
  };
  const fdLimit =
    "ulimit -Hn 65536 2>/dev/null; ulimit -n 65536 2>/dev/null || ulimit -n $(ulimit -Hn);";
  const server = new Deno.Command("setsid", {
    args: [
      "sh",
      "-c",
      `${fdLimit} exec taskset -c 0 "$@"`,
      "sh",
      ...c.cmd(port),
    ],
    cwd: ROOT,
    env: c.env(port, tmp),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const serverLog = collect(server.stdout, server.stderr);
  const t0 = performance.now();
  try {
    await Promise.race([
      waitReady(c, port, c.isolates ? 60_000 : 30_000),
      server.status.then((st) => {
        throw new Error(`${c.name} exited with ${st.code} before it was ready`);
      }),
    ]);
    const startSeconds = (performance.now() - t0) / 1000;
    const args = [
      ...w.args,
      "--url",
      `ws://127.0.0.1:${port}/`,
      "--server-pid",
      String(server.pid),
      "--label",
      `${w.id}/${c.name}`,
      "--warmup",
      String(flags.warmup),
      "--seconds",
      String(flags.seconds),
      ...(w.hosts
        ? [
          "--hosts",
          Array.from({ length: w.hosts }, (_, i) => `127.0.0.${i + 1}`).join(
            ",",
          ),
        ]
        : []),
      ...(c.metrics ? ["--metrics", c.metrics(port)] : []),
      ...(flags.verbose ? [] : ["--quiet"]),
    ];
    const genCmd = gen === "node" ? ["node", "bench/load.mjs", ...args] : [
      Deno.execPath(),
      "run",
      "-A",
      "--config",
      "deno.json",
      "bench/load.ts",
      ...args,
    ];
    const g = new Deno.Command("sh", {
      args: ["-c", `${fdLimit} exec taskset -c 1 "$@"`, "sh", ...genCmd],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: flags.verbose ? "inherit" : "piped",
    }).spawn();
    const killer = setTimeout(() => {
      try {
        g.kill("SIGKILL");
      } catch {
        // gone
      }
    }, 180_000);
    const o = await g.output();
    clearTimeout(killer);
    const stdout = new TextDecoder().decode(o.stdout).trim().split("\n");
    const last = stdout.reverse().find((l) => l.startsWith("{"));
    if (!last) {
      const err = flags.verbose
        ? ""
        : new TextDecoder().decode(o.stderr).trim().split("\n").slice(-3).join(
          " | ",
        );
      return {
        ...base,
        ok: false,
        error: `generator printed no result (exit ${o.code}) ${err}`,
      };
    }
    const result = JSON.parse(last);
    return {
      ...base,
      ...result,
      generator: gen,
      generatorRuntime: result.generator,
      startSeconds: round(startSeconds, 2),
    };
  } catch (err) {
    return {
      ...base,
      ok: false,
      error: errorText(err),
      serverLog: serverLog(),
    };
  } finally {
    await stop(server);
    c.cleanup?.(port);
  }
}

/**
 * Waits (bounded per run and in all) until both cores are mostly idle; returns
 * the last sample of their busy share.
 */
async function settle(): Promise<number[]> {
  const deadline = performance.now() +
    Math.min(settleBudgetMs, Number(flags.settle) * 1000);
  const t0 = performance.now();
  let sample: number[];
  while (true) {
    const a = coreTicks();
    await new Promise((r) => setTimeout(r, 250));
    sample = busy(a, coreTicks());
    if (sample.every((x) => x < 0.25) || performance.now() > deadline) break;
  }
  settleBudgetMs -= performance.now() - t0;
  return sample;
}

/** Whether `node bench/load.mjs` has node and its packages (installed by npm ci in bench/). */
function nodeGeneratorRuns(): boolean {
  try {
    Deno.statSync(`${ROOT}/bench/node_modules/ws/package.json`);
    Deno.statSync(`${ROOT}/bench/node_modules/hdr-histogram-js/package.json`);
    return new Deno.Command("node", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .outputSync().success;
  } catch {
    return false;
  }
}

/**
 * SIGTERM to the server's process group, SIGKILL after 1 s: the clients are
 * gone by then, and a graceful shutdown is not what is measured (mles-deno
 * may wait up to MLES_SHUTDOWN_TIMEOUT_MS for close handshakes).
 */
async function stop(p: Deno.ChildProcess): Promise<void> {
  const signal = (s: Deno.Signal) => {
    try {
      Deno.kill(-p.pid, s);
    } catch {
      // gone
    }
  };
  signal("SIGTERM");
  const timer = setTimeout(() => signal("SIGKILL"), 1000);
  await p.status;
  clearTimeout(timer);
  signal("SIGKILL"); // stragglers of the group (deno task's children)
}

/** Keeps the tail of a child's output, for error reports. */
function collect(...streams: ReadableStream<Uint8Array>[]): () => string {
  let tail = "";
  for (const s of streams) {
    (async () => {
      const dec = new TextDecoder();
      for await (const chunk of s) {
        tail = (tail + dec.decode(chunk)).slice(-2000);
      }
    })().catch(() => {});
  }
  return () => tail;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "0.0.0.0", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

function brief(r: Run): string {
  if (!r.ok) return `ERROR ${r.error}`;
  if (r.mode === "idle") {
    return `${r.connections} joined in ${r.joinSeconds}s, ${r.rssPerConnectionKiB} KiB/conn (RSS ${
      mib(r.rssAfterKiB)
    } MiB)`;
  }
  const l = r.latencyUs ?? {};
  return `${r.deliveriesPerSecond} deliveries/s, p50 ${ms(l.p50)} p99 ${
    ms(l.p99)
  } ms, lost ${r.lost} dup ${r.duplicates} order ${r.orderViolations}, cpu srv ${r.serverCpu} gen ${r.generatorCpu}, cores busy ${
    r.coreBusy?.join("/")
  }` +
    (r.metrics
      ? `, kv commits/frame ${r.metrics.kvCommitsPerFrameIn} reads/delivery ${r.metrics.kvReadsPerFrameOut} (${r.metrics.isolates} isolates)`
      : "");
}

interface Stat {
  median: number;
  min: number;
  max: number;
}

function stat(xs: (number | undefined)[]): Stat | undefined {
  const v = xs.filter((x): x is number => typeof x === "number" && Number.isFinite(x)).sort((
    a,
    b,
  ) => a - b);
  if (v.length === 0) return undefined;
  const m = v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
  return { median: m, min: v[0], max: v[v.length - 1] };
}

type Row = {
  candidate: string;
  generator: string;
  ok: number;
  failed: number;
  errors: string[];
  s: Record<string, Stat | undefined>;
  lost: number;
  dup: number;
  order: number;
  ratio?: number;
};

function summarize(w: Workload): Row[] {
  const rows: Row[] = [];
  const keys = [
    ...new Set(
      runs.filter((r) => r.workload === w.id).map((r) => `${r.candidate}\t${r.generator}`),
    ),
  ];
  for (const key of keys) {
    const [candidate, generator] = key.split("\t");
    const rs = runs.filter((r) =>
      r.workload === w.id && r.candidate === candidate &&
      r.generator === generator
    );
    const good = rs.filter((r) => r.ok);
    const s: Record<string, Stat | undefined> = {};
    for (const [k, f] of Object.entries(FIGURES)) s[k] = stat(good.map(f));
    rows.push({
      candidate,
      generator,
      ok: good.length,
      failed: rs.length - good.length,
      errors: [...new Set(rs.filter((r) => !r.ok).map((r) => String(r.error)))],
      s,
      lost: good.reduce((a, r) => a + (r.lost ?? 0), 0),
      dup: good.reduce((a, r) => a + (r.duplicates ?? 0), 0),
      order: good.reduce((a, r) => a + (r.orderViolations ?? 0), 0),
    });
  }
  const base = rows.find((r) =>
    r.candidate === (w.reference ?? "deno-baseline") &&
    r.generator === (w.generators?.[0] ?? flags.gen)
  );
  for (const r of rows) {
    const a = r.s[w.primary]?.median;
    const b = base?.s[w.primary]?.median;
    if (a !== undefined && b) r.ratio = a / b;
    writeLine({ kind: "summary", workload: w.id, primary: w.primary, ...r });
  }
  return rows;
}

function table(w: Workload, rows: Row[]): string[] {
  const mm = (s: Stat | undefined, f: (x: number) => string) =>
    s ? `${f(s.median)} (${f(s.min)}–${f(s.max)})` : "–";
  const int = (x: number) => Math.round(x).toLocaleString("en-US");
  const two = (x: number) => x.toFixed(2);
  const ratio = (r: Row) => r.ratio === undefined ? "–" : `${r.ratio.toFixed(2)}×`;
  const who = (r: Row) => r.candidate + (w.generators ? ` (${r.generator} gen)` : "");
  const fail = (r: Row) =>
    r.failed ? ` ⚠ ${r.failed} failed: ${r.errors.join("; ").slice(0, 200)}` : "";
  const out: string[] = [];
  if (w.primary === "rssPerConnectionKiB") {
    out.push(
      `| server | KiB per idle connection | vs ${
        w.reference ?? "deno-baseline"
      } | RSS with 10k joined, MiB | join 10k, s |`,
    );
    out.push("| --- | --- | --- | --- | --- |");
    for (const r of rows) {
      out.push(
        `| ${who(r)} | ${mm(r.s.rssPerConnectionKiB, (x) => x.toFixed(1))} | ${ratio(r)} | ${
          mm(r.s.rssAfterMiB, (x) => x.toFixed(0))
        } | ${mm(r.s.joinSeconds, (x) => x.toFixed(1))} |${fail(r)}`,
      );
    }
    return out;
  }
  const kv = rows.some((r) => r.s.kvCommitsPerFrameIn);
  out.push(
    `| server | deliveries/s | p50 ms | p99 ms | p999 ms | vs ${w.reference ?? "deno-baseline"} (${
      w.primary === "deliveriesPerSecond" ? "deliveries/s" : w.primary
    }) | lost / dup / order | server CPU | gen CPU | others' load |${
      kv
        ? " KV commits per frame in | KV reads per delivery | mean latency of the fastest / slowest receiver, ms |"
        : ""
    }`,
  );
  out.push(
    `| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |${
      kv ? " --- | --- | --- |" : ""
    }`,
  );
  for (const r of rows) {
    out.push(
      `| ${who(r)} | ${mm(r.s.deliveriesPerSecond, int)} | ${mm(r.s.p50, two)} | ${
        mm(r.s.p99, two)
      } | ${mm(r.s.p999, two)} | ${ratio(r)} | ${r.lost} / ${r.dup} / ${r.order} | ${
        mm(r.s.serverCpu, two)
      } | ${mm(r.s.generatorCpu, two)} | ${mm(r.s.otherBusy, two)} |` +
        (kv
          ? ` ${mm(r.s.kvCommitsPerFrameIn, (x) => x.toFixed(3))} | ${
            mm(r.s.kvReadsPerFrameOut, (x) => x.toFixed(4))
          } | ${two(r.s.recvMeanLowMs?.median ?? NaN)} / ${
            two(r.s.recvMeanHighMs?.median ?? NaN)
          } |`
          : "") +
        fail(r),
    );
  }
  if (w.generators) {
    out.push(
      "",
      "| server | generator | deliveries/s per generator CPU-second |",
      "| --- | --- | --- |",
    );
    for (const r of rows) {
      out.push(
        `| ${r.candidate} | ${r.generator} | ${mm(r.s.perGenCore, int)} |`,
      );
    }
  }
  return out;
}

async function machineInfo() {
  const text = (p: string) => {
    try {
      return Deno.readTextFileSync(p);
    } catch {
      return "";
    }
  };
  const version = async (cmd: string[]) => {
    try {
      const o = await new Deno.Command(cmd[0], {
        args: cmd.slice(1),
        stdout: "piped",
        stderr: "null",
      }).output();
      return o.success ? new TextDecoder().decode(o.stdout).trim().split("\n")[0] : "not available";
    } catch {
      return "not available";
    }
  };
  return {
    nproc: navigator.hardwareConcurrency,
    cpu: /model name\s*:\s*(.*)/.exec(text("/proc/cpuinfo"))?.[1] ?? "unknown",
    kernel: text("/proc/sys/kernel/osrelease").trim(),
    memGiB: round(Deno.systemMemoryInfo().total / 2 ** 30, 1),
    runtimes: {
      deno: Deno.version.deno,
      node: (await version(["node", "--version"])).replace(/^v/, ""),
      bun: await version([`${ROOT}/bench/node_modules/.bin/bun`, "--version"]),
      ws: "8.23.0",
    },
    loadavg: text("/proc/loadavg").split(" ").slice(0, 3).join(" "),
  };
}

function round(x: number, d: number): number {
  const f = 10 ** d;
  return Math.round(x * f) / f;
}

function ms(us: number | undefined): string {
  return us === undefined ? "-" : (us / 1000).toFixed(2);
}

function mib(kib: number | undefined): string {
  return kib === undefined ? "-" : (kib / 1024).toFixed(0);
}
