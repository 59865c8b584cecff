/**
 * @module
 * Issue 12, transport rows, against `deno task start`'s transport
 * (src/node_server.ts): descriptor exhaustion (row 1), descriptors given
 * back (row 2), the first frame bounded before it is buffered (row 3) and
 * the RFC's closes on protocol errors (row 11). Each test reproduces the
 * attack on real sockets with bounded counts; descriptor tests run the
 * server as a child process under a low `ulimit -n` to stay fast.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../src/config.ts";
import { SUBPROTOCOL } from "../src/http.ts";
import {
  descriptorLimit,
  nodeServeOptions,
  type NodeServer,
  serveNode,
} from "../src/node_server.ts";
import { createServer, type Server } from "../src/server.ts";
import { freePort, header, upgradeRequest, waitFor } from "./_helpers.ts";
import { Opcode, RawWs } from "./raw_ws.ts";

/** The node transport in this process, on 127.0.0.1 and a free port. */
async function startNode(env: Record<string, string> = {}) {
  const config = loadConfig({ MLES_KV: ":memory:", MLES_LOG_LEVEL: "error", ...env });
  const server: Server = await createServer(config);
  const node: NodeServer = await serveNode(nodeServeOptions(config, {
    handler: server.http,
    metrics: server.metrics,
    log: { warn() {}, error() {} } as never,
    port: 0,
    hostname: "127.0.0.1",
    maxSockets: 10_000,
  }));
  const close = async () => {
    await server.close();
    await node.close();
  };
  return {
    port: node.port,
    wsUrl: `ws://127.0.0.1:${node.port}/`,
    server,
    node,
    [Symbol.asyncDispose]: close,
  };
}

