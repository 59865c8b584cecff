/**
 * @module
 * The load generator on Node with npm `ws` (installed by `npm ci` in
 * bench/). Same options and output as `load.ts` on Deno; the work is in
 * `load_core.mjs`.
 *
 *   node bench/load.mjs --url ws://127.0.0.1:8000/ --subs 100 --pubs 1 --bytes 64
 */
import process from "node:process";
import WebSocket from "ws";
import { formatTable, parseOptions, runLoad, USAGE } from "./load_core.mjs";

const opts = parseOptions(process.argv.slice(2));
if (opts.help) {
  console.log(USAGE);
  process.exit(0);
}
const result = await runLoad(opts, {
  WebSocket,
  runtime: `node ${process.versions.node}`,
});
console.log(JSON.stringify(result));
if (!opts.quiet) console.error(formatTable([result]));
process.exit(result.ok ? 0 : 1);
