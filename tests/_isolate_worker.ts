/**
 * A Web Worker that runs one server isolate (own KV handle, own port) for the
 * multi-isolate tests, like one isolate of `deno serve --parallel`.
 * Messages in: {env, latency?} to start, "close" to stop. Out: {port}, "closed", {error}.
 */
import { loadConfig } from "../src/config.ts";
import { createServer } from "../src/server.ts";

declare const self: Worker & { close(): void };

let stop: (() => Promise<void>) | undefined;

self.onmessage = async (ev: MessageEvent) => {
  try {
    if (ev.data === "close") {
      await stop?.();
      self.postMessage("closed");
      return;
    }
    const config = loadConfig({ MLES_LOG_LEVEL: "error", ...ev.data.env });
    let kv: Deno.Kv | undefined;
    if (ev.data.latency) {
      // Benchmarks only: this isolate sees KV through a latency model.
      const { withLatency } = await import("../bench/latency_kv.ts");
      kv = withLatency(await Deno.openKv(config.kvPath), ev.data.latency);
    }
    const server = await createServer(config, { kv });
    const http = Deno.serve(
      { port: 0, hostname: "127.0.0.1", onListen() {} },
      server.fetch,
    );
    stop = async () => {
      await server.close();
      await http.shutdown();
      kv?.close();
    };
    self.postMessage({ port: http.addr.port, isolate: server.metrics.isolate });
  } catch (err) {
    self.postMessage({ error: String(err) });
  }
};
