/**
 * @module
 * The entry for `deno serve`, `deno serve --parallel` and Deno Deploy: one
 * server per isolate, configured from the environment (and, locally, from
 * mles-rs style flags such as `--limit`).
 */
import { configFromArgs, loadConfig } from "./src/config.ts";
import { createServer, shutdownOnSignals } from "./src/server.ts";

const server = await createServer(
  loadConfig({ ...Deno.env.toObject(), ...configFromArgs(Deno.args) }),
);
shutdownOnSignals(server);

export default { fetch: server.fetch } satisfies Deno.ServeDefaultExport;
