/**
 * One channel across many isolates (DESIGN.md "Guarantees"): real server
 * isolates in Web Workers, each with its own Deno KV handle on one SQLite
 * file, like `deno serve --parallel`. Clients choose their isolate, so every
 * placement of publisher and member is covered.
 */
import assert from "node:assert/strict";
import { collect, header, type Received, startIsolates, TestClient } from "./_helpers.ts";

interface Data {
  p: string;
  n: number;
}

/** Data frames (`{"p","n"}`) received, ignoring join headers and ready marks. */
function data(frames: Received[]): Data[] {
  const out: Data[] = [];
  for (const f of frames) {
    if (typeof f !== "string" || !f.startsWith('{"p"')) continue;
    out.push(JSON.parse(f));
  }
  return out;
}

/**
 * Joins members and waits until each join has completed everywhere: each
 * sends "ready:<uid>" (held by the server until its join completes) and the
 * observer must see them all.
 */
async function joinAll(
  observer: TestClient,
  members: [url: string, uid: string, channel: string][],
): Promise<TestClient[]> {
  const clients: TestClient[] = [];
  for (const [url, uid, channel] of members) {
    const c = await TestClient.open(url, header(uid, channel));
    c.send(`ready:${uid}`);
    clients.push(c);
  }
  const want = new Set(members.map(([, uid]) => `ready:${uid}`));
  await collect(observer, (fs) => {
    for (const f of fs) want.delete(f as string);
    return want.size === 0;
  });
  return clients;
}

/** Asserts each publisher's frames arrive exactly once, in order, for every publisher in `expect`. */
function assertExactlyOnceInOrder(got: Data[], expect: Map<string, number>, who: string) {
  const last = new Map<string, number>();
  for (const d of got) {
    const prev = last.get(d.p) ?? -1;
    assert.equal(
      d.n,
      prev + 1,
      `${who}: frame ${d.p}#${d.n} after #${prev} (gap, duplicate or reorder)`,
    );
    last.set(d.p, d.n);
  }
  for (const [p, count] of expect) {
    assert.equal((last.get(p) ?? -1) + 1, count, `${who}: frames from ${p}`);
  }
  assert.deepEqual([...last.keys()].sort(), [...expect.keys()].sort(), `${who}: publishers`);
}

async function everyFrameOnceEverywhere(nIsolates: number) {
  await using iso = await startIsolates(nIsolates, { MLES_HISTORY_LIMIT: "2000" });
  const urls = iso.isolates.map((i) => i.wsUrl);
  const channel = `fanout-${nIsolates}`;
  await using observer = await TestClient.open(urls[0], header("observer", channel));
  // Two members per isolate; the first of each is also a publisher.
  const spec: [string, string, string][] = [];
  urls.forEach((u, i) => spec.push([u, `pub${i}`, channel], [u, `sub${i}`, channel]));
  const members = await joinAll(observer, spec);
  const perPublisher = 60;
  members.forEach((c, k) => {
    if (k % 2 !== 0) return;
    for (let n = 0; n < perPublisher; n++) c.send(JSON.stringify({ p: spec[k][1], n }));
  });
  const publishers = spec.filter((_, k) => k % 2 === 0).map((s) => s[1]);
  const all = [observer, ...members];
  const names = ["observer", ...spec.map((s) => s[1])];
  await Promise.all(all.map(async (c, k) => {
    const expect = new Map(
      publishers.filter((p) => p !== names[k]).map((p) => [p, perPublisher] as [string, number]),
    );
    const total = expect.size * perPublisher;
    const frames = await collect(c, (fs) => data(fs).length >= total);
    // A duplicate arriving late would show up here.
    try {
      for (;;) frames.push(await c.next(300));
    } catch { /* quiet */ }
    assertExactlyOnceInOrder(data(frames), expect, names[k]);
  }));
  // History replayed on each isolate is identical.
  const histories: string[] = [];
  for (const u of urls) {
    await using late = await TestClient.open(u, header(`late-${histories.length}`, channel));
    const frames = await collect(late, (fs) => data(fs).length >= publishers.length * perPublisher);
    histories.push(JSON.stringify(frames.filter((f) => !String(f).includes('"late-'))));
  }
  for (const h of histories) assert.equal(h, histories[0], "history differs between isolates");
  await Promise.all(members.map((c) => c.close()));
}

