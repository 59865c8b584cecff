/**
 * The shared bus contract on {@link KvBus} with real Deno KV, plus what only
 * the KV bus does: cross-handle delivery, group commit, bounded watching.
 */
import assert from "node:assert/strict";
import type { Delivery } from "../src/frame.ts";
import { KvBus } from "../src/kv_bus.ts";
import { Logger } from "../src/log.ts";
import { Metrics } from "../src/metrics.ts";
import { busContract } from "./bus_contract.ts";
import { waitFor } from "./_helpers.ts";

function kvBus(kv: Deno.Kv, limit: number, origin = crypto.randomUUID().slice(0, 8)) {
  const metrics = new Metrics(origin);
  const bus = new KvBus(kv, {
    historyLimit: limit,
    ttlMs: 86_400_000,
    origin,
    metrics,
    log: new Logger("error"),
  });
  return { bus, metrics };
}

busContract("kv bus", async (limit) => {
  const kv = await Deno.openKv(":memory:");
  const { bus } = kvBus(kv, limit);
  return {
    bus,
    close: async () => {
      await bus.close();
      kv.close();
    },
  };
});

/** Two KV handles on one file, as two isolates hold them. */
async function twoHandles(limit = 100) {
  const dir = await Deno.makeTempDir({ prefix: "mles-kvbus-" });
  const kv1 = await Deno.openKv(`${dir}/kv.sqlite3`);
  const kv2 = await Deno.openKv(`${dir}/kv.sqlite3`);
  const a = kvBus(kv1, limit, "isoA");
  const b = kvBus(kv2, limit, "isoB");
  return {
    a,
    b,
    async [Symbol.asyncDispose]() {
      await a.bus.close();
      await b.bus.close();
      kv1.close();
      kv2.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

let n = 0;
const frame = (s: string): Delivery => ({ id: `f.${n++}`, frame: { kind: "text", data: s } });

Deno.test("kv bus: frames committed through one handle reach a subscriber on another, once, in order", async () => {
  await using h = await twoHandles();
  const got: Delivery[] = [];
  h.b.bus.listen({ onFrames: (_c, ds) => got.push(...ds), onPublishFailed: () => {} });
  h.a.bus.listen({
    onFrames: () => assert.fail("own frames must not come back"),
    onPublishFailed: () => {},
  });
  await h.a.bus.subscribe("x");
  await h.b.bus.subscribe("x");
  const sent = Array.from({ length: 300 }, (_, i) => frame(`m${i}`));
  for (const d of sent) h.a.bus.publish("x", d);
  await waitFor(() => got.length >= 300, "300 frames on the other handle");
  assert.deepEqual(got.map((d) => d.frame.data), sent.map((d) => d.frame.data));
  assert.deepEqual(got.map((d) => d.seq), sent.map((d) => d.seq));
});

Deno.test("kv bus: group commit stores a burst in far fewer commits than frames", async () => {
  await using h = await twoHandles(2000);
  await h.a.bus.subscribe("burst");
  const sent = Array.from({ length: 1000 }, (_, i) => frame(`b${i}`));
  const before = h.a.metrics.kvCommits;
  for (const d of sent) h.a.bus.publish("burst", d);
  await waitFor(() => sent.every((d) => d.seq !== undefined), "all stored");
  const commits = h.a.metrics.kvCommits - before;
  assert.ok(commits <= 20, `1000 frames took ${commits} commits`);
});

Deno.test("kv bus: concurrent writers on one channel conflict, retry, and lose nothing", async () => {
  await using h = await twoHandles(5000);
  await h.a.bus.subscribe("hot");
  await h.b.bus.subscribe("hot");
  const fromA = Array.from({ length: 400 }, (_, i) => frame(`a${i}`));
  const fromB = Array.from({ length: 400 }, (_, i) => frame(`b${i}`));
  for (let i = 0; i < 400; i++) {
    h.a.bus.publish("hot", fromA[i]);
    h.b.bus.publish("hot", fromB[i]);
    if (i % 50 === 0) await new Promise((r) => setTimeout(r, 1));
  }
  await waitFor(() => [...fromA, ...fromB].every((d) => d.seq !== undefined), "all stored");
  const seqs = [...fromA, ...fromB].map((d) => d.seq!).sort((x, y) => x - y);
  assert.equal(new Set(seqs).size, 800, "every frame has its own seq");
  assert.equal(seqs.at(-1)! - seqs[0] + 1, 800, "no holes");
  for (const list of [fromA, fromB]) {
    for (let i = 1; i < list.length; i++) assert.ok(list[i].seq! > list[i - 1].seq!, "order kept");
  }
  const hist = await h.a.bus.history("hot");
  assert.equal(hist.deliveries.length, 800);
});

Deno.test("kv bus: following 5,000 channels holds one watch stream", async () => {
  await using h = await twoHandles();
  const got = new Map<string, number>();
  h.b.bus.listen({
    onFrames: (c, ds) => got.set(c, (got.get(c) ?? 0) + ds.length),
    onPublishFailed: () => {},
  });
  const names = Array.from({ length: 5000 }, (_, i) => `ch-${i}`);
  await Promise.all(names.map((c) => h.b.bus.subscribe(c)));
  assert.equal(h.b.bus.followedChannels, 5000);
  assert.equal(h.b.bus.watchStreams, 1);
  const picks = [0, 777, 2500, 4999].map((i) => names[i]);
  for (const c of picks) {
    await h.a.bus.subscribe(c);
    h.a.bus.publish(c, frame(`to ${c}`));
  }
  await waitFor(() => picks.every((c) => got.get(c) === 1), "one frame on each picked channel");
  assert.equal(got.size, 4);
  for (const c of names) h.b.bus.unsubscribe(c);
  await waitFor(() => h.b.bus.watchStreams === 0, "watch stream released");
});

Deno.test("kv bus: a subscriber gets only frames committed after it subscribed", async () => {
  await using h = await twoHandles();
  await h.a.bus.subscribe("late");
  const early = frame("early");
  h.a.bus.publish("late", early);
  await waitFor(() => early.seq !== undefined, "early stored");
  const got: Delivery[] = [];
  h.b.bus.listen({ onFrames: (_c, ds) => got.push(...ds), onPublishFailed: () => {} });
  await h.b.bus.subscribe("late");
  const after = frame("after");
  h.a.bus.publish("late", after);
  await waitFor(() => got.length >= 1, "after delivered");
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(got.map((d) => d.frame.data), ["after"]);
});

Deno.test("kv bus: frames outside the window and older than the reader slack are deleted, with their chunks", async () => {
  const kv = await Deno.openKv(":memory:");
  const metrics = new Metrics("trim");
  const bus = new KvBus(kv, {
    historyLimit: 5,
    ttlMs: 86_400_000,
    origin: "trim",
    metrics,
    log: new Logger("error"),
    readerSlackMs: 500,
  });
  const count = async (prefix: Deno.KvKey) => {
    let n = 0;
    for await (const _ of kv.list({ prefix })) n++;
    return n;
  };
  try {
    await bus.subscribe("trim");
    const big: Delivery = {
      id: "big.1",
      frame: { kind: "binary", data: new Uint8Array(200_000).fill(7) },
    };
    const ds = [big, ...Array.from({ length: 1100 }, (_, i) => frame(`t${i}`))];
    for (const d of ds) bus.publish("trim", d);
    await waitFor(() => ds.every((d) => d.seq !== undefined), "all stored");
    assert.ok(await count(["mles", "h"]) > 1000, "young frames are kept for lagging readers");
    // Marks are taken about once a second; once one covering the burst is
    // older than the slack, the next commits delete the burst.
    for (let round = 0; round < 2; round++) {
      await new Promise((r) => setTimeout(r, 1100));
      for (let i = 0; i < 3; i++) {
        const d = frame(`late${round}${i}`);
        bus.publish("trim", d);
        await waitFor(() => d.seq !== undefined, "stored");
      }
    }
    const entries = await count(["mles", "h"]);
    assert.ok(entries >= 5 && entries <= 10, `${entries} entries kept (limit 5)`);
    assert.equal(await count(["mles", "x"]), 0, "the big frame's chunks were deleted with it");
    const h = await bus.history("trim");
    assert.deepEqual(
      h.deliveries.map((d) => d.frame.data),
      ["late01", "late02", "late10", "late11", "late12"],
    );
  } finally {
    await bus.close();
    kv.close();
  }
});
