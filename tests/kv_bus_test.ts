/**
 * The shared bus contract on {@link KvBus} with real Deno KV, plus what only
 * the KV bus does: cross-handle delivery, group commit, bounded watching.
 */
import assert from "node:assert/strict";
import type { Delivery } from "../src/frame.ts";
import { KvBus, type KvBusOptions } from "../src/kv_bus.ts";
import { Logger } from "../src/log.ts";
import { Metrics } from "../src/metrics.ts";
import { busContract } from "./bus_contract.ts";
import { waitFor } from "./_helpers.ts";

function kvBus(
  kv: Deno.Kv,
  limit: number,
  origin = crypto.randomUUID().slice(0, 8),
  more: Partial<KvBusOptions> = {},
) {
  const metrics = new Metrics(origin);
  const bus = new KvBus(kv, {
    historyLimit: limit,
    ttlMs: 86_400_000,
    origin,
    metrics,
    log: new Logger("error"),
    ...more,
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

/** `n` KV handles on one file, as `n` isolates hold them, each with its bus. */
async function handles(n: number, limit = 100, more: Partial<KvBusOptions> = {}) {
  const dir = await Deno.makeTempDir({ prefix: "mles-kvbus-" });
  const kvs = await Promise.all(
    Array.from({ length: n }, () => Deno.openKv(`${dir}/kv.sqlite3`)),
  );
  const buses = kvs.map((kv, i) => kvBus(kv, limit, `iso${i}`, more));
  return {
    dir,
    kvs,
    buses,
    async [Symbol.asyncDispose]() {
      for (const b of buses) await b.bus.close();
      for (const kv of kvs) kv.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Two KV handles on one file, as two isolates hold them. */
async function twoHandles(limit = 100, more: Partial<KvBusOptions> = {}) {
  const h = await handles(2, limit, more);
  return { ...h, a: h.buses[0], b: h.buses[1] };
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
  assert.deepEqual(got.map((d) => d.pos), sent.map((d) => d.pos));
});

Deno.test("kv bus: group commit stores a burst in far fewer commits than frames", async () => {
  await using h = await twoHandles(2000);
  await h.a.bus.subscribe("burst");
  const sent = Array.from({ length: 1000 }, (_, i) => frame(`b${i}`));
  const before = h.a.metrics.kvCommits;
  for (const d of sent) h.a.bus.publish("burst", d);
  await waitFor(() => sent.every((d) => d.pos !== undefined), "all stored");
  const commits = h.a.metrics.kvCommits - before;
  assert.ok(commits <= 20, `1000 frames took ${commits} commits`);
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
  await waitFor(() => early.pos !== undefined, "early stored");
  const got: Delivery[] = [];
  h.b.bus.listen({ onFrames: (_c, ds) => got.push(...ds), onPublishFailed: () => {} });
  await h.b.bus.subscribe("late");
  h.a.bus.publish("late", frame("after"));
  // A later marker from the same publisher: once it is in, "early" had its chance.
  h.a.bus.publish("late", frame("marker"));
  await waitFor(() => got.some((d) => d.frame.data === "marker"), "marker delivered");
  assert.deepEqual(got.map((d) => d.frame.data), ["after", "marker"]);
});

const bin = (n: number, fill: number): Delivery => ({
  id: `b.${n}.${ids++}`,
  frame: { kind: "binary", data: new Uint8Array(n).fill(fill) },
});
let ids = 0;

Deno.test("kv bus: 4 writers on one channel store every frame exactly once, in each publisher's order, with no conflict", async () => {
  await using h = await handles(4, 10_000);
  const got = h.buses.map(() => [] as Delivery[]);
  h.buses.forEach((b, i) =>
    b.bus.listen({ onFrames: (_c, ds) => got[i].push(...ds), onPublishFailed: () => {} })
  );
  for (const b of h.buses) await b.bus.subscribe("hot");
  const per = 300;
  const sent = h.buses.map((_, i) => Array.from({ length: per }, (_, n) => frame(`w${i}:${n}`)));
  for (let n = 0; n < per; n++) {
    h.buses.forEach((b, i) => b.bus.publish("hot", sent[i][n]));
    if (n % 25 === 0) await new Promise((r) => setTimeout(r, 1));
  }
  const all = sent.flat();
  await waitFor(() => all.every((d) => d.pos !== undefined), "all stored", 20_000);
  assert.equal(new Set(all.map((d) => d.pos)).size, all.length, "every frame has its own position");
  for (const list of sent) {
    for (let n = 1; n < list.length; n++) assert.ok(list[n].pos! > list[n - 1].pos!, "order kept");
  }
  // Every isolate received the other three's frames once, in commit order.
  await waitFor(() => got.every((g) => g.length >= per * 3), "deliveries", 20_000);
  got.forEach((g, i) => {
    assert.equal(g.length, per * 3, `isolate ${i} got ${g.length}`);
    const ps = g.map((d) => d.pos!);
    assert.deepEqual(ps, [...ps].sort(), `isolate ${i}: commit order`);
    assert.ok(g.every((d) => !d.frame.data.toString().startsWith(`w${i}:`)), "own frames not back");
  });
  // History reads the same from every isolate.
  const hs = await Promise.all(h.buses.map((b) => b.bus.history("hot")));
  for (const x of hs) {
    assert.equal(x.deliveries.length, per * 4);
    assert.deepEqual(x.deliveries.map((d) => d.pos), hs[0].deliveries.map((d) => d.pos));
  }
  assert.deepEqual(hs[0].deliveries.map((d) => d.pos), all.map((d) => d.pos).sort());
  for (const b of h.buses) assert.equal(b.metrics.kvCommitErrors, 0);
});

Deno.test("kv bus: frames of every size class at full rate are stored and read back with no commit error", async () => {
  await using h = await twoHandles(1000);
  const got: Delivery[] = [];
  h.b.bus.listen({ onFrames: (_c, ds) => got.push(...ds), onPublishFailed: () => {} });
  await h.a.bus.subscribe("sizes");
  await h.b.bus.subscribe("sizes");
  const sizes = [64, 60_000, 65_536, 65_537, 800 * 1024, 4 * 1024 * 1024];
  const sent: Delivery[] = [];
  for (const [k, n] of sizes.entries()) {
    const count = n >= 800 * 1024 ? 3 : 40;
    for (let i = 0; i < count; i++) sent.push(bin(n, (k * 31 + i) & 0xff));
  }
  // Text too: one byte per unit (Latin-1) and two (beyond), over a value and over a commit.
  sent.push(
    { id: "t.latin", frame: { kind: "text", data: "é".repeat(70_000) } },
    { id: "t.wide", frame: { kind: "text", data: "✓".repeat(300_000) } },
  );
  for (const d of sent) assert.ok(h.a.bus.publish("sizes", d));
  await waitFor(() => got.length >= sent.length, "every frame on the other isolate", 60_000);
  assert.deepEqual(got.map((d) => d.id), sent.map((d) => d.id));
  for (let i = 0; i < sent.length; i++) assert.deepEqual(got[i].frame, sent[i].frame);
  assert.equal(h.a.metrics.kvCommitErrors, 0, "no commit was refused");
});

Deno.test("kv bus: a channel flooded with 61,000-byte frames still stores the next small frame", async () => {
  await using h = await twoHandles(200, { readerSlackBytes: 1024 * 1024 });
  await h.a.bus.subscribe("flood");
  const flood = Array.from({ length: 400 }, (_, i) => bin(61_000, i & 0xff));
  for (const d of flood) assert.ok(h.a.bus.publish("flood", d));
  const small = frame("still here");
  assert.ok(h.a.bus.publish("flood", small));
  await waitFor(() => small.pos !== undefined, "small frame stored", 30_000);
  assert.equal(h.a.metrics.kvCommitErrors, 0);
  const hist = await h.b.bus.history("flood");
  assert.equal(hist.deliveries.at(-1)!.frame.data, "still here");
});

Deno.test("kv bus: retention keeps the newest frames within the frame limit, the byte bound and the reader slack", async () => {
  await using h = await twoHandles(10, { historyMaxBytes: 5000, readerSlackBytes: 3000 });
  const { bus } = h.a;
  const kv = h.kvs[0];
  const entries = async () => {
    let n = 0;
    for await (const e of kv.list({ prefix: ["mles", "e"] })) if (e.key[3] !== "~trim") n++;
    return n;
  };
  // By count: 30 small frames, one commit each.
  for (let i = 0; i < 30; i++) {
    const d = frame(`c${i}`);
    bus.publish("count", d);
    await waitFor(() => d.pos !== undefined, "stored");
  }
  await bus.trimNow("count");
  const kept = (await bus.history("count")).deliveries.map((d) => d.frame.data);
  assert.deepEqual(kept, Array.from({ length: 10 }, (_, i) => `c${20 + i}`));
  // Window (10) plus slack (3000 bytes of 2-byte frames): at most 10 + 1500 batches, here all 30.
  assert.ok(await entries() <= 30);
  // By bytes: 1,000-byte frames; history holds at most 5 (5,000 bytes), storage 5 + 3 of slack.
  for (let i = 0; i < 20; i++) {
    const d = bin(1000, i);
    bus.publish("bytes", d);
    await waitFor(() => d.pos !== undefined, "stored");
  }
  await bus.trimNow("bytes");
  const hb = await bus.history("bytes");
  assert.equal(hb.deliveries.length, 5);
  assert.deepEqual(hb.deliveries.map((d) => (d.frame.data as Uint8Array)[0]), [15, 16, 17, 18, 19]);
  let stored = 0;
  const { channelKey } = await import("../src/kv_keys.ts");
  const ck = await channelKey("bytes");
  for await (const e of kv.list({ prefix: ["mles", "e", ck] })) if (e.key[3] !== "~trim") stored++;
  assert.equal(stored, 5 + 3, "window plus slack, in batches");
});

Deno.test("kv bus: a reader behind trimmed frames counts a gap and goes on with the new ones", async () => {
  await using h = await twoHandles(2, { readerSlackBytes: 0 });
  const got: Delivery[] = [];
  h.b.bus.listen({ onFrames: (_c, ds) => got.push(...ds), onPublishFailed: () => {} });
  await h.a.bus.subscribe("gap");
  await h.b.bus.subscribe("gap");
  h.b.bus.unsubscribe("gap"); // b stops reading; a writes and trims past where b was
  for (let i = 0; i < 10; i++) {
    const d = frame(`g${i}`);
    h.a.bus.publish("gap", d);
    await waitFor(() => d.pos !== undefined, "stored");
  }
  await h.a.bus.trimNow("gap");
  await h.b.bus.subscribe("gap");
  const after = frame("after");
  h.a.bus.publish("gap", after);
  await waitFor(() => got.some((d) => d.id === after.id), "new frame delivered");
  assert.deepEqual(got.map((d) => d.frame.data), ["after"]);
});

Deno.test("kv bus: a frame that cannot be stored within the store timeout is reported to its publisher", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles-kvbus-" });
  const kv = await Deno.openKv(`${dir}/kv.sqlite3`);
  const { bus, metrics } = kvBus(kv, 10, "dead", {
    storeTimeoutMs: 300,
    log: new Logger("silent"),
  });
  const failed: string[] = [];
  bus.listen({ onFrames: () => {}, onPublishFailed: (_c, d) => failed.push(d.id) });
  try {
    await bus.subscribe("x");
    bus.unsubscribe("x");
    kv.close(); // every commit now throws
    const d = frame("lost");
    assert.ok(bus.publish("x", d));
    await waitFor(() => failed.length === 1, "reported", 5000);
    assert.deepEqual(failed, [d.id]);
    assert.equal(d.pos, undefined);
    assert.ok(metrics.storeFailures >= 1 && metrics.kvCommitErrors >= 1);
    await waitFor(() => bus.queuedBytes === 0, "queue released");
  } finally {
    await bus.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kv bus: a full store queue refuses the publisher's next frame, and another publisher still gets its share", async () => {
  await using h = await twoHandles(100, { storeQueueBytes: 100_000, sourceQueueBytes: 30_000 });
  await h.a.bus.subscribe("q");
  const flooder = {};
  const other = {};
  let accepted = 0;
  let refused = 0;
  for (let i = 0; i < 100; i++) {
    const d: Delivery = { ...bin(5000, i), source: flooder };
    if (h.a.bus.publish("q", d)) accepted++;
    else refused++;
  }
  assert.ok(accepted >= 6 && accepted <= 7, `accepted ${accepted}`);
  assert.ok(refused > 0);
  const d: Delivery = { ...frame("other"), source: other };
  assert.ok(h.a.bus.publish("q", d), "another publisher is not refused");
  assert.ok(h.a.bus.queuedBytes <= 100_000);
  await waitFor(() => h.a.bus.queuedBytes === 0, "drained");
});

Deno.test("kv bus: positions keep increasing across a restart and after a channel expired", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles-kvbus-" });
  const path = `${dir}/kv.sqlite3`;
  try {
    let last = "";
    {
      const kv = await Deno.openKv(path);
      const { bus } = kvBus(kv, 10, "before");
      const d = frame("one");
      bus.publish("exp", d);
      await waitFor(() => d.pos !== undefined, "stored");
      last = d.pos!;
      await bus.close();
      kv.close();
    }
    const kv = await Deno.openKv(path);
    const kv2 = await Deno.openKv(path);
    const a = kvBus(kv, 10, "after");
    const b = kvBus(kv2, 10, "reader");
    const got: Delivery[] = [];
    b.bus.listen({ onFrames: (_c, ds) => got.push(...ds), onPublishFailed: () => {} });
    try {
      await b.bus.subscribe("exp");
      const d2 = frame("two");
      a.bus.publish("exp", d2);
      await waitFor(() => got.length === 1, "delivered after restart");
      assert.ok(d2.pos! > last, "position after a restart is larger");
      // Expiry removes every stored row of the channel; do what it does.
      for await (const e of kv.list({ prefix: ["mles", "e"] })) await kv.delete(e.key);
      const d3 = frame("three");
      a.bus.publish("exp", d3);
      await waitFor(() => got.length === 2, "delivered after expiry");
      assert.ok(d3.pos! > d2.pos!, "position after expiry is larger");
      assert.deepEqual(got.map((x) => x.frame.data), ["two", "three"]);
    } finally {
      await a.bus.close();
      await b.bus.close();
      kv.close();
      kv2.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kv bus: 100 channels at a steady rate share commits (far fewer commits than frames)", async () => {
  await using h = await twoHandles(200, { batchDelayMs: 20 });
  const names = Array.from({ length: 100 }, (_, i) => `many-${i}`);
  for (const c of names) await h.a.bus.subscribe(c);
  const before = h.a.metrics.kvCommits;
  const all: Delivery[] = [];
  for (let round = 0; round < 5; round++) {
    for (const c of names) {
      const d = frame(`${c}:${round}`);
      all.push(d);
      h.a.bus.publish(c, d);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  await waitFor(() => all.every((d) => d.pos !== undefined), "stored", 10_000);
  const commits = h.a.metrics.kvCommits - before;
  assert.ok(commits <= all.length / 10, `${all.length} frames took ${commits} commits`);
});

Deno.test("kv bus: a batch larger than one value is stored in pages, read back in order everywhere, and trimmed with its pages", async () => {
  await using h = await twoHandles(1000, { readerSlackBytes: 0 });
  const got: Delivery[] = [];
  h.b.bus.listen({ onFrames: (_c, ds) => got.push(...ds), onPublishFailed: () => {} });
  await h.a.bus.subscribe("pages");
  await h.b.bus.subscribe("pages");
  const sent = Array.from({ length: 600 }, (_, i) => bin(1000, i & 0xff));
  for (const d of sent) h.a.bus.publish("pages", d);
  await waitFor(() => got.length >= sent.length, "delivered", 10_000);
  assert.deepEqual(got.map((d) => d.id), sent.map((d) => d.id));
  const pagesStored = async () => {
    let k = 0;
    for await (const _ of h.kvs[0].list({ prefix: ["mles", "p"] })) k++;
    return k;
  };
  assert.ok(await pagesStored() > 0, "overflow pages written");
  const hist = await h.b.bus.history("pages");
  assert.deepEqual(hist.deliveries.map((d) => d.id), sent.map((d) => d.id));
  // 600 more push the first batches out of the window of 1,000: their pages go with them.
  const more = Array.from({ length: 600 }, (_, i) => bin(1000, i & 0xff));
  for (const d of more) h.a.bus.publish("pages", d);
  await waitFor(() => more.every((d) => d.pos !== undefined), "stored", 10_000);
  await h.a.bus.trimNow("pages"); // (the background trim may have run already)
  const entries = new Set<string>();
  for await (const e of h.kvs[0].list({ prefix: ["mles", "e"] })) entries.add(e.key[3] as string);
  for await (const p of h.kvs[0].list({ prefix: ["mles", "p"] })) {
    assert.ok(entries.has(p.key[4] as string), "no page outlives its batch");
  }
  const after = await h.a.bus.history("pages");
  assert.deepEqual(
    after.deliveries.map((d) => d.id),
    [...sent, ...more].slice(-1000).map((d) => d.id),
  );
});

Deno.test("kv bus: trims running at once on one isolate keep exactly the window", async () => {
  await using h = await twoHandles(50, { readerSlackBytes: 0 });
  await h.a.bus.subscribe("racing");
  const sent = Array.from({ length: 200 }, (_, i) => bin(100, i & 0xff));
  for (const d of sent) h.a.bus.publish("racing", d);
  await waitFor(() => sent.every((d) => d.pos !== undefined), "stored", 10_000);
  await Promise.all([h.a.bus.trimNow("racing"), h.a.bus.trimNow("racing")]);
  const after = await h.b.bus.history("racing");
  assert.deepEqual(after.deliveries.map((d) => d.id), sent.slice(-50).map((d) => d.id));
});
