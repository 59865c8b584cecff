/**
 * No peering bridge ever leaks a hub member (issue 11): a bridge stopped
 * while its local join is pending leaves as soon as the join settles, and
 * quick join/leave cycles with MLES_PEER_CHANNELS=* leave nothing behind.
 */
import assert from "node:assert/strict";
import { Hub } from "../src/hub.ts";
import { Logger } from "../src/log.ts";
import { MemoryBus } from "../src/memory_bus.ts";
import { PeerGate, Peering } from "../src/peer.ts";
import { PeerDedup } from "../src/peer_dedup.ts";
import { header, startServer, TestClient, waitFor } from "./_helpers.ts";

Deno.test("peering: a bridge stopped during its local join leaves no member", async () => {
  const bus = new MemoryBus(10);
  const hub = new Hub(bus, { maxBufferedBytes: 1 << 20 });
  const gate = new PeerGate({
    peered: true,
    peerKey: undefined,
    dedup: new PeerDedup({ kv: undefined }),
    history: () => Promise.resolve([]),
  });
  // The bridge joins at once (no lease): its join is pending when close() runs.
  const peering = new Peering({
    peers: ["ws://127.0.0.1:9/"],
    channels: ["pending"],
    peerKey: undefined,
    uid: "mles-peer-leak",
    hub,
    log: new Logger("silent"),
    gate,
  });
  assert.equal(hub.memberCount, 1, "the bridge's join is under way");
  await peering.close();
  // Its join settled (the member came and went); a stopped link makes no further attempt.
  await waitFor(() => hub.memberCount === 0, "the stopped bridge to leave");
  assert.deepEqual(peering.states, []);
  assert.equal(hub.channelCount, 0);
  assert.equal(gate.links, 0);
  await bus.close();
});

Deno.test("peering: 1,000 quick join/leave cycles with MLES_PEER_CHANNELS=* leave 0 members and 0 followed channels", async () => {
  await using peer = await startServer({ env: { MLES_BUS: "memory" } });
  await using s = await startServer({
    env: { MLES_PEERS: peer.wsUrl, MLES_PEER_CHANNELS: "*", MLES_PEER_UID: "mles-peer-cycles" },
  });
  const gate = s.server.peerGate!;
  for (let i = 0; i < 1000; i += 10) {
    // Ten at a time: each joins (starting bridges) and leaves at once.
    await Promise.all(Array.from({ length: 10 }, async (_, j) => {
      const c = await TestClient.open(s.wsUrl, header(`u${i + j}`, `cycle${(i + j) % 25}`));
      await c.close();
    }));
  }
  const settled = () =>
    s.server.hub.memberCount === 0 && s.server.hub.channelCount === 0 &&
    s.server.peering!.states.length === 0 && gate.links === 0 && gate.dedup.channels === 0;
  await waitFor(settled, "every member, channel and bridge to go", 15_000);
  // A later event than any bridge stopping: the peer has seen every bridge's socket close.
  await waitFor(() => peer.server.hub.memberCount === 0, "the peer to see every bridge go");
  assert.ok(
    settled(),
    JSON.stringify({
      members: s.server.hub.memberCount,
      channels: s.server.hub.channelCount,
      bridges: s.server.peering!.states.length,
      links: gate.links,
    }),
  );
});
