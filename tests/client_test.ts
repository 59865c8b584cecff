/**
 * @module
 * The terminal client (client.ts): frame formatting, the stdin line format,
 * the command line, backoff, replay hiding and the proxy's forwarding
 * decision as pure functions; then end to end against real servers: the
 * proxy in-process between two servers, and the CLI as a child process
 * driven through stdin.
 */
import assert from "node:assert/strict";
import {
  formatFrame,
  formatStats,
  headerText,
  lineToFrame,
  parseCli,
  ProxyCore,
  ReplayFilter,
  type Side,
  startProxy,
  UsageError,
} from "../client.ts";
import { verifyAuth } from "../src/auth.ts";
import { linkBackoff } from "../src/link.ts";
import { backoffMs } from "../src/retry.ts";
import type { Frame } from "../src/frame.ts";
import {
  header,
  joinInOrder,
  type Received,
  startServer,
  TestClient,
  type TestServer,
  waitFor,
} from "./_helpers.ts";

const text = (data: string): Frame => ({ kind: "text", data });
const binary = (...bytes: number[]): Frame => ({ kind: "binary", data: new Uint8Array(bytes) });

// ---- formatting -------------------------------------------------------------

Deno.test("client: a JSON header frame prints as '<uid> joined'", () => {
  assert.equal(formatFrame(text('{"uid":"alice","channel":"example"}')), "alice joined");
  assert.equal(
    formatFrame(text('{"uid":"alice","channel":"example","auth":"9b3b95527f7c2d80"}')),
    "alice joined",
  );
});

Deno.test("client: a JSON frame with text prints as '<uid>: <text>'", () => {
  assert.equal(formatFrame(text('{"uid":"bob","text":"hello there"}')), "bob: hello there");
  assert.equal(formatFrame(text('{"uid":"bob","channel":"c","text":"hi"}')), "bob: hi");
});

Deno.test("client: other text prints as it is, binary as '[binary N bytes]'", () => {
  assert.equal(formatFrame(text("plain words")), "plain words");
  assert.equal(formatFrame(text('{"uid":1,"text":"x"}')), '{"uid":1,"text":"x"}');
  assert.equal(formatFrame(text('{"uid":"a","text":5}')), '{"uid":"a","text":5}');
  assert.equal(formatFrame(text("[1,2]")), "[1,2]");
  assert.equal(formatFrame(text("null")), "null");
  assert.equal(formatFrame(binary(1, 2, 3)), "[binary 3 bytes]");
  assert.equal(formatFrame(binary()), "[binary 0 bytes]");
});

Deno.test("client: control characters in frames are shown escaped, tab and newline kept", () => {
  assert.equal(formatFrame(text("a\x1b[2Jb\tc\nd\re")), "a\\u001b[2Jb\tc\nd\\u000de");
  assert.equal(
    formatFrame(text(JSON.stringify({ uid: "x\x07", text: "\x9b31m" }))),
    "x\\u0007: \\u009b31m",
  );
});

Deno.test("client: a stdin line is sent as {uid, text} JSON, or as it is with --raw", () => {
  assert.deepEqual(
    lineToFrame("bob", 'say "hi"', false),
    text('{"uid":"bob","text":"say \\"hi\\""}'),
  );
  assert.deepEqual(lineToFrame("bob", "as is", true), text("as is"));
  assert.equal(formatFrame(lineToFrame("bob", "round trip", false)), "bob: round trip");
});

Deno.test("client: the header always carries auth, computed with the key when one is given", () => {
  const plain = JSON.parse(headerText("alice", "example", undefined));
  assert.deepEqual(plain, { uid: "alice", channel: "example", auth: "9b3b95527f7c2d80" });
  assert.equal(verifyAuth(plain, undefined), true);
  const keyed = JSON.parse(headerText("alice", "example", "secret"));
  assert.equal(keyed.auth, "afa46b8689dae7a5");
  assert.equal(verifyAuth(keyed, "secret"), true);
});

// ---- command line -------------------------------------------------------------