/** `deno task start` as a child process with `ulimit -n fds`. */
async function startChild(fds: number, env: Record<string, string>) {
  const port = freePort();
  const root = new URL("..", import.meta.url).pathname;
  const child = new Deno.Command("sh", {
    args: [
      "-c",
      `ulimit -n ${fds} && exec "${Deno.execPath()}" run --unstable-kv --allow-net --allow-env --allow-read --allow-write --allow-ffi start.ts`,
    ],
    cwd: root,
    env: { PORT: String(port), MLES_KV: ":memory:", MLES_LOG_LEVEL: "warn", NO_COLOR: "1", ...env },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log: string[] = [];
  const listening = Promise.withResolvers<void>();
  const reading = (async () => {
    let rest = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      rest += chunk;
      const lines = rest.split("\n");
      rest = lines.pop()!;
      for (const l of lines) {
        log.push(l);
        if (l.includes("listening on")) listening.resolve();
      }
    }
    listening.reject(new Error(`server ended: ${log.join("\n")}`));
  })();
  await listening.promise;
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  return {
    port,
    log,
    pid: child.pid,
    get exited() {
      return exited;
    },
    /** Descriptors the child holds now. */
    fds: () => [...Deno.readDirSync(`/proc/${child.pid}/fd`)].length,
    /** Resident memory of the child in bytes. */
    rss: () => {
      const m = /VmRSS:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${child.pid}/status`));
      return m ? Number(m[1]) * 1024 : 0;
    },
    async [Symbol.asyncDispose]() {
      if (!exited) child.kill("SIGKILL");
      await status;
      await reading.catch(() => {});
    },
  };
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(3000) });
  return { status: res.status, body: await res.text() };
}

/** Opens up to `n` TCP connections that send nothing; stops at the first failure. */
async function openIdle(port: number, n: number): Promise<Deno.TcpConn[]> {
  const conns: Deno.TcpConn[] = [];
  for (let i = 0; i < n; i++) {
    try {
      conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    } catch {
      break;
    }
  }
  return conns;
}

/** Resolves when the server has closed `conn` (a read returns EOF or fails). */
async function closedByServer(conn: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(4096);
  try {
    while ((await conn.read(buf)) !== null) { /* drain */ }
  } catch { /* reset: closed too */ }
}

Deno.test({
  name:
    "row 1: 600 idle TCP connections against 256 descriptors: the process lives, refuses the excess, counts it and recovers",
  sanitizeResources: false,
  fn: async () => {
    await using p = await startChild(256, {
      MLES_MAX_CONNECTIONS_PER_IP: "0", // one test address: exercise the whole budget
      MLES_HEADER_TIMEOUT_MS: "60000",
    });
    const budget = Number(
      /soft limit 256, hard 256; up to (\d+) connections/.exec(p.log.join("\n"))?.[1],
    );
    assert.ok(budget > 0 && budget < 256, p.log.join("\n"));
    const conns = await openIdle(p.port, 600);
    // Every connection beyond the budget was accepted and closed at once.
    await waitFor(() => p.fds() < 256, "descriptors below the limit");
    assert.ok(!p.exited, "the server process is alive");
    const health = await get(p.port, "/healthz").catch((e) => ({ status: 0, body: String(e) }));
    // While full, a new connection is refused (closed at accept), never queued forever.
    assert.ok(health.status === 0 || health.status === 200, JSON.stringify(health));
    for (const c of conns) c.close();
    await waitFor(() => !p.exited && p.fds() < 100, "descriptors given back", 10_000);
    assert.equal((await get(p.port, "/healthz")).status, 200);
    const metrics = (await get(p.port, "/metrics")).body;
    const refused = Number(/mles_refused_sockets_total\{[^}]*\} (\d+)/.exec(metrics)?.[1]);
    assert.ok(refused >= conns.length - budget, `refused ${refused} of ${conns.length}`);
    const warns = p.log.filter((l) => l.includes("refusing connections"));
    assert.equal(warns.length, 1, "logged once per burst:\n" + warns.join("\n"));
  },
});

Deno.test({
  name:
    "row 1: one address gets at most MLES_MAX_CONNECTIONS_PER_IP connections; others still connect",
  sanitizeResources: false,
  fn: async () => {
    await using s = await startNode({ MLES_MAX_CONNECTIONS_PER_IP: "20" });
    const conns = await openIdle(s.port, 40);
    await waitFor(() => s.node.openSockets === 20, "20 kept");
    await waitFor(() => s.server.metrics.refusedSockets === 20, "20 refused");
    for (const c of conns) c.close();
    await waitFor(() => s.node.openSockets === 0, "all closed");
    const ws = await RawWs.connect(s.wsUrl, { protocol: SUBPROTOCOL });
    assert.equal(ws.status, 101);
    await ws.close();
  },
});

Deno.test({
  name:
    "row 1: idle TCP and headers dripped 1 byte at a time are closed within MLES_HEADER_TIMEOUT_MS",
  sanitizeResources: false,
  fn: async () => {
    await using s = await startNode({ MLES_HEADER_TIMEOUT_MS: "1000" });
    const started = performance.now();
    const idle = await openIdle(s.port, 20);
    const drip = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
    const req = upgradeRequest(s.port);
    let stop = false;
    const dripping = (async () => {
      for (let i = 0; i < req.length && !stop; i++) {
        try {
          await drip.write(req.subarray(i, i + 1));
        } catch {
          return;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    await Promise.all([...idle, drip].map(closedByServer));
    stop = true;
    await dripping;
    const ms = performance.now() - started;
    assert.ok(ms < 4000, `closed after ${ms.toFixed(0)} ms`);
    for (const c of [...idle, drip]) c.close();
  },
});

Deno.test({
  name:
    "row 2: 100 upgraded sockets that never answer the server's close give back their descriptors",
  sanitizeResources: false,
  fn: async () => {
    await using p = await startChild(1024, {
      MLES_HEADER_TIMEOUT_MS: "500",
      MLES_MAX_CONNECTIONS_PER_IP: "0",
    });
    const before = p.fds();
    const silent: Deno.TcpConn[] = [];
    for (let i = 0; i < 100; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: p.port });
      await c.write(upgradeRequest(p.port));
      silent.push(c); // never reads, never answers the close
    }
    await waitFor(() => p.fds() >= before + 100, "100 sockets open");
    const t0 = performance.now();
    // Header timeout 0.5 s, close sent, 2 s for the client to answer, then torn down.
    await waitFor(() => p.fds() <= before + 2, "descriptors given back", 8000);
    const ms = performance.now() - t0;
    console.log(`descriptors back ${ms.toFixed(0)} ms after the sockets were open`);
    assert.ok(ms < 4000, `took ${ms.toFixed(0)} ms`);
    for (const c of silent) c.close();
  },
});

Deno.test({
  name:
    "row 3: a 60 MiB first frame is refused with 1009 at its frame header, before it is buffered",
  sanitizeResources: false,
  fn: async () => {
    await using p = await startChild(1024, { MLES_KEY: "secret" });
    const rss0 = p.rss();
    // A masked TEXT frame announcing 60 MiB, then 4 MiB of its payload: the
    // close must come from the frame header, before the payload is buffered.
    const head = new Uint8Array(14);
    head[0] = 0x81;
    head[1] = 0x80 | 127;
    new DataView(head.buffer).setBigUint64(2, BigInt(60 << 20));
    const chunk = new Uint8Array(64 << 10);
    const sockets = await Promise.all(
      Array.from(
        { length: 20 },
        () => RawWs.connect(`ws://127.0.0.1:${p.port}/`, { protocol: SUBPROTOCOL }),
      ),
    );
    const codes = await Promise.all(sockets.map(async (ws) => {
      const writing = (async () => {
        await ws.sendRaw(head);
        for (let i = 0; i < 64; i++) await ws.sendRaw(chunk);
      })().catch(() => {});
      try {
        for (;;) {
          const f = await ws.next(10_000);
          if (f.opcode === Opcode.close) return f.closeCode;
        }
      } catch {
        return undefined;
      } finally {
        await writing;
        await ws.close().catch(() => {});
      }
    }));
    const peak = p.rss() - rss0;
    console.log(`close codes ${[...new Set(codes)]}, RSS +${(peak / 2 ** 20).toFixed(1)} MiB`);
    assert.ok(codes.every((c) => c === 1009), JSON.stringify(codes));
    assert.ok(peak < 128 * 2 ** 20, `RSS grew ${peak} bytes`); // 20 x 4 MiB were sent
  },
});

