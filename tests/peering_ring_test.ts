/**
 * Peering without duplicates after restarts (issue 11): the ring sequence
 * that delivered C's early frames twice, its variations, and a ring of two
 * deployments of two isolates each. Real server processes (or isolates)
 * with their own KV files, over loopback.
 */
import assert from "node:assert/strict";
import {
  allReady,
  collectData,
  freePort,
  header,
  isData,
  type Proc,
  startIsolates,
  startProcess,
  TestClient,
  waitFor,
} from "./_helpers.ts";

function once(data: string[], expected: string[], what: string) {
  assert.equal(new Set(data).size, data.length, `${what}: no frame twice (${data.length})`);
  assert.deepEqual([...data].sort(), [...expected].sort(), what);
}

async function health(port: number) {
  return await (await fetch(`http://127.0.0.1:${port}/healthz`)).json();
}

/** Waits until every bridge of `p` is connected. */
async function bridgesUp(...procs: Proc[]) {
  for (const p of procs) {
    let h: { peers?: { state: string }[] } = {};
    await waitFor(
      async () => {
        h = await health(p.port);
        return !!h.peers?.length && h.peers.every((b) => b.state === "connected");
      },
      `bridges of ${p.port} connected (last: ${JSON.stringify(h)})`,
      20_000,
    );
  }
}

const msg = (p: string, n: number) => JSON.stringify({ p, n });

Deno.test("peering ring: the issue's sequence (A down at start, C publishes, A joins, B restarts) and variations deliver every frame once and store it once everywhere", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles-ring2-" });
  const names = ["A", "B", "C"];
  const ports = names.map(() => freePort());
  const env = (i: number) => ({
    MLES_KV: `${dir}/${names[i]}.sqlite3`,
    MLES_PEERS: `ws://127.0.0.1:${ports[(i + 1) % 3]}/`,
    MLES_PEER_CHANNELS: "ring",
    MLES_PEER_UID: `mles-peer-${names[i]}`,
    MLES_PEER_KEY: "ring-peer-key",
    MLES_HISTORY_LIMIT: "1000",
    MLES_LOG_LEVEL: "error",
  });
  const procs: (Proc | undefined)[] = [undefined, undefined, undefined];
  const start = async (i: number) => procs[i] = await startProcess(env(i), ports[i]);
  const all: string[] = [];
  /** A late joiner on every running server: its history holds every frame exactly once. */
  const checkHistories = async (what: string) => {
    for (const [i, p] of procs.entries()) {
      if (!p) continue;
      const late = await TestClient.open(p.url, header(`late${i}-${all.length}`, "ring"));
      const got = await collectData(late, (d) => d.length >= all.length);
      once(got, all, `${what}: history of ${names[i]}`);
      await late.close();
    }
  };
  try {
    // B and C start while A is down (C's bridge to A keeps failing).
    await start(1);
    await start(2);
    await bridgesUp(procs[1]!);
    // C publishes 5 frames; B's bridge carries them to B.
    const onC = await TestClient.open(procs[2]!.url, header("mC", "ring"));
    for (let n = 0; n < 5; n++) onC.send(msg("C-early", n)), all.push(msg("C-early", n));
    // A starts: chat through the ring.
    await start(0);
    await bridgesUp(procs[0]!, procs[1]!, procs[2]!);
    const onA = await TestClient.open(procs[0]!.url, header("mA", "ring"));
    const onB = await TestClient.open(procs[1]!.url, header("mB", "ring"));
    // A's and B's joins replay C's early frames: kept for A's count below.
    const [earlyOnA] = await allReady([onA, onB, onC], ["A", "B", "C"]);
    const heardOnA = earlyOnA.filter(isData);
    for (let n = 0; n < 10; n++) {
      for (const [c, p] of [[onA, "A"], [onB, "B"], [onC, "C"]] as const) {
        c.send(msg(p, n));
        all.push(msg(p, n));
      }
    }
    const fromOthers = (me: string) => all.filter((m) => !m.includes(`"p":"${me}"`));
    once(
      [
        ...heardOnA,
        ...await collectData(onA, (d) => heardOnA.length + d.length >= fromOthers("A").length),
      ],
      fromOthers("A"),
      "A live",
    );
    await checkHistories("after the chat");

    // B restarts on its KV file; a client on C then holds C's early frames once.
    await onB.close();
    await procs[1]!.stop();
    // Variation: frames published while a bridge is down (A's bridge to B, C's from B).
    for (let n = 0; n < 3; n++) {
      onA.send(msg("A-while-B-down", n)), all.push(msg("A-while-B-down", n));
    }
    await start(1);
    await bridgesUp(procs[0]!, procs[1]!, procs[2]!);
    const onC2 = await TestClient.open(procs[2]!.url, header("mC2", "ring"));
    once(await collectData(onC2, (d) => d.length >= all.length), all, "C after B's restart");
    await onC2.close();
    await checkHistories("after B's restart");

    // Variation: C restarts while others publish; A restarts last.
    await onC.close();
    await procs[2]!.stop();
    for (let n = 0; n < 3; n++) {
      onA.send(msg("A-while-C-down", n)), all.push(msg("A-while-C-down", n));
    }
    await start(2);
    await onA.close();
    await procs[0]!.stop();
    await start(0);
    await bridgesUp(procs[0]!, procs[1]!, procs[2]!);
    await checkHistories("after C's and A's restarts");
  } finally {
    await Promise.all(procs.map((p) => p?.stop()));
    await Deno.remove(dir, { recursive: true });
  }
});

