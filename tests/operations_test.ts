/**
 * Operating the server (issue: hardening): /metrics, /healthz, KV failure,
 * graceful shutdown of a real process, TLS, and start-up errors.
 */
import assert from "node:assert/strict";
import {
  header,
  joinInOrder,
  type Proc,
  startProcess,
  startServer,
  TestClient,
  upgradeRequest,
  waitFor,
} from "./_helpers.ts";

const root = new URL("..", import.meta.url).pathname;

// A sample line: name{labels} value — checked against the text format's grammar.
const SAMPLE =
  /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? -?(\d+(\.\d+)?(e[+-]?\d+)?|\+Inf|NaN)$/;

Deno.test("metrics: /metrics is Prometheus text with counters for frames, KV and rejections", async () => {
  await using s = await startServer();
  await using g = await joinInOrder(s, header("a", "m"), header("b", "m"));
  const [a, b] = g.clients;
  await b.take(1);
  a.send("x");
  await b.next();
  await using bad = await TestClient.open(s.wsUrl, "not json");
  await bad.waitClosed();
  // An upgrade without the subprotocol: an HTTP status, counted apart from close codes.
  const refused = await fetch(new URL("/", s.url), {
    headers: { upgrade: "websocket", connection: "Upgrade", "sec-websocket-version": "13" },
  });
  await refused.body?.cancel();
  const res = await fetch(new URL("/metrics", s.url));
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type")!, /^text\/plain; version=0\.0\.4/);
  const body = await res.text();
  const typed = new Set<string>();
  for (const line of body.trim().split("\n")) {
    if (line.startsWith("# HELP ")) continue;
    const t = line.match(/^# TYPE (\S+) (counter|gauge|histogram)$/);
    if (t) {
      typed.add(t[1]);
      continue;
    }
    assert.match(line, SAMPLE, `not a sample line: ${line}`);
    const name = line.split(/[{ ]/)[0].replace(/_(bucket|sum|count)$/, "");
    assert.ok(typed.has(name) || typed.has(line.split(/[{ ]/)[0]), `no TYPE before ${line}`);
  }
  assert.match(body, /^mles_frames_in_total\{isolate="[^"]+"\} 1$/m);
  assert.match(body, /^mles_frames_out_total\{isolate="[^"]+"\} 1$/m);
  assert.match(body, /^mles_rejections_total\{isolate="[^"]+",code="1002"\} 1$/m);
  assert.doesNotMatch(body, /^mles_rejections_total\{[^}]*code="[1-9]\d{2}"\}/m);
  assert.match(
    body,
    new RegExp(
      `^mles_upgrade_refusals_total\\{isolate="[^"]+",status="${refused.status}"\\} 1$`,
      "m",
    ),
  );
  assert.match(body, /^mles_kv_commit_seconds_count\{isolate="[^"]+"\} [1-9]/m);
  assert.match(body, /^mles_members\{isolate="[^"]+"\} 2$/m);
});

Deno.test("metrics: MLES_METRICS_TOKEN requires a bearer token", async () => {
  await using s = await startServer({ env: { MLES_METRICS_TOKEN: "t0ken" } });
  const denied = await fetch(new URL("/metrics", s.url));
  assert.equal(denied.status, 401);
  await denied.body?.cancel();
  const ok = await fetch(new URL("/metrics", s.url), {
    headers: { authorization: "Bearer t0ken" },
  });
  assert.equal(ok.status, 200);
  await ok.body?.cancel();
});

Deno.test("healthz: 200 while KV answers, 503 once KV is gone", async () => {
  const kv = await Deno.openKv(":memory:");
  await using s = await startServer({ kv });
  const up = await fetch(new URL("/healthz", s.url));
  assert.equal(up.status, 200);
  await up.body?.cancel();
  kv.close();
  const down = await fetch(new URL("/healthz", s.url));
  assert.equal(down.status, 503);
  assert.deepEqual(await down.json(), { status: "unavailable", kv: false });
});

Deno.test("kv failure: members on this isolate keep getting frames; a publisher whose frames cannot be stored is closed 1011", async () => {
  const kv = await Deno.openKv(":memory:");
  await using s = await startServer({
    kv,
    env: { MLES_STORE_TIMEOUT_MS: "300", MLES_LOG_LEVEL: "silent" },
  });
  await using g = await joinInOrder(s, header("a", "kvf"), header("b", "kvf"));
  const [a, b] = g.clients;
  await b.take(1);
  kv.close(); // every KV operation fails from now on
  a.send("during outage");
  assert.equal(await b.next(), "during outage", "local delivery does not wait for KV");
  assert.deepEqual(await a.waitClosed(), {
    code: 1011,
    reason: "Cannot store frame: history store unavailable",
  });
  assert.equal(b.ws.readyState, WebSocket.OPEN, "the other member stays");
});

Deno.test("shutdown: SIGTERM with traffic in flight exits within the bound and keeps every accepted frame", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles-shutdown-" });
  const procs: Proc[] = [];
  const env = { MLES_KV: `${dir}/kv.sqlite3`, MLES_HISTORY_LIMIT: "1000" };
  try {
    const p = await startProcess(env);
    procs.push(p);
    const url = `ws://127.0.0.1:${p.port}/`;
    const a = await TestClient.open(url, header("a", "sd"));
    const w = await TestClient.open(url, header("w", "sd"));
    // w sees every frame the server accepted (live or from history).
    for (let i = 0; i < 300; i++) a.send(`f${i}`);
    const seen = new Set<string>();
    while (!seen.has("f299")) seen.add(await w.next() as string);
    const t0 = Date.now();
    p.child.kill("SIGTERM");
    const closed = await w.waitClosed();
    assert.equal(closed.code, 1001);
    await a.waitClosed();
    const status = await p.child.status;
    assert.ok(Date.now() - t0 < 5000, `exited after ${Date.now() - t0} ms`);
    assert.equal(status.code, 0);
    const again = await startProcess(env);
    procs.push(again);
    const c = await TestClient.open(`ws://127.0.0.1:${again.port}/`, header("c", "sd"));
    const hist: string[] = [];
    while (!hist.includes("f299")) hist.push(await c.next() as string);
    for (let i = 0; i < 300; i++) assert.ok(hist.includes(`f${i}`), `f${i} kept`);
    await c.close();
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tls: MLES_TLS_CERT and MLES_TLS_KEY serve wss:// with the mles-websocket subprotocol", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles-tls-" });
  const procs: Proc[] = [];
  try {
    // A throwaway CA and a server certificate it signs (rustls refuses a CA as end entity).
    const openssl = async (...args: string[]) => {
      const out = await new Deno.Command("openssl", {
        args,
        cwd: dir,
        stdout: "null",
        stderr: "piped",
      })
        .output();
      assert.ok(out.success, `openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
    };
    await Deno.writeTextFile(
      `${dir}/ext.cnf`,
      "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    );
    await openssl(
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "1",
      "-subj",
      "/CN=mles test CA",
    );
    await openssl(
      "req",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      "key.pem",
      "-out",
      "server.csr",
      "-subj",
      "/CN=localhost",
    );
    await openssl(
      "x509",
      "-req",
      "-in",
      "server.csr",
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      "cert.pem",
      "-days",
      "1",
      "-extfile",
      "ext.cnf",
    );
    const p = await startProcess({
      MLES_KV: ":memory:",
      MLES_TLS_CERT: `${dir}/cert.pem`,
      MLES_TLS_KEY: `${dir}/key.pem`,
    });
    procs.push(p);
    assert.match(p.log.join("\n"), /listening on wss:\/\//);
    const conn = await Deno.connectTls({
      hostname: "127.0.0.1",
      port: p.port,
      caCerts: [await Deno.readTextFile(`${dir}/ca.pem`)],
    });
    await conn.write(upgradeRequest(p.port));
    const buf = new Uint8Array(1024);
    const n = await conn.read(buf);
    const res = new TextDecoder().decode(buf.subarray(0, n ?? 0));
    assert.match(res, /^HTTP\/1\.1 101/);
    assert.match(res, /sec-websocket-protocol: mles-websocket/i);
    conn.close();
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("start: a bad setting or an unusable KV path stops the start with one clear line", async () => {
  const start = (env: Record<string, string>) =>
    new Deno.Command(Deno.execPath(), {
      args: ["task", "--quiet", "start"],
      cwd: root,
      env: { ...env, NO_COLOR: "1" },
      stdout: "null",
      stderr: "piped",
    }).output();
  const bad = await start({ MLES_HISTORY_LIMIT: "lots" });
  assert.equal(bad.code, 1);
  const msg = new TextDecoder().decode(bad.stderr).trim();
  assert.equal(
    msg,
    'Cannot start: MLES_HISTORY_LIMIT must be an integer from 1 to 1000000: current value is "lots"',
  );
  const kv = await start({ MLES_KV: "/nonexistent-dir/sub/kv.sqlite3" });
  assert.equal(kv.code, 1);
  assert.match(
    new TextDecoder().decode(kv.stderr).trim(),
    /^Cannot start: cannot open Deno KV at MLES_KV="\/nonexistent-dir\/sub\/kv.sqlite3": .+$/,
  );
});

Deno.test("shutdown: server.close() ends every kv.watch stream (no leaked resources)", async () => {
  // Deno's sanitizers fail this test if a watch stream or socket outlives close().
  const s = await startServer();
  const a = await TestClient.open(s.wsUrl, header("a", "w1"));
  const b = await TestClient.open(s.wsUrl, header("b", "w2"));
  await waitFor(() => s.server.hub.joinedCount === 2, "joined");
  await s.close();
  await a.waitClosed();
  await b.waitClosed();
});