Deno.test("isolates: with 2 isolates every member gets every frame exactly once, in per-publisher order", () =>
  everyFrameOnceEverywhere(2));

Deno.test("isolates: with 4 isolates every member gets every frame exactly once, in per-publisher order", () =>
  everyFrameOnceEverywhere(4));

Deno.test("isolates: a burst of 1,000 frames from one isolate arrives complete and in order on another", async () => {
  await using iso = await startIsolates(2);
  const [a, b] = iso.isolates;
  await using pub = await TestClient.open(a.wsUrl, header("pub", "burst"));
  const [sub] = await joinAll(pub, [[b.wsUrl, "sub", "burst"]]);
  for (let n = 0; n < 1000; n++) pub.send(JSON.stringify({ p: "pub", n }));
  const frames = await collect(sub, (fs) => data(fs).length >= 1000);
  assertExactlyOnceInOrder(data(frames), new Map([["pub", 1000]]), "sub");
  await sub.close();
});

Deno.test("isolates: a hot channel written from 4 isolates at once loses nothing", async () => {
  await using iso = await startIsolates(4, { MLES_HISTORY_LIMIT: "5000" });
  const urls = iso.isolates.map((i) => i.wsUrl);
  await using observer = await TestClient.open(urls[0], header("observer", "hot"));
  const pubs = await joinAll(observer, urls.map((u, i) => [u, `p${i}`, "hot"]));
  const per = 250;
  for (let n = 0; n < per; n++) {
    pubs.forEach((c, i) => c.send(JSON.stringify({ p: `p${i}`, n })));
  }
  const frames = await collect(observer, (fs) => data(fs).length >= per * 4);
  assertExactlyOnceInOrder(data(frames), new Map(pubs.map((_, i) => [`p${i}`, per])), "observer");
  // Each publisher saw the other three's frames, once each.
  await Promise.all(pubs.map(async (c, i) => {
    const fs = await collect(c, (f) => data(f).length >= per * 3);
    const expect = new Map(
      pubs.map((_, j) => [`p${j}`, per] as [string, number]).filter(([p]) => p !== `p${i}`),
    );
    assertExactlyOnceInOrder(data(fs), expect, `p${i}`);
  }));
  // Stored history counts match.
  await using late = await TestClient.open(urls[3], header("late", "hot"));
  const hist = await collect(late, (fs) => data(fs).length >= per * 4);
  assert.equal(data(hist).length, per * 4);
  await Promise.all(pubs.map((c) => c.close()));
});

Deno.test("isolates: frames over 64 KiB and over 800 KiB and long names cross isolates intact", async () => {
  await using iso = await startIsolates(2);
  const [a, b] = iso.isolates;
  const channel = "c".repeat(3000);
  await using pub = await TestClient.open(a.wsUrl, header("u".repeat(900), channel));
  const [sub] = await joinAll(pub, [[b.wsUrl, "sub", channel]]);
  const big = new Uint8Array(100 * 1024);
  for (let i = 0; i < big.length; i += 65536) crypto.getRandomValues(big.subarray(i, i + 65536));
  const huge = new Uint8Array(3 * 1024 * 1024).map((_, i) => (i * 7919) & 0xff);
  const text = "ü✓".repeat(200_000); // 1,000,000 UTF-8 bytes, 400,000 UTF-16 units
  pub.send(big);
  pub.send(huge);
  pub.send(text);
  pub.send("small-after");
  const got = await collect(sub, (fs) => fs.includes("small-after"));
  assert.deepEqual(got.slice(-4), [big, huge, text, "small-after"]);
  // And from history on the other isolate, byte for byte.
  await using late = await TestClient.open(a.wsUrl, header("late", channel));
  const hist = await collect(late, (fs) => fs.includes("small-after"));
  assert.ok(hist.some((f) => f instanceof Uint8Array && f.length === huge.length));
  assert.deepEqual(hist.filter((f) => f instanceof Uint8Array), [big, huge]);
  assert.ok(hist.includes(text));
  await sub.close();
});

