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
  assert.equal(d.firstSight("text", "hello"), true);
  assert.equal(d.firstSight("text", "hello"), false);
  assert.equal(d.firstSight("binary", new Uint8Array([1, 2, 3])), true);
  assert.equal(d.firstSight("binary", new Uint8Array([1, 2, 3])), false);
  assert.equal(d.size, 2);
});

Deno.test("dedupe: the default window holds 40,000 frames like mles-client", () => {
  assert.equal(new Dedupe().capacity, 40_000);
});

Deno.test("dedupe: type is part of the identity", () => {
  const d = new Dedupe();
  assert.equal(d.firstSight("text", "abc"), true);
  assert.equal(d.firstSight("binary", new TextEncoder().encode("abc")), true);
  assert.equal(d.firstSight("binary", new TextEncoder().encode("abc")), false);
  assert.equal(d.firstSight("text", "abc"), false);
});

Deno.test("dedupe: a text frame is identified by its UTF-8 bytes, whichever form it arrives in", () => {
  const d = new Dedupe();
  assert.equal(d.firstSight("text", "päivää"), true);
  assert.equal(d.firstSight("text", new TextEncoder().encode("päivää")), false);
});

Deno.test("dedupe: frames differing in one byte, in length or as views are told apart correctly", () => {
  const d = new Dedupe();
  const base = new Uint8Array(100).fill(7);
  assert.equal(d.firstSight("binary", base), true);
  const flipped = base.slice();
  flipped[99] ^= 1;
  assert.equal(d.firstSight("binary", flipped), true);
  assert.equal(d.firstSight("binary", base.subarray(0, 99)), true);
  assert.equal(d.firstSight("binary", new Uint8Array(0)), true);
  assert.equal(d.firstSight("text", ""), true);
  // The same bytes as a view into a larger buffer: the same frame.
  const big = new Uint8Array(300).fill(7);
  assert.equal(d.firstSight("binary", big.subarray(150, 250)), false);
});

Deno.test("dedupe: the oldest entries are evicted first when the window is full", () => {
  const d = new Dedupe(3);
  for (const s of ["a", "b", "c"]) assert.equal(d.firstSight("text", s), true);
  assert.equal(d.firstSight("text", "d"), true); // evicts "a"
  assert.equal(d.size, 3);
  assert.equal(d.firstSight("text", "b"), false);
  assert.equal(d.firstSight("text", "c"), false);
  assert.equal(d.firstSight("text", "d"), false);
  assert.equal(d.firstSight("text", "a"), true); // forgotten, so new again; evicts "b"
  assert.equal(d.firstSight("text", "b"), true); // evicts "c"
  assert.equal(d.firstSight("text", "d"), false);
  assert.equal(d.size, 3);
});

Deno.test("dedupe: seeing a frame again does not extend its life (FIFO, not LRU)", () => {
  const d = new Dedupe(2);
  d.firstSight("text", "a");
  d.firstSight("text", "b");
  assert.equal(d.firstSight("text", "a"), false);
  d.firstSight("text", "c"); // evicts "a", the oldest recorded, although it was seen last
  assert.equal(d.firstSight("text", "b"), false);
  assert.equal(d.firstSight("text", "a"), true);
});

Deno.test("dedupe: a full window keeps exactly its capacity over many frames", () => {
  const d = new Dedupe(1000);
  for (let i = 0; i < 5000; i++) assert.equal(d.firstSight("text", `frame ${i}`), true);
  assert.equal(d.size, 1000);
  for (let i = 4000; i < 5000; i++) {
    assert.equal(d.firstSight("text", `frame ${i}`), false, `frame ${i}`);
  }
  assert.equal(d.firstSight("text", "frame 3999"), true);
});

Deno.test("dedupe: two windows use different keys but agree on what is a duplicate", () => {
  const a = new Dedupe(), b = new Dedupe();
  for (let i = 0; i < 100; i++) {
    assert.equal(a.firstSight("text", `m${i}`), true);
    assert.equal(b.firstSight("text", `m${i}`), true);
  }
  for (let i = 0; i < 100; i++) assert.equal(a.firstSight("text", `m${i}`), false);
});

Deno.test("dedupe: a capacity that is not a positive integer is refused", () => {
  for (const c of [0, -1, 1.5, NaN]) assert.throws(() => new Dedupe(c), RangeError, String(c));
});
