/**
 * @module
 * The servers `run.ts` compares: three baseline relays (Deno, Node + ws,
 * Bun pub/sub) and mles-deno itself, one isolate (`deno task start`, KV bus
 * or, as `ours-memory`, the memory bus) or two (`deno task start:multi`).
 * Each knows how to install what it needs, how to start on a port, and how to
 * tell it is ready. Imports: load_core.mjs only.
 */
import { scrapeMetrics } from "./load_core.mjs";
import { errorText } from "../src/retry.ts";

/** Repository root (bench/..). */
export const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const BENCH = `${ROOT}/bench`;

/** One server under test. */
export interface Candidate {
  readonly name: string;
  /** Why it cannot run here (missing runtime, failed install, no src/), or undefined. */
  skip?: string;
  /** argv to start it (run from the repo root). */
  cmd(port: number): string[];
  /** Extra environment. */
  env(port: number, tmp: string): Record<string, string>;
  /** /metrics URL (mles-deno only). */
  metrics?(port: number): string;
  /** Isolates to wait for before it counts as ready (start:multi). */
  isolates?: number;
  /** Removes files the run left outside the temp dir. */
  cleanup?(port: number): void;
}

function removeGlob(dir: string, prefix: string): void {
  try {
    for (const e of Deno.readDirSync(dir)) {
      if (e.name.startsWith(prefix)) Deno.removeSync(`${dir}/${e.name}`);
    }
  } catch {
    // nothing there
  }
}

