/**
 * Resynchronization that sends only what is missing (issue 11), measured:
 * frames crossing the link on a reconnect with nothing missing, with k
 * missing on either side, and a plain peer's full replay for comparison.
 * Prints the figures: `deno test -A --unstable-kv tests/peer_resync_test.ts`.
 */
import assert from "node:assert/strict";
import { header, startServer, TestClient, type TestServer, waitFor } from "./_helpers.ts";

const K = 7;
const HISTORY = 100;

async function publish(s: TestServer, uid: string, n: number, tag: string) {
  const c = await TestClient.open(s.wsUrl, header(uid, "sync"));
  for (let i = 0; i < n; i++) c.send(`${tag}-${i}`);
  // A second member hears the last one: all stored.
  const w = await TestClient.open(s.wsUrl, header(`${uid}-w`, "sync"));
  for (;;) if ((await w.next(5000)) === `${tag}-${n - 1}`) break;
  await w.close();
  await c.close();
}

for (const transport of ["deno", "node"] as const) {
  Deno.test(`peering resync: a reconnect sends only what is missing (figures printed) [${transport}]`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "mles-resync-" });
    const figures: string[] = [];
    const bEnv = { MLES_KV: `${dir}/b.sqlite3`, MLES_PEER_KEY: "pk" };
    let b: TestServer = await startServer({ env: bEnv, transport });
    const bPort = b.port;
    const aEnv = {
      MLES_KV: `${dir}/a.sqlite3`,
      MLES_PEERS: b.wsUrl,
      MLES_PEER_CHANNELS: "sync",
      MLES_PEER_KEY: "pk",
      MLES_PEER_UID: "mles-peer-a",
    };
    let a: TestServer | undefined;
    /** Starts A, waits for its resync, returns frames B->A and A->B over the link. */
    const connectA = async () => {
      a = await startServer({ env: aEnv, transport });
      const g = a.server.peerGate!;
      await waitFor(() => g.stats.resyncs >= 1, "A's resync", 10_000);
      await waitFor(() => b.server.peerGate!.stats.resyncs >= 1, "B's resync", 10_000);
      await new Promise((r) => setTimeout(r, 300)); // anything extra would show here
      return { toA: g.stats.received, toB: g.stats.sent };
    };
    try {
      await publish(b, "b", HISTORY, "early");
      let m = await connectA();
      figures.push(
        `first connect, A empty, B holds ${HISTORY + 2} frames: B->A ${m.toA}, A->B ${m.toB}`,
      );
      assert.equal(m.toA, HISTORY + 2, "everything A lacks (frames and two headers)");

      await a!.close();
      m = await connectA();
      figures.push(`reconnect, nothing missing: B->A ${m.toA}, A->B ${m.toB}`);
      assert.deepEqual(m, { toA: 0, toB: 0 });

      await a!.close();
      await publish(b, "b2", K, "missing-on-a");
      m = await connectA();
      figures.push(
        `reconnect, ${K} frames (+2 headers) missing on A: B->A ${m.toA}, A->B ${m.toB}`,
      );
      assert.deepEqual(m, { toA: K + 2, toB: 0 });

      // B goes down; A's clients publish k frames; B comes back on its KV file.
      await b.close();
      await publish(a!, "a1", K, "missing-on-b");
      b = await startServer({ env: bEnv, port: bPort, transport });
      const before = a!.server.peerGate!.stats;
      const sent0 = before.sent, received0 = before.received, resyncs0 = before.resyncs;
      await waitFor(() => a!.server.peerGate!.stats.resyncs > resyncs0, "A's resync", 20_000);
      await waitFor(() => b.server.peerGate!.stats.resyncs >= 1, "B's resync", 10_000);
      await new Promise((r) => setTimeout(r, 300));
      const toB = a!.server.peerGate!.stats.sent - sent0;
      const toA = a!.server.peerGate!.stats.received - received0;
      figures.push(`reconnect, ${K} frames (+2 headers) missing on B: B->A ${toA}, A->B ${toB}`);
      assert.deepEqual({ toA, toB }, { toA: 0, toB: K + 2 });
      await a!.close();

      // For comparison: a plain peer (B without the peer key does not treat A as a peer).
      await b.close();
      const p = await startServer({ env: { MLES_KV: `${dir}/b.sqlite3` }, port: bPort });
      a = await startServer({ env: { ...aEnv, MLES_PEER_KEY: "" } });
      const g = a.server.peerGate!;
      await waitFor(() => g.stats.received >= HISTORY, "the plain peer's replay", 10_000);
      await new Promise((r) => setTimeout(r, 500));
      figures.push(
        `reconnect to a plain Mles peer (full replay), nothing missing: B->A ${g.stats.received} (${g.stats.duplicates} dropped as duplicates)`,
      );
      assert.equal(g.stats.received, g.stats.duplicates, "the replay adds nothing");
      await a.close();
      await p.close();
      console.log(figures.join("\n"));
    } finally {
      await a?.close();
      await b.close(); // idempotent
      await Deno.remove(dir, { recursive: true });
    }
  });
}