Deno.test({
  name:
    "row 3: a masked 5 KiB first frame closes 1009; the 4 KiB header and a 4 MiB frame after it pass",
  sanitizeResources: false,
  fn: async () => {
    await using s = await startNode();
    {
      await using ws = await RawWs.connect(s.wsUrl, { protocol: SUBPROTOCOL });
      await ws.sendText("x".repeat(5000));
      const f = await ws.next();
      assert.equal(f.opcode, Opcode.close);
      assert.equal(f.closeCode, 1009);
    }
    await using a = await RawWs.connect(s.wsUrl, { protocol: SUBPROTOCOL });
    await using b = await RawWs.connect(s.wsUrl, { protocol: SUBPROTOCOL });
    const h = JSON.stringify(header("a".repeat(4000), "big"));
    await a.sendText(h);
    await waitFor(() => s.server.hub.joinedCount === 1, "a joined");
    await b.sendText(JSON.stringify(header("b", "big")));
    assert.equal((await b.next()).text, h);
    await waitFor(() => s.server.hub.joinedCount === 2, "b joined");
    const big = new Uint8Array(4 << 20).fill(7);
    await a.sendBinary(big);
    const got = await b.next(10_000);
    assert.equal(got.payload.length, big.length);
  },
});

Deno.test({
  name:
    "full 64 KiB reads are copied out of the runtime's read buffers: frames across them arrive byte for byte, in order",
  sanitizeResources: false,
  fn: async () => {
    await using s = await startNode({ MLES_MAX_BYTES_PER_S: "0", MLES_MAX_FRAMES_PER_S: "0" });
    await using a = await RawWs.connect(s.wsUrl, { protocol: SUBPROTOCOL });
    await using b = await RawWs.connect(s.wsUrl, { protocol: SUBPROTOCOL });
    await a.sendText(JSON.stringify(header("a", "slabs")));
    await waitFor(() => s.server.hub.joinedCount === 1, "a joined");
    await b.sendText(JSON.stringify(header("b", "slabs")));
    await b.next(); // a's header
    await waitFor(() => s.server.hub.joinedCount === 2, "b joined");
    // Sizes that end mid-read, on a read boundary and across several reads.
    const sizes = [300_000, 65_536, 17, 131_072 - 14, 1_000_000, 3];
    const frames = sizes.map((n) => new Uint8Array(n));
    for (const f of frames) {
      for (let i = 0; i < f.length; i += 65_536) {
        crypto.getRandomValues(f.subarray(i, Math.min(f.length, i + 65_536)));
      }
      await a.sendBinary(f);
    }
    for (const f of frames) {
      const got = await b.next(10_000);
      assert.deepEqual(got.payload, f);
    }
  },
});

const violations: [string, (ws: RawWs) => Promise<void>, number][] = [
  [
    "invalid UTF-8 in a TEXT frame",
    (ws) => ws.sendFrame({ opcode: Opcode.text, payload: new Uint8Array([0xc3, 0x28]) }),
    1007,
  ],
  [
    "a ping over 125 bytes",
    (ws) => ws.sendFrame({ opcode: Opcode.ping, payload: new Uint8Array(200), lengthBits: 16 }),
    1002,
  ],
  ["a reserved opcode (0x3)", (ws) => ws.sendFrame({ opcode: 0x3, payload: "x" }), 1002],
  [
    "an unmasked frame",
    (ws) => ws.sendFrame({ opcode: Opcode.text, payload: "x", mask: false }),
    1002,
  ],
  ["a reserved bit", (ws) => ws.sendFrame({ opcode: Opcode.text, payload: "x", rsv: 4 }), 1002],
];
for (const [what, send, code] of violations) {
  Deno.test({
    name: `row 11: ${what} after joining closes ${code}; the channel goes on`,
    sanitizeResources: false,
    fn: async () => {
      await using s = await startNode();
      await using bad = await RawWs.connect(s.wsUrl, { protocol: SUBPROTOCOL });
      await using ok = await RawWs.connect(s.wsUrl, { protocol: SUBPROTOCOL });
      await bad.sendText(JSON.stringify(header("bad", "rfc")));
      await waitFor(() => s.server.hub.joinedCount === 1, "bad joined");
      await ok.sendText(JSON.stringify(header("ok", "rfc")));
      await ok.next(); // bad's header from history
      await waitFor(() => s.server.hub.joinedCount === 2, "ok joined");
      await send(bad);
      let f = await bad.next();
      while (f.opcode !== Opcode.close) f = await bad.next();
      assert.equal(f.closeCode, code);
      await waitFor(() => s.server.hub.joinedCount === 1, "bad left");
      assert.equal(ok.pending, 0, "nothing of the bad frame was relayed");
    },
  });
}

Deno.test("descriptors: the soft RLIMIT_NOFILE is raised to the hard one and reported", () => {
  const limit = descriptorLimit();
  assert.ok(limit, "readable with --allow-ffi");
  assert.equal(limit.soft, limit.hard);
});
