/**
 * SPEC.md sections 1-5, one behaviour per test, over real WebSockets to a
 * real server (port 0) with real Deno KV (`:memory:` unless stated). Every
 * test runs on both transports, named with a `[deno]` or `[node]` suffix:
 * `Deno.serve` + `Deno.upgradeWebSocket` (`deno serve`, Deploy) and
 * node:http + ws (`deno task start`, src/node_server.ts). Clients cannot
 * tell them apart, so neither can these tests.
 */
import assert from "node:assert/strict";
import { mlesAuth } from "../src/auth.ts";
import { Logger } from "../src/log.ts";
import {
  header,
  joinInOrder,
  rawUpgrade,
  type Received,
  type StartOptions,
  startServer,
  TestClient,
  type TestServer,
  waitFor,
} from "./_helpers.ts";

const text = (f: Received) => {
  assert.equal(typeof f, "string", "expected a text frame");
  return f as string;
};

/** Starts a server on the transport under test. */
type Start = (options?: StartOptions) => Promise<TestServer>;

/** Registers `fn` once per transport, as `name [deno]` and `name [node]`. */
function test(name: string, fn: (start: Start) => Promise<void>) {
  for (const transport of ["deno", "node"] as const) {
    Deno.test(`${name} [${transport}]`, () => fn((o = {}) => startServer({ ...o, transport })));
  }
}

// ---- 1. Connecting ---------------------------------------------------------

test("connect: server answers the upgrade with Sec-WebSocket-Protocol mles-websocket", async (start) => {
  await using s = await start();
  const res = await rawUpgrade(s.port, "mles-websocket");
  assert.match(res, /^HTTP\/1\.1 101/);
  assert.match(res, /sec-websocket-protocol: mles-websocket/i);
  await using c = await TestClient.open(s.wsUrl);
  assert.equal(c.ws.protocol, "mles-websocket");
});

test("connect: mles-websocket offered among other subprotocols is accepted", async (start) => {
  await using s = await start();
  await using c = await TestClient.open(s.wsUrl, undefined, ["chat", "mles-websocket"]);
  assert.equal(c.ws.protocol, "mles-websocket");
});

test("connect: an upgrade without the subprotocol is refused with 400 and no socket", async (start) => {
  await using s = await start();
  const res = await rawUpgrade(s.port, null);
  assert.match(res, /^HTTP\/1\.1 400/);
  assert.match(res, /mles-websocket/);
  const other = await rawUpgrade(s.port, "chat");
  assert.match(other, /^HTTP\/1\.1 400/);
});

test("connect: plain HTTP requests are served by the HTTP side", async (start) => {
  await using s = await start();
  const health = await fetch(new URL("/healthz", s.url));
  assert.equal(health.status, 200);
  assert.deepEqual(await health.json(), { status: "ok", kv: true });
  const missing = await fetch(new URL("/no-such-file.txt", s.url));
  assert.equal(missing.status, 404);
  await missing.body?.cancel();
});

test("connect: WebSocket upgrades work on any path", async (start) => {
  await using s = await start();
  await using a = await TestClient.open(
    new URL("/some/deep/path?x=1", s.wsUrl).href,
    header("a", "p"),
  );
  await using b = await TestClient.open(new URL("/other", s.wsUrl).href, header("b", "p"));
  a.send("hello");
  // b sees a's header (history) or not, then "hello"
  let f = await b.next();
  if (typeof f === "string" && f.startsWith("{")) f = await b.next();
  assert.equal(f, "hello");
});

// ---- 2. The first frame -----------------------------------------------------

async function expectRefused(
  start: Start,
  first: string | Uint8Array,
  code: number,
  reason: RegExp,
  env: Record<string, string> = {},
) {
  await using s = await start({ env });
  await using c = await TestClient.open(s.wsUrl);
  c.send(first);
  const closed = await c.waitClosed();
  assert.equal(closed.code, code, `close code for ${String(first).slice(0, 60)}`);
  assert.match(closed.reason, reason);
  // Never joined half-way: a later member sees no trace of it, and the server still serves.
  await using d = await TestClient.open(s.wsUrl, header("later", "c"));
  await using e = await TestClient.open(s.wsUrl, header("other", "c"));
  d.send("still serving");
  let got = await e.next();
  if (typeof got === "string" && got.includes('"later"')) got = await e.next();
  assert.equal(got, "still serving");
  assert.equal(s.server.hub.memberCount, 2);
}

