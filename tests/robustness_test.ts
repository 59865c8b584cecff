/**
 * Load and bad-input behaviour of one server (issue: core). Real sockets,
 * real KV; loops are bounded.
 */
import assert from "node:assert/strict";
import {
  clientTextFrame,
  header,
  joinInOrder,
  type Received,
  startServer,
  TestClient,
  upgradeRequest,
  waitFor,
} from "./_helpers.ts";

/** Publish rates off, for tests of other bounds that publish megabytes in a second. */
const NO_RATES = { MLES_MAX_FRAMES_PER_S: "0", MLES_MAX_BYTES_PER_S: "0" };

Deno.test("load: 50 subscribers and 4 publishers get every frame exactly once, in per-publisher order", async () => {
  await using s = await startServer({ env: { MLES_HISTORY_LIMIT: "10" } });
  const subs: TestClient[] = [];
  for (let i = 0; i < 50; i++) subs.push(await TestClient.open(s.wsUrl, header(`s${i}`, "load")));
  const pubs: TestClient[] = [];
  for (let i = 0; i < 4; i++) pubs.push(await TestClient.open(s.wsUrl, header(`p${i}`, "load")));
  await waitFor(() => s.server.hub.joinedCount === 54, "all joined");
  const per = 100;
  for (let n = 0; n < per; n++) pubs.forEach((p, i) => p.send(`p${i}:${n}`));
  const check = async (c: TestClient, who: string, expectFrom: number[]) => {
    const last = new Map<number, number>();
    let count = 0;
    while (count < expectFrom.length * per) {
      const f = await c.next(10_000);
      if (typeof f !== "string" || f.startsWith("{")) continue; // join headers
      const [p, n] = f.slice(1).split(":").map(Number);
      assert.equal(n, (last.get(p) ?? -1) + 1, `${who}: p${p}:${n} out of order or duplicated`);
      last.set(p, n);
      count++;
    }
    for (const p of expectFrom) assert.equal(last.get(p), per - 1, `${who} from p${p}`);
  };
  await Promise.all([
    ...subs.map((c, i) => check(c, `s${i}`, [0, 1, 2, 3])),
    ...pubs.map((c, i) => check(c, `p${i}`, [0, 1, 2, 3].filter((p) => p !== i))),
  ]);
  await Promise.all([...subs, ...pubs].map((c) => c.close()));
});

/** Opens a WebSocket with raw TCP and never reads from it: its receive window fills up. */
async function neverReads(port: number, uid: string, channel: string): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(upgradeRequest(port));
  await conn.read(new Uint8Array(1024)); // the 101 response; never read again
  await conn.write(clientTextFrame(JSON.stringify(header(uid, channel))));
  return conn;
}

Deno.test("slow consumer: a member that never reads is dropped and never stalls the others", async () => {
  await using s = await startServer({
    // Publish rates off: this is the buffer bound's test (30 MB in seconds).
    env: { MLES_MAX_FRAME_BYTES: "65536", MLES_MAX_BUFFERED_BYTES: "4194304", ...NO_RATES },
  });
  await using g = await joinInOrder(s, header("pub", "slow"), header("fast", "slow"));
  const [pub, fast] = g.clients;
  await fast.take(1);
  const stuck = await neverReads(s.port, "stuck", "slow");
  await waitFor(() => s.server.hub.joinedCount === 3, "stuck joined");
  const chunk = new Uint8Array(60_000);
  // 30 MB in bursts the fast member keeps up with: far more than the socket
  // buffers plus the 4 MiB limit for the member that never reads.
  // (Bursts of 4: the fast member never has more than a quarter of its bound waiting.)
  for (let i = 0; i < 500; i += 4) {
    for (let k = i; k < i + 4; k++) {
      chunk[0] = k & 0xff;
      pub.send(chunk);
    }
    for (let k = i; k < i + 4; k++) {
      const f = await fast.next(10_000) as Uint8Array;
      assert.equal(f[0], k & 0xff);
    }
  }
  await waitFor(() => s.server.hub.memberCount === 2, "stuck member dropped");
  assert.equal(s.server.metrics.dropped.get("1013"), 1);
  stuck.close();
});