Deno.test("client: command line defaults come from the environment", () => {
  const o = parseCli(["ws://127.0.0.1:1/"], { USER: "carol", MLES_KEY: "k" })!;
  assert.deepEqual(o, {
    url: "ws://127.0.0.1:1/",
    uid: "carol",
    channel: "mles",
    key: "k",
    raw: false,
    proxy: undefined,
    proxyKey: "k",
  });
  assert.equal(parseCli(["ws://h/"], {})!.uid, "anonymous");
  assert.equal(parseCli(["ws://h/"], { USER: "jörg" })!.uid, "anonymous");
  assert.equal(parseCli(["--help"]), null);
});

Deno.test("client: command line flags win; proxy mode gets a stable mles-proxy- uid", () => {
  const o = parseCli(
    ["--uid", "u", "--channel", "c", "--key", "k1", "--raw", "wss://example.org/x"],
    { USER: "carol", MLES_KEY: "env" },
  )!;
  assert.deepEqual([o.uid, o.channel, o.key, o.raw, o.url], [
    "u",
    "c",
    "k1",
    true,
    "wss://example.org/x",
  ]);
  const p = parseCli(["--proxy", "ws://b/", "--proxy-key", "k2", "ws://a/"], { USER: "carol" })!;
  assert.match(p.uid, /^mles-proxy-[0-9a-f]{8}$/);
  assert.deepEqual([p.proxy, p.key, p.proxyKey], ["ws://b/", undefined, "k2"]);
  assert.equal(parseCli(["--proxy", "ws://b/", "--key", "k", "ws://a/"])!.proxyKey, "k");
});

Deno.test("client: a bad command line is a UsageError naming the problem", () => {
  const bad: [string[], RegExp][] = [
    [[], /one server URL: got 0/],
    [["ws://a/", "ws://b/"], /one server URL: got 2/],
    [["http://a/"], /ws:\/\/ or wss:\/\/ URL: got "http:\/\/a\/"/],
    [["not a url"], /URL: got "not a url"/],
    [["--proxy", "ftp://b/", "ws://a/"], /--proxy must be/],
    [["--proxy", "ws://b/", "--raw", "ws://a/"], /--raw applies to interactive mode only/],
    [["--proxy-key", "k", "ws://a/"], /--proxy-key needs --proxy/],
    [["--uid", "", "ws://a/"], /--uid must be non-empty printable ASCII: got ""/],
    [["--channel", "kanava ä", "ws://a/"], /--channel must be/],
    [["--nope", "ws://a/"], /nope/],
  ];
  for (const [argv, message] of bad) {
    assert.throws(() => parseCli(argv), (err: Error) => {
      assert.ok(err instanceof UsageError, `${argv.join(" ")}: ${err}`);
      assert.match(err.message, message);
      return true;
    });
  }
});

// ---- backoff and replay ---------------------------------------------------------

Deno.test("client: backoff doubles from 250 ms to a 30 s cap, jittered within [d/2, d)", () => {
  // retry.ts's backoffMs with the links' shape: float arithmetic, so compare to within a nanosecond.
  const near = (a: number, b: number) => Math.abs(a - b) < 1e-6;
  const low = (n: number) => backoffMs(n, linkBackoff(), () => 0);
  const high = (n: number) => backoffMs(n, linkBackoff(), () => 0.999999);
  [125, 250, 500, 1000].forEach((d, n) => assert.ok(near(low(n), d), `${n}: ${low(n)}`));
  assert.ok(high(0) < 250 && high(0) > 249);
  assert.ok(near(low(20), 15_000));
  assert.ok(high(20) < 30_000 && high(20) > 29_999);
  assert.ok(near(backoffMs(2, linkBackoff(10, 30), () => 0), 15));
  for (let i = 0; i < 100; i++) {
    const d = backoffMs(3, linkBackoff());
    assert.ok(d >= 1000 - 1e-6 && d < 2000, String(d));
  }
});

Deno.test("client: a replayed history after a reconnect is hidden until the first new frame", () => {
  const r = new ReplayFilter(3000);
  const mine = text('{"uid":"me","text":"sent by me"}');
  r.remember(mine);
  assert.equal(r.accept(text("first"), 0), true);
  assert.equal(r.accept(binary(1), 0), true);
  r.reconnected(1000);
  assert.equal(r.accept(text("first"), 1001), false);
  assert.equal(r.accept(binary(1), 1002), false);
  assert.equal(r.accept(mine, 1003), false);
  assert.equal(r.accept(text("new while away"), 1004), true);
  // After the first new frame, repeats are shown again: they are live messages.
  assert.equal(r.accept(text("first"), 1005), true);
});

