/**
 * The duplicate-session rule (SPEC section 5) for a deployment, not per
 * isolate: claims in KV shared by isolates on one KV file, released at close,
 * free within the stated bound after an isolate dies; and the identity uses
 * the auth value, so spellings of one auth are one session (issue 12 row 9).
 */
import assert from "node:assert/strict";
import { mlesAuth } from "../src/auth.ts";
import { CLOSE } from "../src/close.ts";
import {
  CLAIM_COMMITS_IN_FLIGHT,
  CLAIMS_PER_COMMIT,
  KvSessionClaims,
  sessionIdentity,
} from "../src/session_claims.ts";
import { header, type Received, startIsolates, startServer, TestClient } from "./_helpers.ts";

const dup = CLOSE.duplicateSession;

/** Waits until `c`'s frames include `text` (history or live). */
async function hears(c: TestClient, text: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const f: Received = await c.next(Math.max(1, deadline - Date.now()));
    if (f === text) return;
  }
}

/** Opens `h` on `url` and proves it joined: `listener` (already in the channel) hears its frame. */
async function joined(url: string, h: Record<string, unknown>, listener: TestClient, tag: string) {
  const c = await TestClient.open(url, h);
  c.send(tag); // held until the join completes, then published
  await hears(listener, tag);
  return c;
}

/**
 * Like {@link joined}, for an identity just released: the release is one KV
 * commit that starts when the server sees the close, so a join racing it
 * may be refused; it must succeed within `ms`.
 */