Deno.test("slow consumer: a dropped member is gone at once: its identity can join again while its TCP is still open", async () => {
  await using s = await startServer({
    // Publish rates off: this is the buffer bound's test (30 MB in seconds).
    env: { MLES_MAX_FRAME_BYTES: "65536", MLES_MAX_BUFFERED_BYTES: "4194304", ...NO_RATES },
  });
  await using g = await joinInOrder(s, header("pub", "gone"), header("fast", "gone"));
  const [pub, fast] = g.clients;
  await fast.take(1);
  const stuck = await neverReads(s.port, "stuck", "gone");
  await waitFor(() => s.server.hub.joinedCount === 3, "stuck joined");
  const chunk = new Uint8Array(60_000);
  for (let i = 0; i < 500 && s.server.hub.memberCount === 3; i += 4) {
    for (let k = 0; k < 4; k++) pub.send(chunk);
    for (let k = 0; k < 4; k++) await fast.next(10_000);
  }
  await waitFor(() => s.server.hub.memberCount === 2, "stuck member dropped");
  // The same uid, channel and auth joins again at once; the old TCP is still open.
  await using again = await TestClient.open(s.wsUrl, header("stuck", "gone"));
  again.send("back");
  assert.equal(await fast.next(5000), "back");
  stuck.close();
});

Deno.test("flood: a publisher flooding as fast as it can never gets its healthy subscribers closed", async () => {
  // Publish rates off: this is the hub's rule (who pays when a channel floods).
  await using s = await startServer({ env: { MLES_MAX_BUFFERED_BYTES: "4194304", ...NO_RATES } });
  await using g = await joinInOrder(
    s,
    header("flooder", "flood"),
    header("r1", "flood"),
    header("r2", "flood"),
  );
  const [flooder, r1, r2] = g.clients;
  await r1.take(1); // the flooder's header
  await r2.take(2); // the flooder's and r1's
  const chunk = new Uint8Array(60_000);
  let sent = 0;
  // Up to 300 MB, never more than 8 MiB queued in the client: faster than two readers drain.
  for (let i = 0; i < 5000 && flooder.ws.readyState === WebSocket.OPEN; i++) {
    while (flooder.ws.bufferedAmount > 8 * 1024 * 1024) await new Promise((r) => setTimeout(r, 1));
    chunk[0] = i & 0xff;
    flooder.send(chunk);
    sent++;
  }
  // Whatever happened to the flooder, both readers are still members and got an unbroken run.
  for (const r of [r1, r2]) {
    let n = 0;
    try {
      for (;;) {
        const f = await r.next(1000) as Uint8Array;
        assert.equal(f[0], n & 0xff, "in order, none missing");
        n++;
      }
    } catch { /* quiet: flood over */ }
    assert.ok(n > 0);
  }
  assert.equal(r1.ws.readyState, WebSocket.OPEN, "r1 not closed");
  assert.equal(r2.ws.readyState, WebSocket.OPEN, "r2 not closed");
  assert.equal(
    s.server.metrics.dropped.get("1013") ?? 0,
    flooder.ws.readyState === WebSocket.OPEN ? 0 : 1,
  );
});

Deno.test("flood on defaults under deno task start: the flooder is paced, never closed, and its subscribers get every frame in order", async () => {
  await using s = await startServer({ transport: "node" });
  await using g = await joinInOrder(
    s,
    header("flooder", "floodd"),
    header("r1", "floodd"),
    header("r2", "floodd"),
  );
  const [flooder, r1, r2] = g.clients;
  await r1.take(1);
  await r2.take(2);
  const chunk = new Uint8Array(60_000);
  const frames = 50; // 3 MB: about three seconds at the default 1 MiB a second
  const t0 = performance.now();
  for (let i = 0; i < frames; i++) {
    while (flooder.ws.bufferedAmount > 8 * 1024 * 1024) await new Promise((r) => setTimeout(r, 1));
    chunk[0] = i & 0xff;
    flooder.send(chunk);
  }
  for (const r of [r1, r2]) {
    for (let i = 0; i < frames; i++) {
      const f = await r.next(10_000) as Uint8Array;
      assert.equal(f[0], i & 0xff, "in order, none missing");
    }
  }
  const ms = performance.now() - t0;
  assert.ok(ms >= 2000, `3 MB at 1 MiB a second after a 100 KiB burst: ${ms.toFixed(0)} ms`);
  for (const c of [flooder, r1, r2]) assert.equal(c.ws.readyState, WebSocket.OPEN);
  assert.equal(s.server.metrics.dropped.get("1013") ?? 0, 0);
});

