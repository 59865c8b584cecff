/**
 * Servers working together (SPEC section 6): real server processes with
 * separate KV files, peered over loopback.
 */
import assert from "node:assert/strict";
import {
  allReady,
  collectData,
  freePort,
  header,
  type Proc,
  type Received,
  startProcess,
  startServer,
  TestClient,
  waitFor,
} from "./_helpers.ts";

async function health(p: { port: number }) {
  const r = await fetch(`http://127.0.0.1:${p.port}/healthz`);
  return await r.json();
}

async function bridgesUp(procs: Proc[]) {
  for (const p of procs) {
    let h: { peers?: { state: string }[] } = {};
    await waitFor(
      async () => {
        h = await health(p);
        return !!h.peers?.length && h.peers.every((b) => b.state === "connected");
      },
      `bridges of ${p.port} connected (last: ${JSON.stringify(h)})`,
      10_000,
    );
  }
}

function ring(ports: number[], dir: string, name: string[]) {
  return ports.map((_, i) => ({
    MLES_KV: `${dir}/${name[i]}.sqlite3`,
    MLES_PEERS: `ws://127.0.0.1:${ports[(i + 1) % ports.length]}/`,
    MLES_PEER_CHANNELS: "ring",
    MLES_PEER_UID: `mles-peer-${name[i]}`,
    MLES_HISTORY_LIMIT: "1000",
  }));
}

