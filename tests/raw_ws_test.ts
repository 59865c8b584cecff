/**
 * @module
 * Checks the raw WebSocket test client (tests/raw_ws.ts) against Deno's own
 * server side (`Deno.serve` + `Deno.upgradeWebSocket`) and against a fake
 * TCP server that splits and packs frames on purpose.
 */
import assert from "node:assert/strict";
import { encodeFrame, Opcode, RawWs } from "./raw_ws.ts";

interface Echo {
  url: string;
  /** One entry per accepted socket: how the server saw it close. */
  closes: Promise<{ code: number; reason: string }>[];
}

/**
 * Runs `fn` against an echo server that accepts the `echo` subprotocol only.
 * "close-me" makes it close with 4000 "bye now". Waits for every server-side
 * socket to close before shutting down, so sanitizers see nothing left open.
 */
async function withEcho(
  fn: (echo: Echo) => Promise<void>,
  options: { idleTimeout?: number } = {},
): Promise<void> {
  const closes: Echo["closes"] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, (req) => {
    const offered = (req.headers.get("sec-websocket-protocol") ?? "").split(",").map((s) =>
      s.trim()
    );
    if (req.headers.get("upgrade") !== "websocket" || !offered.includes("echo")) {
      return new Response("Cannot upgrade: offer the echo protocol", {
        status: 400,
        headers: { "x-why": "no-echo" },
      });
    }
    const { socket, response } = Deno.upgradeWebSocket(req, {
      protocol: "echo",
      idleTimeout: options.idleTimeout ?? 120,
    });
    const closed = Promise.withResolvers<{ code: number; reason: string }>();
    closes.push(closed.promise);
    socket.onmessage = (e) => {
      if (e.data === "close-me") socket.close(4000, "bye now");
      else socket.send(e.data);
    };
    socket.onclose = (e) => closed.resolve({ code: e.code, reason: e.reason });
    socket.onerror = () => {};
    return response;
  });
  try {
    await fn({ url: `ws://127.0.0.1:${server.addr.port}/echo`, closes });
  } finally {
    await Promise.all(closes);
    await server.shutdown();
  }
}

Deno.test("raw ws: handshake offers the chosen subprotocol and checks Sec-WebSocket-Accept", async () => {
  await withEcho(async ({ url }) => {
    await using c = await RawWs.connect(url, { protocol: ["chat", "echo"] });
    assert.equal(c.upgraded, true);
    assert.equal(c.status, 101);
    assert.match(c.statusLine, /^HTTP\/1\.1 101/);
    assert.equal(c.headers.get("sec-websocket-protocol"), "echo");
    assert.equal(c.acceptValid, true);
  });
});

Deno.test("raw ws: a refused upgrade returns the status line, headers and body", async () => {
  await withEcho(async ({ url }) => {
    for (const protocol of [undefined, "chat"]) {
      await using c = await RawWs.connect(url, { protocol });
      assert.equal(c.upgraded, false);
      assert.equal(c.status, 400);
      assert.match(c.statusLine, /^HTTP\/1\.1 400 Bad Request$/);
      assert.equal(c.headers.get("x-why"), "no-echo");
      assert.equal(c.body, "Cannot upgrade: offer the echo protocol");
      await c.ended; // the TCP connection is already closed
      await assert.rejects(c.next(100), /ended/);
    }
  });
});

Deno.test("raw ws: text and binary frames round-trip with 7-, 16- and 64-bit lengths", async () => {
  await withEcho(async ({ url }) => {
    await using c = await RawWs.connect(url, { protocol: "echo" });
    for (const n of [0, 5, 125, 126, 300, 65535, 65536, 70_000]) {
      const text = "x".repeat(n - Math.min(n, 2)) + "äb".slice(0, Math.min(n, 2));
      await c.sendText(text);
      const t = await c.next();
      assert.equal(t.opcode, Opcode.text);
      assert.equal(t.fin, true);
      assert.equal(t.masked, false);
      assert.equal(t.text, text, `text of ${n} chars`);

      const bin = crypto.getRandomValues(new Uint8Array(Math.min(n, 65536)));
      if (n > 65536) {
        const big = new Uint8Array(n);
        for (let i = 0; i < n; i += 65536) big.set(bin.subarray(0, Math.min(65536, n - i)), i);
        await c.sendBinary(big);
        assert.deepEqual((await c.next()).payload, big);
      } else {
        await c.sendBinary(bin);
        const b = await c.next();
        assert.equal(b.opcode, Opcode.binary);
        assert.deepEqual(b.payload, bin, `binary of ${n} bytes`);
      }
    }
  });
});

