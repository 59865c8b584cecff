/**
 * @module
 * End-to-end tests of the browser client (web/) in real headless Chromium,
 * driven by npm:playwright-core, against a real server from
 * `startServer()` that serves the page at `/` and the protocol on every
 * path. Chromium is Debian's package (`apt-get install -y chromium`; CI's
 * `.ci/run` installs it): no browser is downloaded.
 *
 * Screenshots go to `test-output/` (gitignored). `docs/screenshot.png`, the
 * one the README shows, is rewritten only when the run sets
 * `MLES_UPDATE_SCREENSHOT=1`, so ordinary runs never dirty the work tree.
 * Imports: tests/_helpers.ts, npm:playwright-core, node:assert.
 */
import assert from "node:assert/strict";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { startServer, TestClient, waitFor } from "./_helpers.ts";
import { CLOSING_BURST_S } from "../src/session.ts";

// Deno's type library has no DOM: these are the few shapes the in-page functions touch.
interface PageElement {
  readonly dataset: Record<string, string | undefined>;
  readonly textContent: string | null;
  readonly hidden: boolean;
  readonly tagName: string;
  querySelector(selector: string): PageElement | null;
  getBoundingClientRect(): { width: number; height: number };
}
declare const document: {
  querySelectorAll(selector: string): ArrayLike<PageElement>;
  readonly documentElement: { scrollWidth: number; clientWidth: number };
};

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const OUT = new URL("../test-output/", import.meta.url);
const DOCS_SCREENSHOT = new URL("../docs/screenshot.png", import.meta.url);
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
/** Generous: CI machines are small and Chromium starts slowly there. */
const WAIT_MS = 15_000;

/** The path of Debian's Chromium, or an error that says how to install it. */
function chromiumPath(): string {
  let path = "";
  try {
    const out = new Deno.Command("which", { args: ["chromium"], stdout: "piped", stderr: "null" })
      .outputSync();
    path = new TextDecoder().decode(out.stdout).trim();
  } catch {
    // `which` itself missing: same answer as not found.
  }
  if (!path) {
    throw new Error(
      "Chromium is not installed: run `apt-get update && apt-get install -y chromium` as root " +
        "(CI's .ci/run does this), then run the browser tests again",
    );
  }
  return path;
}

/** One Chromium for a test, closed with everything it opened when disposed. */
interface TestBrowser extends AsyncDisposable {
  readonly browser: Browser;
  /** Opens `url` in a fresh context (own localStorage) with the given viewport and scheme. */
  open(url: string, options?: OpenOptions): Promise<Page>;
  /** Uncaught page errors and console errors seen so far (network failures excluded). */
  readonly errors: string[];
}

interface OpenOptions {
  viewport?: { width: number; height: number };
  colorScheme?: "light" | "dark";
  phone?: boolean;
}

async function launch(): Promise<TestBrowser> {
  const browser = await chromium.launch({ executablePath: chromiumPath(), args: CHROMIUM_ARGS });
  const contexts: BrowserContext[] = [];
  const errors: string[] = [];
  return {
    browser,
    errors,
    async open(url, options = {}) {
      const context = await browser.newContext({
        viewport: options.viewport ?? DESKTOP,
        colorScheme: options.colorScheme ?? "light",
        deviceScaleFactor: options.phone ? 2 : 1,
        isMobile: options.phone ?? false,
        hasTouch: options.phone ?? false,
        reducedMotion: "reduce",
      });
      contexts.push(context);
      const page = await context.newPage();
      page.setDefaultTimeout(WAIT_MS);
      page.on("pageerror", (err) => errors.push(`page error: ${err.message}`));
      page.on("console", (msg) => {
        // A refused or dropped WebSocket is logged by Chromium itself; the tests expect some.
        if (msg.type() === "error" && !/WebSocket|ERR_CONNECTION_REFUSED/.test(msg.text())) {
          errors.push(`console: ${msg.text()}`);
        }
      });
      await page.goto(url);
      return page;
    },
    async [Symbol.asyncDispose]() {
      for (const c of contexts) await c.close().catch(() => {});
      await browser.close();
    },
  };
}

