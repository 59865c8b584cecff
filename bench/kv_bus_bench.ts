/**
 * @module
 * `deno task bench:kv`: the KV bus under a KV latency model (bench/latency_kv.ts).
 * Real server isolates in Web Workers, each with its own KV handle on one
 * SQLite file (like `deno serve --parallel`), each seeing KV through its own
 * modelled distance to the write region; clients in this thread pick their
 * isolate and time frames end to end (one clock). Profiles: `C` = commit C ms,
 * strong read C/2, watch notification C/4 late; "near" = 4/2/2 ms, "far" =
 * 80/40/20 ms (Deploy: commits go to one region, strong reads from Frankfurt
 * about 94 ms, Hong Kong about 194 ms).
 *
 * Scenarios (each repeated --reps times, interleaved; medians and min-max):
 * - hot: one channel at 200 frames/s in total from 1, 2 or 4 writer isolates,
 *   all at C=40 ("equal") or one near and the rest far ("nearfar"); a reader
 *   on its own isolate (near, or C=40). p50/p99 per writer class.
 * - sat: one channel at saturation, 4 publishers on 4 writer isolates vs all
 *   on 1 (same clients, same deliveries), at C=0 and C=40: the ratio.
 * - many: 100 channels x 10 frames/s of 64-byte frames, publishers on one
 *   isolate and readers on another, at C=0, 10, 40, 100: commits per frame,
 *   write units per frame, read units per delivery, cross-isolate p99.
 *
 *   deno task bench:kv [--reps 3] [--seconds 4] [--only hot,sat,many] [--json FILE]
 */
import { parseArgs } from "node:util";
import * as hdr from "hdr-histogram-js";
import type { KvLatency } from "./latency_kv.ts";
import { header, startIsolates, TestClient } from "../tests/_helpers.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    reps: { type: "string", default: "3" },
    seconds: { type: "string", default: "4" },
    json: { type: "string" },
    only: { type: "string", default: "hot,sat,many" },
  },
});
const REPS = Number(values.reps);
const SECONDS = Number(values.seconds);
const ONLY = values.only!.split(",");

type Hist = ReturnType<typeof hdr.build>;
const newHist = (): Hist =>
  hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 120_000_000,
    numberOfSignificantValueDigits: 3,
  });

const equal = (c: number): KvLatency => ({
  commitMs: c,
  readMs: c / 2,
  watchMs: c / 4,
});
const NEAR: KvLatency = { commitMs: 4, readMs: 2, watchMs: 2 };
const FAR: KvLatency = { commitMs: 80, readMs: 40, watchMs: 20 };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sums every `mles_*_total` counter over the isolates. */
async function counters(urls: string[]): Promise<Record<string, number>> {
  const sum: Record<string, number> = {};
  for (const url of urls) {
    const text = await (await fetch(new URL("/metrics", url))).text();
    for (const line of text.split("\n")) {
      const m = line.match(/^(mles_[a-z_]+_total)\{[^}]*\} (\d+)/);
      if (m) sum[m[1]] = (sum[m[1]] ?? 0) + Number(m[2]);
    }
  }
  return sum;
}

const delta = (
  a: Record<string, number>,
  b: Record<string, number>,
  k: string,
) => (b[k] ?? 0) - (a[k] ?? 0);

/** Frames "B<sendMs>|<class>|pad" (64 bytes in all), timed per class on receipt. */
function payload(cls: string): string {
  const head = `B${performance.now().toFixed(3)}|${cls}|`;
  return head + "x".repeat(Math.max(0, 64 - head.length));
}

function record(c: TestClient, hists: Map<string, Hist>) {
  const state = { count: 0 };
  c.ws.onmessage = (ev) => {
    const d = ev.data;
    if (typeof d !== "string" || d[0] !== "B") return;
    const a = d.indexOf("|");
    const b = d.indexOf("|", a + 1);
    const cls = d.slice(a + 1, b);
    let h = hists.get(cls);
    if (!h) hists.set(cls, h = newHist());
    h.recordValue(
      Math.max(
        1,
        Math.round((performance.now() - Number(d.slice(1, a))) * 1000),
      ),
    );
    state.count++;
  };
  return state;
}

