/**
 * @module
 * `deno task start:multi`: runs main.ts under `deno serve --parallel` (one
 * isolate per `DENO_JOBS`, default: one per core) on `PORT` (default 8000),
 * all sharing one KV file (`MLES_KV`, default `.data/mles.sqlite3`), so
 * frames cross isolates through Deno KV exactly as on Deploy.
 *
 * The file may be anywhere: this launcher creates its folder and gives the
 * server write access to that folder only (SQLite also writes `-wal` and
 * `-shm` files beside it). It says at start which file it uses.
 * Forwards SIGINT/SIGTERM to the server and exits with it.
 */
import { dirname, resolve } from "node:path";
import { errorText } from "../src/retry.ts";

const env = Deno.env.toObject();
const port = env.PORT ?? "8000";
const kvPath = env.MLES_KV ?? ".data/mles.sqlite3";
if (kvPath === ":memory:") {
  console.error("start:multi needs a shared KV: MLES_KV=:memory: is private to each isolate");
  Deno.exit(2);
}
const remote = kvPath.includes("://");
// A KV Connect URL needs no file access; a file path is made absolute so the
// message and the permission name the same folder whatever the cwd.
const kv = remote ? kvPath : resolve(kvPath);
let writeFlag = "--allow-write";
if (!remote) {
  const dir = dirname(kv);
  try {
    Deno.mkdirSync(dir, { recursive: true });
  } catch (err) {
    console.error(
      `Cannot start: cannot create the folder of MLES_KV=${JSON.stringify(kvPath)} (${dir}): ${
        errorText(err)
      }`,
    );
    Deno.exit(1);
  }
  writeFlag = `--allow-write=${dir}`;
}
const jobs = env.DENO_JOBS ?? String(navigator.hardwareConcurrency);
console.error(
  `start:multi: ${jobs} isolates on port ${port}, sharing the KV ${
    remote ? "at" : "file"
  } MLES_KV=${kv}`,
);
const child = new Deno.Command(Deno.execPath(), {
  args: [
    "serve",
    "--parallel",
    "--unstable-kv",
    "--allow-net",
    "--allow-env",
    "--allow-read",
    writeFlag,
    "--port",
    port,
    new URL("../main.ts", import.meta.url).pathname,
    ...Deno.args,
  ],
  // Tokio polls the socket reactor every tick (its default is every 61st):
  // a busy socket then cannot hold back other sockets' reads (README Limits).
  env: { DENO_TOKIO_EVENT_INTERVAL: "1", ...env, MLES_KV: kv },
}).spawn();
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(sig, () => {
    try {
      child.kill("SIGINT");
    } catch {
      // already gone
    }
    setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
    }, 5000);
  });
}
const status = await child.status;
Deno.exit(status.code);