Deno.test("robustness: 500 sockets that never send a header do not stop the server serving others", async () => {
  await using s = await startServer({ env: { MLES_HEADER_TIMEOUT_MS: "2000" } });
  const idle: TestClient[] = [];
  for (let i = 0; i < 500; i++) idle.push(await TestClient.open(s.wsUrl));
  await using g = await joinInOrder(s, header("a", "busy"), header("b", "busy"));
  const [a, b] = g.clients;
  await b.take(1);
  a.send("through");
  assert.equal(await b.next(), "through");
  const closes = await Promise.all(idle.map((c) => c.waitClosed(10_000)));
  assert.ok(
    closes.every((c) => c.code === 1008 && c.reason === "Cannot join: no header within 2000 ms"),
  );
  a.send("still");
  assert.equal(await b.next(), "still");
});

// Both transports: session.ts refuses the frame on Deno.serve's path, node_server.ts at its frame header.
for (const transport of ["deno", "node"] as const) {
  Deno.test(`frame limit: a frame over MLES_MAX_FRAME_BYTES closes its sender with 1009; others are unaffected [${transport}]`, async () => {
    await using s = await startServer({ env: { MLES_MAX_FRAME_BYTES: "1000" }, transport });
    await using g = await joinInOrder(
      s,
      header("a", "big"),
      header("b", "big"),
      header("c", "big"),
    );
    const [a, b, c] = g.clients;
    await b.take(1);
    await c.take(2);
    a.send(new Uint8Array(1001));
    assert.deepEqual(await a.waitClosed(), {
      code: 1009,
      reason: "Frame is 1001 bytes, limit is 1000",
    });
    b.send("x".repeat(1000)); // exactly at the limit is fine
    assert.equal(await c.next(), "x".repeat(1000));
    b.send("é".repeat(501)); // 1002 UTF-8 bytes
    assert.equal((await b.waitClosed()).code, 1009);
    assert.equal(c.pending, 0);
  });
}

Deno.test("big frames: a 512 KiB binary frame goes through live and comes back from history byte for byte", async () => {
  await using s = await startServer();
  await using g = await joinInOrder(s, header("a", "bin"), header("b", "bin"));
  const [a, b] = g.clients;
  await b.take(1);
  const big = new Uint8Array(512 * 1024).map((_, i) => (i * 31 + (i >> 9)) & 0xff);
  a.send(big);
  a.send("after");
  assert.deepEqual(await b.take(2), [big, "after"]);
  await using c = await TestClient.open(s.wsUrl, header("c", "bin"));
  const h = await c.take(4);
  assert.deepEqual(h.slice(2), [big, "after"]);
});

Deno.test("big frames: a frame of exactly MLES_MAX_FRAME_BYTES (4 MiB) is stored and replayed intact", async () => {
  await using s = await startServer();
  await using g = await joinInOrder(s, header("a", "max"), header("b", "max"));
  const [a, b] = g.clients;
  await b.take(1);
  const max = new Uint8Array(4 * 1024 * 1024).map((_, i) => (i ^ (i >> 8)) & 0xff);
  a.send(max);
  assert.deepEqual(await b.next(10_000), max);
  await using c = await TestClient.open(s.wsUrl, header("c", "max"));
  assert.deepEqual((await c.take(3, 10_000))[2], max);
});

Deno.test("names: uid and channel as long as the header bound allows work", async () => {
  await using s = await startServer();
  const channel = "k".repeat(2500); // longer than a KV key may be
  await using g = await joinInOrder(s, header("u".repeat(1400), channel), header("v", channel));
  const [a, b] = g.clients;
  await b.take(1);
  a.send("long names");
  assert.equal(await b.next(), "long names");
});

Deno.test("restart: history survives a server restart with a file KV", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles-file-kv-" });
  const env = { MLES_KV: `${dir}/kv.sqlite3` };
  try {
    {
      await using s = await startServer({ env });
      await using g = await joinInOrder(s, header("a", "durable"), header("w", "durable"));
      const [a, w] = g.clients;
      await w.take(1);
      a.send("before restart");
      a.send(new Uint8Array([9, 8, 7]));
      assert.deepEqual(await w.take(2), ["before restart", new Uint8Array([9, 8, 7])]);
    }
    await using s2 = await startServer({ env });
    await using c = await TestClient.open(s2.wsUrl, header("c", "durable"));
    const h: Received[] = await c.take(4);
    assert.deepEqual(h, [
      JSON.stringify(header("a", "durable")),
      JSON.stringify(header("w", "durable")),
      "before restart",
      new Uint8Array([9, 8, 7]),
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