Deno.test("client: replay hiding ends when its window has passed", () => {
  const r = new ReplayFilter(3000);
  assert.equal(r.accept(text("ok"), 0), true);
  r.reconnected(10_000);
  assert.equal(r.accept(text("ok"), 13_001), true);
  assert.equal(r.accept(text("ok"), 13_002), true, "without a reconnect nothing is hidden");
});

// ---- proxy decision ---------------------------------------------------------------

Deno.test("proxy: a frame is forwarded once to the other side and dropped when it comes back", () => {
  const core = new ProxyCore();
  assert.equal(core.route("a", text("m1")), "b");
  assert.equal(core.route("b", text("m1")), null); // came back through b
  assert.equal(core.route("a", text("m1")), null); // or again through a
  assert.equal(core.route("b", binary(7)), "a");
  assert.equal(core.route("a", binary(7)), null);
  assert.deepEqual(core.stats, { aToB: 1, bToA: 1, duplicates: 3 });
  assert.equal(formatStats(core.stats), "forwarded a->b 1, b->a 1, dropped duplicates 3");
  assert.equal(
    formatStats({ ...core.stats, lost: 2 }),
    "forwarded a->b 1, b->a 1, dropped duplicates 3, lost while down 2",
  );
});

Deno.test("proxy: type is part of a frame's identity", () => {
  const core = new ProxyCore();
  assert.equal(core.route("a", text("abc")), "b");
  assert.equal(core.route("a", { kind: "binary", data: new TextEncoder().encode("abc") }), "b");
});

Deno.test("proxy: the proxy's own header is never forwarded", () => {
  const h = headerText("mles-proxy-1", "c", undefined);
  const core = new ProxyCore(undefined, [h]);
  for (let i = 0; i < 3; i++) assert.equal(core.route(i % 2 ? "a" : "b", text(h)), null);
  assert.equal(core.route("a", text(headerText("alice", "c", undefined))), "b");
});

Deno.test("proxy: two proxies between the same two servers stop every frame after one round", () => {
  // A simulation of two Mles channels (X and Y) joined by two proxies (p, q):
  // each server delivers a frame to every member but its sender.
  type Member = { name: string; got: Frame[] };
  const alice: Member = { name: "alice", got: [] }, bob: Member = { name: "bob", got: [] };
  const proxies = { p: new ProxyCore(), q: new ProxyCore() };
  const servers: Record<Side, string[]> = {
    a: ["alice", "p", "q"],
    b: ["bob", "p", "q"],
  };
  const queue: { server: Side; from: string; frame: Frame }[] = [
    { server: "a", from: "alice", frame: text("m1") },
  ];
  let steps = 0;
  while (queue.length > 0) {
    assert.ok(++steps < 100, "frames are looping");
    const { server, from, frame } = queue.shift()!;
    for (const to of servers[server]) {
      if (to === from) continue;
      if (to === "alice") alice.got.push(frame);
      else if (to === "bob") bob.got.push(frame);
      else {
        const next = proxies[to as "p" | "q"].route(server, frame);
        if (next) queue.push({ server: next, from: to, frame });
      }
    }
  }
  // Each proxy forwarded m1 once; the copy each got from the other was dropped.
  assert.equal(bob.got.length, 2);
  assert.equal(alice.got.length, 0);
  for (const core of Object.values(proxies)) {
    assert.deepEqual(core.stats, { aToB: 1, bToA: 0, duplicates: 1 });
  }
});

// ---- end to end: proxy in-process -------------------------------------------------

/** Two servers with one bus each: no KV needed (MLES_BUS=memory). */
async function twoServers(env: Record<string, string> = {}): Promise<[TestServer, TestServer]> {
  const a = await startServer({ env: { MLES_BUS: "memory", ...env } });
  try {
    return [a, await startServer({ env: { MLES_BUS: "memory", ...env } })];
  } catch (err) {
    await a.close();
    throw err;
  }
}

