/**
 * @module
 * `deno task start`: runs main.ts's handler with `Deno.serve` on `PORT`
 * (default 8000) or `--port`, with TLS (`wss://`) when MLES_TLS_CERT and
 * MLES_TLS_KEY name PEM files. (`deno serve` ignores PORT; use `--port`.)
 */
import app, { config } from "./main.ts";

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
try {
  Deno.serve({
    port: config.port,
    ...tls,
    onListen: ({ hostname, port }) =>
      console.error(`mles-deno listening on ${scheme}://${hostname}:${port}/`),
  }, app.fetch);
} catch (err) {
  console.error(
    `Cannot start: cannot listen on PORT=${config.port}: ${
      err instanceof Error ? err.message : err
    }`,
  );
  Deno.exit(1);
}
