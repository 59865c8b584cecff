/**
 * @module
 * Where a server's time goes under a workload: starts the server under
 * `deno run --cpu-prof` pinned to core 0, drives it with the load generator on
 * core 1, stops it with SIGTERM (both Deno servers exit cleanly on it, which
 * writes the profile), then sums self time per function and per bucket from
 * the V8 `.cpuprofile`. Only the Deno candidates can be profiled this way.
 * (`--config deno.json` everywhere: bench/package.json, there for Bun and the
 * Node generator, would otherwise be the config Deno finds for bench/ files.)
 *
 *   deno run -A --config deno.json bench/profile.ts [--candidate deno-baseline|ours] [--workload W1] [--seconds 5]
 *
 * Imports: workloads.
 */
import { parseArgs } from "node:util";
import { WORKLOADS } from "./workloads.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    candidate: { type: "string", default: "deno-baseline,ours" },
    workload: { type: "string", default: "W1" },
    seconds: { type: "string", default: "5" },
    top: { type: "string", default: "18" },
    gen: { type: "string", default: "node" },
  },
});
const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const w = WORKLOADS.find((x) => x.id === flags.workload);
if (!w) throw new Error(`Unknown workload ${flags.workload}`);

/** The same command lines as candidates.ts, with --cpu-prof added. */
const COMMANDS: Record<string, (dir: string) => string[]> = {
  "deno-baseline": (dir) => [
    "run",
    "--config",
    "deno.json",
    "--cpu-prof",
    `--cpu-prof-dir=${dir}`,
    "--allow-net",
    "--allow-env",
    "bench/baselines/deno_relay.ts",
  ],
  // `deno task start` with --cpu-prof added.
  ours: (dir) => [
    "run",
    "--cpu-prof",
    `--cpu-prof-dir=${dir}`,
    "--unstable-kv",
    "--allow-net",
    "--allow-env",
    "--allow-read",
    "--allow-write",
    "start.ts",
  ],
};

for (const name of flags.candidate!.split(",")) {
  const cmd = COMMANDS[name];
  if (!cmd) {
    throw new Error(
      `Cannot profile ${name}: pick from ${Object.keys(COMMANDS).join(", ")}`,
    );
  }
  const dir = await Deno.makeTempDir({ prefix: `mles-prof-${name}-` });
  const port = 20000 + Math.floor(Math.random() * 20000);
  const server = new Deno.Command("taskset", {
    args: ["-c", "0", Deno.execPath(), ...cmd(dir)],
    cwd: ROOT,
    env: {
      PORT: String(port),
      MLES_KV: `${dir}/kv.sqlite3`,
      MLES_LOG_LEVEL: "error",
    },
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  for (let i = 0; i < 200; i++) {
    try {
      (await Deno.connect({ port })).close();
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const args = [
    ...w.args,
    "--url",
    `ws://127.0.0.1:${port}/`,
    "--seconds",
    flags.seconds!,
    "--server-pid",
    String(server.pid),
    "--quiet",
  ];
  const gen = flags.gen === "node" ? ["node", "bench/load.mjs", ...args] : [
    Deno.execPath(),
    "run",
    "-A",
    "--config",
    "deno.json",
    "bench/load.ts",
    ...args,
  ];
  const out = await new Deno.Command("taskset", {
    args: ["-c", "1", ...gen],
    cwd: ROOT,
    stdout: "piped",
    stderr: "inherit",
  }).output();
  const result = JSON.parse(
    new TextDecoder().decode(out.stdout).trim().split("\n").pop()!,
  );
  server.kill("SIGTERM");
  await server.status;
  const file = [...Deno.readDirSync(dir)].find((e) => e.name.endsWith(".cpuprofile"));
  console.log(
    `\n## ${name} under ${w.id}: ${result.deliveriesPerSecond} deliveries/s, server CPU ${result.serverCpu}`,
  );
  if (!file) {
    console.log("no .cpuprofile written");
    continue;
  }
  report(
    JSON.parse(Deno.readTextFileSync(`${dir}/${file.name}`)),
    Number(flags.top),
  );
  await Deno.remove(dir, { recursive: true });
}

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

/** Prints self time per function and per bucket (GC, idle, our code, runtime JS). */
function report(
  p: { nodes: Node[]; samples: number[]; timeDeltas: number[] },
  top: number,
): void {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    self.set(
      p.samples[i],
      (self.get(p.samples[i]) ?? 0) + (p.timeDeltas[i] ?? 0),
    );
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const fn = new Map<string, number>();
  const bucket = new Map<string, number>();
  for (const [id, us] of self) {
    const f = byId.get(id)!.callFrame;
    const where = f.url.replace(`file://${ROOT}/`, "").replace(/^ext:/, "ext:");
    const key = `${f.functionName || "(anonymous)"} ${where ? `${where}:${f.lineNumber + 1}` : ""}`;
    fn.set(key, (fn.get(key) ?? 0) + us);
    const b = f.functionName === "(idle)"
      ? "(idle): no JS running (the Rust event loop, socket writes, waiting)"
      : f.functionName === "(garbage collector)"
      ? "garbage collector"
      : f.functionName.startsWith("op_")
      ? "Deno ops (Rust, entered from JS)"
      : f.functionName === "(program)"
      ? "(program): native, outside JS"
      : where.startsWith("src/") || where.startsWith("bench/") ||
          where.endsWith(".ts")
      ? "application JS (src/, bench/)"
      : where.startsWith("ext:") || where.startsWith("node:")
      ? "Deno runtime JS (ext:)"
      : where.includes("npm")
      ? "npm packages"
      : "other";
    bucket.set(b, (bucket.get(b) ?? 0) + us);
  }
  const pct = (us: number) => `${((100 * us) / total).toFixed(1)}%`;
  console.log(`\n| bucket | share of samples |\n| --- | --- |`);
  for (const [k, v] of [...bucket].sort((a, b) => b[1] - a[1])) {
    console.log(`| ${k} | ${pct(v)} |`);
  }
  console.log(`\n| self time | function |\n| --- | --- |`);
  for (const [k, v] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`| ${pct(v)} | \`${k.trim()}\` |`);
  }
}
