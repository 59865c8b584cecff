/**
 * @module
 * `deno task bench:storage`: what one flooding publisher does to storage and
 * memory, against a real server process (`start.ts`, defaults, a fresh KV file):
 * - flood1k: 15 s of 1 KiB frames as fast as the socket takes them; the KV
 *   file's size after (with its WAL), against the retention bound.
 * - flood1m: 20 s of 1 MiB frames; the server's RSS sampled every 250 ms
 *   (peak and at the end), against the store queue plus the send buffers,
 *   and how long KV keeps writing after the flood stops.
 * - kill9: a subscriber records every frame it receives during a 1 KiB flood;
 *   the server is killed with SIGKILL after 3 s and restarted on the same
 *   file; frames the subscriber saw live but history lacks are counted.
 *
 * - bigjoin: a channel is filled with 200 frames of 4 MiB (each sent once
 *   the previous one is stored); a newcomer's time to its first
 *   history frame, what it is sent, and that it stays.
 *
 *   deno task bench:storage [--only flood1k,flood1m,kill9,bigjoin] [--seconds N]
 */
import { parseArgs } from "node:util";
import { freePort, header, TestClient } from "../tests/_helpers.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    only: { type: "string", default: "flood1k,flood1m,kill9,bigjoin" },
    seconds: { type: "string" },
  },
});
const ONLY = values.only!.split(",");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MB = 1e6;

interface Proc {
  child: Deno.ChildProcess;
  url: string;
  wsUrl: string;
  pid: number;
}

async function startServer(
  kvPath: string,
  env: Record<string, string> = {},
): Promise<Proc> {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--unstable-kv", "-A", "--config", "deno.json", "start.ts"],
    env: {
      PORT: String(port),
      MLES_KV: kvPath,
      MLES_LOG_LEVEL: "error",
      ...env,
    },
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const url = `http://127.0.0.1:${port}/`;
  for (let i = 0; i < 200; i++) {
    try {
      const r = await fetch(url + "healthz");
      await r.body?.cancel();
      if (r.ok) break;
    } catch { /* not yet */ }
    await sleep(50);
  }
  return { child, url, wsUrl: `ws://127.0.0.1:${port}/`, pid: child.pid };
}

async function stop(p: Proc, signal: Deno.Signal = "SIGTERM") {
  try {
    p.child.kill(signal);
  } catch { /* gone */ }
  await p.child.status;
}

function rssMB(pid: number): number {
  try {
    const s = Deno.readTextFileSync(`/proc/${pid}/status`);
    const m = s.match(/VmRSS:\s+(\d+) kB/);
    return m ? Number(m[1]) * 1024 / MB : NaN;
  } catch {
    return NaN;
  }
}

function fileMB(path: string): number {
  let n = 0;
  for (const suffix of ["", "-wal", "-shm"]) {
    try {
      n += Deno.statSync(path + suffix).size;
    } catch { /* absent */ }
  }
  return n / MB;
}

async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(url + "metrics")).text();
  const m = text.match(new RegExp(`^${name}\\{[^}]*\\} (\\d+)`, "m"));
  return m ? Number(m[1]) : 0;
}

/** Sends `make(i)` as fast as the socket drains (at most 4 MiB queued in the client) for `ms`. */
async function flood(
  c: TestClient,
  ms: number,
  make: (i: number) => string | Uint8Array,
) {
  const end = performance.now() + ms;
  let i = 0;
  while (performance.now() < end && c.ws.readyState === WebSocket.OPEN) {
    while (c.ws.bufferedAmount < 4 * 1024 * 1024 && performance.now() < end) {
      c.ws.send(make(i++));
    }
    await sleep(1);
  }
  return i;
}

