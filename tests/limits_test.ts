/** Limits (issue: hardening): each refuses the excess clearly and harms nobody else. */
import assert from "node:assert/strict";
import { loadConfig } from "../src/config.ts";
import { CLOSING_BURST_S } from "../src/session.ts";
import { header, joinInOrder, rawUpgrade, startServer, TestClient, waitFor } from "./_helpers.ts";

Deno.test("limits: new connections per IP over MLES_RATE_LIMIT are refused with 429 before upgrade", async () => {
  await using s = await startServer({ env: { MLES_RATE_LIMIT: "3" } });
  const ok = [];
  for (let i = 0; i < 3; i++) ok.push(await TestClient.open(s.wsUrl));
  const res = await rawUpgrade(s.port);
  assert.match(res, /^HTTP\/1\.1 429/);
  assert.match(res, /retry-after: 60/i);
  assert.match(res, /Too many connections: limit is 3 per minute per address/);
  assert.equal(s.server.metrics.refusedUpgrades.get("429"), 1, "an HTTP status, in its own series");
  assert.equal(s.server.metrics.rejected.get("429"), undefined, "never counted as a close code");
  await Promise.all(ok.map((c) => c.close()));
});

Deno.test("limits: on Deno.serve a connection sending more than MLES_MAX_FRAMES_PER_S is closed 1008; others go on", async () => {
  await using s = await startServer({ env: { MLES_MAX_FRAMES_PER_S: "20" }, transport: "deno" });
  await using g = await joinInOrder(s, header("flood", "r"), header("calm", "r"), header("b", "r"));
  const [flood, calm, b] = g.clients;
  await b.take(2);
  for (let i = 0; i < 20 * CLOSING_BURST_S + 50; i++) flood.send(`f${i}`);
  assert.deepEqual(await flood.waitClosed(), {
    code: 1008,
    reason: "Too many frames: limit is 20 per second",
  });
  calm.send("calm");
  let f = await b.next();
  while (f !== "calm") f = await b.next(); // b got the flood's first frames, then calm's
  assert.equal(f, "calm");
});

Deno.test("limits: on Deno.serve a connection sending more than MLES_MAX_BYTES_PER_S is closed 1008", async () => {
  await using s = await startServer({
    env: { MLES_MAX_BYTES_PER_S: "10000", MLES_MAX_FRAME_BYTES: "10000" },
    transport: "deno",
  });
  await using g = await joinInOrder(s, header("big", "rb"));
  const [big] = g.clients;
  for (let i = 0; i < 3 * CLOSING_BURST_S + 5; i++) big.send(new Uint8Array(4000));
  assert.deepEqual(await big.waitClosed(), {
    code: 1008,
    reason: "Too many bytes: limit is 10000 per second",
  });
});

Deno.test("limits: under deno task start a connection over MLES_MAX_FRAMES_PER_S is paced by TCP, not closed; every frame arrives in order", async () => {
  await using s = await startServer({ env: { MLES_MAX_FRAMES_PER_S: "20" }, transport: "node" });
  await using g = await joinInOrder(s, header("fast", "pace"), header("b", "pace"));
  const [fast, b] = g.clients;
  await b.take(1); // fast's join
  const t0 = performance.now();
  const pad = "x".repeat(16 * 1024);
  for (let i = 0; i < 60; i++) fast.send(`f${i}|${pad}`);
  const got = await b.take(60, 10_000);
  const ms = performance.now() - t0;
  assert.deepEqual(got, Array.from({ length: 60 }, (_, i) => `f${i}|${pad}`));
  // 20 at once (the burst) and what the server had already read when it
  // stopped reading (at most about 128 KiB: 8 of these frames), then the
  // rest at 20 a second: at least 1.6 s.
  assert.ok(ms >= 1000, `paced: 60 frames at 20 per second took ${ms.toFixed(0)} ms`);
  assert.equal(fast.ws.readyState, WebSocket.OPEN, "the fast client is still connected");
  fast.send("after");
  assert.equal(await b.next(5000), "after");
});

