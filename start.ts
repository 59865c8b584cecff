/**
 * @module
 * `deno task start`: serves main.ts's server on `PORT` (default 8000) or
 * `--port`, with TLS (`wss://`) when MLES_TLS_CERT and MLES_TLS_KEY name PEM
 * files. The transport is node:http + npm:ws (src/node_server.ts: bounded
 * first frame, RFC closes on protocol errors, descriptors given back, idle
 * and slow connections closed, accept never meets EMFILE), or `Deno.serve`
 * with MLES_TRANSPORT=deno. (`deno serve` ignores PORT; use `--port`.)
 */
import app, { config, server } from "./main.ts";
import { Logger } from "./src/log.ts";
import { startMemoryReturn } from "./src/memory_return.ts";
import {
  descriptorLimit,
  descriptorReserve,
  nodeServeOptions,
  serveNode,
} from "./src/node_server.ts";

let tls: { cert: string; key: string } | undefined;
if (config.tlsCert && config.tlsKey) {
  try {
    tls = {
      cert: Deno.readTextFileSync(config.tlsCert),
      key: Deno.readTextFileSync(config.tlsKey),
    };
  } catch (err) {
    console.error(
      `Cannot start: cannot read MLES_TLS_CERT=${JSON.stringify(config.tlsCert)} or MLES_TLS_KEY=${
        JSON.stringify(config.tlsKey)
      }: ${err instanceof Error ? err.message : err}`,
    );
    Deno.exit(1);
  }
}
const scheme = tls ? "wss" : "ws";
const log = new Logger(config.logLevel);
const cannotListen = (err: unknown) => {
  console.error(
    `Cannot start: cannot listen on PORT=${config.port}: ${
      err instanceof Error ? err.message : err
    }`,
  );
  Deno.exit(1);
};

// Freed buffers go back to the OS after a burst (glibc keeps them otherwise),
// and V8's heap once the burst is over.
startMemoryReturn(() => server.metrics.framesIn + server.metrics.framesOut);

if (config.transport === "node") {
  // Deno raises the soft descriptor limit to the hard one at start (Linux,
  // macOS); what it reached is what the socket budget is cut from.
  const limit = descriptorLimit();
  const fds = limit ? Math.min(limit.soft, 10_000_000) : 1024;
  const maxSockets = Math.max(16, fds - descriptorReserve(fds));
  try {
    await serveNode(nodeServeOptions(config, {
      handler: server.http,
      metrics: server.metrics,
      log,
      port: config.port,
      tls,
      maxSockets,
      onListen: ({ port }) =>
        console.error(
          `mles-deno listening on ${scheme}://0.0.0.0:${port}/ (open files: soft limit ${
            limit?.soft ?? "unknown"
          }, hard ${limit?.hard ?? "unknown"}; up to ${maxSockets} connections, ${
            config.maxConnectionsPerIp || "no limit"
          } per address)`,
        ),
    }));
  } catch (err) {
    cannotListen(err);
  }
} else {
  try {
    Deno.serve({
      port: config.port,
      ...tls,
      onListen: ({ hostname, port }) =>
        console.error(`mles-deno listening on ${scheme}://${hostname}:${port}/`),
    }, app.fetch);
  } catch (err) {
    cannotListen(err);
  }
}