/** Every frame that arrives within `quietMs` of the previous one. */
async function drain(c: TestClient, quietMs = 300): Promise<Received[]> {
  const out: Received[] = [];
  for (let i = 0; i < 1000; i++) {
    try {
      out.push(await c.next(quietMs));
    } catch {
      return out;
    }
  }
  return out;
}

const fastBackoff = linkBackoff(20, 200);

Deno.test("proxy e2e: a frame published on server A reaches a member of server B exactly once, and back", async () => {
  const [a, b] = await twoServers();
  await using _a = a;
  await using _b = b;
  const hA = header("alice", "chat"), hB = header("bob", "chat");
  await using ga = await joinInOrder(a, hA);
  await using gb = await joinInOrder(b, hB);
  const [alice, bob] = [ga.clients[0], gb.clients[0]];

  await using proxy = startProxy({ a: a.wsUrl, b: b.wsUrl, uid: "mles-proxy-t1", channel: "chat" });
  await waitFor(
    () => a.server.hub.joinedCount === 2 && b.server.hub.joinedCount === 2,
    "proxy joins",
  );
  // Each server's history (the other member's header) reached the other side.
  assert.equal(await bob.next(), JSON.stringify(hA));
  assert.equal(await alice.next(), JSON.stringify(hB));

  alice.send("m1 from A");
  alice.send(new Uint8Array([1, 2, 3]));
  bob.send("m2 from B");
  assert.deepEqual(await bob.take(2), ["m1 from A", new Uint8Array([1, 2, 3])]);
  assert.equal(await alice.next(), "m2 from B");
  assert.deepEqual(await drain(bob), [], "a duplicate reached B");
  assert.deepEqual(await drain(alice), [], "a duplicate reached A");
  assert.deepEqual({ ...proxy.stats }, { aToB: 3, bToA: 2, duplicates: 0, lost: 0 });
});

Deno.test("proxy e2e: a second proxy between the same servers does not make frames loop", async () => {
  const [a, b] = await twoServers();
  await using _a = a;
  await using _b = b;
  await using ga = await joinInOrder(a, header("alice", "ring"));
  await using gb = await joinInOrder(b, header("bob", "ring"));
  const [alice, bob] = [ga.clients[0], gb.clients[0]];
  const opts = { a: a.wsUrl, b: b.wsUrl, channel: "ring", backoff: fastBackoff };
  await using p = startProxy({ ...opts, uid: "mles-proxy-p" });
  await using q = startProxy({ ...opts, uid: "mles-proxy-q" });
  await waitFor(() => a.server.hub.joinedCount === 3 && b.server.hub.joinedCount === 3, "joins");
  await drain(alice);
  await drain(bob);

  alice.send("around");
  const got = (await drain(bob, 500)).filter((f) => f === "around");
  // One copy per proxy, then silence: each proxy drops the copy the other one brought.
  assert.equal(got.length, 2);
  assert.deepEqual(await drain(alice), []);
  assert.equal(p.stats.duplicates >= 1 && q.stats.duplicates >= 1, true);
});

Deno.test("proxy e2e: frames for a server that is down wait and arrive when it is back", async () => {
  const a = await startServer({ env: { MLES_BUS: "memory" } });
  await using _a = a;
  let b = await startServer({ env: { MLES_BUS: "memory" } });
  const port = b.port;
  try {
    await using ga = await joinInOrder(a, header("alice", "c"));
    const alice = ga.clients[0];
    const events: string[] = [];
    await using proxy = startProxy({
      a: a.wsUrl,
      b: b.wsUrl,
      uid: "mles-proxy-t3",
      channel: "c",
      backoff: fastBackoff,
      onEvent: (side, e) => events.push(`${side} ${e.type}`),
    });
    await waitFor(() => a.server.hub.joinedCount === 2 && b.server.hub.joinedCount === 1, "joins");
    await waitFor(() => proxy.stats.aToB === 1, "alice's header forwarded to B");

    await b.close(); // B goes away, and its history with it (a memory bus)
    await waitFor(() => events.includes("b closed"), "the proxy sees B close");
    alice.send("while B was down");
    await waitFor(() => proxy.stats.aToB === 2, "the frame reached the proxy");
    b = await startServer({ env: { MLES_BUS: "memory" }, port });
    await waitFor(() => b.server.hub.joinedCount === 1, "the proxy rejoins B");
    await using gb = await joinInOrder(b, header("bob", "c"));
    // The new B's history: the proxy's header, then what it had queued for B.
    assert.deepEqual(await gb.clients[0].take(2), [
      headerText("mles-proxy-t3", "c", undefined),
      "while B was down",
    ]);
    assert.equal(proxy.stats.lost, 0);
  } finally {
    await b.close();
  }
});

