/**
 * RateBucket as a pure unit: a stepped clock, no sleeps.
 */
import assert from "node:assert/strict";
import { RateBucket } from "../src/rate_bucket.ts";

function clock() {
  const c = { ms: 1000, now: () => c.ms };
  return c;
}

Deno.test("rate bucket: starts full, allows a burst of one second's worth", () => {
  const c = clock();
  const b = new RateBucket(10, c.now);
  for (let i = 0; i < 10; i++) assert.equal(b.take(1), true, `take ${i}`);
  assert.equal(b.take(1), false);
});

Deno.test("rate bucket: refills evenly at its rate per second", () => {
  const c = clock();
  const b = new RateBucket(10, c.now);
  assert.equal(b.take(10), true);
  assert.equal(b.take(1), false); // now at -1
  c.ms += 200; // +2 tokens
  assert.equal(b.take(1), true);
  assert.equal(b.take(1), false);
});

Deno.test("rate bucket: never holds more than one second's worth", () => {
  const c = clock();
  const b = new RateBucket(5, c.now);
  c.ms += 60_000;
  assert.equal(b.take(5), true);
  assert.equal(b.take(1), false);
});

Deno.test("rate bucket: takes n at once (bytes per second)", () => {
  const c = clock();
  const b = new RateBucket(1000, c.now);
  assert.equal(b.take(600), true);
  assert.equal(b.take(600), false);
  c.ms += 1000;
  assert.equal(b.take(800), true);
});

Deno.test("rate bucket: says how long until the taker is within its allowance again", () => {
  const c = clock();
  const b = new RateBucket(1000, c.now);
  assert.equal(b.waitMs(), 0);
  b.take(1500); // 500 over at 1000 per second
  assert.equal(b.waitMs(), 500);
  c.ms += 200;
  assert.equal(b.waitMs(), 300);
  c.ms += 300;
  assert.equal(b.waitMs(), 0);
});

Deno.test("rate bucket: a smaller burst caps what is taken at once, not the rate", () => {
  const c = clock();
  const b = new RateBucket(100, c.now, 10);
  for (let i = 0; i < 10; i++) assert.equal(b.take(1), true, `take ${i}`);
  assert.equal(b.take(1), false); // at -1
  c.ms += 60_000; // a minute idle refills to the burst, not to the rate
  assert.equal(b.take(10), true);
  assert.equal(b.take(1), false);
  c.ms += 1000; // one second: 100 tokens owed, capped at the burst
  assert.equal(b.waitMs(), 0);
  assert.equal(b.take(10), true);
});
