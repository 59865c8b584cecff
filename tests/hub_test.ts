/**
 * The join handoff (STYLE 5) as a unit: "history, then live, no gap, no
 * duplicate", with every interleaving of live frames and the history read
 * driven by hand through a scripted bus. Members are plain recorders.
 */
import assert from "node:assert/strict";
import type { Bus, BusHandler, History } from "../src/bus.ts";
import type { Close } from "../src/close.ts";
import type { Delivery, Frame } from "../src/frame.ts";
import { FLOOD_HOLD_MS, Hub, type Member } from "../src/hub.ts";

/** A bus whose history reads resolve when the test says so. */
class ScriptedBus implements Bus {
  handler!: BusHandler;
  published: Delivery[] = [];
  pendingHistory: PromiseWithResolvers<History>[] = [];
  listen(h: BusHandler) {
    this.handler = h;
  }
  subscribe() {
    return Promise.resolve();
  }
  unsubscribe() {}
  publish(_c: string, d: Delivery) {
    this.published.push(d);
    return true;
  }
  history(): Promise<History> {
    const p = Promise.withResolvers<History>();
    this.pendingHistory.push(p);
    return p.promise;
  }
  close() {
    return Promise.resolve();
  }
}

class Recorder implements Member {
  got: string[] = [];
  closed: Close | undefined;
  bufferedAmount = 0;
  throws = false;
  send(f: Frame) {
    if (this.throws) throw new Error("socket gone");
    this.got.push(f.data as string);
  }
  close(c: Close) {
    this.closed = c;
  }
}

const t = (data: string): Frame => ({ kind: "text", data });
/** The position of the n-th commit (one frame each), as the KV bus spells it. */
const p = (n: number) => n.toString(16).padStart(20, "0") + "0000";
const d = (id: string, data: string, n?: number): Delivery => ({
  id,
  frame: t(data),
  pos: n === undefined ? undefined : p(n),
});
const tick = () => new Promise((r) => setTimeout(r, 0));

/** Joins `m` with an empty history and resolves once it is live. */
async function joinEmpty(hub: Hub, bus: ScriptedBus, m: Recorder, header = "h") {
  const j = hub.join(m, "c", { header: t(header) });
  await tick();
  bus.pendingHistory.at(-1)!.resolve({ deliveries: [], lastPos: "" });
  return (await j)!;
}

Deno.test("join: frames stored up to the history point come from history only, later ones live", async () => {
  const bus = new ScriptedBus();
  const hub = new Hub(bus, { maxBufferedBytes: 1e9 });
  const m = new Recorder();
  const joining = hub.join(m, "c", { header: t("hdr") });
  await tick();
  // While history is read, remote frames 4 and 5 arrive live; history ends at 4.
  bus.handler.onFrames("c", [d("r.4", "four", 4), d("r.5", "five", 5)]);
  bus.pendingHistory[0].resolve({
    deliveries: [d("r.3", "three", 3), d("r.4", "four", 4)],
    lastPos: p(4),
  });
  await joining;
  assert.deepEqual(m.got, ["three", "four", "five"]);
  bus.handler.onFrames("c", [d("r.6", "six", 6)]);
  assert.deepEqual(m.got, ["three", "four", "five", "six"]);
});

Deno.test("join: a local frame published during the join is sent once, whether history has it or not", async () => {
  const bus = new ScriptedBus();
  const hub = new Hub(bus, { maxBufferedBytes: 1e9 });
  const a = new Recorder();
  const pa = await joinEmpty(hub, bus, a, "hdr-a");
  const b = new Recorder();
  const jb = hub.join(b, "c", { header: t("hdr-b") });
  await tick();
  pa.publish(t("x")); // not stored yet: b buffers it
  pa.publish(t("y"));
  const [x] = bus.published.slice(-2);
  x.pos = p(7); // x got stored before the history read; y did not
  bus.pendingHistory[1].resolve({ deliveries: [x], lastPos: x.pos! });
  await jb;
  assert.deepEqual(b.got, ["x", "y"]);
  assert.deepEqual(a.got, [], "never echoed to the sender");
});