// ---- end to end: the CLI as a child process ----------------------------------------

const ROOT = new URL("..", import.meta.url).pathname;

/** The client as a child process: stdin piped, stdout and stderr collected as lines. */
class Cli implements AsyncDisposable {
  readonly out: string[] = [];
  readonly err: string[] = [];
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #pumps: Promise<void>[];
  #stdinOpen = true;

  constructor(args: string[]) {
    const env = Deno.env.toObject();
    delete env.MLES_KEY; // the client would take it as its default key
    this.#child = new Deno.Command(Deno.execPath(), {
      args,
      cwd: ROOT,
      env: { ...env, NO_COLOR: "1" },
      clearEnv: true,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#stdin = this.#child.stdin.getWriter();
    this.#pumps = [pump(this.#child.stdout, this.out), pump(this.#child.stderr, this.err)];
  }

  /** Waits until some line of `stream` satisfies `pred`; the error shows both streams. */
  async line(stream: "out" | "err", pred: (line: string) => boolean, ms = 15_000) {
    try {
      await waitFor(() => this[stream].some(pred), `a line on std${stream}`, ms);
    } catch (err) {
      throw new Error(`${err}\nstdout: ${this.out.join("\n")}\nstderr: ${this.err.join("\n")}`);
    }
  }

  async write(line: string): Promise<void> {
    await this.#stdin.write(new TextEncoder().encode(line + "\n"));
  }

