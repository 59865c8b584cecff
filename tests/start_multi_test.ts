/**
 * `deno task start:multi` as a user runs it: a KV file in a folder outside
 * the project (that does not exist yet), two isolates, then a stop.
 */
import assert from "node:assert/strict";
import { freePort, header, TestClient, waitFor } from "./_helpers.ts";

Deno.test("start:multi: runs with MLES_KV anywhere, says which file it uses, serves and stops", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles-multi-" });
  const kvPath = `${dir}/not/yet/there/mles.sqlite3`;
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "start:multi"],
    cwd: new URL("..", import.meta.url).pathname,
    env: { PORT: String(port), DENO_JOBS: "2", MLES_KV: kvPath, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out: string[] = [];
  const read = (s: ReadableStream<Uint8Array>) =>
    (async () => {
      for await (const c of s.pipeThrough(new TextDecoderStream())) out.push(c);
    })();
  const reading = Promise.all([read(child.stdout), read(child.stderr)]);
  try {
    let health: Response | undefined;
    await waitFor(() => out.join("").includes("Listening"), "the server to listen", 20_000);
    for (let i = 0; i < 100 && !health?.ok; i++) {
      health = await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined);
      if (!health?.ok) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(health?.status, 200);
    assert.equal((await health!.json()).status, "ok");
    assert.ok(out.join("").includes(`MLES_KV=${kvPath}`), `names the file: ${out.join("")}`);
    assert.ok((await Deno.stat(kvPath)).isFile, "the KV file was created where asked");

    // A chat through it: two clients (on whichever isolates they land).
    const url = `ws://127.0.0.1:${port}/`;
    await using a = await TestClient.open(url, header("a", "multi"));
    await using b = await TestClient.open(url, header("b", "multi"));
    // No join acknowledgement in Mles: a repeats until b (joined meanwhile) hears it.
    let got: string | undefined;
    const ticker = setInterval(() => a.send("hello"), 100);
    try {
      while (got === undefined) {
        const f = await b.next(10_000);
        if (f === "hello") got = f;
      }
    } finally {
      clearInterval(ticker);
    }
    assert.equal(got, "hello");
  } finally {
    child.kill("SIGTERM");
    const status = await child.status;
    await reading;
    assert.ok(status.code === 0 || status.signal !== null, `stopped: ${JSON.stringify(status)}`);
    // Nothing listens any more.
    const still = await fetch(`http://127.0.0.1:${port}/healthz`).then(
      (r) => r.body?.cancel().then(() => true),
      () => false,
    );
    assert.equal(still, false, "the isolates exited with the task");
    await Deno.remove(dir, { recursive: true });
  }
});