Deno.test("join: a local frame read as part of the history snapshot is not sent twice", async () => {
  const bus = new ScriptedBus();
  const hub = new Hub(bus, { maxBufferedBytes: 1e9 });
  const a = new Recorder();
  const pa = await joinEmpty(hub, bus, a, "hdr-a");
  const b = new Recorder();
  const jb = hub.join(b, "c", { header: t("hdr-b") });
  await tick();
  pa.publish(t("z")); // history snapshot includes it by id, position not known yet
  const z = bus.published.at(-1)!;
  bus.pendingHistory[1].resolve({ deliveries: [z], lastPos: "" });
  await jb;
  assert.deepEqual(b.got, ["z"]);
});

Deno.test("join: the header goes to history only, after the newcomer's history", async () => {
  const bus = new ScriptedBus();
  const hub = new Hub(bus, { maxBufferedBytes: 1e9 });
  const a = new Recorder();
  const ja = hub.join(a, "c", { header: t("hdr-a") });
  await tick();
  bus.pendingHistory[0].resolve({ deliveries: [d("o.1", "old", 1)], lastPos: p(1) });
  await ja;
  assert.deepEqual(a.got, ["old"]);
  const hdr = bus.published.at(-1)!;
  assert.equal(hdr.frame.data, "hdr-a");
  assert.equal(hdr.historyOnly, true);
});

Deno.test("fan-out: a member whose send throws is dropped with 1011 and the others still get the frame", async () => {
  const bus = new ScriptedBus();
  const hub = new Hub(bus, { maxBufferedBytes: 1e9 });
  const [a, bad, c] = [new Recorder(), new Recorder(), new Recorder()];
  for (const m of [a, bad, c]) await joinEmpty(hub, bus, m);
  bad.throws = true;
  bus.handler.onFrames("c", [d("r.1", "one", 1)]);
  assert.deepEqual(a.got, ["one"]);
  assert.deepEqual(c.got, ["one"]);
  assert.equal(bad.closed?.code, 1011);
  assert.equal(hub.memberCount, 2);
});

Deno.test("fan-out: a member over the buffered-bytes limit is dropped with 1013, others unaffected", async () => {
  const bus = new ScriptedBus();
  const hub = new Hub(bus, { maxBufferedBytes: 100 });
  const [a, slow] = [new Recorder(), new Recorder()];
  for (const m of [a, slow]) await joinEmpty(hub, bus, m);
  slow.bufferedAmount = 101;
  bus.handler.onFrames("c", [d("r.1", "one", 1), d("r.2", "two", 2)]);
  assert.deepEqual(a.got, ["one", "two"]);
  assert.deepEqual(slow.got, ["one"]);
  assert.equal(slow.closed?.code, 1013);
});

Deno.test("join: a stored frame within the newcomer's history never comes again live, however late the follower is", async () => {
  const bus = new ScriptedBus();
  const hub = new Hub(bus, { maxBufferedBytes: 1e9 });
  const m = new Recorder();
  const joining = hub.join(m, "c", { header: t("hdr") });
  await tick();
  // History was read straight from the store, ahead of this isolate's follower.
  bus.pendingHistory[0].resolve({
    deliveries: [d("r.4", "four", 4), d("r.5", "five", 5)],
    lastPos: p(5),
  });
  await joining;
  // The follower catches up only now, after the hold buffer is gone.
  bus.handler.onFrames("c", [d("r.4", "four", 4), d("r.5", "five", 5), d("r.6", "six", 6)]);
  bus.handler.onFrames("c", [d("r.6", "six", 6), d("r.7", "seven", 7)]);
  assert.deepEqual(m.got, ["four", "five", "six", "seven"]);
});

/** A member whose send buffer grows by what it is sent and drains only when told. */
class Backlog extends Recorder {
  override send(f: Frame) {
    super.send(f);
    this.bufferedAmount += (f.data as string).length;
  }
}

Deno.test("fan-out: a flood that backlogs most members closes the publisher (transport cannot stop reading it), not its subscribers", async () => {
  const bus = new ScriptedBus();
  const hub = new Hub(bus, { maxBufferedBytes: 1000 });
  const pub = new Recorder();
  const pp = await joinEmpty(hub, bus, pub, "hdr-p");
  const subs = [new Backlog(), new Backlog(), new Backlog()];
  for (const [i, m] of subs.entries()) await joinEmpty(hub, bus, m, `hdr-${i}`);
  for (let i = 0; i < 20 && !pub.closed; i++) pp.publish(t("x".repeat(100)));
  assert.equal(pub.closed?.code, 1013);
  assert.match(pub.closed!.reason, /^Too fast/);
  for (const m of subs) assert.equal(m.closed, undefined, "subscribers stay");
  assert.equal(hub.memberCount, 3);
});

