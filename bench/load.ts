/**
 * @module
 * The load generator on Deno (its built-in WebSocket client). Same options
 * and output as `load.mjs` on Node; the work is in `load_core.mjs`.
 *
 *   deno run -A --config deno.json bench/load.ts --url ws://127.0.0.1:8000/ --subs 100 --bytes 64
 *   deno run -A --config deno.json bench/load.ts --help
 *
 * (`--config deno.json`: otherwise Deno takes bench/package.json, which is
 * there for Bun and the Node generator, as this file's config.)
 */
import { formatTable, parseOptions, runLoad, USAGE } from "./load_core.mjs";

const opts = parseOptions(Deno.args);
if (opts.help) {
  console.log(USAGE);
  Deno.exit(0);
}
const result = await runLoad(opts, {
  WebSocket,
  runtime: `deno ${Deno.version.deno}`,
});
console.log(JSON.stringify(result));
if (!opts.quiet) console.error(formatTable([result]));
Deno.exit(result.ok ? 0 : 1);
