/**
 * SPEC section 5 keepalive: the server pings a silent client and drops one
 * that never answers; a client that answers pings stays. Uses a raw TCP
 * WebSocket for the client that must NOT answer (browser-style WebSocket
 * clients always answer pings).
 */
import assert from "node:assert/strict";
import { clientTextFrame, header, startServer, upgradeRequest, waitFor } from "./_helpers.ts";
import { Opcode, RawWs } from "./raw_ws.ts";

/** A raw WebSocket over TCP that reads frames and never answers pings. */
async function silentClient(port: number, first: string) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(upgradeRequest(port));
  let buf = new Uint8Array(0);
  const more = async () => {
    const chunk = new Uint8Array(4096);
    const n = await conn.read(chunk);
    if (n === null) throw new Error("connection ended");
    const next = new Uint8Array(buf.length + n);
    next.set(buf);
    next.set(chunk.subarray(0, n), buf.length);
    buf = next;
  };
  // Skip the HTTP response.
  for (;;) {
    const end = new TextDecoder().decode(buf).indexOf("\r\n\r\n");
    if (end >= 0) {
      buf = buf.slice(end + 4);
      break;
    }
    await more();
  }
  await conn.write(clientTextFrame(first));
  return {
    conn,
    /** Next frame from the server: opcode and payload (server frames are unmasked). */
    async next(): Promise<{ opcode: number; payload: Uint8Array }> {
      while (buf.length < 2) await more();
      let len = buf[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        while (buf.length < 4) await more();
        len = (buf[2] << 8) | buf[3];
        off = 4;
      }
      while (buf.length < off + len) await more();
      const out = { opcode: buf[0] & 0x0f, payload: buf.slice(off, off + len) };
      buf = buf.slice(off + len);
      return out;
    },
  };
}

// Both transports: Deno.upgradeWebSocket's idleTimeout and node_server.ts's keepAlive.
for (const transport of ["deno", "node"] as const) {
  Deno.test(`keepalive: the server pings a silent client and drops it when no pong comes [${transport}]`, async () => {
    await using s = await startServer({ env: { MLES_PING_INTERVAL_S: "1" }, transport });
    const c = await silentClient(s.port, JSON.stringify(header("quiet", "k")));
    await waitFor(() => s.server.hub.joinedCount === 1, "quiet joined");
    let opcode = 0;
    const seen: number[] = [];
    let closePayload: Uint8Array = new Uint8Array(0);
    while (opcode !== 0x8) {
      const f = await c.next();
      opcode = f.opcode;
      seen.push(opcode);
      if (opcode === 0x8) closePayload = f.payload;
    }
    assert.ok(seen.includes(0x9), `a ping came first (opcodes ${seen})`);
    assert.equal((closePayload[0] << 8) | closePayload[1], 1001);
    await waitFor(() => s.server.hub.memberCount === 0, "member removed");
    c.conn.close();
  });

  Deno.test(`keepalive: a client that answers pings stays joined past the idle timeout [${transport}]`, async () => {
    await using s = await startServer({ env: { MLES_PING_INTERVAL_S: "1" }, transport });
    // Counts the server's pings (each answered) instead of sleeping: four answered
    // pings span twice the 2 s idle timeout that drops a silent client.
    await using a = await RawWs.connect(s.wsUrl, { protocol: "mles-websocket", answerPings: true });
    await a.sendText(JSON.stringify(header("a", "alive")));
    await waitFor(() => s.server.hub.joinedCount === 1, "a joined");
    for (let pings = 0; pings < 4;) {
      const f = await a.next(5000);
      assert.notEqual(f.opcode, Opcode.close, `closed after ${pings} answered pings`);
      if (f.opcode === Opcode.ping) pings++;
    }
    assert.equal(s.server.hub.joinedCount, 1);
  });
}