Deno.test("raw ws: a fragmented message is reassembled by Deno, with a ping between fragments", async () => {
  await withEcho(async ({ url }) => {
    await using c = await RawWs.connect(url, { protocol: "echo" });
    await c.sendFrame({ opcode: Opcode.text, payload: "frag", fin: false });
    await c.sendPing("p1"); // control frames may sit between fragments (RFC 6455 5.4)
    await c.sendFrame({ opcode: Opcode.continuation, payload: "men", fin: false });
    await c.sendFrame({ opcode: Opcode.continuation, payload: "ted", fin: true });
    const pong = await c.next();
    assert.equal(pong.opcode, Opcode.pong);
    assert.equal(new TextDecoder().decode(pong.payload), "p1");
    const f = await c.next();
    assert.equal(f.text, "fragmented");
    assert.equal(f.fin, true);
  });
});

Deno.test("raw ws: several frames written at once are all processed, in order", async () => {
  await withEcho(async ({ url }) => {
    await using c = await RawWs.connect(url, { protocol: "echo" });
    const parts = ["one", "two", "three"].map((s) =>
      encodeFrame({ opcode: Opcode.text, payload: s })
    );
    await c.sendRaw(concat(...parts));
    assert.deepEqual([(await c.next()).text, (await c.next()).text, (await c.next()).text], [
      "one",
      "two",
      "three",
    ]);
  });
});

Deno.test("raw ws: the server's close is seen with code and reason, and answered", async () => {
  await withEcho(async ({ url, closes }) => {
    await using c = await RawWs.connect(url, { protocol: "echo" });
    await c.sendText("close-me");
    const f = await c.next();
    assert.equal(f.opcode, Opcode.close);
    assert.equal(f.closeCode, 4000);
    assert.equal(f.closeReason, "bye now");
    // The client echoed the code (not the reason), completing a clean closing handshake.
    assert.deepEqual(await closes[0], { code: 4000, reason: "" });
    await c.ended;
  });
});

Deno.test("raw ws: a client close with code and reason reaches the server", async () => {
  await withEcho(async ({ url, closes }) => {
    await using c = await RawWs.connect(url, { protocol: "echo" });
    await c.sendClose(4001, "client leaves");
    const f = await c.next();
    assert.equal(f.opcode, Opcode.close);
    assert.equal(f.closeCode, 4001);
    assert.deepEqual(await closes[0], { code: 4001, reason: "client leaves" });
  });
});

Deno.test("raw ws: pings go unanswered by default, so an idle timeout drops the client", async () => {
  await withEcho(async ({ url, closes }) => {
    await using c = await RawWs.connect(url, { protocol: "echo" });
    const ping = await c.next(3000);
    assert.equal(ping.opcode, Opcode.ping);
    const close = await c.next(3000);
    assert.equal(close.opcode, Opcode.close);
    assert.equal(close.closeCode, 1001);
    assert.equal((await closes[0]).code, 1001);
  }, { idleTimeout: 1 });
});

Deno.test("raw ws: with answerPings the client survives the idle timeout", async () => {
  await withEcho(async ({ url }) => {
    await using c = await RawWs.connect(url, { protocol: "echo", answerPings: true });
    const deadline = Date.now() + 2500; // 2.5 idle periods
    let pings = 0;
    while (Date.now() < deadline) {
      const f = await c.next(1500);
      assert.equal(f.opcode, Opcode.ping, `unexpected opcode ${f.opcode} ${f.closeReason ?? ""}`);
      pings++;
    }
    assert.ok(pings >= 2, `${pings} pings`);
    await c.sendText("still here");
    assert.equal((await c.next(1000, { skipPings: true })).text, "still here");
  }, { idleTimeout: 1 });
});

Deno.test("raw ws: invalid UTF-8 in a TEXT frame is never delivered by Deno; the connection ends", async () => {
  await withEcho(async ({ url }) => {
    await using c = await RawWs.connect(url, { protocol: "echo" });
    await c.sendFrame({ opcode: Opcode.text, payload: new Uint8Array([0x68, 0xff, 0xfe]) });
    // Deno 2.9 drops the TCP connection without a close frame; accept a 1007 close too.
    try {
      const f = await c.next(3000);
      assert.equal(f.opcode, Opcode.close);
      assert.equal(f.closeCode, 1007);
    } catch (err) {
      assert.match(String(err), /ended/);
    }
    await c.ended;
  });
});