Deno.test("fan-out: a flooding publisher whose transport can stop reading is held back, not closed", async () => {
  const bus = new ScriptedBus();
  let heldBack = 0;
  const hub = new Hub(bus, { maxBufferedBytes: 1000, onHoldBack: () => heldBack++ });
  const holds: number[] = [];
  const pub = Object.assign(new Recorder(), { holdBack: (ms: number) => holds.push(ms) });
  const pp = await joinEmpty(hub, bus, pub, "hdr-p");
  const subs = [new Backlog(), new Backlog(), new Backlog()];
  for (const [i, m] of subs.entries()) await joinEmpty(hub, bus, m, `hdr-${i}`);
  for (let i = 0; i < 20; i++) pp.publish(t("x".repeat(100)));
  assert.equal(pub.closed, undefined, "the publisher stays");
  assert.ok(holds.length > 0 && holds.every((ms) => ms === FLOOD_HOLD_MS), `${holds}`);
  assert.equal(heldBack, holds.length);
  for (const m of subs) assert.equal(m.closed, undefined, "subscribers stay");
  assert.equal(hub.memberCount, 4);
});

Deno.test("fan-out: one member that does not read is dropped as slow while the others keep up", async () => {
  const bus = new ScriptedBus();
  const hub = new Hub(bus, { maxBufferedBytes: 1000 });
  const pub = new Recorder();
  const pp = await joinEmpty(hub, bus, pub, "hdr-p");
  const stuck = new Backlog();
  const ok1 = new Backlog();
  const ok2 = new Backlog();
  for (const [i, m] of [stuck, ok1, ok2].entries()) await joinEmpty(hub, bus, m, `hdr-${i}`);
  for (let i = 0; i < 20; i++) {
    pp.publish(t("x".repeat(100)));
    ok1.bufferedAmount = ok2.bufferedAmount = 0; // they read
  }
  assert.equal(stuck.closed?.code, 1013);
  assert.match(stuck.closed!.reason, /^Too slow/);
  assert.equal(pub.closed, undefined);
  assert.equal(ok1.got.length, 20);
});

Deno.test("join: history is sent at the pace the newcomer reads, and live frames wait behind it", async () => {
  const bus = new ScriptedBus();
  const hub = new Hub(bus, { maxBufferedBytes: 4096 }); // replay pauses past 2,048 bytes waiting
  const m = new Backlog();
  const joining = hub.join(m, "c", { header: t("hdr") });
  await tick();
  const big = Array.from({ length: 10 }, (_, i) => d(`h.${i}`, String(i).repeat(1000), i + 1));
  bus.pendingHistory[0].resolve({ deliveries: big, lastPos: p(10) });
  await tick();
  await tick();
  assert.ok(m.got.length < 10, `paused after ${m.got.length}`);
  bus.handler.onFrames("c", [d("r.11", "live", 11)]);
  while (m.got.length < 10) {
    m.bufferedAmount = 0; // the newcomer reads
    await new Promise((r) => setTimeout(r, 10));
  }
  await joining;
  assert.deepEqual(m.got.map((s) => s[0]), [..."0123456789", "l"]);
  assert.equal(m.closed, undefined);
});

Deno.test("fan-out: a member that drains nothing for 10 s with half its bound waiting is dropped, flood or not", async () => {
  let clock = 0;
  const bus = new ScriptedBus();
  const hub = new Hub(bus, { maxBufferedBytes: 1000, now: () => clock });
  const pub = new Recorder();
  const pp = await joinEmpty(hub, bus, pub, "hdr-p");
  const stuck = new Backlog();
  const reader = new Backlog();
  await joinEmpty(hub, bus, stuck, "hdr-s");
  await joinEmpty(hub, bus, reader, "hdr-r");
  for (let i = 0; i < 6; i++) {
    pp.publish(t("x".repeat(100))); // stuck: 600 bytes waiting, over half its bound
    reader.bufferedAmount = 0;
  }
  assert.equal(stuck.closed, undefined, "under its bound and not yet stalled");
  clock += 10_001;
  pp.publish(t("y"));
  const closed = stuck.closed as Close | undefined;
  assert.equal(closed?.code, 1013);
  assert.match(closed!.reason, /^Too slow/);
  assert.equal(reader.closed, undefined);
  assert.equal(pub.closed, undefined);
});
