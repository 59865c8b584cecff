/**
 * The session state machine as a unit, one test per transition, without a
 * socket: a recording socket, a scripted hub and claims whose answers the
 * test gives by hand, and a stepped clock (no sleeps). The end-to-end
 * behaviour over real sockets is in protocol_test, robustness_test,
 * limits_test and session_claims_test.
 */
import assert from "node:assert/strict";
import { CLOSE, type Close } from "../src/close.ts";
import { loadConfig } from "../src/config.ts";
import type { Frame } from "../src/frame.ts";
import type { JoinOptions, Member, Membership } from "../src/hub.ts";
import { Logger } from "../src/log.ts";
import {
  CLOSING_BURST_S,
  DRAIN_MAX_MS,
  DRAIN_QUIET_MS,
  HELD_FRAME_MIN_BYTES,
  HELD_PAUSE_BYTES,
  MAX_PAUSE_MS,
  PACED_BURST_S,
  Session,
  type SessionClock,
  type SessionContext,
  type SessionSocket,
} from "../src/session.ts";
import type { SessionClaims } from "../src/session_claims.ts";

class FakeSocket implements SessionSocket {
  sent: Frame[] = [];
  closes: Close[] = [];
  bufferedAmount = 0;
  send(frame: Frame): void {
    this.sent.push(frame);
  }
  close(close: Close): void {
    this.closes.push(close);
  }
}

/** A socket whose transport can stop reading (node_server.ts): records each pause asked for. */
class PausableSocket extends FakeSocket {
  pauses: number[] = [];
  pauseReading(ms: number): void {
    this.pauses.push(ms);
  }
}

/** Timers that fire only when the test steps time. */
class SteppedClock implements SessionClock {
  ms = 0;
  #timers = new Map<number, { at: number; fn: () => void }>();
  #next = 1;
  now(): number {
    return this.ms;
  }
  setTimeout(fn: () => void, ms: number): number {
    const id = this.#next++;
    this.#timers.set(id, { at: this.ms + ms, fn });
    return id;
  }
  clearTimeout(id: unknown): void {
    this.#timers.delete(id as number);
  }
  get pending(): number {
    return this.#timers.size;
  }
  /** Moves time on by `ms`, firing every timer that falls due, in order. */
  step(ms: number): void {
    const end = this.ms + ms;
    for (;;) {
      const due = [...this.#timers].filter(([, t]) =>
        t.at <= end
      ).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.#timers.delete(due[0]);
      this.ms = due[1].at;
      due[1].fn();
    }
    this.ms = end;
  }
}

class FakeMembership implements Membership {
  published: Frame[] = [];
  left = false;
  publish(frame: Frame): void {
    if (!this.left) this.published.push(frame);
  }
  leave(): void {
    this.left = true;
  }
}

interface JoinCall {
  member: Member;
  channel: string;
  options: JoinOptions;
  answer: PromiseWithResolvers<Membership | undefined>;
}

class ScriptedHub {
  calls: JoinCall[] = [];
  join(member: Member, channel: string, options: JoinOptions = {}) {
    const answer = Promise.withResolvers<Membership | undefined>();
    this.calls.push({ member, channel, options, answer });
    return answer.promise;
  }
  /** Answers the last join with a new membership and waits for the session to take it. */
  async admit(): Promise<FakeMembership> {
    const m = new FakeMembership();
    const call = this.calls.at(-1)!;
    call.answer.resolve(m);
    await call.answer.promise;
    return m;
  }
}