Deno.test("isolates: joining during steady traffic gives history then live with no gap and no duplicate", async () => {
  await using iso = await startIsolates(2, { MLES_HISTORY_LIMIT: "5000" });
  const [a, b] = iso.isolates;
  await using pub = await TestClient.open(a.wsUrl, header("pub", "steady"));
  let n = 0;
  let stop = false;
  const pump = (async () => {
    while (!stop) {
      for (let k = 0; k < 20; k++) pub.send(JSON.stringify({ p: "pub", n: n++ }));
      await new Promise((r) => setTimeout(r, 2));
    }
  })();
  const joiners: TestClient[] = [];
  for (let j = 0; j < 6; j++) {
    await new Promise((r) => setTimeout(r, 30));
    joiners.push(await TestClient.open(j % 2 ? a.wsUrl : b.wsUrl, header(`j${j}`, "steady")));
  }
  await new Promise((r) => setTimeout(r, 100));
  stop = true;
  await pump;
  const total = n;
  for (const [j, c] of joiners.entries()) {
    const frames = await collect(c, (fs) => data(fs).at(-1)?.n === total - 1);
    const got = data(frames);
    // Everything from frame 0 (history holds it all) to the last, each once, in order.
    assertExactlyOnceInOrder(got, new Map([["pub", total]]), `j${j}`);
    await c.close();
  }
});

Deno.test("isolates: after a restart with a file KV, history is intact and the sequence continues", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles-restart-" });
  const kvPath = `${dir}/kv.sqlite3`;
  try {
    {
      await using iso = await startIsolates(2, {}, kvPath);
      await using a = await TestClient.open(iso.isolates[0].wsUrl, header("a", "keep"));
      const [w] = await joinAll(a, [[iso.isolates[1].wsUrl, "w", "keep"]]);
      for (let n = 0; n < 50; n++) a.send(JSON.stringify({ p: "a", n }));
      await collect(w, (fs) => data(fs).length >= 50);
      await w.close();
    }
    await using iso = await startIsolates(2, {}, kvPath);
    await using a2 = await TestClient.open(iso.isolates[1].wsUrl, header("a2", "keep"));
    const before = await collect(a2, (fs) => data(fs).length >= 50);
    assertExactlyOnceInOrder(data(before), new Map([["a", 50]]), "after restart");
    const [w2] = await joinAll(a2, [[iso.isolates[0].wsUrl, "w2", "keep"]]);
    for (let n = 50; n < 60; n++) a2.send(JSON.stringify({ p: "a", n }));
    const live = await collect(w2, (fs) => data(fs).at(-1)?.n === 59);
    assertExactlyOnceInOrder(data(live), new Map([["a", 60]]), "continued");
    await w2.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("isolates: 40 newcomers joining while another isolate publishes at 500 frames/s each get history then live with no gap and no duplicate", async () => {
  await using iso = await startIsolates(2, { MLES_HISTORY_LIMIT: "100000" });
  const [a, b] = iso.isolates;
  await using pub = await TestClient.open(a.wsUrl, header("pub", "boundary"));
  let n = 0;
  let stop = false;
  // 500 frames/s: 5 frames every 10 ms.
  const pump = (async () => {
    while (!stop) {
      for (let k = 0; k < 5; k++) pub.send(JSON.stringify({ p: "pub", n: n++ }));
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  const joiners: TestClient[] = [];
  for (let j = 0; j < 40; j++) {
    joiners.push(await TestClient.open(b.wsUrl, header(`n${j}`, "boundary")));
    await new Promise((r) => setTimeout(r, 7 + (j % 5)));
  }
  stop = true;
  await pump;
  const total = n;
  await Promise.all(joiners.map(async (c, j) => {
    const frames = await collect(c, (fs) => data(fs).at(-1)?.n === total - 1, 30_000);
    assertExactlyOnceInOrder(data(frames), new Map([["pub", total]]), `n${j}`);
  }));
  await Promise.all(joiners.map((c) => c.close()));
});