interface JoinOptions {
  uid: string;
  channel: string;
  key?: string;
  /** Wait until the page says it is connected (default true). */
  wait?: boolean;
}

/** Fills the join form the way a person would and presses Join. */
async function join(page: Page, options: JoinOptions): Promise<void> {
  await page.fill("#uid", options.uid);
  await page.fill("#channel", options.channel);
  if (options.key !== undefined) {
    if (!(await page.isVisible("#key"))) await page.click("#more > summary");
    await page.fill("#key", options.key);
  }
  await page.click("#join");
  if (options.wait ?? true) await online(page);
}

async function online(page: Page): Promise<void> {
  await page.waitForSelector('#app[data-state="online"]', { state: "attached" });
}

async function send(page: Page, text: string): Promise<void> {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

/** What the message list shows, top to bottom. */
interface Item {
  kind: string;
  uid: string | null;
  text: string;
}

function items(page: Page): Promise<Item[]> {
  return page.evaluate(() =>
    Array.from(document.querySelectorAll("#messages > li"), (li) => ({
      kind: li.dataset.kind ?? "",
      uid: li.dataset.uid ?? null,
      text: (li.querySelector(".body") ?? li.querySelector(".notice"))?.textContent ?? "",
    }))
  );
}

/** Waits until the list has an item of `kind` whose text is `text`. */
async function shows(page: Page, kind: string, text: string): Promise<void> {
  await page.locator(`#messages > li[data-kind="${kind}"]`, { hasText: text }).first().waitFor();
}

async function status(page: Page): Promise<string> {
  return ((await page.textContent("#status")) ?? "").trim();
}

async function screenshot(page: Page, name: string): Promise<void> {
  await Deno.mkdir(OUT, { recursive: true });
  await page.screenshot({ path: new URL(name, OUT).pathname });
}

Deno.test("browser: siphash.js gives the SPEC section 4 known answers in Chromium", async () => {
  await using server = await startServer();
  await using b = await launch();
  const page = await b.open(server.url);
  const got = await page.evaluate(async () => {
    // A URL string keeps Deno from resolving this import; Chromium loads it from the server.
    const m = await import(String("/siphash.js"));
    const key = new Uint8Array(16).map((_, i) => i);
    const msg = new Uint8Array(15).map((_, i) => i);
    return [
      m.sipHash24Hex(key, msg),
      m.mlesAuth("alice", "example"),
      m.mlesAuth("alice", "example", "secret"),
      m.mlesAuth("bob", "example"),
      m.mlesAuth("bob", "example", "secret"),
      m.mlesAuth("alice", "example", ""),
    ];
  });
  assert.deepEqual(got, [
    "a129ca6149be45e5",
    "9b3b95527f7c2d80",
    "afa46b8689dae7a5",
    "046ade5ad5646648",
    "6f862a3096e7c765",
    "9b3b95527f7c2d80",
  ]);
  assert.deepEqual(b.errors, []);
});

Deno.test("browser: two pages join one channel; what one sends shows on the other, once on the sender", async () => {
  await using server = await startServer();
  await using b = await launch();
  const alice = await b.open(server.url);
  const bob = await b.open(server.url);

  // Alice uses the keyboard only: the name field has focus, Tab moves on, Enter joins and sends.
  assert.equal(await alice.evaluate(() => document.querySelectorAll("#uid:focus").length), 1);
  assert.equal(await alice.inputValue("#server"), server.wsUrl, "default server = page origin");
  await alice.keyboard.type("alice");
  await alice.keyboard.press("Tab");
  await alice.keyboard.type("general");
  await alice.keyboard.press("Enter");
  await online(alice);
  assert.match(await status(alice), /Connected to general as alice/);

  await join(bob, { uid: "bob", channel: "general" });
  await shows(bob, "join", "alice joined");

  await alice.keyboard.type("Hello Bob");
  await alice.keyboard.press("Enter");
  await shows(bob, "message", "Hello Bob");
  await send(bob, "Hi Alice\nsecond line");
  await shows(alice, "message", "Hi Alice\nsecond line");

  assert.deepEqual(await items(bob), [
    { kind: "join", uid: "alice", text: "alice joined" },
    { kind: "message", uid: "alice", text: "Hello Bob" },
    { kind: "self", uid: "bob", text: "Hi Alice\nsecond line" },
  ]);
  // The server never echoes to the sender and sends no live join notice.
  assert.deepEqual(await items(alice), [
    { kind: "self", uid: "alice", text: "Hello Bob" },
    { kind: "message", uid: "bob", text: "Hi Alice\nsecond line" },
  ]);
  assert.equal(await alice.getAttribute("#messages", "aria-live"), "polite");
  await screenshot(bob, "browser-two-pages.png");

  // The same name in a second tab is a duplicate session: refused, and the page says why.
  const again = await b.open(server.url);
  await join(again, { uid: "alice", channel: "general", wait: false });
  await again.waitForSelector("#uid-error:not(:empty)");
  assert.equal(
    await status(again),
    "Cannot join: the same uid, channel and auth are already joined (code 1008).",
  );
  assert.equal(
    await again.textContent("#uid-error"),
    "This name is already in the channel, maybe in another tab",
  );

  // uid and channel are remembered across a reload; the key never is.
  await bob.reload();
  assert.equal(await bob.inputValue("#uid"), "bob");
  assert.equal(await bob.inputValue("#channel"), "general");
  assert.deepEqual(b.errors, []);
});

Deno.test("browser: a page that joins later shows the history, joined notices included", async () => {
  await using server = await startServer();
  await using b = await launch();
  const alice = await b.open(server.url);
  const bob = await b.open(server.url);
  await join(alice, { uid: "alice", channel: "general" });
  await join(bob, { uid: "bob", channel: "general" });
  await shows(bob, "join", "alice joined");
  await send(alice, "Morning! Is the new build on staging?");
  await shows(bob, "message", "Is the new build on staging?");
  await send(bob, "Yes, deployed ten minutes ago.");
  await send(bob, "History and reconnects work too.");
  await shows(alice, "message", "History and reconnects work too.");
  await send(alice, "Great, thanks!\nI'll tell the others.");
  await shows(bob, "message", "I'll tell the others.");

  const carol = await b.open(server.url);
  await join(carol, { uid: "carol", channel: "general" });
  await shows(carol, "message", "I'll tell the others.");
  assert.deepEqual(await items(carol), [
    { kind: "join", uid: "alice", text: "alice joined" },
    { kind: "join", uid: "bob", text: "bob joined" },
    { kind: "message", uid: "alice", text: "Morning! Is the new build on staging?" },
    { kind: "message", uid: "bob", text: "Yes, deployed ten minutes ago." },
    { kind: "message", uid: "bob", text: "History and reconnects work too." },
    { kind: "message", uid: "alice", text: "Great, thanks!\nI'll tell the others." },
  ]);
  await send(carol, "Just caught up on the history. Nice!");
  await shows(alice, "message", "Just caught up on the history. Nice!");
  await shows(bob, "message", "Just caught up on the history. Nice!");
  await screenshot(carol, "browser-history.png");
  if (Deno.env.get("MLES_UPDATE_SCREENSHOT") === "1") {
    await Deno.mkdir(new URL(".", DOCS_SCREENSHOT), { recursive: true });
    await carol.setViewportSize({ width: 1000, height: 680 });
    await carol.screenshot({ path: DOCS_SCREENSHOT.pathname });
  }

  // Frames from other clients: plain text shows as it is, binary by its size.
  await using bot = await TestClient.open(server.wsUrl, { uid: "ci-bot", channel: "general" });
  bot.send("build 1234 passed");
  bot.send(new Uint8Array([1, 2, 3, 4, 5]));
  await shows(carol, "text", "build 1234 passed");
  await shows(carol, "binary", "binary frame, 5 bytes");
  const dave = await b.open(server.url);
  await join(dave, { uid: "dave", channel: "general" });
  await shows(dave, "binary", "binary frame, 5 bytes");
  assert.deepEqual((await items(dave)).slice(-5), [
    { kind: "join", uid: "carol", text: "carol joined" },
    { kind: "message", uid: "carol", text: "Just caught up on the history. Nice!" },
    { kind: "join", uid: "ci-bot", text: "ci-bot joined" },
    { kind: "text", uid: null, text: "build 1234 passed" },
    { kind: "binary", uid: null, text: "binary frame, 5 bytes" },
  ]);
  assert.deepEqual(b.errors, []);
});

Deno.test("browser: with MLES_KEY the page's auth is accepted when the key is filled in; a missing or wrong key is refused with the server's reason", async () => {
  await using server = await startServer({ env: { MLES_KEY: "secret" } });
  await using b = await launch();
  const alice = await b.open(server.url);
  const bob = await b.open(server.url);
  await join(alice, { uid: "alice", channel: "example", key: "secret" });
  await join(bob, { uid: "bob", channel: "example", key: "secret" });
  // Joined for real, not just connected: frames flow both ways.
  await shows(bob, "join", "alice joined");
  await send(bob, "keyed hello");
  await shows(alice, "message", "keyed hello");

  // Without a key the page still sends the keyless auth value (like mles-client).
  const nokey = await b.open(server.url);
  await join(nokey, { uid: "carol", channel: "example", wait: false });
  await nokey.waitForSelector("#join-panel:not([hidden])");
  await nokey.waitForFunction(() =>
    document.querySelectorAll("#status")[0].textContent?.includes("Cannot join") ?? false
  );
  assert.equal(
    await status(nokey),
    "Cannot join: auth does not match (code 1008).",
  );
  assert.equal(await nokey.isVisible("#key"), true, "the key field is opened for the user");
  assert.equal(await nokey.textContent("#key-error"), "This server needs a key");
  await screenshot(nokey, "browser-auth-refused.png");

  const wrong = await b.open(server.url);
  await join(wrong, { uid: "carol", channel: "example", key: "not-the-key", wait: false });
  await wrong.waitForSelector("#join-panel:not([hidden])");
  await wrong.waitForFunction(() =>
    document.querySelectorAll("#status")[0].textContent?.includes("Cannot join") ?? false
  );
  assert.equal(
    await status(wrong),
    "Cannot join: auth does not match (code 1008).",
  );
  assert.equal(await wrong.textContent("#key-error"), "The server did not accept this key");
  // A refused join is not retried: the same header would be refused again.
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(await wrong.getAttribute("#app", "data-state"), "offline");

  // Fixing the key joins, and the history is there.
  await wrong.fill("#key", "secret");
  await wrong.click("#join");
  await online(wrong);
  await shows(wrong, "message", "keyed hello");
  assert.deepEqual(b.errors, []);
});

Deno.test("browser: when the server goes away the page shows the close, says when it retries, and reconnects", async () => {
  const first = await startServer();
  const port = first.port;
  await using b = await launch();
  const page = await b.open(first.url);
  await join(page, { uid: "alice", channel: "general" });
  // Connected is not yet joined: a probe that sees Alice's header in the history proves it
  // (a probe that came too early sees an empty history: try again).
  let probes = 0;
  await waitFor(
    async () => {
      await using probe = await TestClient.open(first.wsUrl, {
        uid: `probe${probes++}`,
        channel: "general",
      });
      const f = await probe.next(1000).catch(() => undefined);
      return f !== undefined && JSON.parse(String(f)).uid === "alice";
    },
    "alice's header in history",
    15_000,
  );

  await first.close();
  await shows(page, "system", "Disconnected: Server is shutting down (code 1001)");
  await page.waitForFunction(() =>
    /Reconnecting in \d+ s…/.test(document.querySelectorAll("#status")[0].textContent ?? "")
  );
  assert.equal(await page.getAttribute("#app", "data-state"), "waiting");
  assert.equal(await page.isVisible("#retry"), true);
  assert.equal(await page.isDisabled("#send"), true);
  await screenshot(page, "browser-reconnecting.png");

  // A new server on the same port: the backoff finds it.
  await using second = await startServer({ port });
  // At most one backoff period (capped at 30 s) after the server is back.
  await page.waitForSelector('#app[data-state="online"]', { state: "attached", timeout: 35_000 });
  await shows(page, "system", "Reconnected");
  assert.match(await status(page), /Connected to general as alice/);
  const bob = await b.open(second.url);
  await join(bob, { uid: "bob", channel: "general" });
  await send(page, "back again");
  await shows(bob, "message", "back again");
  assert.deepEqual(b.errors, []);
});

Deno.test("browser: after a reconnect the replayed history is not shown twice", async () => {
  // One frame a second (bursts of CLOSING_BURST_S's worth where over closes): Alice's
  // burst below gets her closed (1008), and she comes back.
  await using server = await startServer({ env: { MLES_MAX_FRAMES_PER_S: "1" } });
  await using b = await launch();
  const alice = await b.open(server.url);
  const bob = await b.open(server.url);
  await join(alice, { uid: "alice", channel: "general" });
  await join(bob, { uid: "bob", channel: "general" });
  await shows(bob, "join", "alice joined");
  await send(bob, "from bob"); // the rate is per connection: Bob's two frames are fine
  await shows(alice, "message", "from bob");

  for (let i = 1; i <= CLOSING_BURST_S + 1; i++) {
    await alice.evaluate((text) => {
      const el = document.querySelectorAll("#text")[0] as unknown as { value: string };
      el.value = text;
      const form = document.querySelectorAll("#composer")[0] as unknown as {
        requestSubmit(): void;
      };
      form.requestSubmit();
    }, `burst ${i}`);
  }
  await shows(alice, "system", "Disconnected: Too many frames: limit is 1 per second (code 1008)");
  await shows(alice, "system", "Reconnected");
  // The page marks the log busy while the history arrives, and settles after a pause.
  await alice.waitForSelector("#messages:not([aria-busy])", { state: "attached" });

  const got = await items(alice);
  const count = (text: string) => got.filter((i) => i.text === text).length;
  assert.equal(count("from bob"), 1, JSON.stringify(got));
  assert.equal(count("bob joined"), 0, "a join seen while connected stays old news");
  assert.equal(count("alice joined"), 0);
  const stored = (await items(bob)).filter((i) => i.text.startsWith("burst")).map((i) => i.text);
  assert.ok(stored.length >= 1, "some of the burst reached bob");
  for (let i = 1; i <= CLOSING_BURST_S + 1; i++) {
    const text = `burst ${i}`;
    // Stored frames come back in the history and must not double; one the server refused
    // was shown locally when sent and stays shown once.
    if (stored.includes(text)) assert.equal(count(text), 1, text);
    else assert.ok(count(text) <= 1, text);
  }
  // Live traffic after the reconnect still arrives.
  await send(bob, "after the reconnect");
  await shows(alice, "message", "after the reconnect");
  assert.deepEqual(b.errors, []);
});

Deno.test("browser: on a 390×844 phone the page fits the width and every control is at least 44 px, light and dark", async () => {
  await using server = await startServer();
  await using b = await launch();
  for (const colorScheme of ["light", "dark"] as const) {
    const page = await b.open(server.url, { viewport: PHONE, colorScheme, phone: true });
    const check = async (what: string) => {
      const layout = await page.evaluate(() => {
        const small: string[] = [];
        const controls = document.querySelectorAll("button, input, textarea, summary, a");
        for (const el of Array.from(controls)) {
          const r = el.getBoundingClientRect();
          if (r.width === 0 && r.height === 0) continue; // not shown now
          if (el.tagName === "A") continue; // the skip link is off screen until focused
          if (r.height < 44 || r.width < 44) {
            small.push(`${el.tagName}#${el.dataset.testid} ${r.width}x${r.height}`);
          }
        }
        const doc = document.documentElement;
        return { small, overflow: doc.scrollWidth - doc.clientWidth };
      });
      assert.deepEqual(layout.small, [], `${what}: controls smaller than 44 px`);
      assert.equal(layout.overflow, 0, `${what}: the page scrolls sideways`);
    };
    await page.click("#more > summary");
    await check(`${colorScheme} join form`);
    await screenshot(page, `browser-phone-join-${colorScheme}.png`);
    await join(page, { uid: `phone-${colorScheme}`, channel: "general" });
    await send(page, "A message long enough to wrap over more than one line on a phone screen.");
    await check(`${colorScheme} chat`);
    await screenshot(page, `browser-phone-chat-${colorScheme}.png`);
  }
  assert.deepEqual(b.errors, []);
});