/** Forwards TCP from a port known in advance to a target set later (for peering URLs). */
function forwarder() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let target: number | undefined;
  const conns = new Set<Deno.Conn>();
  (async () => {
    for await (const c of listener) {
      if (target === undefined) {
        c.close();
        continue;
      }
      const up = await Deno.connect({ hostname: "127.0.0.1", port: target }).catch(() => undefined);
      if (!up) {
        c.close();
        continue;
      }
      conns.add(c).add(up);
      const end = () => {
        for (const x of [c, up]) {
          try {
            x.close();
          } catch { /* closed */ }
          conns.delete(x);
        }
      };
      c.readable.pipeTo(up.writable).catch(() => {}).finally(end);
      up.readable.pipeTo(c.writable).catch(() => {}).finally(end);
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    set(port: number) {
      target = port;
    },
    close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

Deno.test("peering: a ring of two deployments of 2 isolates each, peered both ways, delivers every frame once", async () => {
  const fwd = forwarder();
  const common = {
    MLES_PEER_CHANNELS: "duo",
    MLES_PEER_KEY: "duo-key",
    MLES_HISTORY_LIMIT: "1000",
  };
  await using d1 = await startIsolates(2, {
    ...common,
    MLES_PEERS: `ws://127.0.0.1:${fwd.port}/`,
    MLES_PEER_UID: "mles-peer-d1",
  });
  await using d2 = await startIsolates(2, {
    ...common,
    MLES_PEERS: d1.isolates[1].wsUrl,
    MLES_PEER_UID: "mles-peer-d2",
  });
  fwd.set(Number(new URL(d2.isolates[0].url).port));
  try {
    const urls = [...d1.isolates, ...d2.isolates].map((i) => i.wsUrl);
    const clients = await Promise.all(
      urls.map((u, i) => TestClient.open(u, header(`m${i}`, "duo"))),
    );
    // Both bridges up: a probe from each deployment reaches the other.
    for (const [from, to] of [[0, 2], [2, 0]]) {
      for (let k = 0;; k++) {
        clients[from].send(`probe${from}-${k}`);
        const f = await clients[to].next(300).catch(() => undefined);
        if (typeof f === "string" && f.startsWith(`probe${from}`)) break;
        assert.ok(k < 100, "bridges up");
      }
    }
    const per = 25;
    const all: string[] = [];
    clients.forEach((c, i) => {
      for (let n = 0; n < per; n++) {
        c.send(msg(`m${i}`, n));
        all.push(msg(`m${i}`, n));
      }
    });
    await Promise.all(clients.map(async (c, i) => {
      const expected = all.filter((m) => !m.includes(`"p":"m${i}"`));
      once(await collectData(c, (d) => d.length >= expected.length), expected, `member ${i}`);
    }));
    for (const [i, u] of urls.entries()) {
      const late = await TestClient.open(u, header(`late${i}`, "duo"));
      once(await collectData(late, (d) => d.length >= all.length), all, `history on isolate ${i}`);
      await late.close();
    }
    await Promise.all(clients.map((c) => c.close()));
  } finally {
    fwd.close();
  }
});