Deno.test("limits: under deno task start a client sending thousands of frames in one write is read slowly, and every frame arrives once, in order", async () => {
  // Rates off: this is the burst guard alone (more than 64 messages in one turn).
  await using s = await startServer({
    env: { MLES_MAX_FRAMES_PER_S: "0", MLES_MAX_BYTES_PER_S: "0" },
    transport: "node",
  });
  await using g = await joinInOrder(s, header("bulk", "burst"), header("b", "burst"));
  const [bulk, b] = g.clients;
  await b.take(1);
  const n = 5000;
  for (let i = 0; i < n; i++) bulk.send(`m${i}`);
  bulk.send("last");
  const got = await b.take(n + 1, 20_000);
  assert.deepEqual(got, [...Array.from({ length: n }, (_, i) => `m${i}`), "last"]);
  bulk.send("after");
  assert.equal(await b.next(5000), "after", "back on the fast path, still delivering");
});

Deno.test("limits: under deno task start a connection over MLES_MAX_BYTES_PER_S is paced likewise", async () => {
  await using s = await startServer({
    env: { MLES_MAX_BYTES_PER_S: "100000", MLES_MAX_FRAME_BYTES: "100000" },
    transport: "node",
  });
  await using g = await joinInOrder(s, header("big", "paceb"), header("b", "paceb"));
  const [big, b] = g.clients;
  await b.take(1);
  const t0 = performance.now();
  for (let i = 0; i < 25; i++) big.send(new Uint8Array(10_000).fill(i));
  const got = await b.take(25, 10_000);
  const ms = performance.now() - t0;
  assert.deepEqual(got.map((f) => (f as Uint8Array)[0]), Array.from({ length: 25 }, (_, i) => i));
  // 100,000 bytes at once, then 150,000 more at 100,000 a second: about 1.5 s.
  assert.ok(ms >= 1000, `paced: 250,000 bytes at 100,000 per second took ${ms.toFixed(0)} ms`);
  assert.equal(big.ws.readyState, WebSocket.OPEN);
});

Deno.test("limits: connections beyond MLES_MAX_CONNECTIONS are refused with 503", async () => {
  await using s = await startServer({ env: { MLES_MAX_CONNECTIONS: "2" } });
  await using a = await TestClient.open(s.wsUrl);
  await using b = await TestClient.open(s.wsUrl);
  assert.match(await rawUpgrade(s.port), /^HTTP\/1\.1 503[\s\S]*limit is 2 here/);
  await b.close();
  await new Promise((r) => setTimeout(r, 50));
  await using c = await TestClient.open(s.wsUrl);
  assert.equal(c.ws.readyState, WebSocket.OPEN);
  assert.equal(a.ws.readyState, WebSocket.OPEN);
});

Deno.test("limits: history replayed to a newcomer stays within MLES_HISTORY_MAX_BYTES", async () => {
  await using s = await startServer({ env: { MLES_HISTORY_MAX_BYTES: "100" } });
  await using g = await joinInOrder(s, header("a", "hb"), header("w", "hb"));
  const [a, w] = g.clients;
  await w.take(1);
  for (let i = 0; i < 5; i++) a.send(`${i}`.repeat(40));
  await w.take(5);
  await using late = await TestClient.open(s.wsUrl, header("late", "hb"));
  assert.deepEqual(await late.take(2), ["3".repeat(40), "4".repeat(40)]);
  a.send("live");
  assert.equal(await late.next(), "live");
});

/** Per-address limits at their real defaults (startServer turns them off for other suites). */
const DEFAULTS = { MLES_MAX_CONNECTIONS_PER_IP: "", MLES_JOIN_RATE: "", MLES_CHANNEL_RATE: "" };

