/**
 * @module
 * Baseline: the smallest idiomatic Mles relay on Node with `ws` (no
 * bufferutil/utf-8-validate native add-ons). Requires the `mles-websocket`
 * subprotocol, takes the first frame as the JSON header `{uid, channel}`, then
 * sends every frame to every other member of the channel. No history.
 *
 *   (cd bench/baselines && npm ci) && PORT=8000 node bench/baselines/node_relay.mjs
 */
import process from "node:process";
import { WebSocketServer } from "ws";

const port = Number(process.env.PORT ?? "8000");
/** @type {Map<string, Set<import("ws").WebSocket>>} */
const channels = new Map();

const wss = new WebSocketServer({
  port,
  clientTracking: false,
  maxPayload: 4 * 1024 * 1024,
  handleProtocols: (offered) => offered.has("mles-websocket") ? "mles-websocket" : false,
  verifyClient: (info, done) => {
    const offered = (info.req.headers["sec-websocket-protocol"] ?? "").split(
      ",",
    ).map((s) => s.trim());
    if (offered.includes("mles-websocket")) done(true);
    else {done(
        false,
        400,
        "Cannot upgrade: offer the WebSocket subprotocol mles-websocket",
      );}
  },
});

wss.on("connection", (socket) => {
  let channel = "";
  /** @type {Set<import("ws").WebSocket> | undefined} */
  let members;
  socket.on("message", (data, isBinary) => {
    if (members === undefined) {
      const h = isBinary ? undefined : parseHeader(data.toString());
      if (h === undefined) return socket.close(1008, "Cannot join: bad header");
      channel = h.channel;
      members = channels.get(channel);
      if (members === undefined) channels.set(channel, members = new Set());
      members.add(socket);
      return;
    }
    for (const m of members) {
      if (m !== socket && m.readyState === 1) {
        m.send(data, { binary: isBinary });
      }
    }
  });
  socket.on("close", () => {
    if (members === undefined) return;
    members.delete(socket);
    if (members.size === 0) channels.delete(channel);
  });
  socket.on("error", () => {});
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
