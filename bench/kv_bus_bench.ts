/**
 * @module
 * Measures the KV bus (issue "One channel across many isolates"): real
 * server isolates in Web Workers, each with its own KV handle on one SQLite
 * file (like `deno serve --parallel`); clients in this thread pick their
 * isolate. Every figure is reported with its baseline from the same run
 * (same-isolate latency, one-isolate throughput), as medians and min-max
 * over the repetitions.
 *
 *   deno task bench:kv [--reps 3] [--seconds 4]
 */
import { parseArgs } from "node:util";
import * as hdr from "hdr-histogram-js";
import { header, startIsolates, TestClient } from "../tests/_helpers.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    reps: { type: "string", default: "3" },
    seconds: { type: "string", default: "4" },
    json: { type: "string" },
    only: { type: "string", default: "latency,throughput" },
  },
});
const REPS = Number(values.reps);
const SECONDS = Number(values.seconds);

type Hist = ReturnType<typeof hdr.build>;
const newHist = (): Hist =>
  hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 60_000_000,
    numberOfSignificantValueDigits: 3,
  });

/** Scrapes one isolate's counters. */
async function counters(url: string): Promise<Record<string, number>> {
  const text = await (await fetch(new URL("/metrics", url))).text();
  const out: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^(mles_[a-z_]+_total)\{[^}]*\} (\d+)/);
    if (m) out[m[1]] = (out[m[1]] ?? 0) + Number(m[2]);
  }
  return out;
}

async function sumCounters(urls: string[]) {
  const all = await Promise.all(urls.map(counters));
  const sum: Record<string, number> = {};
  for (const c of all) {
    for (const [k, v] of Object.entries(c)) sum[k] = (sum[k] ?? 0) + v;
  }
  return sum;
}

/** A subscriber that records latency (µs) of frames "B<sendTimeMs>|..." and counts them. */
function subscribe(c: TestClient, hist: Hist) {
  const state = { count: 0 };
  c.ws.onmessage = (ev) => {
    const d = ev.data;
    if (typeof d !== "string" || d[0] !== "B") return;
    const t = Number(d.slice(1, d.indexOf("|")));
    hist.recordValue(Math.max(1, Math.round((performance.now() - t) * 1000)));
    state.count++;
  };
  return state;
}