Deno.test("raw ws: encodeFrame sets FIN, RSV, opcode, mask and the requested length encoding", () => {
  const key = new Uint8Array([1, 2, 3, 4]);
  const f = encodeFrame({ opcode: Opcode.text, payload: "abc", maskKey: key });
  assert.deepEqual([...f], [0x81, 0x83, 1, 2, 3, 4, 0x61 ^ 1, 0x62 ^ 2, 0x63 ^ 3]);
  const g = encodeFrame({ opcode: 0x3, payload: "a", fin: false, rsv: 0b100, mask: false });
  assert.deepEqual([...g], [0x43, 0x01, 0x61]);
  const h16 = encodeFrame({ opcode: Opcode.binary, payload: "a", mask: false, lengthBits: 16 });
  assert.deepEqual([...h16], [0x82, 126, 0, 1, 0x61]);
  const h64 = encodeFrame({ opcode: Opcode.binary, payload: "a", mask: false, lengthBits: 64 });
  assert.deepEqual([...h64], [0x82, 127, 0, 0, 0, 0, 0, 0, 0, 1, 0x61]);
  const long = encodeFrame({ opcode: Opcode.binary, payload: new Uint8Array(70_000), mask: false });
  assert.deepEqual([...long.subarray(0, 10)], [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
  assert.throws(
    () => encodeFrame({ opcode: 1, payload: new Uint8Array(126), lengthBits: 7 }),
    RangeError,
  );
});

Deno.test("raw ws: frames split across reads or packed into one read are all parsed", async () => {
  // A fake server: answers the handshake with a 101 and the first frame in the
  // same write, then several frames in one write, then a 70,000-byte frame and
  // a close in small pieces.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const big = new Uint8Array(70_000).map((_, i) => i & 0xff);
  const serverSide = (async () => {
    const conn = await listener.accept();
    try {
      const buf = new Uint8Array(4096);
      let head = "";
      for (let i = 0; i < 100 && !head.includes("\r\n\r\n"); i++) {
        const n = await conn.read(buf);
        if (n === null) return;
        head += new TextDecoder().decode(buf.subarray(0, n));
      }
      const key = /sec-websocket-key: (.*)\r\n/i.exec(head)![1];
      const digest = await crypto.subtle.digest(
        "SHA-1",
        new TextEncoder().encode(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"),
      );
      const accept = btoa(String.fromCharCode(...new Uint8Array(digest)));
      const response = new TextEncoder().encode(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
      );
      const first = encodeFrame({ opcode: Opcode.text, payload: "first", mask: false });
      await conn.write(concat(response, first));
      await conn.write(concat(
        encodeFrame({ opcode: Opcode.text, payload: "a", mask: false }),
        encodeFrame({ opcode: Opcode.ping, payload: "p", mask: false }),
        encodeFrame({ opcode: Opcode.binary, payload: new Uint8Array([9]), mask: true }),
      ));
      const rest = concat(
        encodeFrame({ opcode: Opcode.binary, payload: big, mask: false }),
        encodeFrame({
          opcode: Opcode.close,
          payload: new Uint8Array([0x03, 0xe8, 0x6f, 0x6b]),
          mask: false,
        }),
      );
      for (let off = 0, step = 1; off < rest.length; off += step, step = step * 3 + 1) {
        await conn.write(rest.subarray(off, Math.min(rest.length, off + step)));
        await new Promise((r) => setTimeout(r, 2)); // let the client read each piece alone
      }
    } finally {
      conn.close();
    }
  })();
  try {
    await using c = await RawWs.connect(`ws://127.0.0.1:${port}/`, { answerClose: false });
    assert.equal(c.acceptValid, true);
    assert.equal((await c.next()).text, "first");
    assert.equal((await c.next()).text, "a");
    assert.equal((await c.next()).opcode, Opcode.ping);
    const masked = await c.next();
    assert.equal(masked.masked, true);
    assert.deepEqual([...masked.payload], [9]);
    const b = await c.next();
    assert.equal(b.payload.length, big.length);
    assert.deepEqual(b.payload, big);
    const close = await c.next();
    assert.deepEqual([close.closeCode, close.closeReason], [1000, "ok"]);
    await c.ended;
  } finally {
    await serverSide;
    listener.close();
  }
});

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
