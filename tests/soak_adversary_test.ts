/**
 * Adversary soak (issue 12), short form of `deno task bench:soak`: a real
 * server process (`deno task start`, defaults, a fresh KV file), two members
 * chatting at 20 frames/s each way, and for 15 s beside them the adversary
 * mix of bench/soak_bench.ts from another process: a flooder with its own
 * subscribers, members that never read (in the chat's channel and the
 * flood's), silent sockets, 60 MiB first frames and join spam, all from
 * 127.0.0.1 at the default per-address limits (the mix holds about 110
 * sockets, under the 1,024 allowed).
 *
 * Asserted: every chat frame arrives once and in order and neither chat
 * member is closed; the server is alive at the end; its VmRSS stays under
 * {@link RSS_PEAK_BOUND} during the mix, and once the adversaries left it
 * returns to within {@link RSS_RETURN_BOUND} of its start. Latency is
 * measured, not asserted (the bench prints the ratios): on a shared 2-core
 * machine it is a figure, not an invariant.
 */
import assert from "node:assert/strict";
import { Chat, KINDS, percentile, spawnAdversaries, startMles } from "../bench/soak_bench.ts";

const MiB = 1024 * 1024;
const SECONDS = 15;
/**
 * The stated bound on the server's RSS during the mix: what the defaults
 * let this mix hold (64 MiB store queue, 16 MiB waiting for each of the 8
 * non-readers in the flood channel and its 2 subscribers, 16 MiB of 60 MiB
 * first frames in flight, baseline about 70 MiB) is about 400 MiB; twice
 * that leaves room for garbage not yet collected.
 */
const RSS_PEAK_BOUND = 800 * MiB;
/** RSS after the adversaries left, as a multiple of RSS at start. */
const RSS_RETURN_BOUND = 1.3;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mib = (n: number) => `${(n / MiB).toFixed(0)} MiB`;

Deno.test({
  name:
    "soak: 15 s of adversaries beside a chat: every frame once and in order, server alive, RSS bounded and back within 30 % of its start",
  sanitizeResources: false, // the server's piped stderr ends with the process
  async fn() {
    const p = await startMles();
    try {
      const chat = await Chat.open(p.wsUrl);
      chat.start(20);
      chat.phase("quiet");
      await sleep(3000);
      let rssStart = Infinity;
      for (let i = 0; i < 4; i++) {
        rssStart = Math.min(rssStart, p.rss());
        await sleep(250);
      }
      let rssPeak = rssStart;
      const sampler = setInterval(() => rssPeak = Math.max(rssPeak, p.rss() || 0), 250);
      const adv = spawnAdversaries(p.port, KINDS, SECONDS);
      await adv.started;
      chat.phase("mix");
      const report = await adv.done;
      clearInterval(sampler);
      chat.phase("after");
      // Leftover sockets close within the header timeout (10 s) plus 2 s.
      await sleep(13_000);
      let rssAfter = Infinity;
      for (let i = 0; i < 12; i++) {
        rssAfter = Math.min(rssAfter, p.rss());
        await sleep(250);
      }
      const closes = [...chat.closes];
      const counts = await chat.stop();
      const alive = p.alive();
      const q = percentile(chat.latencies("quiet"), 99);
      const m = percentile(chat.latencies("mix"), 99);
      console.log(
        `soak_adversary: chat ${JSON.stringify(counts)}; p99 quiet ${q.toFixed(1)} ms, ` +
          `mix ${m.toFixed(1)} ms (${(m / q).toFixed(1)}x); RSS start ${mib(rssStart)}, ` +
          `peak ${mib(rssPeak)}, after ${mib(rssAfter)}; alive ${alive}; adversaries: ` +
          `${report.floodFramesSent} flood frames, ${report.nonreaderJoins} non-reader joins, ` +
          `${report.silentOpened} silent, ${report.bigOpened} big, ${report.joinsTried} spam joins; ` +
          `closes ${JSON.stringify(report.closes)}`,
      );
      assert.deepEqual(closes, [], "no chat member closed");
      assert.ok(counts.sent > 2 * 20 * SECONDS, `chat ran: ${counts.sent} frames sent`);
      assert.equal(counts.lost, 0, "chat frames lost");
      assert.equal(counts.duplicated, 0, "chat frames duplicated");
      assert.equal(counts.reordered, 0, "chat frames reordered");
      assert.ok(alive, "server process alive");
      assert.ok(report.floodFramesSent > 0 && report.joinsTried > 0, "the adversaries ran");
      assert.ok(
        rssPeak < RSS_PEAK_BOUND,
        `RSS peak ${mib(rssPeak)} (bound ${mib(RSS_PEAK_BOUND)})`,
      );
      // Issue 12: RSS back within 20 % of its start once the adversaries
      // left (here 12-16 %; `deno task bench:soak` 16 %). Asserted with 10
      // points of room for a shared machine; before Deno's read buffers were
      // swept on the thread that reads it was 45 % (BENCHMARKS.md "Memory
      // after an attack").
      assert.ok(
        rssAfter <= rssStart * RSS_RETURN_BOUND,
        `RSS after ${mib(rssAfter)}, start ${mib(rssStart)}: more than ${
          Math.round((RSS_RETURN_BOUND - 1) * 100)
        } % over the start`,
      );
    } finally {
      await p.stop();
    }
  },
});