const pad = "x".repeat(40);
const payload = () => `B${performance.now()}|${pad}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Run {
  crossP50: number;
  crossP99: number;
  localP50: number;
  localP99: number;
  rate: number;
  commitsPerFrame?: number;
  readsPerFrame?: number;
}

/** Publisher on isolate 0; one subscriber on isolate 0 (baseline) and one on isolate 1. */
async function latency(mode: "moderate" | "saturation"): Promise<Run> {
  await using iso = await startIsolates(2, { MLES_LOG_LEVEL: "silent" });
  const [a, b] = iso.isolates;
  const ch = `lat-${mode}`;
  await using pub = await TestClient.open(a.wsUrl, header("pub", ch));
  await using local = await TestClient.open(a.wsUrl, header("local", ch));
  await using cross = await TestClient.open(b.wsUrl, header("cross", ch));
  await sleep(300);
  const hl = newHist(), hc = newHist();
  const sl = subscribe(local, hl), sc = subscribe(cross, hc);
  const before = await sumCounters([a.url, b.url]);
  const t0 = performance.now();
  let sent = 0;
  const end = t0 + SECONDS * 1000;
  if (mode === "moderate") {
    // 200 frames/s, evenly spaced.
    while (performance.now() < end) {
      pub.send(payload());
      sent++;
      await sleep(5);
    }
  } else {
    // As fast as the cross-isolate path drains, with at most 500 frames in flight.
    while (performance.now() < end) {
      if (sent - sc.count >= 500) {
        await sleep(1);
        continue;
      }
      for (let i = 0; i < 50; i++) pub.send(payload());
      sent += 50;
      await sleep(0);
    }
  }
  const deadline = performance.now() + 10_000;
  while ((sc.count < sent || sl.count < sent) && performance.now() < deadline) {
    await sleep(5);
  }
  const secs = (performance.now() - t0) / 1000;
  const after = await sumCounters([a.url, b.url]);
  const delivered = sc.count + sl.count;
  if (sc.count !== sent || sl.count !== sent) {
    throw new Error(
      `lost frames: sent ${sent}, local ${sl.count}, cross ${sc.count}`,
    );
  }
  const commits = after.mles_kv_commits_total - before.mles_kv_commits_total;
  const reads = after.mles_kv_reads_total - before.mles_kv_reads_total;
  return {
    crossP50: hc.getValueAtPercentile(50) / 1000,
    crossP99: hc.getValueAtPercentile(99) / 1000,
    localP50: hl.getValueAtPercentile(50) / 1000,
    localP99: hl.getValueAtPercentile(99) / 1000,
    rate: sent / secs,
    commitsPerFrame: commits / sent,
    readsPerFrame: reads / delivered,
  };
}

/** One channel, 4 publishers on `spread` isolates (1 or 4), observed on isolate 0: deliveries/s. */
async function throughput(
  spread: 1 | 4,
): Promise<{ rate: number; commitsPerFrame: number }> {
  await using iso = await startIsolates(4, { MLES_LOG_LEVEL: "silent" });
  const urls = iso.isolates.map((i) => i.wsUrl);
  const ch = `tp-${spread}`;
  await using obs = await TestClient.open(urls[0], header("obs", ch));
  const pubs: TestClient[] = [];
  for (let i = 0; i < 4; i++) {
    pubs.push(
      await TestClient.open(
        spread === 1 ? urls[1] : urls[i],
        header(`p${i}`, ch),
      ),
    );
  }
  await sleep(300);
  const h = newHist();
  const so = subscribe(obs, h);
  const before = await sumCounters(iso.isolates.map((i) => i.url));
  const t0 = performance.now();
  let sent = 0;
  while (performance.now() < t0 + SECONDS * 1000) {
    if (sent - so.count >= 2000) {
      await sleep(1);
      continue;
    }
    for (const p of pubs) for (let i = 0; i < 25; i++) p.send(payload());
    sent += 100;
    await sleep(0);
  }
  const deadline = performance.now() + 15_000;
  while (so.count < sent && performance.now() < deadline) await sleep(5);
  const secs = (performance.now() - t0) / 1000;
  const after = await sumCounters(iso.isolates.map((i) => i.url));
  await Promise.all(pubs.map((p) => p.close()));
  if (so.count !== sent) {
    throw new Error(`lost frames: sent ${sent}, observed ${so.count}`);
  }
  return {
    rate: so.count / secs,
    commitsPerFrame: (after.mles_kv_commits_total - before.mles_kv_commits_total) / sent,
  };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (xs: number[], digits = 2) =>
  `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}-${
    Math.max(...xs).toFixed(digits)
  })`;

const results: Record<string, number[]> = {};
const add = (k: string, v: number) => (results[k] ??= []).push(v);
for (let r = 0; r < REPS; r++) {
  // Interleave scenarios within each repetition (A B C A B C ...).
  for (
    const mode of values.only!.includes("latency") ? ["moderate", "saturation"] as const : []
  ) {
    const x = await latency(mode);
    add(`${mode}.cross.p50.ms`, x.crossP50);
    add(`${mode}.cross.p99.ms`, x.crossP99);
    add(`${mode}.local.p50.ms`, x.localP50);
    add(`${mode}.local.p99.ms`, x.localP99);
    add(`${mode}.cross.p99.ratio`, x.crossP99 / x.localP99);
    add(`${mode}.rate.frames_per_s`, x.rate);
    add(`${mode}.kv_commits_per_frame`, x.commitsPerFrame!);
    add(`${mode}.kv_reads_per_delivery`, x.readsPerFrame!);
    console.error(`rep ${r + 1} ${mode}: ${JSON.stringify(x)}`);
  }
  if (!values.only!.includes("throughput")) continue;
  const one = await throughput(1);
  const four = await throughput(4);
  add("throughput.1_isolate.deliveries_per_s", one.rate);
  add("throughput.4_isolates.deliveries_per_s", four.rate);
  add("throughput.4_vs_1.ratio", four.rate / one.rate);
  add("throughput.1_isolate.kv_commits_per_frame", one.commitsPerFrame);
  add("throughput.4_isolates.kv_commits_per_frame", four.commitsPerFrame);
  console.error(
    `rep ${r + 1} throughput: 1 isolate ${one.rate.toFixed(0)}/s, 4 isolates ${
      four.rate.toFixed(0)
    }/s`,
  );
}

console.log(
  `\nKV bus, ${REPS} repetitions x ${SECONDS} s, median (min-max):\n`,
);
console.log("| figure | value |\n| --- | --- |");
for (const [k, xs] of Object.entries(results)) {
  const digits = k.includes("per_s") ? 0 : k.includes("per_") ? 3 : 2;
  console.log(`| ${k} | ${fmt(xs, digits)} |`);
}
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify({ reps: REPS, seconds: SECONDS, results }) + "\n",
  );
}