test("header: a binary first frame closes 1003 without joining", (start) =>
  expectRefused(
    start,
    new TextEncoder().encode('{"uid":"a","channel":"c"}'),
    1003,
    /^Cannot join: header must be a text frame$/,
  ));

test("header: invalid JSON closes 1002 without joining", (start) =>
  expectRefused(
    start,
    "{uid: a",
    1002,
    /^Cannot join: header is not valid JSON$/,
  ));

// Each kind of invalid header (missing, empty, non-string, non-ASCII fields; not an
// object; a non-string auth) is a pure case in header_test.ts; the cases here go end to
// end once per close code.

test("header: a 1 MiB header closes 1009 and the server keeps serving", (start) =>
  expectRefused(
    start,
    JSON.stringify({ uid: "a", channel: "c", pad: "x".repeat(1024 * 1024) }),
    1009,
    /^Cannot join: header is \d+ bytes, limit is 4096$/,
  ));

test("header: failed auth closes 1008 without joining", (start) =>
  expectRefused(
    start,
    JSON.stringify({ uid: "a", channel: "c", auth: "0000000000000000" }),
    1008,
    /^Cannot join: auth does not match$/,
  ));

test("header: extra JSON fields are ignored", async (start) => {
  await using s = await start();
  await using a = await TestClient.open(s.wsUrl, header("a", "x", { extra: [1, 2], n: null }));
  await using b = await TestClient.open(s.wsUrl, header("b", "x"));
  a.send("hi");
  const frames = [await b.next()];
  if (frames[0] !== "hi") frames.push(await b.next());
  assert.equal(frames.at(-1), "hi");
});

test("header: a socket that sends no header in time is closed 1008", async (start) => {
  await using s = await start({ env: { MLES_HEADER_TIMEOUT_MS: "200" } });
  await using c = await TestClient.open(s.wsUrl);
  const closed = await c.waitClosed(3000);
  assert.equal(closed.code, 1008);
  assert.equal(closed.reason, "Cannot join: no header within 200 ms");
});

test('header: "auth": null counts as absent', async (start) => {
  await using s = await start();
  await using a = await TestClient.open(s.wsUrl, header("a", "n", { auth: null }));
  await using b = await TestClient.open(s.wsUrl, header("b", "n"));
  a.send("ok");
  let f = await b.next();
  if (f !== "ok") f = await b.next();
  assert.equal(f, "ok");
});

// ---- 3. After joining --------------------------------------------------------

test("join: the newcomer gets history oldest first, then its header is appended", async (start) => {
  await using s = await start();
  await using g = await joinInOrder(s, header("a", "h"), header("w", "h"));
  const [a, w] = g.clients;
  a.send("one");
  a.send(new Uint8Array([1, 2, 3]));
  a.send("three");
  await w.take(4); // a's header, then a's three frames: all stored now
  await using g2 = await joinInOrder(s, header("b", "h"));
  assert.deepEqual(await g2.clients[0].take(5), [
    JSON.stringify(header("a", "h")),
    JSON.stringify(header("w", "h")),
    "one",
    new Uint8Array([1, 2, 3]),
    "three",
  ]);
  await using c = await TestClient.open(s.wsUrl, header("c", "h"));
  const hist = await c.take(6);
  assert.equal(hist[5], JSON.stringify(header("b", "h")), "b's exact header text comes last");
  await assert.rejects(c.next(100), /no frame/);
});

test("join: the header is not sent live to members already in the channel", async (start) => {
  await using s = await start();
  await using g = await joinInOrder(s, header("a", "q"));
  const [a] = g.clients;
  await using b = await TestClient.open(s.wsUrl, header("b", "q"));
  assert.equal(text(await b.next()), JSON.stringify(header("a", "q")));
  b.send("after-join");
  // If b's header had been sent live, a would see it before b's first frame.
  assert.equal(await a.next(), "after-join");
});