async function joinedSoon(
  url: string,
  h: Record<string, unknown>,
  listener: TestClient,
  tag: string,
  ms = 2000,
) {
  const deadline = Date.now() + ms;
  for (;;) {
    const c = await TestClient.open(url, h);
    c.send(tag);
    const out = await Promise.race([hears(listener, tag).then(() => "joined"), c.closed]);
    if (out === "joined") return c;
    assert.ok(Date.now() < deadline, `not free ${ms} ms after the release`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** True if `c` is closed with the duplicate-session close within `ms`, false if it stays open. */
async function refused(c: TestClient, ms = 3000): Promise<boolean> {
  try {
    const cl = await c.waitClosed(ms);
    assert.deepEqual(cl, { code: dup.code, reason: dup.reason });
    return true;
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    return false;
  }
}

async function everyPlacement(n: number) {
  await using iso = await startIsolates(n);
  const urls = iso.isolates.map((i) => i.wsUrl);
  await using listener = await TestClient.open(urls[0], header("listener", "dup"));
  let k = 0;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const h = header(`u${k++}`, "dup", { auth: mlesAuth(`u${k - 1}`, "dup") });
      const first = await joined(urls[i], h, listener, `first ${i}->${j}`);
      const second = await TestClient.open(urls[j], h);
      assert.equal(await refused(second), true, `second join on isolate ${j} after ${i}`);
      // The first is untouched.
      first.send(`still ${i}->${j}`);
      await hears(listener, `still ${i}->${j}`);
      // Released at close: the same identity joins again, on the other placement.
      await first.close();
      const again = await joinedSoon(urls[j], h, listener, `again ${i}->${j}`);
      await again.close();
    }
  }
}

Deno.test("session claims: a second join with the same uid, channel and auth is refused on 2 isolates, every placement", async () => {
  await everyPlacement(2);
});

Deno.test("session claims: the same on 4 isolates, every placement", async () => {
  await everyPlacement(4);
});

Deno.test("session claims: two joins racing on two isolates: exactly one is refused", async () => {
  await using iso = await startIsolates(2);
  for (let k = 0; k < 6; k++) {
    const h = header(`race${k}`, "race");
    const [a, b] = await Promise.all(iso.isolates.map((i) => TestClient.open(i.wsUrl, h)));
    const [ra, rb] = await Promise.all([refused(a, 1500), refused(b, 1500)]);
    assert.equal(Number(ra) + Number(rb), 1, `try ${k}: one refused (${ra}, ${rb})`);
    await a.close();
    await b.close();
  }
});

Deno.test("session claims: an isolate that dies without closing frees its claims within 15 s", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles-claims-" });
  const kvPath = `${dir}/kv.sqlite3`;
  await using survivor = await startIsolates(1, {}, kvPath);
  // The isolate that will die: a worker terminated without any close.
  const w = new Worker(new URL("./_isolate_worker.ts", import.meta.url), { type: "module" });
  const started = Promise.withResolvers<number>();
  w.onmessage = (ev) => ev.data?.port ? started.resolve(ev.data.port) : started.reject(ev.data);
  w.postMessage({ env: { MLES_KV: kvPath } });
  const doomed = `ws://127.0.0.1:${await started.promise}/`;
  try {
    const url = survivor.isolates[0].wsUrl;
    await using listener = await TestClient.open(url, header("listener", "crash"));
    const h = header("victim", "crash");
    const first = await joined(doomed, h, listener, "victim here");
    w.terminate();
    const died = Date.now();
    await first.closed;
    // Held right after the crash, free within the bound.
    let accepted: TestClient | undefined;
    let refusals = 0;
    let freedAfter = 0;
    while (!accepted) {
      freedAfter = Date.now() - died;
      const c = await TestClient.open(url, h);
      if (await refused(c, 1000)) {
        refusals++;
        assert.ok(Date.now() - died < 17_000, "still held 17 s after the crash");
        await new Promise((r) => setTimeout(r, 250));
      } else accepted = c;
    }
    console.log(`claim of a dead isolate freed after ${freedAfter} ms (${refusals} refusals)`);
    assert.ok(refusals > 0, "the claim outlived the socket (it was shared)");
    assert.ok(freedAfter <= 15_000 + 1500, `freed within the bound: ${freedAfter} ms`);
    await accepted.close();
  } finally {
    await survivor.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("session claims: a heartbeat is one commit per isolate, not per session", async () => {
  await using kv = await Deno.openKv(":memory:");
  const claims = new KvSessionClaims(kv, { owner: "iso1", ttlMs: 300, heartbeatMs: 100 });
  for (let i = 0; i < 50; i++) {
    assert.equal(await claims.claim(sessionIdentity(`u${i}`, "c", undefined)), true);
  }
  const owner = await kv.get<{ until: number }>(["mles", "so", "iso1"]);
  const rows = await Array.fromAsync(kv.list({ prefix: ["mles", "sc"] }));
  assert.equal(rows.length, 50);
  // The claims stay held across several ttl periods: only the owner row moves.
  await new Promise((r) => setTimeout(r, 700));
  const later = await kv.get<{ until: number }>(["mles", "so", "iso1"]);
  assert.ok(later.value!.until > owner.value!.until, "owner renewed");
  const rowsLater = await Array.fromAsync(kv.list({ prefix: ["mles", "sc"] }));
  assert.deepEqual(rowsLater.map((r) => r.versionstamp), rows.map((r) => r.versionstamp));
  const other = new KvSessionClaims(kv, { owner: "iso2", ttlMs: 300 });
  assert.equal(await other.claim(sessionIdentity("u7", "c", undefined)), false);
  await claims.close();
  assert.equal(await other.claim(sessionIdentity("u7", "c", undefined)), true);
  await other.close();
});

/** `kv` with its atomic operations counted. */
function countingCommits(kv: Deno.Kv): { kv: Deno.Kv; commits: () => number } {
  let n = 0;
  const counted = new Proxy(kv, {
    get(target, prop) {
      if (prop === "atomic") {
        return () => {
          n++;
          return target.atomic();
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return { kv: counted, commits: () => n };
}

Deno.test("session claims: 200 joins at once share commits, and so do their 200 releases", async () => {
  await using kv = await Deno.openKv(":memory:");
  const counted = countingCommits(kv);
  const claims = new KvSessionClaims(counted.kv, { owner: "iso1" });
  const ids = Array.from({ length: 200 }, (_, i) => sessionIdentity(`u${i}`, "c", undefined));
  const won = await Promise.all(ids.map((id) => claims.claim(id)));
  assert.deepEqual(won, ids.map(() => true));
  const claimCommits = counted.commits();
  // The first few go at once, alone; the rest wait and go CLAIMS_PER_COMMIT together.
  assert.ok(
    claimCommits <= Math.ceil(200 / CLAIMS_PER_COMMIT) + 2 * CLAIM_COMMITS_IN_FLIGHT,
    `${claimCommits} commits for 200 claims`,
  );
  const rows = await Array.fromAsync(kv.list({ prefix: ["mles", "sc"] }));
  assert.equal(rows.length, 200, "one row each");
  // Each is still one session: the same identities again, at once, are refused.
  const again = await Promise.all(ids.slice(0, 30).map((id) => claims.claim(id)));
  assert.deepEqual(again, ids.slice(0, 30).map(() => false));
  const other = new KvSessionClaims(kv, { owner: "iso2" });
  const elsewhere = await Promise.all(ids.slice(0, 30).map((id) => other.claim(id)));
  assert.deepEqual(elsewhere, ids.slice(0, 30).map(() => false), "and on another isolate");
  const before = counted.commits();
  for (const id of ids) claims.release(id);
  for (let i = 0; i < 200; i++) {
    if ((await Array.fromAsync(kv.list({ prefix: ["mles", "sc"] }))).length === 0) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.equal((await Array.fromAsync(kv.list({ prefix: ["mles", "sc"] }))).length, 0);
  assert.ok(
    counted.commits() - before <= 20,
    `${counted.commits() - before} commits for 200 releases`,
  );
  assert.deepEqual(
    await Promise.all(ids.slice(0, 30).map((id) => other.claim(id))),
    ids.slice(0, 30).map(() => true),
    "released: free for anyone",
  );
  await claims.close();
  await other.close();
});

Deno.test("session claims: in a shared commit, a row another isolate holds is refused and the rest are taken", async () => {
  await using kv = await Deno.openKv(":memory:");
  const a = new KvSessionClaims(kv, { owner: "isoA" });
  const b = new KvSessionClaims(kv, { owner: "isoB" });
  const ids = Array.from({ length: 40 }, (_, i) => sessionIdentity(`m${i}`, "c", undefined));
  const odd = ids.filter((_, i) => i % 2 === 1);
  assert.deepEqual(await Promise.all(odd.map((id) => a.claim(id))), odd.map(() => true));
  const won = await Promise.all(ids.map((id) => b.claim(id)));
  assert.deepEqual(won, ids.map((_, i) => i % 2 === 0));
  await a.close();
  await b.close();
});

for (const bus of ["kv", "memory"]) {
  Deno.test(`session claims (MLES_BUS=${bus}): spellings of one auth value are one session (issue 12 row 9)`, async () => {
    await using s = await startServer({ env: { MLES_KEY: "secret", MLES_BUS: bus } });
    await using listener = await TestClient.open(
      s.wsUrl,
      header("bob", "example", {
        auth: mlesAuth("bob", "example", "secret"),
      }),
    );
    const auth = mlesAuth("alice", "example", "secret"); // afa46b8689dae7a5
    const first = await joined(s.wsUrl, header("alice", "example", { auth }), listener, "hi");
    for (const spelling of [auth.toUpperCase(), "+" + auth, "0000" + auth]) {
      const c = await TestClient.open(s.wsUrl, header("alice", "example", { auth: spelling }));
      assert.equal(await refused(c), true, `${spelling} is the same session`);
    }
    await first.close();
  });
}
