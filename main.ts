/**
 * @module
 * The entry for `deno serve`, `deno serve --parallel` and Deno Deploy: one
 * server per isolate, configured from the environment (and, locally, from
 * mles-rs style flags such as `--limit`). A bad setting stops the start with
 * one line naming it, not a stack trace.
 */
import { type Config, ConfigError, configFromArgs, loadConfig } from "./src/config.ts";
import { createServer, type Server, shutdownOnSignals, StartError } from "./src/server.ts";

let config: Config;
let server: Server;
try {
  config = loadConfig({ ...Deno.env.toObject(), ...configFromArgs(Deno.args) });
  server = await createServer(config);
} catch (err) {
  if (!(err instanceof ConfigError || err instanceof StartError)) throw err;
  console.error(err.message);
  Deno.exit(1);
}
shutdownOnSignals(server, config.shutdownTimeoutMs);

/** The request handler (`deno serve` and Deploy call `fetch`). */
export default { fetch: server.fetch } satisfies Deno.ServeDefaultExport;

/** This isolate's validated settings and server (start.ts serves it on PORT). */
export { config, server };