test("fan-out: a frame reaches every other member and is never echoed to its sender", async (start) => {
  await using s = await start();
  await using g = await joinInOrder(s, header("a", "f"), header("b", "f"), header("c", "f"));
  const [a, b, c] = g.clients;
  await b.take(1); // a's header
  await c.take(2); // a's and b's headers
  a.send("from-a");
  assert.equal(await b.next(), "from-a");
  assert.equal(await c.next(), "from-a");
  b.send("from-b");
  // a gets b's frame next: had "from-a" been echoed, it would have come first.
  assert.equal(await a.next(), "from-b");
  assert.equal(await c.next(), "from-b");
});

test("fan-out: text and binary keep their type and exact bytes (all 256 byte values, UTF-8)", async (start) => {
  await using s = await start();
  await using g = await joinInOrder(s, header("a", "bytes"), header("b", "bytes"));
  const [a, b] = g.clients;
  await b.take(1);
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  const utf8 = "héllo wörld ✓ 日本語 🎉 \u0000 end";
  a.send(all);
  a.send(utf8);
  a.send(new Uint8Array(0));
  a.send("");
  assert.deepEqual(await b.take(4), [all, utf8, new Uint8Array(0), ""]);
  // And the same from history, after both headers.
  await using c = await TestClient.open(s.wsUrl, header("c", "bytes"));
  const h = await c.take(6);
  assert.deepEqual(h.slice(2), [all, utf8, new Uint8Array(0), ""]);
});

test("history: keeps at most MLES_HISTORY_LIMIT frames, dropping the oldest", async (start) => {
  await using s = await start({ env: { MLES_HISTORY_LIMIT: "5" } });
  await using g = await joinInOrder(s, header("a", "lim"), header("w", "lim"));
  const [a, w] = g.clients;
  await w.take(1);
  for (let i = 0; i < 12; i++) a.send(`m${i}`);
  assert.equal((await w.take(12)).at(-1), "m11");
  await using b = await TestClient.open(s.wsUrl, header("b", "lim"));
  assert.deepEqual(await b.take(5), ["m7", "m8", "m9", "m10", "m11"]);
  a.send("live");
  assert.equal(await b.next(), "live", "nothing older than the limit follows the history");
});

test("channels: frames never cross from one channel to another", async (start) => {
  await using s = await start();
  await using g = await joinInOrder(
    s,
    header("a", "one"),
    header("b", "one"),
    header("a", "two"),
    header("b", "two"),
  );
  const [a1, b1, a2, b2] = g.clients;
  await b1.take(1);
  await b2.take(1);
  a1.send("in-one");
  a2.send("in-two");
  assert.equal(await b1.next(), "in-one");
  assert.equal(await b2.next(), "in-two");
  a1.send("again-one");
  a2.send("again-two");
  assert.equal(await b1.next(), "again-one");
  assert.equal(await b2.next(), "again-two");
  assert.equal(a1.pending + a2.pending, 0);
});

test("leave: a closed member gets nothing more and the others go on", async (start) => {
  await using s = await start();
  await using g = await joinInOrder(s, header("a", "l"), header("b", "l"), header("c", "l"));
  const [a, b, c] = g.clients;
  await b.close();
  await waitFor(() => s.server.hub.memberCount === 2, "b left");
  await c.take(2);
  a.send("after-b-left");
  assert.equal(await c.next(), "after-b-left");
  assert.equal(s.server.hub.memberCount, 2);
});

// ---- 4. Authentication over the wire ----------------------------------------

test("auth: a server with MLES_KEY accepts SipHash(uid||channel||key)", async (start) => {
  await using s = await start({ env: { MLES_KEY: "secret" } });
  await using a = await TestClient.open(
    s.wsUrl,
    header("alice", "example", { auth: mlesAuth("alice", "example", "secret") }),
  );
  await using b = await TestClient.open(
    s.wsUrl,
    header("bob", "example", { auth: "6F862A3096E7C765" }), // SPEC vector, upper case
  );
  a.send("hi bob");
  let f = await b.next();
  if (f !== "hi bob") f = await b.next();
  assert.equal(f, "hi bob");
});

