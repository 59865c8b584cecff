/**
 * @module
 * Baseline: the smallest idiomatic Mles relay on Deno (`Deno.serve` +
 * `Deno.upgradeWebSocket`). Same wire semantics as the real server minus
 * history: requires the `mles-websocket` subprotocol, takes the first frame
 * as the JSON header `{uid, channel}`, then sends every frame to every other
 * member of the channel. No history, no auth, no slow-member guard: it exists
 * to show what the runtime's send path costs with nothing on top.
 *
 *   PORT=8000 deno run --allow-net --allow-env bench/baselines/deno_relay.ts
 */
const port = Number(Deno.env.get("PORT") ?? "8000");
const channels = new Map<string, Set<WebSocket>>();

Deno.serve({ port, hostname: "0.0.0.0", onListen: () => {} }, (req) => {
  if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return new Response("mles deno baseline\n");
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
  const { socket, response } = Deno.upgradeWebSocket(req, {
    protocol: "mles-websocket",
  });
  socket.binaryType = "arraybuffer";
  let channel = "";
  let members: Set<WebSocket> | undefined;
  socket.onmessage = (e) => {
    if (members === undefined) {
      const h = typeof e.data === "string" ? parseHeader(e.data) : undefined;
      if (h === undefined) return socket.close(1008, "Cannot join: bad header");
      channel = h.channel;
      members = channels.get(channel);
      if (members === undefined) channels.set(channel, members = new Set());
      members.add(socket);
      return;
    }
    for (const m of members) {
      if (m !== socket && m.readyState === WebSocket.OPEN) m.send(e.data);
    }
  };
  socket.onclose = () => {
    if (members === undefined) return;
    members.delete(socket);
    if (members.size === 0) channels.delete(channel);
  };
  return response;
});

// Exit cleanly on SIGTERM so `deno run --cpu-prof` writes its profile (bench/profile.ts).
Deno.addSignalListener("SIGTERM", () => Deno.exit(0));

function parseHeader(
  text: string,
): { uid: string; channel: string } | undefined {
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
