/**
 * @module
 * Issue 12 row 10: `/healthz` stops answering `ok` while KV cannot commit.
 * The store is write-locked for real: a second SQLite connection holds an
 * exclusive transaction on the server's KV file, as another process or a
 * stuck writer would; reads of the last committed state keep working.
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { WriteProbe } from "../src/health.ts";
import { startServer } from "./_helpers.ts";

async function health(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${url}healthz`, { signal: AbortSignal.timeout(3000) });
  return { status: res.status, body: await res.json() };
}

Deno.test({
  name: "row 10: /healthz turns 503 within 3 s of KV commits failing and back to ok when they work",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "mles-health-" });
    const path = `${dir}/kv.sqlite3`;
    try {
      await using s = await startServer({ env: { MLES_KV: path } });
      assert.equal((await health(s.url)).status, 200);
      const lock = new DatabaseSync(path);
      // A write inside the transaction takes SQLite's write lock (WAL mode) until ROLLBACK.
      lock.exec("PRAGMA busy_timeout = 5000; BEGIN EXCLUSIVE; CREATE TABLE held_lock (a)");
      const t0 = performance.now();
      let last = await health(s.url);
      while (last.status !== 503 && performance.now() - t0 < 15_000) {
        await new Promise((r) => setTimeout(r, 250));
        last = await health(s.url);
      }
      const ms = performance.now() - t0;
      console.log(`503 after ${ms.toFixed(0)} ms of a write lock`);
      assert.equal(last.status, 503);
      assert.deepEqual(last.body, { status: "unavailable", kv: false });
      assert.ok(ms < 4000, `took ${ms} ms`);
      lock.exec("ROLLBACK");
      lock.close();
      const t1 = performance.now();
      while (last.status !== 200 && performance.now() - t1 < 15_000) {
        await new Promise((r) => setTimeout(r, 250));
        last = await health(s.url);
      }
      assert.equal(last.status, 200);
      console.log(`ok again ${(performance.now() - t1).toFixed(0)} ms after the lock went`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("health: a write probe runs at most once a second however often it is asked", async () => {
  let writes = 0;
  const probe = new WriteProbe(() => Promise.resolve(writes++), { intervalMs: 1000 });
  for (let i = 0; i < 100; i++) assert.equal(await probe.healthy(), true);
  assert.equal(writes, 1);
});

Deno.test("health: a failed write is unhealthy at once, a hanging one after the timeout", async () => {
  let mode: "fail" | "hang" | "ok" = "fail";
  const probe = new WriteProbe(
    () =>
      mode === "fail"
        ? Promise.reject(new Error("x"))
        : mode === "hang"
        ? new Promise(() => {})
        : Promise.resolve(),
    { timeoutMs: 50, intervalMs: 0 },
  );
  assert.equal(await probe.healthy(), false);
  mode = "ok";
  assert.equal(await probe.healthy(), true);
  mode = "hang";
  const t0 = performance.now();
  assert.equal(await probe.healthy(), false);
  assert.ok(performance.now() - t0 >= 45);
});