test("auth: a server with MLES_KEY refuses a missing auth with 1008", async (start) => {
  await using s = await start({ env: { MLES_KEY: "secret" } });
  await using c = await TestClient.open(s.wsUrl, header("alice", "example"));
  const closed = await c.waitClosed();
  assert.deepEqual(closed, { code: 1008, reason: "Cannot join: auth is required by this server" });
});

test("auth: a server with MLES_KEY refuses the keyless value with 1008", async (start) => {
  await using s = await start({ env: { MLES_KEY: "secret" } });
  await using c = await TestClient.open(
    s.wsUrl,
    header("alice", "example", { auth: "9b3b95527f7c2d80" }),
  );
  assert.deepEqual(await c.waitClosed(), {
    code: 1008,
    reason: "Cannot join: auth does not match",
  });
});

test("auth: a server without a key accepts no auth and the keyless value, refuses others", async (start) => {
  await using s = await start();
  await using _a = await TestClient.open(
    s.wsUrl,
    header("alice", "example", { auth: "9b3b95527f7c2d80" }),
  );
  await using _b = await TestClient.open(s.wsUrl, header("bob", "example"));
  await waitFor(() => s.server.hub.memberCount === 2, "both joined");
  await using c = await TestClient.open(
    s.wsUrl,
    header("carol", "example", { auth: "afa46b8689dae7a5" }),
  );
  assert.equal((await c.waitClosed()).code, 1008);
  assert.equal(s.server.hub.memberCount, 2);
});

// ---- 5. Sessions --------------------------------------------------------------

test("session: a second connection with an identical header is closed as a duplicate", async (start) => {
  await using s = await start();
  await using a = await TestClient.open(s.wsUrl, header("a", "dup"));
  await waitFor(() => s.server.hub.memberCount === 1, "a joined");
  await using a2 = await TestClient.open(s.wsUrl, header("a", "dup"));
  assert.deepEqual(await a2.waitClosed(), {
    code: 1008,
    reason: "Cannot join: the same uid, channel and auth are already joined",
  });
  // Same uid in another channel, or with another auth, is a different session.
  await using _a3 = await TestClient.open(s.wsUrl, header("a", "dup2"));
  await waitFor(() => s.server.hub.memberCount === 2, "a joined dup2");
  assert.equal(a.ws.readyState, WebSocket.OPEN);
});

test("session: the same header can join again as soon as the old socket has closed", async (start) => {
  await using s = await start();
  const a = await TestClient.open(s.wsUrl, header("a", "re"));
  await waitFor(() => s.server.hub.memberCount === 1, "a joined");
  await a.close();
  await using again = await TestClient.open(s.wsUrl, header("a", "re"));
  await using b = await TestClient.open(s.wsUrl, header("b", "re"));
  again.send("back");
  const seen: Received[] = [];
  while (!seen.includes("back")) seen.push(await b.next());
  assert.equal(again.ws.readyState, WebSocket.OPEN);
});

test("logs: one line per refused connection, with the reason, never the auth value or the key", async (start) => {
  const lines: string[] = [];
  await using s = await start({
    env: { MLES_KEY: "sekrit-key" },
    log: new Logger("warn", (l) => lines.push(l)),
  });
  const wrong = "0123456789abcdef";
  await using c = await TestClient.open(s.wsUrl, header("mallory", "vault", { auth: wrong }));
  await c.waitClosed();
  await using d = await TestClient.open(s.wsUrl, "{not json");
  await d.waitClosed();
  assert.equal(lines.length, 2, lines.join("\n"));
  const first = JSON.parse(lines[0]);
  assert.equal(first.msg, "connection refused");
  assert.equal(first.code, 1008);
  assert.equal(first.reason, "Cannot join: auth does not match");
  assert.equal(first.uid, "mallory");
  assert.equal(JSON.parse(lines[1]).reason, "Cannot join: header is not valid JSON");
  for (const l of lines) {
    assert.ok(!l.includes(wrong), "auth value not logged");
    assert.ok(!l.includes("sekrit-key"), "key not logged");
  }
});