Deno.test("row 7: the 61st join from one address within a minute is closed 1008 (MLES_JOIN_RATE=60)", async () => {
  await using s = await startServer({ env: { ...DEFAULTS, MLES_JOIN_RATE: "60" } });
  const clients: TestClient[] = [];
  try {
    for (let i = 0; i < 60; i++) {
      clients.push(await TestClient.open(s.wsUrl, header(`u${i}`, `c${i % 5}`)));
    }
    await waitFor(() => s.server.hub.joinedCount === 60, "60 joined");
    await using over = await TestClient.open(s.wsUrl, header("u60", "c0"));
    assert.deepEqual(await over.waitClosed(), {
      code: 1008,
      reason: "Cannot join: limit is 60 joins per minute per address",
    });
    assert.equal(s.server.hub.joinedCount, 60);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
});

Deno.test("row 7: a 61st different channel from one address within an hour is refused (MLES_CHANNEL_RATE=60); known channels still join", async () => {
  await using s = await startServer({
    env: { ...DEFAULTS, MLES_JOIN_RATE: "1000", MLES_CHANNEL_RATE: "60" },
  });
  for (let i = 0; i < 60; i++) {
    const c = await TestClient.open(s.wsUrl, header("u", `new${i}`));
    await waitFor(() => s.server.hub.joinedCount === 1, `joined new${i}`);
    await c.close();
    await waitFor(() => s.server.hub.joinedCount === 0, `left new${i}`);
  }
  await using over = await TestClient.open(s.wsUrl, header("u", "new60"));
  assert.deepEqual(await over.waitClosed(), {
    code: 1008,
    reason: "Cannot join: limit is 60 different channels per hour per address",
  });
  await using again = await TestClient.open(s.wsUrl, header("v", "new0"));
  assert.ok(typeof (await again.next()) === "string", "joined a known channel and got its history");
});

Deno.test("row 7: the 257th open connection of one address gets 429 (MLES_MAX_CONNECTIONS_PER_IP=256)", async () => {
  await using s = await startServer({ env: { MLES_MAX_CONNECTIONS_PER_IP: "256" } });
  const open: TestClient[] = [];
  try {
    for (let i = 0; i < 256; i++) open.push(await TestClient.open(s.wsUrl));
    assert.match(
      await rawUpgrade(s.port),
      /^HTTP\/1\.1 429[\s\S]*Too many open connections: limit is 256 per address/,
    );
  } finally {
    await Promise.all(open.map((c) => c.close()));
  }
});

Deno.test("row 7: per-address budgets are on by default (1,024 connections, 600 joins a minute, 600 new channels an hour)", () => {
  const c = loadConfig({});
  assert.equal(c.joinRatePerMinute, 600);
  assert.equal(c.channelRatePerHour, 600);
  assert.equal(c.maxConnectionsPerIp, 1024);
});

Deno.test("row 6: a channel filled with big frames stays joinable: a newcomer gets the newest 8 MiB (the default bound) and stays", async () => {
  // Defaults but the filler's byte rate: on deno task start's transport its
  // 20 MiB are paced to MLES_MAX_BYTES_PER_S, raised to 4 MiB a second here
  // so that filling takes 5 s instead of 20.
  await using s = await startServer({
    env: { MLES_KV: ":memory:", MLES_MAX_BYTES_PER_S: String(4 * 1024 * 1024) },
    transport: "node",
  });
  await using g = await joinInOrder(s, header("filler", "big"), header("witness", "big"));
  const [pub, w] = g.clients;
  await w.take(1); // the filler's header
  const mib = new Uint8Array(1024 * 1024);
  for (let i = 0; i < 20; i++) {
    mib[0] = i;
    pub.send(mib);
    const f = await w.next(10_000) as Uint8Array; // paced by a reader: every frame is stored
    assert.equal(f[0], i);
  }
  await waitFor(() => s.server.metrics.storeQueueBytes === 0, "all 20 MiB stored", 20_000);
  const t0 = performance.now();
  await using late = await TestClient.open(s.wsUrl, header("late", "big"));
  const first = await late.next(10_000);
  const firstMs = performance.now() - t0;
  const got = [first];
  for (;;) {
    const f = await late.next(1000).catch(() => undefined);
    if (f === undefined) break;
    got.push(f);
  }
  const frames = got.filter((f) => f instanceof Uint8Array) as Uint8Array[];
  // 8 frames of 1 MiB fit the 8 MiB bound (headers are small): the newest 8, in order.
  assert.deepEqual(frames.map((f) => f[0]), [12, 13, 14, 15, 16, 17, 18, 19]);
  assert.equal(late.ws.readyState, WebSocket.OPEN, "not closed as slow");
  console.log(`time to first history frame: ${firstMs.toFixed(0)} ms (20 x 1 MiB stored)`);
});