const dir = await Deno.makeTempDir({ prefix: "mles-storage-" });
try {
  if (ONLY.includes("flood1k")) {
    const kv = `${dir}/flood1k.sqlite3`;
    const p = await startServer(kv);
    const pub = await TestClient.open(p.wsUrl, header("flooder", "f1k"));
    const pad = "x".repeat(1000);
    const secs = Number(values.seconds ?? 15);
    const sent = await flood(
      pub,
      secs * 1000,
      (i) => `${i}|${pad}`.slice(0, 1024),
    );
    const closed = pub.ws.readyState !== WebSocket.OPEN ? await pub.closed : undefined;
    await pub.close().catch(() => {});
    await sleep(3000); // a trim interval and the queue's drain
    const trimmed = await metric(p.url, "mles_trimmed_batches_total");
    await stop(p);
    console.log(
      `flood1k: ${sent} frames of 1 KiB in ${secs} s${
        closed ? ` (publisher closed ${closed.code} ${closed.reason})` : ""
      }; KV file ${fileMB(kv).toFixed(1)} MB after (with WAL); batches trimmed ${trimmed}`,
    );
  }
  if (ONLY.includes("flood1m")) {
    const kv = `${dir}/flood1m.sqlite3`;
    const p = await startServer(kv);
    const base = rssMB(p.pid);
    const sub = await TestClient.open(p.wsUrl, header("reader", "f1m"));
    sub.ws.onmessage = () => {};
    const pub = await TestClient.open(p.wsUrl, header("flooder", "f1m"));
    let peak = 0;
    const sampler = setInterval(() => peak = Math.max(peak, rssMB(p.pid)), 250);
    const frame = new Uint8Array(1024 * 1024);
    const secs = Number(values.seconds ?? 20);
    const sent = await flood(pub, secs * 1000, () => frame);
    const closed = pub.ws.readyState !== WebSocket.OPEN ? await pub.closed : undefined;
    const stopAt = performance.now();
    let drainMs = 0;
    for (let i = 0; i < 600; i++) {
      if ((await metric(p.url, "mles_store_queue_bytes")) === 0) break;
      await sleep(100);
      drainMs = performance.now() - stopAt;
    }
    await sleep(2000);
    clearInterval(sampler);
    const end = rssMB(p.pid);
    await pub.close().catch(() => {});
    await sub.close().catch(() => {});
    await stop(p);
    console.log(
      `flood1m: ${sent} frames of 1 MiB in ${secs} s${
        closed ? ` (publisher closed ${closed.code} ${closed.reason})` : ""
      }; server RSS ${base.toFixed(0)} MB at start, peak ${peak.toFixed(0)} MB, ${
        end.toFixed(0)
      } MB 2 s after; store queue drained ${drainMs.toFixed(0)} ms after the flood stopped`,
    );
  }
  if (ONLY.includes("kill9")) {
    const kv = `${dir}/kill9.sqlite3`;
    const env = { MLES_HISTORY_LIMIT: "1000000", MLES_READER_SLACK_BYTES: "0" };
    const p = await startServer(kv, env);
    const seen = new Set<string>();
    const sub = await TestClient.open(p.wsUrl, header("witness", "k9"));
    sub.ws.onmessage = (ev) => {
      if (typeof ev.data === "string" && ev.data[0] === "K") {
        seen.add(ev.data.slice(0, 12));
      }
    };
    const pub = await TestClient.open(p.wsUrl, header("flooder", "k9"));
    const pad = "y".repeat(1000);
    const flooding = flood(
      pub,
      10_000,
      (i) => `K${String(i).padStart(10, "0")}|${pad}`,
    );
    await sleep(3000);
    await stop(p, "SIGKILL");
    const sent = await flooding;
    const p2 = await startServer(kv, env);
    const late = await TestClient.open(p2.wsUrl, header("late", "k9"));
    const stored = new Set<string>();
    try {
      for (;;) {
        const f = await late.next(1500);
        if (typeof f === "string" && f[0] === "K") stored.add(f.slice(0, 12));
      }
    } catch { /* quiet: history done */ }
    let missing = 0;
    for (const id of seen) if (!stored.has(id)) missing++;
    await late.close().catch(() => {});
    await stop(p2);
    console.log(
      `kill9: ${sent} frames sent, ${seen.size} seen live by a subscriber before SIGKILL, ${stored.size} in history after restart; seen live but missing from history: ${missing} (${
        (missing * 1.04 / 1024).toFixed(2)
      } MiB; bound: MLES_STORE_QUEUE_BYTES 64 MiB + one commit)`,
    );
  }
  if (ONLY.includes("bigjoin")) {
    const kv = `${dir}/bigjoin.sqlite3`;
    const p = await startServer(kv);
    const pub = await TestClient.open(p.wsUrl, header("filler", "bj"));
    await sleep(500); // the filler's join completes: the witness sees its header
    const w = await TestClient.open(p.wsUrl, header("witness", "bj"));
    await w.next(10_000);
    const frame = new Uint8Array(4 * 1024 * 1024);
    let stored = 0;
    for (let i = 0; i < 200; i++) {
      frame[0] = i & 0xff;
      pub.ws.send(frame);
      for (;;) {
        const f = await w.next(30_000);
        if (f instanceof Uint8Array) break;
      }
      // Paced by the store, not only by the reader: the next frame goes once this one is stored.
      while (await metric(p.url, "mles_store_queue_bytes") > 0) await sleep(5);
      stored++;
    }
    await sleep(1500); // the last commit and a trim
    const t0 = performance.now();
    const late = await TestClient.open(p.wsUrl, header("late", "bj"));
    await late.next(30_000);
    const firstMs = performance.now() - t0;
    let frames = 1;
    try {
      for (;;) {
        await late.next(2000);
        frames++;
      }
    } catch { /* quiet: history sent */ }
    const open = late.ws.readyState === WebSocket.OPEN;
    await Promise.all([pub, w, late].map((c) => c.close().catch(() => {})));
    await stop(p);
    console.log(
      `bigjoin: ${stored} frames of 4 MiB published and stored; newcomer's first history frame after ${
        firstMs.toFixed(0)
      } ms, ${frames} history frames (headers included), still joined: ${open}`,
    );
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