async function run(
  cmd: string[],
  cwd: string,
): Promise<{ ok: boolean; out: string }> {
  try {
    const o = await new Deno.Command(cmd[0], {
      args: cmd.slice(1),
      cwd,
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    const out = new TextDecoder().decode(o.stdout) +
      new TextDecoder().decode(o.stderr);
    return { ok: o.success, out: out.trim() };
  } catch (err) {
    return { ok: false, out: errorText(err) };
  }
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Installs npm dependencies of bench/ (Bun, ws and hdr-histogram-js for the
 * Node generator) and bench/baselines/ (ws) from their lockfiles, unless
 * already installed. Returns an error text per directory that failed.
 */
export async function installDeps(
  log: (s: string) => void,
): Promise<Record<string, string>> {
  const failed: Record<string, string> = {};
  for (const dir of [BENCH, `${BENCH}/baselines`]) {
    const marker = `${dir}/node_modules/.package-lock.json`;
    if (
      exists(marker) &&
      Deno.statSync(marker).mtime! >=
        Deno.statSync(`${dir}/package-lock.json`).mtime!
    ) {
      continue;
    }
    log(`npm ci in ${dir.slice(ROOT.length + 1)} ...`);
    const r = await run(["npm", "ci", "--no-audit", "--no-fund"], dir);
    if (!r.ok) failed[dir] = r.out.split("\n").slice(-5).join(" | ");
  }
  return failed;
}

/** Builds the candidate list; candidates that cannot run carry `skip`. */
export async function candidates(
  installErrors: Record<string, string>,
): Promise<Candidate[]> {
  const deno = Deno.execPath();
  const nodeOk = (await run(["node", "--version"], ROOT)).ok;
  const bun = `${BENCH}/node_modules/.bin/bun`;
  let bunSkip: string | undefined = installErrors[BENCH]
    ? `npm install bun@1.4.4 failed: ${installErrors[BENCH]}`
    : undefined;
  if (!bunSkip) {
    const r = await run([bun, "--version"], ROOT);
    if (!r.ok) bunSkip = `bun binary does not run: ${r.out}`;
  }
  const oursMissing = ["main.ts", "src/server.ts", "start.ts"].filter((f) =>
    !exists(`${ROOT}/${f}`)
  );
  const oursSkip = oursMissing.length
    ? `mles-deno not there yet (missing ${oursMissing.join(", ")})`
    : undefined;
  const oursEnv = (port: number, tmp: string) => ({
    PORT: String(port),
    MLES_KV: `${tmp}/kv-${port}.sqlite3`,
    MLES_LOG_LEVEL: "error",
    // The load generator is one address: per-address limits would refuse it.
    MLES_MAX_CONNECTIONS_PER_IP: "0",
    MLES_JOIN_RATE: "0",
    MLES_CHANNEL_RATE: "0",
  });
  return [
    {
      name: "deno-baseline",
      cmd: () => [
        deno,
        "run",
        "--config",
        "deno.json",
        "--allow-net",
        "--allow-env",
        "bench/baselines/deno_relay.ts",
      ],
      env: (port) => ({ PORT: String(port) }),
    },
    {
      name: "node-ws",
      skip: !nodeOk
        ? "node not found"
        : installErrors[`${BENCH}/baselines`]
        ? `npm ci in bench/baselines failed: ${installErrors[`${BENCH}/baselines`]}`
        : undefined,
      cmd: () => ["node", "bench/baselines/node_relay.mjs"],
      env: (port) => ({ PORT: String(port) }),
    },
    {
      name: "bun",
      skip: bunSkip,
      cmd: () => [bun, "bench/baselines/bun_relay.js"],
      env: (port) => ({ PORT: String(port) }),
    },
    {
      name: "ours",
      skip: oursSkip,
      cmd: () => [deno, "task", "--quiet", "start"],
      env: oursEnv,
      metrics: (port) => `http://127.0.0.1:${port}/metrics`,
    },
    {
      // Not in any default list: `deno task start` on Deno.serve + Deno.upgradeWebSocket
      // (the transport of `deno serve` and Deploy) instead of node:http + npm:ws.
      name: "ours-deno",
      skip: oursSkip,
      cmd: () => [deno, "task", "--quiet", "start"],
      env: (port, tmp) => ({ ...oursEnv(port, tmp), MLES_TRANSPORT: "deno" }),
      metrics: (port) => `http://127.0.0.1:${port}/metrics`,
    },
    {
      // Not in any default list: ours with the per-connection publish rates
      // off (MLES_MAX_FRAMES_PER_S, MLES_MAX_BYTES_PER_S), for the raw
      // throughput of one publisher faster than the defaults allow (W4).
      name: "ours-unpaced",
      skip: oursSkip,
      cmd: () => [deno, "task", "--quiet", "start"],
      env: (port, tmp) => ({
        ...oursEnv(port, tmp),
        MLES_MAX_FRAMES_PER_S: "0",
        MLES_MAX_BYTES_PER_S: "0",
      }),
      metrics: (port) => `http://127.0.0.1:${port}/metrics`,
    },
    {
      // Not in any default list: ours as `deno task start` runs it but with
      // tokio's default event interval (61), to measure what polling the
      // reactor every tick (DENO_TOKIO_EVENT_INTERVAL=1 in the task) costs.
      name: "ours-ei61",
      skip: oursSkip,
      cmd: () => [
        deno,
        "run",
        "--unstable-kv",
        "--allow-net",
        "--allow-env",
        "--allow-read",
        "--allow-write",
        "--allow-ffi",
        "start.ts",
      ],
      env: (port, tmp) => ({ ...oursEnv(port, tmp), DENO_TOKIO_EVENT_INTERVAL: "61" }),
      metrics: (port) => `http://127.0.0.1:${port}/metrics`,
    },
    {
      // Not in any default list: separates the KV bus's cost from the rest of ours.
      name: "ours-memory",
      skip: oursSkip,
      cmd: () => [deno, "task", "--quiet", "start"],
      env: (port, tmp) => ({ ...oursEnv(port, tmp), MLES_BUS: "memory" }),
      metrics: (port) => `http://127.0.0.1:${port}/metrics`,
    },
    {
      name: "ours-multi",
      skip: oursSkip ??
        (exists(`${ROOT}/scripts/start_multi.ts`) ? undefined : "scripts/start_multi.ts missing"),
      cmd: () => [deno, "task", "--quiet", "start:multi"],
      // start:multi may only write under .data/ (its --allow-write=.data).
      env: (port) => ({
        PORT: String(port),
        MLES_KV: `.data/bench-kv-${port}.sqlite3`,
        MLES_LOG_LEVEL: "error",
        MLES_MAX_CONNECTIONS_PER_IP: "0",
        MLES_JOIN_RATE: "0",
        MLES_CHANNEL_RATE: "0",
        DENO_JOBS: "2",
      }),
      cleanup: (port) => removeGlob(`${ROOT}/.data`, `bench-kv-${port}.sqlite3`),
      metrics: (port) => `http://127.0.0.1:${port}/metrics`,
      isolates: 2,
    },
  ];
}

/** Waits until `port` accepts TCP (and, for start:multi, until N isolates answer /metrics). */
export async function waitReady(
  c: Candidate,
  port: number,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      break;
    } catch {
      if (Date.now() > deadline) {
        throw new Error(`${c.name} did not listen on ${port}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  if (c.isolates && c.metrics) {
    const seen = new Map<string, Record<string, number>>();
    while (seen.size < c.isolates) {
      await scrapeMetrics(c.metrics(port), 8, seen);
      if (Date.now() > deadline) {
        throw new Error(
          `${c.name}: only ${seen.size}/${c.isolates} isolates answer /metrics`,
        );
      }
    }
  }
}