Deno.test("peering: three servers in a ring deliver every frame once to every member; histories match; a restarted server is resynchronized", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles-ring-" });
  const names = ["A", "B", "C"];
  const ports = [freePort(), freePort(), freePort()];
  const envs = ring(ports, dir, names);
  const procs = await Promise.all(ports.map((p, i) => startProcess(envs[i], p)));
  try {
    await bridgesUp(procs);
    const members = await Promise.all(
      procs.map((p, i) => TestClient.open(p.url, header(`m${names[i]}`, "ring"))),
    );
    await allReady(members, names);
    const per = 30;
    members.forEach((m, i) => {
      for (let n = 0; n < per; n++) m.send(JSON.stringify({ p: names[i], n }));
    });
    await Promise.all(members.map(async (m, i) => {
      const got = await collectData(m, (d) => d.length >= per * 2);
      assert.equal(got.length, per * 2, `m${names[i]} got each frame once (${got.length})`);
      // Each frame once, none echoed. Not in order: in a ring a frame reaches
      // a server along two paths (directly and through the third server) and
      // the first copy wins, so two frames of one publisher can swap when they
      // take different paths (seen 1 run in 4). Order holds along one path.
      const seen = new Map<string, Set<number>>();
      for (const f of got) {
        const { p, n } = JSON.parse(f);
        assert.notEqual(p, names[i], "never echoed back through the ring");
        const s = seen.get(p) ?? new Set<number>();
        assert.ok(!s.has(n), `${p}#${n} twice`);
        s.add(n);
        seen.set(p, s);
      }
      for (const p of names.filter((x) => x !== names[i])) {
        assert.equal(seen.get(p)?.size, per, `every frame from ${p}`);
      }
    }));
    // Histories hold the same frames on all three, each once.
    const histories: string[][] = [];
    for (const p of procs) {
      const late = await TestClient.open(p.url, header(`late${p.port}`, "ring"));
      histories.push((await collectData(late, (d) => d.length >= per * 3)).sort());
      await late.close();
    }
    assert.equal(histories[0].length, per * 3);
    assert.deepEqual(histories[1], histories[0]);
    assert.deepEqual(histories[2], histories[0]);

    // Kill C; publish on A and B; restart C: it catches up from its peers, no duplicates.
    await members[2].close();
    await procs[2].stop();
    members[0].send(JSON.stringify({ p: "A", n: per }));
    members[1].send(JSON.stringify({ p: "B", n: per }));
    await collectData(members[1], (d) => d.includes(JSON.stringify({ p: "A", n: per })));
    procs[2] = await startProcess(envs[2], ports[2]);
    await bridgesUp(procs);
    const lateC = await TestClient.open(procs[2].url, header("lateC2", "ring"));
    const hist = await collectData(lateC, (d) => d.length >= per * 3 + 2);
    assert.equal(hist.length, per * 3 + 2, "C's history: everything once");
    assert.equal(new Set(hist).size, hist.length);
    await lateC.close();
    await Promise.all(members.slice(0, 2).map((m) => m.close()));
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("peering: a peer that is down or refuses auth is retried, logged once per state change, and never slows local delivery", async () => {
  // A "dead" peer that accepts TCP and hangs up at once: each connection is one attempt.
  const dead = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = (dead.addr as Deno.NetAddr).port;
  let attempts = 0;
  const accepting = (async () => {
    for await (const c of dead) {
      attempts++;
      c.close();
    }
  })();
  const keyed = await startServer({ env: { MLES_KEY: "their-key" } });
  const port = freePort();
  const p = await startProcess({
    MLES_KV: ":memory:",
    MLES_PEERS: `ws://127.0.0.1:${deadPort}/,${keyed.wsUrl}`,
    MLES_PEER_CHANNELS: "local",
    MLES_PEER_KEY: "wrong-key",
    MLES_PEER_UID: "mles-peer-test",
  }, port);
  try {
    const a = await TestClient.open(p.url, header("a", "local"));
    const b = await TestClient.open(p.url, header("b", "local"));
    for (let i = 0; i < 100; i++) a.send(`x${i}`);
    const got: Received[] = [];
    while (got.length < 100) {
      const f = await b.next();
      if (typeof f === "string" && f.startsWith("x")) got.push(f);
    }
    assert.deepEqual(got, Array.from({ length: 100 }, (_, i) => `x${i}`));
    // Several retries of the dead peer's bridge, counted as they reach it.
    await waitFor(() => attempts >= 3, "three attempts on the dead peer", 10_000);
    let states: string[] = [];
    await waitFor(async () => {
      states = (await health(p)).peers.map((x: { state: string }) => x.state).sort();
      return states.join() === "down,refused";
    }, `bridge states down and refused (last: ${states})`);
    const down = p.log.filter((l) =>
      l.includes('"peer bridge down"') && l.includes(`127.0.0.1:${deadPort}`)
    );
    const refused = p.log.filter((l) => l.includes('"peer bridge refused"'));
    assert.equal(down.length, 1, `logged once: ${down.join("\n")}`);
    assert.ok(refused.length >= 1 && refused.length <= 2, refused.join("\n"));
    assert.ok(refused[0].includes("auth does not match"), "the refusal reason is logged");
    assert.ok(!p.log.some((l) => l.includes("wrong-key")), "the key is never logged");
    await a.close();
    await b.close();
  } finally {
    await p.stop();
    await keyed.close();
    dead.close();
    await accepting.catch(() => {});
  }
});

Deno.test("peering: with several isolates on one KV, exactly one bridge per (peer, channel) runs", async () => {
  await using peer = await startServer();
  const { startIsolates } = await import("./_helpers.ts");
  await using iso = await startIsolates(3, {
    MLES_PEERS: peer.wsUrl,
    MLES_PEER_CHANNELS: "leased",
    MLES_PEER_UID: "mles-peer-iso",
  });
  // The peer sees one bridge client in "leased", however many isolates there are.
  await waitFor(() => peer.server.hub.joinedCount === 1, "one bridge joined on the peer");
  // Every isolate has decided: one runs the bridge, the others wait for the lease.
  let states: string[] = [];
  await waitFor(
    async () => {
      states = (await Promise.all(iso.isolates.map(async (i) => {
        const h = await (await fetch(new URL("/healthz", i.url))).json();
        return (h.peers ?? []).map((b: { state: string }) => b.state);
      }))).flat().sort();
      return states.join() === "connected,waiting-lease,waiting-lease";
    },
    `one bridge connected and two waiting (last: ${states})`,
    10_000,
  );
  assert.equal(peer.server.hub.joinedCount, 1, "still one bridge");
  // And it carries frames both ways, once.
  await using local = await TestClient.open(iso.isolates[2].wsUrl, header("local", "leased"));
  await using remote = await TestClient.open(peer.wsUrl, header("remote", "leased"));
  await allReady([local, remote], ["local", "remote"]);
  local.send('{"p":"local","n":0}');
  remote.send('{"p":"remote","n":0}');
  const atRemote = await collectData(remote, (d) => d.length >= 1);
  const atLocal = await collectData(local, (d) => d.length >= 1);
  assert.deepEqual(atRemote, ['{"p":"local","n":0}']);
  assert.deepEqual(atLocal, ['{"p":"remote","n":0}']);
});
