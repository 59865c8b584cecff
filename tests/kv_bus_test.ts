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
  const after = frame("after");
  h.a.bus.publish("late", after);
  await waitFor(() => got.length >= 1, "after delivered");
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(got.map((d) => d.frame.data), ["after"]);
});
