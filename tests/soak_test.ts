/**
 * Soak (issue: reliability): many short sessions against one in-process
 * server, to show that nothing a session leaves behind accumulates: hub
 * members and channels return to zero, open sockets return to zero, and the
 * process RSS settles within a bound of where it started.
 *
 * `MLES_SOAK_CYCLES` (default 10000) sets the number of cycles. The run is
 * cut off at {@link DEADLINE_MS}; a cut-off run fails and reports the rate it
 * reached, so a slow machine shows up as a measured figure, not a silently
 * smaller test.
 */
import assert from "node:assert/strict";
import { gauge, header, settledRss, startServer, TestClient, waitFor } from "./_helpers.ts";

const CYCLES = Number(Deno.env.get("MLES_SOAK_CYCLES") ?? 10_000);
const CHANNELS = 200;
const IN_FLIGHT = 50;
/** The whole run (seeding, cycles, settling) must fit in 90 s; cycles stop here. */
const DEADLINE_MS = 80_000;
/** Bound on one cycle (open, history, maybe a frame, close). */
const CYCLE_MS = 10_000;
const MiB = 1024 * 1024;
/** RSS after the run may exceed RSS before by at most this. */
const RSS_BOUND = 64 * MiB;
/** Live JS objects after a full GC: a leak of sessions or sockets shows here first. */
const HEAP_BOUND = 16 * MiB;

const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

/** Resolves `p`, or rejects naming `what` after `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, rej) => {
        t = setTimeout(() => rej(new Error(`${what}: not done within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(t);
  }
}

Deno.test("soak: 10,000 connect/join/leave cycles; RSS settles", async () => {
  assert.ok(Number.isInteger(CYCLES) && CYCLES > 0, `MLES_SOAK_CYCLES must be > 0: got ${CYCLES}`);
  const started = performance.now();
  await using s = await startServer({ env: { MLES_LOG_LEVEL: "error" } });
  const hub = s.server.hub;

  // Seed every channel with one header in history, so each later join
  // receives at least one frame. The hub sends history and completes the join
  // in the same turn, so a first frame means "joined".
  const seeds = await Promise.all(
    Array.from(
      { length: CHANNELS },
      (_, c) => TestClient.open(s.wsUrl, header("seed", `soak-${c}`)),
    ),
  );
  try {
    await waitFor(() => hub.joinedCount === CHANNELS, "seed joins", 20_000);
  } finally {
    await Promise.all(seeds.map((c) => c.close()));
  }
  await waitFor(() => hub.memberCount === 0, "seeds to leave");

  const rssBefore = await settledRss();
  const heapBefore = Deno.memoryUsage().heapUsed;
  let rssPeak = rssBefore;
  let membersPeak = 0;
  let channelsPeak = 0;
  const samples: string[] = [];
  const sample = () => {
    const rss = Deno.memoryUsage().rss;
    rssPeak = Math.max(rssPeak, rss);
    membersPeak = Math.max(membersPeak, hub.memberCount);
    channelsPeak = Math.max(channelsPeak, hub.channelCount);
    return rss;
  };

  let next = 0;
  let done = 0;
  let framesSent = 0;
  const failures: string[] = [];
  const cyclesStart = performance.now();
  const stopAt = started + DEADLINE_MS;
  const cycle = async (i: number) => {
    const c = await TestClient.open(s.wsUrl, header(`u${i}`, `soak-${i % CHANNELS}`));
    try {
      await c.next(CYCLE_MS); // the first history frame: joined
      if (i % 2 === 0) {
        c.send(`frame ${i}`);
        framesSent++;
      }
    } finally {
      await within(c.close(), CYCLE_MS, `close of cycle ${i}`);
    }
  };
  const worker = async () => {
    while (next < CYCLES && performance.now() < stopAt && failures.length < 10) {
      const i = next++;
      try {
        await within(cycle(i), 2 * CYCLE_MS, `cycle ${i}`);
        done++;
      } catch (err) {
        failures.push(`cycle ${i}: ${err instanceof Error ? err.message : err}`);
      }
      if (done > 0 && done % 2000 === 0) {
        const rss = sample();
        samples.push(
          `${done}: rss ${mib(rss)}, members ${hub.memberCount}, channels ${hub.channelCount}`,
        );
      }
    }
  };
  const sampler = setInterval(sample, 250);
  try {
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  } finally {
    clearInterval(sampler);
  }
  const cyclesMs = performance.now() - cyclesStart;

  await waitFor(
    () => hub.memberCount === 0 && hub.channelCount === 0,
    `members (${hub.memberCount}) and channels (${hub.channelCount}) to return to 0`,
    10_000,
  );
  const sockets = await gauge(s, "mles_sockets");
  const rssAfter = await settledRss();
  const heapAfter = Deno.memoryUsage().heapUsed;

  const rate = done / (cyclesMs / 1000);
  console.log(
    [
      `soak: ${done}/${CYCLES} cycles over ${CHANNELS} channels, ${IN_FLIGHT} in flight, ` +
      `${framesSent} frames sent`,
      `soak: ${(cyclesMs / 1000).toFixed(1)} s of cycles = ${rate.toFixed(0)} cycles/s, ` +
      `${(cyclesMs / Math.max(done, 1)).toFixed(3)} ms per cycle (wall, ${IN_FLIGHT} in flight)`,
      `soak: RSS before ${mib(rssBefore)}, peak ${mib(rssPeak)}, after ${mib(rssAfter)} ` +
      `(growth ${mib(rssAfter - rssBefore)}); peak members ${membersPeak}, ` +
      `peak channels ${channelsPeak}; V8 heap used before ${mib(heapBefore)}, ` +
      `after ${mib(heapAfter)}`,
      ...samples.map((l) => `soak:   at ${l}`),
    ].join("\n"),
  );

  assert.deepEqual(failures, [], "every cycle completes");
  assert.equal(
    done,
    CYCLES,
    `only ${done} of ${CYCLES} cycles within ${DEADLINE_MS} ms (${rate.toFixed(0)} cycles/s)`,
  );
  assert.equal(hub.memberCount, 0);
  assert.equal(hub.channelCount, 0);
  assert.equal(sockets, 0, "no server socket left open");
  assert.ok(
    rssAfter - rssBefore < RSS_BOUND,
    `RSS grew by ${mib(rssAfter - rssBefore)} (bound ${mib(RSS_BOUND)})`,
  );
  assert.ok(
    heapAfter - heapBefore < HEAP_BOUND,
    `V8 heap grew by ${mib(heapAfter - heapBefore)} (bound ${mib(HEAP_BOUND)})`,
  );
});
