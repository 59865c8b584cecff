/** Memory return (src/memory_return.ts): available where `deno task start` runs on Linux. */
import assert from "node:assert/strict";
import {
  GROWTH_BYTES,
  INTERVAL_MS,
  QUIET_FRAMES_PER_S,
  ReturnPolicy,
  startMemoryReturn,
} from "../src/memory_return.ts";

const MiB = 1024 * 1024;
const FLOOR = 70 * MiB;
/** Frames one turn adds when busy / quiet. */
const BUSY = (QUIET_FRAMES_PER_S + 1) * INTERVAL_MS / 1000;
const QUIET = QUIET_FRAMES_PER_S * INTERVAL_MS / 1000;

/** Feeds `turns` (RSS above the floor, frames this turn) to a policy; returns its actions. */
function run(
  p: ReturnPolicy,
  turns: [above: number, frames: number][],
  freedPerAction = 0,
): string[] {
  let frames = 0;
  return turns.map(([above, add]) => {
    frames += add;
    const rss = FLOOR + above;
    const a = p.decide({ rss, frames });
    if (a !== "none") p.done(rss, rss - freedPerAction);
    return a;
  });
}

Deno.test({
  name: "memory return: on Linux with FFI a trimmer starts (glibc malloc_trim) and stops",
  ignore: Deno.build.os !== "linux",
  fn() {
    const r = startMemoryReturn(() => 0);
    assert.ok(r, "libc.so.6 malloc_trim is available");
    r.stop();
  },
});

Deno.test("memory return: nothing while RSS is within GROWTH_BYTES of the floor, busy or not", () => {
  const p = new ReturnPolicy(FLOOR, true);
  assert.deepEqual(run(p, [[0, 0], [GROWTH_BYTES - 1, BUSY], [GROWTH_BYTES - 1, 0]]), [
    "none",
    "none",
    "none",
  ]);
});

Deno.test("memory return: above the floor a trim runs, and is not repeated while it finds nothing", () => {
  const p = new ReturnPolicy(FLOOR, false);
  const above = GROWTH_BYTES + 1;
  // The first trim returns nothing: the next turns skip until RSS moves by GROWTH_BYTES.
  assert.deepEqual(run(p, [[above, 0], [above, 0], [above + GROWTH_BYTES, 0]]), [
    "trim",
    "none",
    "trim",
  ]);
  // Trims that return memory are repeated.
  const q = new ReturnPolicy(FLOOR, false);
  assert.deepEqual(run(q, [[above, 0], [above, 0]], GROWTH_BYTES), ["trim", "trim"]);
});

Deno.test("memory return: the first quiet turn after a busy one collects, once per burst, never while busy", () => {
  const p = new ReturnPolicy(FLOOR, true);
  const above = GROWTH_BYTES + 1;
  assert.deepEqual(
    run(p, [
      [above, 0], // the first turn has no rate yet: quiet, nothing was busy
      [above, BUSY],
      [above, BUSY],
      [above, QUIET], // the burst is over
      [above, QUIET],
      [above, BUSY], // a second burst
      [above, 0],
    ]),
    ["trim", "none", "none", "collect", "none", "none", "collect"],
  );
});

Deno.test("memory return: without an exposed gc a quiet turn after a burst only trims", () => {
  const p = new ReturnPolicy(FLOOR, false);
  const above = GROWTH_BYTES + 1;
  assert.deepEqual(run(p, [[above, BUSY], [above, 0]], GROWTH_BYTES), ["trim", "trim"]);
});

Deno.test("memory return: a burst that ends below the bound collects at the next quiet turn above it", () => {
  const p = new ReturnPolicy(FLOOR, true);
  assert.deepEqual(
    run(p, [[0, 0], [0, BUSY], [0, 0], [GROWTH_BYTES + 1, 0]]),
    ["none", "none", "none", "collect"],
  );
});
