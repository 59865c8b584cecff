/** Configuration from the environment: defaults, ranges, and errors that name the variable. */
import assert from "node:assert/strict";
import { ConfigError, configFromArgs, loadConfig } from "../src/config.ts";

Deno.test("config: defaults match mles-rs and the README", () => {
  const c = loadConfig({});
  assert.equal(c.port, 8000);
  assert.equal(c.key, undefined);
  assert.equal(c.historyLimit, 200);
  assert.equal(c.maxFrameBytes, 4 * 1024 * 1024);
  assert.equal(c.headerTimeoutMs, 10_000);
  assert.equal(c.pingIntervalS, 24);
  assert.equal(c.channelTtlDays, 30);
  assert.equal(c.bus, "kv");
  assert.equal(c.logLevel, "warn");
  assert.ok(Object.isFrozen(c));
});

Deno.test("config: a bad value stops the start with the variable, the range and the value", () => {
  assert.throws(
    () => loadConfig({ MLES_HISTORY_LIMIT: "ten" }),
    (e: Error) =>
      e instanceof ConfigError &&
      e.message ===
        'Cannot start: MLES_HISTORY_LIMIT must be an integer from 1 to 1000000: current value is "ten"',
  );
  assert.throws(() => loadConfig({ MLES_HISTORY_LIMIT: "0" }), /MLES_HISTORY_LIMIT must be/);
  assert.throws(() => loadConfig({ PORT: "70000" }), /PORT must be an integer from 0 to 65535/);
  assert.throws(() => loadConfig({ MLES_MAX_FRAME_BYTES: "1.5" }), /MLES_MAX_FRAME_BYTES/);
  assert.throws(() => loadConfig({ MLES_BUS: "redis" }), /MLES_BUS must be one of kv, memory/);
  assert.throws(
    () => loadConfig({ MLES_MAX_FRAME_BYTES: "2000000", MLES_MAX_BUFFERED_BYTES: "1000000" }),
    /MLES_MAX_BUFFERED_BYTES must be at least MLES_MAX_FRAME_BYTES/,
  );
});

Deno.test("config: one connection's publish rates default to 1,000 frames and 1 MiB a second; 0 turns them off", () => {
  const c = loadConfig({});
  assert.equal(c.maxFramesPerS, 1000);
  assert.equal(c.maxBytesPerS, 1024 * 1024);
  assert.equal(c.maxFrameBytes, 4 * 1024 * 1024, "a largest frame may exceed a second's allowance");
  const off = loadConfig({ MLES_MAX_FRAMES_PER_S: "0", MLES_MAX_BYTES_PER_S: "0" });
  assert.equal(off.maxFramesPerS, 0);
  assert.equal(off.maxBytesPerS, 0);
  assert.equal(
    loadConfig({ MLES_MAX_FRAME_BYTES: "8388608", MLES_MAX_BUFFERED_BYTES: "16777216" })
      .maxFrameBytes,
    8388608,
    "a larger frame bound is fine",
  );
});

Deno.test("config: every bad variable is reported at once", () => {
  assert.throws(
    () => loadConfig({ PORT: "x", MLES_HEADER_TIMEOUT_MS: "-1" }),
    /PORT must be.*; MLES_HEADER_TIMEOUT_MS must be/,
  );
});

Deno.test("config: mles-rs style flags map to their variables and win over the environment", () => {
  const env = { MLES_HISTORY_LIMIT: "10", ...configFromArgs(["--limit", "500", "--port", "9001"]) };
  const c = loadConfig(env);
  assert.equal(c.historyLimit, 500);
  assert.equal(c.port, 9001);
  assert.throws(() => configFromArgs(["--nope"]), /Cannot start: .*--nope.*known flags/);
});
