/**
 * @module
 * The duplicate window peering relies on (SPEC section 6): exact frames are
 * recognised within the window, type is part of the identity, and the oldest
 * entries are forgotten first.
 */
import assert from "node:assert/strict";
import { Dedupe } from "../src/dedupe.ts";

Deno.test("dedupe: a frame is new the first time and seen the second", () => {
  const d = new Dedupe();
  assert.equal(d.seen("text", "hello"), false);
  assert.equal(d.seen("text", "hello"), true);
  assert.equal(d.seen("binary", new Uint8Array([1, 2, 3])), false);
  assert.equal(d.seen("binary", new Uint8Array([1, 2, 3])), true);
  assert.equal(d.size, 2);
});

Deno.test("dedupe: the default window holds 40,000 frames like mles-client", () => {
  assert.equal(new Dedupe().capacity, 40_000);
});

Deno.test("dedupe: type is part of the identity", () => {
  const d = new Dedupe();
  assert.equal(d.seen("text", "abc"), false);
  assert.equal(d.seen("binary", new TextEncoder().encode("abc")), false);
  assert.equal(d.seen("binary", new TextEncoder().encode("abc")), true);
  assert.equal(d.seen("text", "abc"), true);
});

Deno.test("dedupe: a text frame is identified by its UTF-8 bytes, whichever form it arrives in", () => {
  const d = new Dedupe();
  assert.equal(d.seen("text", "päivää"), false);
  assert.equal(d.seen("text", new TextEncoder().encode("päivää")), true);
});

Deno.test("dedupe: frames differing in one byte, in length or as views are told apart correctly", () => {
  const d = new Dedupe();
  const base = new Uint8Array(100).fill(7);
  assert.equal(d.seen("binary", base), false);
  const flipped = base.slice();
  flipped[99] ^= 1;
  assert.equal(d.seen("binary", flipped), false);
  assert.equal(d.seen("binary", base.subarray(0, 99)), false);
  assert.equal(d.seen("binary", new Uint8Array(0)), false);
  assert.equal(d.seen("text", ""), false);
  // The same bytes as a view into a larger buffer: the same frame.
  const big = new Uint8Array(300).fill(7);
  assert.equal(d.seen("binary", big.subarray(150, 250)), true);
});

Deno.test("dedupe: the oldest entries are evicted first when the window is full", () => {
  const d = new Dedupe(3);
  for (const s of ["a", "b", "c"]) assert.equal(d.seen("text", s), false);
  assert.equal(d.seen("text", "d"), false); // evicts "a"
  assert.equal(d.size, 3);
  assert.equal(d.seen("text", "b"), true);
  assert.equal(d.seen("text", "c"), true);
  assert.equal(d.seen("text", "d"), true);
  assert.equal(d.seen("text", "a"), false); // forgotten, so new again; evicts "b"
  assert.equal(d.seen("text", "b"), false); // evicts "c"
  assert.equal(d.seen("text", "d"), true);
  assert.equal(d.size, 3);
});

Deno.test("dedupe: seeing a frame again does not extend its life (FIFO, not LRU)", () => {
  const d = new Dedupe(2);
  d.seen("text", "a");
  d.seen("text", "b");
  assert.equal(d.seen("text", "a"), true);
  d.seen("text", "c"); // evicts "a", the oldest recorded, although it was seen last
  assert.equal(d.seen("text", "b"), true);
  assert.equal(d.seen("text", "a"), false);
});

Deno.test("dedupe: a full window keeps exactly its capacity over many frames", () => {
  const d = new Dedupe(1000);
  for (let i = 0; i < 5000; i++) assert.equal(d.seen("text", `frame ${i}`), false);
  assert.equal(d.size, 1000);
  for (let i = 4000; i < 5000; i++) assert.equal(d.seen("text", `frame ${i}`), true, `frame ${i}`);
  assert.equal(d.seen("text", "frame 3999"), false);
});

Deno.test("dedupe: two windows use different keys but agree on what is a duplicate", () => {
  const a = new Dedupe(), b = new Dedupe();
  for (let i = 0; i < 100; i++) {
    assert.equal(a.seen("text", `m${i}`), false);
    assert.equal(b.seen("text", `m${i}`), false);
  }
  for (let i = 0; i < 100; i++) assert.equal(a.seen("text", `m${i}`), true);
});

Deno.test("dedupe: a capacity that is not a positive integer is refused", () => {
  for (const c of [0, -1, 1.5, NaN]) assert.throws(() => new Dedupe(c), RangeError, String(c));
});