/** Sends `rate` frames/s in total, spread evenly over `pubs`, for SECONDS. */
async function pace(
  pubs: { c: TestClient; cls: string }[],
  rate: number,
): Promise<number> {
  const t0 = performance.now();
  let sent = 0;
  while (performance.now() - t0 < SECONDS * 1000) {
    const due = Math.floor(((performance.now() - t0) / 1000) * rate);
    while (sent < due) {
      const p = pubs[sent % pubs.length];
      p.c.send(payload(p.cls));
      sent++;
    }
    await sleep(2);
  }
  return sent;
}

async function waitCount(get: () => number, want: number, ms = 20_000) {
  const end = performance.now() + ms;
  while (get() < want && performance.now() < end) await sleep(5);
  if (get() < want) throw new Error(`lost frames: want ${want}, got ${get()}`);
}

const ms = (
  h: Hist | undefined,
  p: number,
) => (h ? h.getValueAtPercentile(p) / 1000 : NaN);

/** One hot channel at 200 frames/s from `writers` isolates; reader on its own isolate. */
async function hot(writers: number, profile: "equal" | "nearfar") {
  const lat = (i: number): KvLatency =>
    profile === "equal" ? equal(40) : i === 0 || i === writers ? NEAR : FAR;
  await using iso = await startIsolates(
    writers + 1,
    { MLES_LOG_LEVEL: "silent" },
    undefined,
    lat,
  );
  const ch = `hot-${writers}-${profile}`;
  const urls = iso.isolates.map((i) => i.url);
  await using reader = await TestClient.open(
    iso.isolates[writers].wsUrl,
    header("reader", ch),
  );
  const pubs: { c: TestClient; cls: string }[] = [];
  for (let i = 0; i < writers; i++) {
    const cls = profile === "equal" ? "equal" : i === 0 ? "near" : "far";
    pubs.push({
      c: await TestClient.open(iso.isolates[i].wsUrl, header(`w${i}`, ch)),
      cls,
    });
  }
  await sleep(500);
  const hists = new Map<string, Hist>();
  const st = record(reader, hists);
  const before = await counters(urls);
  const sent = await pace(pubs, 200);
  await waitCount(() => st.count, sent);
  const after = await counters(urls);
  await Promise.all(pubs.map((p) => p.c.close()));
  return {
    hists,
    commitsPerFrame: delta(before, after, "mles_kv_commits_total") / sent,
    writeUnitsPerFrame: delta(before, after, "mles_kv_write_units_total") /
      sent,
    lostChecks: delta(before, after, "mles_kv_commit_conflicts_total"),
  };
}

/** One channel at saturation: 4 publishers on 1 or 4 writer isolates, observer on isolate 0. */
async function sat(spread: 1 | 4, c: number) {
  await using iso = await startIsolates(
    5,
    { MLES_LOG_LEVEL: "silent" },
    undefined,
    () => equal(c),
  );
  const urls = iso.isolates.map((i) => i.url);
  const ch = `sat-${spread}-${c}`;
  await using obs = await TestClient.open(
    iso.isolates[0].wsUrl,
    header("obs", ch),
  );
  const pubs: TestClient[] = [];
  for (let i = 0; i < 4; i++) {
    const at = spread === 1 ? 1 : i + 1;
    pubs.push(
      await TestClient.open(iso.isolates[at].wsUrl, header(`p${i}`, ch)),
    );
  }
  await sleep(500);
  const st = record(obs, new Map());
  const before = await counters(urls);
  const t0 = performance.now();
  let sent = 0;
  while (performance.now() < t0 + SECONDS * 1000) {
    if (sent - st.count >= 4000) {
      await sleep(1);
      continue;
    }
    for (const p of pubs) for (let i = 0; i < 25; i++) p.send(payload("sat"));
    sent += 100;
    await sleep(0);
  }
  await waitCount(() => st.count, sent, 60_000);
  const secs = (performance.now() - t0) / 1000;
  const after = await counters(urls);
  await Promise.all(pubs.map((p) => p.close()));
  return {
    rate: st.count / secs,
    lostChecks: delta(before, after, "mles_kv_commit_conflicts_total"),
  };
}

