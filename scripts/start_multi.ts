/**
 * @module
 * `deno task start:multi`: runs main.ts under `deno serve --parallel` (one
 * isolate per `DENO_JOBS`, default: one per core) on `PORT` (default 8000),
 * all sharing one KV file (`MLES_KV`, default `.data/mles.sqlite3`), so
 * frames cross isolates through Deno KV exactly as on Deploy.
 * Forwards SIGINT/SIGTERM to the server and exits with it.
 */
const env = Deno.env.toObject();
const port = env.PORT ?? "8000";
const kvPath = env.MLES_KV ?? ".data/mles.sqlite3";
if (!kvPath.includes("://") && kvPath !== ":memory:") {
  const dir = kvPath.includes("/") ? kvPath.slice(0, kvPath.lastIndexOf("/")) : ".";
  Deno.mkdirSync(dir, { recursive: true });
}
if (kvPath === ":memory:") {
  console.error("start:multi needs a shared KV: MLES_KV=:memory: is private to each isolate");
  Deno.exit(2);
}
const child = new Deno.Command(Deno.execPath(), {
  args: [
    "serve",
    "--parallel",
    "--unstable-kv",
    "--allow-net",
    "--allow-env",
    "--allow-read",
    "--allow-write",
    "--port",
    port,
    new URL("../main.ts", import.meta.url).pathname,
    ...Deno.args,
  ],
  env: { ...env, MLES_KV: kvPath },
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
