/**
 * The behaviour every {@link Bus} shares (bus.ts), written once and run on
 * both implementations by memory_bus_test.ts and kv_bus_test.ts.
 */
import assert from "node:assert/strict";
import type { Bus } from "../src/bus.ts";
import type { Delivery } from "../src/frame.ts";
import { waitFor } from "./_helpers.ts";

/** Makes a fresh bus with the given history limit; `close` releases it and its store. */
export type MakeBus = (limit: number) => Promise<{ bus: Bus; close(): Promise<void> }>;

let ids = 0;
const text = (s: string, historyOnly = false): Delivery => ({
  id: `t.${ids++}`,
  frame: { kind: "text", data: s },
  historyOnly,
});

/** Waits until every delivery has its position (stored); fails after 10 s. */
async function settle(deliveries: Delivery[]): Promise<void> {
  await waitFor(() => deliveries.every((d) => d.pos !== undefined), "frames stored", 10_000);
}

/** Registers the shared bus tests under `name`. */
export function busContract(name: string, make: MakeBus): void {
  Deno.test(`${name}: frames from one publisher are stored in publish order with increasing positions`, async () => {
    const { bus, close } = await make(100);
    try {
      bus.listen({ onFrames: () => {}, onPublishFailed: () => {} });
      await bus.subscribe("order");
      const ds = Array.from({ length: 50 }, (_, i) => text(`m${i}`));
      for (const d of ds) bus.publish("order", d);
      await settle(ds);
      for (let i = 1; i < ds.length; i++) assert.ok(ds[i].pos! > ds[i - 1].pos!);
      const h = await bus.history("order");
      assert.deepEqual(h.deliveries.map((d) => d.frame.data), ds.map((d) => d.frame.data));
      assert.equal(h.lastPos, ds.at(-1)!.pos);
      assert.deepEqual(h.deliveries.map((d) => d.pos), ds.map((d) => d.pos));
      bus.unsubscribe("order");
    } finally {
      await close();
    }
  });

  Deno.test(`${name}: history keeps the last limit frames, oldest first`, async () => {
    const { bus, close } = await make(3);
    try {
      await bus.subscribe("lim");
      const ds = ["a", "b", "c", "d", "e"].map((s) => text(s));
      for (const d of ds) bus.publish("lim", d);
      await settle(ds);
      const h = await bus.history("lim");
      assert.deepEqual(h.deliveries.map((d) => d.frame.data), ["c", "d", "e"]);
      bus.unsubscribe("lim");
    } finally {
      await close();
    }
  });

  Deno.test(`${name}: history includes frames published but not yet stored, once`, async () => {
    const { bus, close } = await make(100);
    try {
      await bus.subscribe("pending");
      const ds = Array.from({ length: 20 }, (_, i) => text(`p${i}`));
      for (const d of ds) bus.publish("pending", d);
      const h = await bus.history("pending"); // no wait: some may still be queued
      assert.deepEqual(h.deliveries.map((d) => d.id), ds.map((d) => d.id));
      await settle(ds);
      bus.unsubscribe("pending");
    } finally {
      await close();
    }
  });

  Deno.test(`${name}: header frames are kept in history with their flag`, async () => {
    const { bus, close } = await make(10);
    try {
      await bus.subscribe("hdr");
      const h1 = text('{"uid":"a","channel":"hdr"}', true);
      const f = text("x");
      bus.publish("hdr", h1);
      bus.publish("hdr", f);
      await settle([h1, f]);
      const h = await bus.history("hdr");
      assert.deepEqual(h.deliveries.map((d) => [d.frame.data, d.historyOnly ?? false]), [
        ['{"uid":"a","channel":"hdr"}', true],
        ["x", false],
      ]);
      bus.unsubscribe("hdr");
    } finally {
      await close();
    }
  });

  Deno.test(`${name}: channels are independent`, async () => {
    const { bus, close } = await make(10);
    try {
      await bus.subscribe("one");
      await bus.subscribe("two");
      const a = text("in-one");
      const b = text("in-two");
      bus.publish("one", a);
      bus.publish("two", b);
      await settle([a, b]);
      assert.deepEqual((await bus.history("one")).deliveries.map((d) => d.frame.data), ["in-one"]);
      assert.deepEqual((await bus.history("two")).deliveries.map((d) => d.frame.data), ["in-two"]);
      assert.deepEqual((await bus.history("three")).deliveries, []);
      bus.unsubscribe("one");
      bus.unsubscribe("two");
    } finally {
      await close();
    }
  });
}