class ScriptedClaims implements SessionClaims {
  claims: { id: string; answer: PromiseWithResolvers<boolean> }[] = [];
  released: string[] = [];
  claim(id: string): Promise<boolean> {
    const answer = Promise.withResolvers<boolean>();
    this.claims.push({ id, answer });
    return answer.promise;
  }
  release(id: string): void {
    this.released.push(id);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  /** Answers the last claim and waits for the session to take the answer. */
  async answer(ok: boolean): Promise<void> {
    const c = this.claims.at(-1)!;
    c.answer.resolve(ok);
    await c.answer.promise;
  }
  async fail(err: Error): Promise<void> {
    const c = this.claims.at(-1)!;
    c.answer.reject(err);
    await c.answer.promise.catch(() => {});
  }
}

function setup(env: Record<string, string> = {}, extra: Partial<SessionContext> = {}) {
  const socket = new FakeSocket();
  const clock = new SteppedClock();
  const hub = new ScriptedHub();
  const claims = new ScriptedClaims();
  const rejected: Close[] = [];
  const ctx: SessionContext = {
    hub,
    claims,
    config: loadConfig({ MLES_LOG_LEVEL: "silent", ...env }),
    log: new Logger("silent"),
    onReject: (c) => rejected.push(c),
    ...extra,
  };
  const session = new Session(socket, ctx, "192.0.2.1", clock);
  return { session, socket, clock, hub, claims, rejected };
}

/** Like {@link setup} on a transport that can stop reading. */
/** Like {@link joining}, on a socket whose transport can stop reading. */
async function joiningPausable(env: Record<string, string> = {}) {
  const socket = new PausableSocket();
  const clock = new SteppedClock();
  const hub = new ScriptedHub();
  const claims = new ScriptedClaims();
  const ctx: SessionContext = {
    hub,
    claims,
    config: loadConfig({ MLES_LOG_LEVEL: "silent", ...env }),
    log: new Logger("silent"),
  };
  const session = new Session(socket, ctx, "192.0.2.1", clock);
  session.frame(HEADER);
  await claims.answer(true);
  return { session, socket, clock, hub };
}

async function joinedPausable(env: Record<string, string> = {}) {
  const s = await joiningPausable(env);
  const m = await s.hub.admit();
  return { ...s, m };
}

const text = (data: string): Frame => ({ kind: "text", data });
const HEADER = text(JSON.stringify({ uid: "alice", channel: "example" }));

/** A session taken through a valid header and an accepted claim, its hub join pending. */
async function joining(env: Record<string, string> = {}) {
  const s = setup(env);
  s.session.frame(HEADER);
  await s.claims.answer(true);
  return s;
}

async function joined(env: Record<string, string> = {}) {
  const s = await joining(env);
  const m = await s.hub.admit();
  return { ...s, m };
}

Deno.test("session: awaitingHeader -> joining on a valid header: the identity is claimed", () => {
  const { session, claims, clock } = setup();
  assert.equal(session.state, "awaitingHeader");
  session.frame(HEADER);
  assert.equal(session.state, "joining");
  assert.equal(claims.claims.length, 1);
  assert.equal(clock.pending, 0, "the header timer is stopped");
});

Deno.test("session: awaitingHeader -> draining on an invalid header; the close waits for quiet", () => {
  const { session, socket, clock, rejected } = setup();
  session.frame(text("not json"));
  assert.equal(session.state, "draining");
  assert.deepEqual(socket.closes, []);
  assert.deepEqual(rejected, [CLOSE.headerNotJson]);
  clock.step(DRAIN_QUIET_MS);
  assert.equal(session.state, "closing");
  assert.deepEqual(socket.closes, [CLOSE.headerNotJson]);
});

Deno.test("session: awaitingHeader -> draining on failed auth", () => {
  const { session, socket, clock, claims } = setup({ MLES_KEY: "secret" });
  session.frame(
    text(JSON.stringify({ uid: "alice", channel: "example", auth: "0123456789abcdef" })),
  );
  assert.equal(session.state, "draining");
  clock.step(DRAIN_QUIET_MS);
  assert.deepEqual(socket.closes, [CLOSE.authFailed]);
  assert.equal(claims.claims.length, 0, "never claimed");
});

Deno.test("session: awaitingHeader -> draining when the header timer fires", () => {
  const { session, socket, clock } = setup({ MLES_HEADER_TIMEOUT_MS: "500" });
  clock.step(499);
  assert.equal(session.state, "awaitingHeader");
  clock.step(1);
  assert.equal(session.state, "draining");
  clock.step(DRAIN_QUIET_MS);
  assert.deepEqual(socket.closes, [CLOSE.headerTimeout(500)]);
});

Deno.test("session: awaitingHeader -> draining when the join budget refuses the address", () => {
  const { session, socket, clock, claims } = setup({}, {
    admitJoin: (ip, channel) =>
      ip === "192.0.2.1" && channel === "example" ? CLOSE.tooManyJoins(1) : undefined,
  });
  session.frame(HEADER);
  assert.equal(session.state, "draining");
  clock.step(DRAIN_QUIET_MS);
  assert.deepEqual(socket.closes, [CLOSE.tooManyJoins(1)]);
  assert.equal(claims.claims.length, 0);
});

Deno.test("session: awaitingHeader -> closed when the socket closes; the header timer stops", () => {
  const { session, socket, clock } = setup();
  session.socketClosed();
  assert.equal(session.state, "closed");
  assert.equal(clock.pending, 0);
  clock.step(60_000);
  assert.deepEqual(socket.closes, []);
});

Deno.test("session: joining -> joined; frames sent meanwhile are published in order", async () => {
  const { session, hub, claims } = setup();
  session.frame(HEADER);
  session.frame(text("during claim"));
  await claims.answer(true);
  assert.equal(hub.calls.length, 1);
  assert.equal(hub.calls[0].channel, "example");
  assert.deepEqual(hub.calls[0].options.header, HEADER, "the header goes to history");
  session.frame(text("during join"));
  const m = await hub.admit();
  assert.equal(session.state, "joined");
  assert.deepEqual(m.published.map((f) => f.data), ["during claim", "during join"]);
});

Deno.test("session: joining -> draining on a duplicate session; held frames are dropped", async () => {
  const { session, socket, claims, hub, clock } = setup();
  session.frame(HEADER);
  session.frame(text("held"));
  await claims.answer(false);
  assert.equal(session.state, "draining");
  assert.equal(hub.calls.length, 0, "never joins");
  clock.step(DRAIN_QUIET_MS);
  assert.deepEqual(socket.closes, [CLOSE.duplicateSession]);
});

Deno.test("session: joining -> closing when the identity claim fails (store)", async () => {
  const { session, socket, claims } = setup();
  session.frame(HEADER);
  await claims.fail(new Error("database is locked"));
  assert.equal(session.state, "closing");
  assert.deepEqual(socket.closes, [CLOSE.storeFailed]);
});

Deno.test("session: joining -> closing when the hub join fails; the identity is freed", async () => {
  const { session, socket, claims, hub } = await joining();
  const call = hub.calls[0];
  call.answer.reject(new Error("history unavailable"));
  await call.answer.promise.catch(() => {});
  assert.equal(session.state, "closing");
  assert.deepEqual(socket.closes, [CLOSE.storeFailed]);
  assert.deepEqual(claims.released, [claims.claims[0].id]);
});

Deno.test("session: joining -> closing when the hub drops the member; identity freed, no drain", async () => {
  const { session, socket, claims, hub } = await joining();
  hub.calls[0].member.close(CLOSE.slowConsumer(99));
  assert.equal(session.state, "closing");
  assert.deepEqual(socket.closes, [CLOSE.slowConsumer(99)]);
  assert.deepEqual(claims.released, [claims.claims[0].id]);
  hub.calls[0].answer.resolve(undefined); // the hub's answer for a dropped member
  await hub.calls[0].answer.promise;
  assert.equal(session.state, "closing");
});

Deno.test("session: joining -> draining when the frames held pass MLES_MAX_BUFFERED_BYTES", async () => {
  const limit = 4 * 1024;
  const { session, socket, hub, clock, rejected } = await joining({
    MLES_MAX_BUFFERED_BYTES: String(limit),
    MLES_MAX_FRAME_BYTES: String(limit),
  });
  const big = text("x".repeat(1000));
  for (let i = 0; i < 4; i++) session.frame(big); // 4000 bytes: within the bound
  assert.equal(session.state, "joining");
  session.frame(big); // 5000 > 4096
  assert.equal(session.state, "draining");
  assert.deepEqual(rejected, [CLOSE.heldTooMuch(limit)]);
  clock.step(DRAIN_QUIET_MS);
  assert.deepEqual(socket.closes, [CLOSE.heldTooMuch(limit)]);
  assert.equal(CLOSE.heldTooMuch(limit).code, 1013);
  // Frames accepted before the refusal still go out with the join, which then leaves.
  const m = await hub.admit();
  assert.equal(m.published.length, 4);
  assert.equal(m.left, true);
});

Deno.test("session: held frames count at least HELD_FRAME_MIN_BYTES each", async () => {
  const limit = 1024;
  const { session, socket, clock } = await joining({
    MLES_MAX_BUFFERED_BYTES: String(limit),
    MLES_MAX_FRAME_BYTES: String(limit),
  });
  const fit = Math.floor(limit / HELD_FRAME_MIN_BYTES);
  for (let i = 0; i < fit; i++) session.frame(text("."));
  assert.equal(session.state, "joining");
  session.frame(text("."));
  assert.equal(session.state, "draining");
  clock.step(DRAIN_QUIET_MS);
  assert.deepEqual(socket.closes, [CLOSE.heldTooMuch(limit)]);
});

Deno.test("session: joining -> closed when the socket closes; the join publishes the held frames, then leaves", async () => {
  // `echo hi | websocat`: header, a frame and the close arrive together.
  const { session, socket, claims, hub } = setup();
  session.frame(HEADER);
  session.frame(text("hi"));
  session.socketClosed();
  assert.equal(session.state, "closed");
  await claims.answer(true);
  const m = await hub.admit();
  assert.deepEqual(m.published.map((f) => f.data), ["hi"]);
  assert.equal(m.left, true);
  assert.deepEqual(claims.released, [claims.claims[0].id], "identity back after the frames");
  assert.deepEqual(socket.closes, []);
});

Deno.test("session: closed while claiming with nothing held: the identity goes back, no join", async () => {
  const { session, claims, hub } = setup();
  session.frame(HEADER);
  session.socketClosed();
  await claims.answer(true);
  assert.equal(hub.calls.length, 0);
  assert.deepEqual(claims.released, [claims.claims[0].id]);
});

Deno.test("session: joined publishes each frame to the channel, never back to the socket", async () => {
  const { session, socket, m } = await joined();
  session.frame(text("one"));
  session.frame({ kind: "binary", data: new Uint8Array([1, 2]) });
  assert.deepEqual(m.published.map((f) => f.kind), ["text", "binary"]);
  assert.deepEqual(socket.sent, []);
});

Deno.test("session: joined -> draining on a frame over MLES_MAX_FRAME_BYTES; left and freed at once", async () => {
  const { session, socket, claims, clock, m } = await joined({ MLES_MAX_FRAME_BYTES: "1024" });
  session.frame(text("x".repeat(1025)));
  assert.equal(session.state, "draining");
  assert.equal(m.left, true);
  assert.deepEqual(claims.released, [claims.claims[0].id]);
  clock.step(DRAIN_QUIET_MS);
  assert.deepEqual(socket.closes, [CLOSE.frameTooBig(1025, 1024)]);
});

Deno.test("session: joined -> draining over the frame rate; the bucket refills with time", async () => {
  const { session, clock, m } = await joined({ MLES_MAX_FRAMES_PER_S: "2" });
  const burst = 2 * CLOSING_BURST_S;
  for (let i = 0; i < burst; i++) session.frame(text(`${i}`));
  clock.step(500);
  session.frame(text("one more, refilled"));
  assert.equal(session.state, "joined");
  session.frame(text("over"));
  assert.equal(session.state, "draining");
  assert.equal(m.published.length, burst + 1);
});

Deno.test("session: joined -> draining over the byte rate", async () => {
  const { session, m } = await joined({ MLES_MAX_BYTES_PER_S: "100", MLES_MAX_FRAME_BYTES: "100" });
  for (let i = 0; i < CLOSING_BURST_S; i++) session.frame(text("x".repeat(100)));
  assert.equal(session.state, "joined");
  session.frame(text("x"));
  assert.equal(session.state, "draining");
  assert.equal(m.published.length, CLOSING_BURST_S);
});

Deno.test("session: where going over the byte rate closes, a largest frame fits the burst even above its allowance", async () => {
  const { session, m } = await joined({
    MLES_MAX_BYTES_PER_S: "100",
    MLES_MAX_FRAME_BYTES: "1000",
  });
  session.frame(text("x".repeat(1000))); // twice CLOSING_BURST_S's worth
  assert.equal(session.state, "joined");
  session.frame(text("x"));
  assert.equal(session.state, "draining", "then the rate holds");
  assert.equal(m.published.length, 1);
});

Deno.test("session: over the frame rate where the transport can pause, the client is paced, not closed", async () => {
  const { session, socket, clock, m } = await joinedPausable({ MLES_MAX_FRAMES_PER_S: "100" });
  for (let i = 0; i < 10; i++) session.frame(text(`${i}`));
  assert.deepEqual(socket.pauses, [], "a burst of PACED_BURST_S's worth is read at once");
  session.frame(text("10"));
  session.frame(text("11"));
  assert.deepEqual(socket.pauses, [10, 20], "not read until back within the rate");
  assert.equal(session.state, "joined");
  assert.equal(m.published.length, 12, "frames already read still go out");
  assert.deepEqual(socket.closes, []);
  clock.step(20);
  session.frame(text("12"));
  assert.deepEqual(socket.pauses, [10, 20, 10]);
});

Deno.test("session: where the transport can pause, a burst is PACED_BURST_S's worth, not a second's", async () => {
  const { session, socket } = await joinedPausable({ MLES_MAX_FRAMES_PER_S: "1000" });
  const burst = 1000 * PACED_BURST_S;
  for (let i = 0; i < burst; i++) session.frame(text(`${i}`));
  assert.deepEqual(socket.pauses, []);
  session.frame(text("one more"));
  assert.deepEqual(socket.pauses, [1]);
});

Deno.test("session: over the byte rate where the transport can pause, the wait follows the bytes", async () => {
  const { session, socket, m } = await joinedPausable({
    MLES_MAX_BYTES_PER_S: "1000",
    MLES_MAX_FRAME_BYTES: "1000",
  });
  session.frame(text("x".repeat(100))); // the burst: a tenth of a second's worth
  session.frame(text("x".repeat(500)));
  assert.deepEqual(socket.pauses, [500]);
  session.frame(text("x".repeat(1000))); // a largest frame still goes, then waits its second
  assert.deepEqual(socket.pauses, [500, 1500]);
  assert.equal(m.published.length, 3);
});

Deno.test("session: a paced client is not held back longer than MAX_PAUSE_MS at a time", async () => {
  const { session, socket } = await joinedPausable({ MLES_MAX_FRAMES_PER_S: "1" });
  for (let i = 0; i < 20; i++) session.frame(text(`${i}`));
  assert.equal(Math.max(...socket.pauses), MAX_PAUSE_MS);
  assert.equal(session.state, "joined");
});

Deno.test("session: a paced client read again at once when the session closes it", async () => {
  const { session, socket } = await joinedPausable({
    MLES_MAX_FRAMES_PER_S: "1",
    MLES_MAX_FRAME_BYTES: "10",
    MLES_MAX_BYTES_PER_S: "10",
  });
  session.frame(text("a"));
  session.frame(text("b"));
  assert.equal(socket.pauses.at(-1), 1000);
  session.frame(text("x".repeat(11))); // over MLES_MAX_FRAME_BYTES: refused, drained
  assert.equal(session.state, "draining");
  assert.equal(socket.pauses.at(-1), 0, "draining reads what the client still sends");
});

Deno.test("session: joining, a client that sends more than HELD_PAUSE_BYTES waits for the join instead of reaching its bound", async () => {
  const { session, socket, hub } = await joiningPausable({ MLES_MAX_BUFFERED_BYTES: "4194304" });
  const frame = text("x".repeat(HELD_PAUSE_BYTES / 4));
  for (let i = 0; i < 4; i++) session.frame(frame);
  assert.deepEqual(socket.pauses, []);
  session.frame(frame);
  assert.deepEqual(socket.pauses, [MAX_PAUSE_MS]);
  const m = await hub.admit();
  assert.equal(m.published.length, 5);
  assert.deepEqual(socket.pauses, [MAX_PAUSE_MS, 0], "read again once joined");
  assert.equal(session.state, "joined");
});

Deno.test("session: joining over HELD_PAUSE_BYTES and over the byte rate, the join ends the hold and leaves only the rate's wait", async () => {
  const { session, socket, hub } = await joiningPausable({
    MLES_MAX_BYTES_PER_S: "1048576",
    MLES_MAX_FRAME_BYTES: "1048576",
  });
  const frame = text("x".repeat(HELD_PAUSE_BYTES)); // the burst is 104,857 bytes
  session.frame(frame);
  session.frame(frame); // over the rate (by 26,214 bytes: 25 ms) and over HELD_PAUSE_BYTES
  assert.deepEqual(socket.pauses, [25, MAX_PAUSE_MS]);
  await hub.admit();
  assert.deepEqual(socket.pauses, [25, MAX_PAUSE_MS, 0, 25], "held pause ended, rate wait kept");
});

Deno.test("session: joined -> closing when the hub drops the member; left and freed, no drain", async () => {
  const { session, socket, claims, hub } = await joined();
  hub.calls[0].member.close(CLOSE.publisherTooFast);
  assert.equal(session.state, "closing");
  assert.deepEqual(socket.closes, [CLOSE.publisherTooFast]);
  assert.deepEqual(claims.released, [claims.claims[0].id]);
});

Deno.test("session: joined -> closed when the socket closes; left and freed", async () => {
  const { session, claims, m } = await joined();
  session.socketClosed();
  assert.equal(session.state, "closed");
  assert.equal(m.left, true);
  assert.deepEqual(claims.released, [claims.claims[0].id]);
});

Deno.test("session: draining drops frames; the close goes out at the first one after DRAIN_MAX_MS", () => {
  const { session, socket, clock } = setup();
  session.frame(text("not json"));
  for (let t = 0; t < DRAIN_MAX_MS; t += DRAIN_QUIET_MS - 10) {
    clock.step(DRAIN_QUIET_MS - 10);
    session.frame(text("more"));
  }
  assert.equal(session.state, "closing");
  assert.deepEqual(socket.closes, [CLOSE.headerNotJson]);
  assert.equal(clock.pending, 0);
});

Deno.test("session: draining -> closed when the socket closes first; no close is sent", () => {
  const { session, socket, clock } = setup();
  session.frame(text("not json"));
  session.socketClosed();
  assert.equal(session.state, "closed");
  clock.step(DRAIN_MAX_MS);
  assert.deepEqual(socket.closes, []);
});

Deno.test("session: closing ignores frames; -> closed when the socket closes", async () => {
  const { session, socket, hub, m } = await joined();
  hub.calls[0].member.close(CLOSE.sendFailed);
  session.frame(text("after the close"));
  assert.equal(m.published.length, 0);
  session.socketClosed();
  assert.equal(session.state, "closed");
  assert.deepEqual(socket.closes, [CLOSE.sendFailed]);
});

Deno.test("session: closed is final; frames, drops and timers change nothing", async () => {
  const { session, socket, clock, hub, claims, m } = await joined();
  session.socketClosed();
  session.frame(text("late"));
  hub.calls[0].member.close(CLOSE.sendFailed);
  clock.step(60_000);
  session.socketClosed();
  assert.equal(session.state, "closed");
  assert.deepEqual(socket.closes, []);
  assert.equal(m.published.length, 0);
  assert.equal(claims.released.length, 1, "released once");
});
