/**
 * @module
 * Baseline: an Mles relay on Bun's built-in pub/sub (`Bun.serve` websocket,
 * `ws.subscribe(channel)`, `ws.publish`, which skips the sender). Requires
 * the `mles-websocket` subprotocol, takes the first frame as the JSON header
 * `{uid, channel}`. No history.
 *
 *   (cd bench && npm ci) && PORT=8000 bench/node_modules/.bin/bun bench/baselines/bun_relay.js
 */
/* global Bun */
const port = Number(Bun.env.PORT ?? "8000");

Bun.serve({
  port,
  hostname: "0.0.0.0",
  fetch(req, server) {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response("mles bun baseline\n");
    }
    const offered = (req.headers.get("sec-websocket-protocol") ?? "").split(",")
      .map((s) => s.trim());
    if (!offered.includes("mles-websocket")) {
      return new Response(
        "Cannot upgrade: offer the WebSocket subprotocol mles-websocket\n",
        {
          status: 400,
        },
      );
    }
    const ok = server.upgrade(req, {
      headers: { "Sec-WebSocket-Protocol": "mles-websocket" },
      data: { channel: undefined },
    });
    return ok ? undefined : new Response("Upgrade failed\n", { status: 400 });
  },
  websocket: {
    maxPayloadLength: 4 * 1024 * 1024,
    message(ws, message) {
      if (ws.data.channel === undefined) {
        const h = typeof message === "string" ? parseHeader(message) : undefined;
        if (h === undefined) return ws.close(1008, "Cannot join: bad header");
        ws.data.channel = h.channel;
        ws.subscribe(h.channel);
        return;
      }
      ws.publish(ws.data.channel, message);
    },
  },
});

/** @param {string} text */
function parseHeader(text) {
  try {
    const h = JSON.parse(text);
    if (
      typeof h?.uid === "string" && h.uid && typeof h.channel === "string" &&
      h.channel
    ) return h;
  } catch {
    // not JSON
  }
  return undefined;
}