  async closeStdin(): Promise<void> {
    if (!this.#stdinOpen) return;
    this.#stdinOpen = false;
    await this.#stdin.close().catch(() => {});
  }

  kill(signal: Deno.Signal): void {
    this.#child.kill(signal);
  }

  /** Exit status, waiting at most `ms`. */
  async status(ms = 15_000): Promise<Deno.CommandStatus> {
    let t: ReturnType<typeof setTimeout> | undefined;
    try {
      return await Promise.race([
        this.#child.status,
        new Promise<never>((_, rej) => {
          t = setTimeout(() => rej(new Error(`client still running after ${ms} ms`)), ms);
        }),
      ]);
    } finally {
      clearTimeout(t);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.closeStdin();
    try {
      this.#child.kill("SIGKILL");
    } catch { /* already exited */ }
    await this.#child.status;
    await Promise.all(this.#pumps);
  }
}

async function pump(stream: ReadableStream<Uint8Array>, lines: string[]): Promise<void> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    const parts = rest.split("\n");
    rest = parts.pop()!;
    lines.push(...parts);
  }
  if (rest) lines.push(rest);
}

Deno.test("client e2e: interactive mode prints history and live frames and sends stdin lines", async () => {
  await using s = await startServer({ env: { MLES_BUS: "memory" } });
  await using g = await joinInOrder(s, header("alice", "chat"));
  const alice = g.clients[0];
  alice.send(JSON.stringify({ uid: "alice", text: "hi from history" }));
  alice.send(new Uint8Array([1, 2, 3]));

  await using cli = new Cli([
    "task",
    "--quiet",
    "client",
    "--uid",
    "bob",
    "--channel",
    "chat",
    s.wsUrl,
  ]);
  await cli.line("out", (l) => l === "[binary 3 bytes]");
  assert.deepEqual(cli.out, ["alice joined", "alice: hi from history", "[binary 3 bytes]"]);
  await cli.line("err", (l) => l.includes(`connected to ${s.wsUrl} as bob in chat`));

  await cli.write("hello alice");
  assert.equal(await alice.next(), '{"uid":"bob","text":"hello alice"}');
  await cli.write(""); // empty lines are not sent
  alice.send("plain live text");
  alice.send(JSON.stringify({ uid: "alice", text: "live json" }));
  await cli.line("out", (l) => l === "alice: live json");
  assert.deepEqual(cli.out.slice(3), ["plain live text", "alice: live json"]);

  await cli.write("last words");
  await cli.closeStdin(); // end of input: send what is left, close, exit 0
  assert.equal((await cli.status()).code, 0);
  assert.equal(await alice.next(), '{"uid":"bob","text":"last words"}');
  await waitFor(() => s.server.hub.joinedCount === 1, "bob left");
});

Deno.test("client e2e: --raw sends lines as they are; --key makes the auth a keyed server wants", async () => {
  await using s = await startServer({ env: { MLES_BUS: "memory", MLES_KEY: "secret" } });
  const auth = JSON.parse(headerText("alice", "vault", "secret")).auth;
  await using g = await joinInOrder(s, header("alice", "vault", { auth }));
  const alice = g.clients[0];
  await using cli = new Cli([
    "run",
    "--allow-net",
    "--allow-env",
    "--allow-read",
    "client.ts",
    "--uid",
    "bob",
    "--channel",
    "vault",
    "--key",
    "secret",
    "--raw",
    s.wsUrl,
  ]);
  await cli.write("raw line, not JSON");
  assert.equal(await alice.next(), "raw line, not JSON");
  await cli.closeStdin();
  assert.equal((await cli.status()).code, 0);
  assert.deepEqual(cli.out, ["alice joined"]);
});

Deno.test("client e2e: proxy mode bridges two servers and prints its counters on SIGINT", async () => {
  const [a, b] = await twoServers();
  await using _a = a;
  await using _b = b;
  await using ga = await joinInOrder(a, header("alice", "chat"));
  await using gb = await joinInOrder(b, header("bob", "chat"));
  const [alice, bob] = [ga.clients[0], gb.clients[0]];
  await using cli = new Cli([
    "run",
    "--allow-net",
    "--allow-env",
    "--allow-read",
    "client.ts",
    "--channel",
    "chat",
    "--proxy",
    b.wsUrl,
    a.wsUrl,
  ]);
  await cli.line(
    "err",
    (l) => /^mles-client: a: connected to .* as mles-proxy-[0-9a-f]{8}$/.test(l),
  );
  await cli.line("err", (l) => l.startsWith("mles-client: b: connected to"));
  await waitFor(() => a.server.hub.joinedCount === 2 && b.server.hub.joinedCount === 2, "joins");
  assert.equal(await bob.next(), JSON.stringify(header("alice", "chat")));
  assert.equal(await alice.next(), JSON.stringify(header("bob", "chat")));
  alice.send("over the bridge");
  assert.equal(await bob.next(), "over the bridge");
  bob.send("and back");
  assert.equal(await alice.next(), "and back");

  cli.kill("SIGINT");
  assert.equal((await cli.status()).code, 0);
  await waitFor(() => a.server.hub.joinedCount === 1, "the proxy left A");
  assert.equal(
    cli.err.at(-1),
    "mles-client: SIGINT: forwarded a->b 2, b->a 2, dropped duplicates 0",
  );
  assert.deepEqual(cli.out, []);
});

Deno.test("client e2e: interactive mode reconnects after a server restart and sends what was typed meanwhile", async () => {
  let s = await startServer({ env: { MLES_BUS: "memory" } });
  const port = s.port;
  try {
    await using cli = new Cli([
      "task",
      "--quiet",
      "client",
      "--uid",
      "bob",
      "--channel",
      "c",
      s.wsUrl,
    ]);
    await cli.line("err", (l) => l.includes("connected to"));
    await waitFor(() => s.server.hub.joinedCount === 1, "bob joined");
    await s.close();
    await cli.line("err", (l) => /closed \(\d+.*\); reconnecting in \d+\.\d s/.test(l));
    await cli.write("typed while down");
    s = await startServer({ env: { MLES_BUS: "memory" }, port });
    await waitFor(() => s.server.hub.joinedCount === 1, "bob rejoined", 15_000);
    await using g = await joinInOrder(s, header("alice", "c"));
    assert.deepEqual(await g.clients[0].take(2), [
      headerText("bob", "c", undefined),
      '{"uid":"bob","text":"typed while down"}',
    ]);
    assert.equal(cli.err.filter((l) => l.includes("connected to")).length, 2);
    await cli.closeStdin();
    assert.equal((await cli.status()).code, 0);
  } finally {
    await s.close();
  }
});
