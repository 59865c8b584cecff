/**
 * @module
 * `deno task start`: runs main.ts's handler with `Deno.serve` on `PORT`
 * (default 8000) or `--port`, so one command starts a single-isolate server.
 * (`deno serve` ignores PORT; use `--port` there.)
 */
import { configFromArgs, loadConfig } from "./src/config.ts";
import app from "./main.ts";

const config = loadConfig({ ...Deno.env.toObject(), ...configFromArgs(Deno.args) });
Deno.serve({
  port: config.port,
  onListen: ({ hostname, port }) =>
    console.error(`mles-deno listening on ws://${hostname}:${port}/`),
}, app.fetch);
