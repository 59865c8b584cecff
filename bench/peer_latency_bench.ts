/**
 * @module
 * Extra latency per peering hop (issue "Servers working together"): three
 * servers in this process, A bridged to B and B bridged to C, one channel.
 * A publisher on A at a fixed rate; subscribers on A (baseline: no hop), B
 * (one hop) and C (two hops). Medians and (min-max) over the repetitions.
 *
 *   deno task bench:peer [--reps 3] [--seconds 4] [--rate 200]
 */
import { parseArgs } from "node:util";
import * as hdr from "hdr-histogram-js";
import { header, startServer, TestClient } from "../tests/_helpers.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    reps: { type: "string", default: "3" },
    seconds: { type: "string", default: "4" },
    rate: { type: "string", default: "200" },
  },
});
const REPS = Number(values.reps);
const SECONDS = Number(values.seconds);
const RATE = Number(values.rate);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function once() {
  const env = { MLES_LOG_LEVEL: "silent", MLES_PEER_CHANNELS: "hops" };
  await using c = await startServer({
    env: { ...env, MLES_PEER_UID: "mles-peer-c" },
  });
  await using b = await startServer({
    env: { ...env, MLES_PEERS: c.wsUrl, MLES_PEER_UID: "mles-peer-b" },
  });
  await using a = await startServer({
    env: { ...env, MLES_PEERS: b.wsUrl, MLES_PEER_UID: "mles-peer-a" },
  });
  for (const s of [a, b]) {
    while (s.server.peering?.states.some((x) => x.state !== "connected")) {
      await sleep(20);
    }
  }
  await using pub = await TestClient.open(a.wsUrl, header("pub", "hops"));
  const subs = [
    await TestClient.open(a.wsUrl, header("s0", "hops")),
    await TestClient.open(b.wsUrl, header("s1", "hops")),
    await TestClient.open(c.wsUrl, header("s2", "hops")),
  ];
  await sleep(300);
  const hists = subs.map(() =>
    hdr.build({
      lowestDiscernibleValue: 1,
      highestTrackableValue: 60_000_000,
      numberOfSignificantValueDigits: 3,
    })
  );
  const counts = subs.map(() => 0);
  subs.forEach((s, i) => {
    s.ws.onmessage = (ev) => {
      const d = ev.data;
      if (typeof d !== "string" || d[0] !== "T") return;
      hists[i].recordValue(
        Math.max(
          1,
          Math.round((performance.now() - Number(d.slice(1))) * 1000),
        ),
      );
      counts[i]++;
    };
  });
  let sent = 0;
  const end = performance.now() + SECONDS * 1000;
  while (performance.now() < end) {
    pub.send(`T${performance.now()}`);
    sent++;
    await sleep(1000 / RATE);
  }
  const deadline = performance.now() + 5000;
  while (counts.some((n) => n < sent) && performance.now() < deadline) {
    await sleep(10);
  }
  await Promise.all(subs.map((s) => s.close()));
  if (counts.some((n) => n !== sent)) {
    throw new Error(`lost frames: sent ${sent}, got ${counts}`);
  }
  return hists.map((h) => ({
    p50: h.getValueAtPercentile(50) / 1000,
    p99: h.getValueAtPercentile(99) / 1000,
  }));
}

const rows: Record<string, number[]> = {};
const add = (k: string, v: number) => (rows[k] ??= []).push(v);
for (let r = 0; r < REPS; r++) {
  const [h0, h1, h2] = await once();
  add("no hop (same server) p50 ms", h0.p50);
  add("no hop (same server) p99 ms", h0.p99);
  add("1 hop p50 ms", h1.p50);
  add("1 hop p99 ms", h1.p99);
  add("2 hops p50 ms", h2.p50);
  add("2 hops p99 ms", h2.p99);
  add("extra p50 per hop ms", (h2.p50 - h0.p50) / 2);
  console.error(`rep ${r + 1}: ${JSON.stringify([h0, h1, h2])}`);
}
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
console.log(
  `\nPeering hops, ${RATE} frames/s for ${SECONDS} s, ${REPS} reps, median (min-max):\n`,
);
console.log("| figure | value |\n| --- | --- |");
for (const [k, xs] of Object.entries(rows)) {
  console.log(
    `| ${k} | ${median(xs).toFixed(2)} (${Math.min(...xs).toFixed(2)}-${
      Math.max(...xs).toFixed(2)
    }) |`,
  );
}
