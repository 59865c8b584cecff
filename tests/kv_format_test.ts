/**
 * The KV layout as pure functions (src/kv_format.ts), without KV: commits cut
 * from queues never exceed a KV limit and keep each channel's order; trims
 * keep the window and the slack.
 */
import assert from "node:assert/strict";
import type { Delivery, Frame } from "../src/frame.ts";
import {
  CHUNK_BYTES,
  COMMIT_BYTES,
  COMMIT_MUTATIONS,
  FRAME_OVERHEAD,
  inlineCost,
  MAX_PAGES,
  type PlanChannel,
  planCommit,
  planTrim,
  queued,
  type QueuedFrame,
  VALUE_BUDGET,
} from "../src/kv_format.ts";

let n = 0;
const bin = (size: number): QueuedFrame =>
  queued({ id: `f.${n++}`, frame: { kind: "binary", data: new Uint8Array(size) } } as Delivery, 0);
const text = (s: string): QueuedFrame =>
  queued({ id: `t.${n++}`, frame: { kind: "text", data: s } as Frame } as Delivery, 0);

/** Applies plans to the queues until they are empty, checking every commit. */
function drain(channels: { ck: string; shard: number; queue: QueuedFrame[] }[]) {
  const order = new Map(channels.map((c) => [c.ck, [...c.queue]]));
  const stored = new Map<string, QueuedFrame[]>(channels.map((c) => [c.ck, []]));
  let commits = 0;
  while (channels.some((c) => c.queue.length > 0)) {
    const plan = planCommit(channels as PlanChannel[]);
    assert.ok(plan.entries.length + plan.chunks.length > 0, "progress");
    assert.ok(plan.bytes <= COMMIT_BYTES, `commit bytes ${plan.bytes}`);
    assert.ok(plan.mutations <= COMMIT_MUTATIONS, `commit mutations ${plan.mutations}`);
    let muts = 0;
    for (const e of plan.entries) {
      const cuts = [0, ...e.pageStarts, e.frames.length];
      assert.ok(e.pageStarts.length <= MAX_PAGES);
      for (let i = 0; i + 1 < cuts.length; i++) {
        assert.ok(cuts[i + 1] > cuts[i], "no empty page");
        let v = 24;
        for (const q of e.frames.slice(cuts[i], cuts[i + 1])) {
          v += FRAME_OVERHEAD + q.delivery.id.length + Math.max(0, q.inline);
        }
        assert.ok(v <= VALUE_BUDGET, `value ${v}`);
      }
      muts += cuts.length - 1;
    }
    for (const c of plan.chunks) {
      muts += c.to - c.from;
      c.frame.chunksWritten = c.to;
    }
    muts += plan.shards.size * 2;
    assert.ok(muts <= COMMIT_MUTATIONS);
    for (const e of plan.entries) {
      const ch = channels.find((c) => c.ck === e.channel.ck)!;
      for (const q of e.frames) {
        assert.equal(q.chunksWritten, q.chunkCount, "a chunked frame is visible only whole");
      }
      assert.deepEqual(ch.queue.slice(0, e.frames.length), e.frames, "a prefix of the queue");
      ch.queue.splice(0, e.frames.length);
      stored.get(ch.ck)!.push(...e.frames);
    }
    commits++;
  }
  for (const [ck, q] of order) assert.deepEqual(stored.get(ck), q, "order kept");
  return commits;
}

Deno.test("kv format: commits stay within every KV limit for every frame size, and keep each channel's order", () => {
  const sizes = [0, 1, 64, 60_000, 61_000, 65_536, 65_537, 800 * 1024, 4 * 1024 * 1024];
  const channels = Array.from({ length: 5 }, (_, c) => ({
    ck: `ch${c}`,
    shard: c % 3,
    queue: Array.from({ length: 60 }, (_, i) => bin(sizes[(i * 7 + c) % sizes.length])),
  }));
  drain(channels);
});

Deno.test("kv format: text is measured as V8 stores it (one byte per Latin-1 unit, two beyond)", () => {
  assert.equal(inlineCost({ kind: "text", data: "a".repeat(10_000) }), 10_000);
  assert.equal(inlineCost({ kind: "text", data: "✓".repeat(10_000) }), 20_000);
  const latin = text("é".repeat(50_000)); // 100,000 UTF-8 bytes, 50,000 stored
  assert.equal(latin.inline, 50_000);
  const wide = text("✓".repeat(40_000)); // 80,000 stored: chunked as UTF-8
  assert.equal(wide.inline, -1);
  assert.equal(wide.chunkCount, Math.ceil(120_000 / CHUNK_BYTES));
});

Deno.test("kv format: one channel's batch larger than a value overflows into pages of one commit", () => {
  const ch = { ck: "hot", shard: 0, queue: Array.from({ length: 500 }, () => bin(1000)) };
  const plan = planCommit([ch]);
  assert.equal(plan.entries.length, 1);
  assert.ok(plan.entries[0].pageStarts.length >= 7, "pages used");
  assert.ok(plan.entries[0].frames.length >= 450, `${plan.entries[0].frames.length} frames`);
  assert.ok(drain([{ ...ch, queue: ch.queue }]) <= 2);
});

Deno.test("kv format: a frame larger than a commit is written over several, visible only at the end", () => {
  const big = bin(4 * 1024 * 1024);
  const small = bin(10);
  const commits = drain([{ ck: "a", shard: 0, queue: [big, small] }]);
  assert.ok(commits >= 7, `${commits} commits`);
});

Deno.test("kv format: trim keeps the window by frames and bytes, then the slack, and deletes the rest", () => {
  const e = (frames: number, bytes: number) => ({ frames, bytes });
  // Newest first. Window of 5 frames: the first two batches (3 + 3 frames).
  const list = [e(3, 30), e(3, 30), e(2, 20), e(2, 20), e(2, 20)];
  assert.equal(planTrim(list, { limit: 5, maxBytes: 0, slackBytes: 0 }), 2);
  assert.equal(planTrim(list, { limit: 5, maxBytes: 0, slackBytes: 40 }), 4);
  assert.equal(planTrim(list, { limit: 5, maxBytes: 0, slackBytes: 1000 }), -1);
  // Window of 40 bytes: the first two batches (30 + 30 crosses it).
  assert.equal(planTrim(list, { limit: 100, maxBytes: 40, slackBytes: 0 }), 2);
  assert.equal(planTrim([], { limit: 5, maxBytes: 0, slackBytes: 0 }), -1);
});
