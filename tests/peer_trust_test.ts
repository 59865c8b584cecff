/**
 * Peer treatment only for proven peers, and a duplicate window per channel
 * (issue 12 row 8). A `mles-peer-` uid is a naming convention anyone can
 * type; what proves a peer is an auth computed with MLES_PEER_KEY (or, with
 * no peer key, this server peering itself).
 */
import assert from "node:assert/strict";
import { mlesAuth } from "../src/auth.ts";
import { freePort, header, startServer, TestClient } from "./_helpers.ts";

/** Joins `listener` then `sender`; `sender` sends each of `frames`; returns what `listener` hears. */
async function relay(
  url: string,
  channel: string,
  sender: Record<string, unknown>,
  frames: string[],
  expect: number,
): Promise<string[]> {
  const listener = await TestClient.open(url, header(`listener-${channel}`, channel));
  const s = await TestClient.open(url, sender);
  for (const f of frames) s.send(f);
  s.send("end");
  const got: string[] = [];
  for (;;) {
    const f = await listener.next();
    if (f === "end") break;
    if (typeof f === "string" && !f.startsWith("{")) got.push(f);
  }
  assert.ok(got.length <= expect);
  await s.close();
  await listener.close();
  return got;
}

Deno.test("peer trust: a mles-peer- uid on a server with no peering is an ordinary client (its repeated frames are delivered)", async () => {
  await using s = await startServer();
  const got = await relay(s.wsUrl, "plain", header("mles-peer-fake", "plain"), ["hi", "hi"], 2);
  assert.deepEqual(got, ["hi", "hi"]);
});

Deno.test("peer trust: with MLES_PEER_KEY, only an auth made with the peer key gets peer treatment", async () => {
  await using s = await startServer({ env: { MLES_PEER_KEY: "peer-secret" } });
  const fake = header("mles-peer-fake", "k1", { auth: mlesAuth("mles-peer-fake", "k1") });
  assert.deepEqual(await relay(s.wsUrl, "k1", fake, ["hi", "hi"], 2), ["hi", "hi"]);
  const real = header("mles-peer-real", "k2", {
    auth: mlesAuth("mles-peer-real", "k2", "peer-secret"),
  });
  assert.deepEqual(
    await relay(s.wsUrl, "k2", real, ["hi", "hi"], 2),
    ["hi"],
    "a peer's repeat is a duplicate",
  );
});

Deno.test("peer trust: the duplicate window is per channel (bytes first seen in another channel still pass)", async () => {
  // A peering server (its own peer is down), no peer key: peer uids are trusted by configuration.
  await using s = await startServer({
    env: {
      MLES_PEERS: `ws://127.0.0.1:${freePort()}/`,
      MLES_PEER_CHANNELS: "elsewhere",
      MLES_BUS: "memory",
    },
  });
  assert.deepEqual(await relay(s.wsUrl, "one", header("mles-peer-p", "one"), ["same"], 1), [
    "same",
  ]);
  assert.deepEqual(await relay(s.wsUrl, "two", header("mles-peer-p", "two"), ["same"], 1), [
    "same",
  ]);
});

Deno.test("peer trust: a proven peer is not held to one connection's publish rates (it carries other servers' clients)", async () => {
  await using s = await startServer({
    env: { MLES_PEER_KEY: "peer-secret", MLES_MAX_FRAMES_PER_S: "5" },
    transport: "deno", // where going over a rate closes
  });
  const peer = header("mles-peer-real", "rates", {
    auth: mlesAuth("mles-peer-real", "rates", "peer-secret"),
  });
  const frames = Array.from({ length: 30 }, (_, i) => `p${i}`);
  assert.deepEqual(await relay(s.wsUrl, "rates", peer, frames, 30), frames);
  const client = header("plain", "rates2", { auth: mlesAuth("plain", "rates2") });
  const c = await TestClient.open(s.wsUrl, client);
  for (const f of frames) c.send(f);
  assert.equal((await c.waitClosed()).code, 1008, "an ordinary client is");
});