/** 100 channels x 10 frames/s: publishers on isolate 1, readers on isolate 0. */
async function many(c: number) {
  await using iso = await startIsolates(
    2,
    { MLES_LOG_LEVEL: "silent" },
    undefined,
    () => equal(c),
  );
  const urls = iso.isolates.map((i) => i.url);
  const hists = new Map<string, Hist>();
  const readers: TestClient[] = [];
  const pubs: { c: TestClient; cls: string }[] = [];
  const states: { count: number }[] = [];
  for (let k = 0; k < 100; k++) {
    const r = await TestClient.open(
      iso.isolates[0].wsUrl,
      header(`r${k}`, `many-${k}`),
    );
    readers.push(r);
    states.push(record(r, hists));
    pubs.push({
      c: await TestClient.open(
        iso.isolates[1].wsUrl,
        header(`p${k}`, `many-${k}`),
      ),
      cls: "cross",
    });
  }
  await sleep(500);
  const before = await counters(urls);
  const sent = await pace(pubs, 1000);
  await waitCount(() => states.reduce((n, s) => n + s.count, 0), sent);
  const after = await counters(urls);
  await Promise.all(
    [...readers, ...pubs.map((p) => p.c)].map((x) => x.close()),
  );
  return {
    p99: ms(hists.get("cross"), 99),
    commitsPerFrame: delta(before, after, "mles_kv_commits_total") / sent,
    writeUnitsPerFrame: delta(before, after, "mles_kv_write_units_total") /
      sent,
    readUnitsPerDelivery: delta(before, after, "mles_kv_read_units_total") /
      sent,
  };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (xs: number[], digits: number) =>
  `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}-${
    Math.max(...xs).toFixed(digits)
  })`;

const results: Record<string, number[]> = {};
const add = (k: string, v: number) => (results[k] ??= []).push(v);
for (let r = 0; r < REPS; r++) {
  if (ONLY.includes("hot")) {
    for (const profile of ["equal", "nearfar"] as const) {
      for (const w of [1, 2, 4]) {
        const x = await hot(w, profile);
        for (const [cls, h] of x.hists) {
          add(`hot.${profile}.${w}w.${cls}.p50.ms`, ms(h, 50));
          add(`hot.${profile}.${w}w.${cls}.p99.ms`, ms(h, 99));
        }
        add(`hot.${profile}.${w}w.kv_commits_per_frame`, x.commitsPerFrame);
        add(`hot.${profile}.${w}w.write_units_per_frame`, x.writeUnitsPerFrame);
        add(`hot.${profile}.${w}w.lost_checks`, x.lostChecks);
        console.error(`rep ${r + 1} hot ${profile} ${w}w done`);
      }
    }
  }
  if (ONLY.includes("sat")) {
    for (const c of [0, 40]) {
      const one = await sat(1, c);
      const four = await sat(4, c);
      add(`sat.C${c}.1_writer_isolate.deliveries_per_s`, one.rate);
      add(`sat.C${c}.4_writer_isolates.deliveries_per_s`, four.rate);
      add(`sat.C${c}.4_vs_1.ratio`, four.rate / one.rate);
      add(`sat.C${c}.lost_checks`, one.lostChecks + four.lostChecks);
      console.error(
        `rep ${r + 1} sat C=${c}: ${one.rate.toFixed(0)} vs ${four.rate.toFixed(0)}`,
      );
    }
  }
  if (ONLY.includes("many")) {
    for (const c of [0, 10, 40, 100]) {
      const x = await many(c);
      add(`many.C${c}.cross.p99.ms`, x.p99);
      add(`many.C${c}.kv_commits_per_frame`, x.commitsPerFrame);
      add(`many.C${c}.write_units_per_frame`, x.writeUnitsPerFrame);
      add(`many.C${c}.read_units_per_delivery`, x.readUnitsPerDelivery);
      console.error(`rep ${r + 1} many C=${c}: ${JSON.stringify(x)}`);
    }
  }
}

console.log(
  `\nKV bus under a KV latency model, ${REPS} repetitions x ${SECONDS} s, median (min-max):\n`,
);
console.log("| figure | value |\n| --- | --- |");
for (const [k, xs] of Object.entries(results)) {
  const digits = k.includes("per_s") ? 0 : k.includes("ms") ? 1 : k.includes("per_") ? 3 : 2;
  console.log(`| ${k} | ${fmt(xs, digits)} |`);
}
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify({ reps: REPS, seconds: SECONDS, results }) + "\n",
  );
}
