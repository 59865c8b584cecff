/**
 * @module
 * The browser client served at `/`: joins one Mles channel over the
 * `mles-websocket` subprotocol, shows the channel's history and then live
 * frames, sends `{"uid","text"}` messages, and reconnects with exponential
 * backoff. A plain ES module for index.html; imports siphash.js only.
 *
 * Wire behaviour (SPEC sections 2-4): the first frame is the TEXT header
 * `{"uid","channel","auth"}`, where `auth` is always sent (keyless when no
 * key is given, like mles-client); the server never echoes a frame to its
 * sender, so our own messages are shown locally; a text frame that is a
 * header (uid and channel, no text) is a join notice.
 */
import { mlesAuth, sipHash24Hex } from "./siphash.js";

const SUBPROTOCOL = "mles-websocket";
const PREFS_KEY = "mles-chat:prefs";
/** Messages kept on screen; older ones are removed from the page. */
const MAX_ITEMS = 1000;
/** Frames remembered for dropping the replayed history after a reconnect. */
const MAX_SEEN = 2000;
const BACKOFF_BASE_MS = 1000;
const BACKOFF_CAP_MS = 30_000;
/** A connection that stayed up this long starts the backoff over. */
const STABLE_MS = 10_000;
/** The server has sent its history when frames pause for this long after joining. */
const REPLAY_QUIET_MS = 400;

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const ui = {
  app: $("app"),
  where: $("where"),
  pill: $("pill"),
  pillText: $("pill-text"),
  leave: /** @type {HTMLButtonElement} */ ($("leave")),
  status: $("status"),
  retry: /** @type {HTMLButtonElement} */ ($("retry")),
  joinPanel: $("join-panel"),
  joinForm: /** @type {HTMLFormElement} */ ($("join-form")),
  more: /** @type {HTMLDetailsElement} */ ($("more")),
  uid: /** @type {HTMLInputElement} */ ($("uid")),
  channel: /** @type {HTMLInputElement} */ ($("channel")),
  server: /** @type {HTMLInputElement} */ ($("server")),
  key: /** @type {HTMLInputElement} */ ($("key")),
  chatPanel: $("chat-panel"),
  messages: $("messages"),
  empty: $("empty"),
  jump: /** @type {HTMLButtonElement} */ ($("jump")),
  composer: /** @type {HTMLFormElement} */ ($("composer")),
  text: /** @type {HTMLTextAreaElement} */ ($("text")),
  send: /** @type {HTMLButtonElement} */ ($("send")),
};

// ---------------------------------------------------------------------------
// Preferences

function loadPrefs() {
  try {
    const p = JSON.parse(localStorage.getItem(PREFS_KEY) ?? "{}");
    return {
      uid: typeof p.uid === "string" ? p.uid : "",
      channel: typeof p.channel === "string" ? p.channel : "",
    };
  } catch {
    return { uid: "", channel: "" }; // storage disabled or corrupt: start blank
  }
}

function savePrefs(uid, channel) {
  try {
    localStorage.setItem(PREFS_KEY, JSON.stringify({ uid, channel }));
  } catch {
    // Private mode or storage full: remembering is a convenience only.
  }
}

/** This page's origin as a WebSocket URL (ws for http, wss for https). */
function defaultServer() {
  const { protocol, host } = location;
  if (protocol === "https:") return `wss://${host}/`;
  if (protocol === "http:") return `ws://${host}/`;
  return "ws://localhost:8080/";
}

// ---------------------------------------------------------------------------
// Connection state

/**
 * What the user joined: `header` is the exact first frame we send (SPEC
 * section 2), the same on every reconnect.
 * @type {{uid: string, channel: string, server: string, header: string} | null}
 */
let session = null;
/** @type {WebSocket | null} */
let ws = null;
let attempt = 0;
let openedAt = 0;
/** @type {ReturnType<typeof setTimeout> | undefined} */
let retryTimer;
/** @type {ReturnType<typeof setTimeout> | undefined} */
let quietTimer;
let everJoined = false;

/**
 * Frames shown in this view, in order, as keys (see {@link frameKey}). After
 * a reconnect the server replays the channel's history, which this view has
 * mostly shown already; {@link receive} drops what matches so nothing shows
 * twice (SPEC section 6: clients SHOULD drop duplicate frames).
 * @type {string[]}
 */
let seen = [];
/**
 * Set while the history after a reconnect is arriving: `cursor` is the next
 * index of `seen` to match, `held` the join headers not shown yet.
 * @type {{cursor: number, held: (string | ArrayBuffer)[]} | null}
 */
let replay = null;

function remember(key) {
  seen.push(key);
  if (seen.length > MAX_SEEN) seen = seen.slice(-MAX_SEEN / 2);
}

const ZERO_KEY = new Uint8Array(16);

function frameKey(data) {
  if (typeof data === "string") return "t" + data;
  const bytes = new Uint8Array(data);
  return `b${bytes.byteLength}:${sipHash24Hex(ZERO_KEY, bytes)}`;
}

/**
 * Shows a received frame unless it is history this view has shown before.
 *
 * During the replay after a reconnect: our own header is skipped (the
 * server keeps one per join, and never sends it to us live); a frame found
 * in `seen` after the cursor is a duplicate, and moves the cursor; a join
 * header that is not found is held, because joins that happened while we
 * were connected were never sent to us live either: if a known frame follows
 * it is old news and dropped, otherwise it is shown. The first unknown frame
 * of any other kind, reaching the end of `seen`, or a pause in the burst
 * ends the replay.
 */
function receive(data) {
  if (replay) {
    if (data === session?.header) return;
    const i = seen.indexOf(frameKey(data), replay.cursor);
    if (i !== -1) {
      replay.cursor = i + 1;
      replay.held = [];
      if (replay.cursor === seen.length) replay = null;
      return;
    }
    if (classify(data).kind === "join") {
      replay.held.push(data);
      return;
    }
    endReplay();
  }
  remember(frameKey(data));
  show(data);
}

/** Ends the replay after a reconnect and shows the joins it held back. */
function endReplay() {
  const held = replay?.held ?? [];
  replay = null;
  for (const data of held) {
    remember(frameKey(data));
    show(data);
  }
}

function setState(state, label) {
  ui.app.dataset.state = state;
  ui.pill.dataset.state = state;
  ui.pillText.textContent = label;
  ui.send.disabled = state !== "online" || ui.text.value.trim() === "";
}

/** Sets the status line; `error` colours it as a problem the user must act on. */
function setStatus(text, { retry = false, error = false } = {}) {
  ui.status.textContent = text;
  ui.status.dataset.tone = error ? "error" : "";
  ui.retry.hidden = !retry;
}

function describeClose(ev) {
  if (ev.code === 1006 || ev.code === 1005) {
    return ev.reason ? ev.reason : "the connection was lost";
  }
  return ev.reason ? `${ev.reason} (code ${ev.code})` : `closed with code ${ev.code}`;
}

/** A close the server sends for a bad join: retrying the same header cannot help. */
function isFatal(ev) {
  return ev.reason.startsWith("Cannot join") || ev.code === 1002 || ev.code === 1003;
}

function connect() {
  clearTimeout(retryTimer);
  if (!session) return;
  const s = session;
  setState("connecting", "Connecting");
  setStatus(`Connecting to ${s.server}…`);
  /** @type {WebSocket} */
  let sock;
  try {
    sock = new WebSocket(s.server, SUBPROTOCOL);
  } catch {
    showJoin();
    fieldError(ui.server, "This is not a WebSocket URL (ws:// or wss://)");
    setStatus("Cannot connect: check the server URL.", { error: true });
    return;
  }
  sock.binaryType = "arraybuffer";
  ws = sock;
  let open = false;
  sock.onopen = () => {
    if (ws !== sock) return;
    open = true;
    openedAt = Date.now();
    sock.send(s.header);
    replay = everJoined ? { cursor: 0, held: [] } : null;
    setState("online", "Online");
    setStatus(`Connected to ${s.channel} as ${s.uid}.`);
    if (everJoined) note("Reconnected");
    everJoined = true;
    ui.messages.setAttribute("aria-busy", "true");
    settleSoon();
  };
  sock.onmessage = (ev) => {
    if (ws !== sock) return;
    if (ui.messages.getAttribute("aria-busy") === "true") settleSoon();
    receive(ev.data);
  };
  sock.onerror = () => {}; // a close event always follows, with what we can know
  sock.onclose = (ev) => {
    if (ws !== sock) return;
    ws = null;
    replay = null;
    ui.messages.removeAttribute("aria-busy");
    if (!session) return;
    const why = describeClose(ev);
    if (open && isFatal(ev)) {
      session = null;
      setState("offline", "Offline");
      showJoin();
      // The server's reasons already say "Cannot join: …".
      setStatus(ev.reason.startsWith("Cannot join") ? `${why}.` : `Could not join: ${why}.`, {
        error: true,
      });
      // Point at the field to fix (reasons from src/close.ts; mles-rs sends none).
      if (/already joined/i.test(ev.reason)) {
        fieldError(ui.uid, "This name is already in the channel, maybe in another tab");
        ui.uid.focus();
      } else if (/^Cannot join: auth/i.test(ev.reason)) {
        ui.more.open = true;
        fieldError(
          ui.key,
          ui.key.value === "" ? "This server needs a key" : "The server did not accept this key",
        );
        ui.key.focus();
      }
      return;
    }
    if (open) {
      note(`Disconnected: ${why}`);
      if (Date.now() - openedAt >= STABLE_MS) attempt = 0;
    }
    scheduleReconnect(open ? why : `cannot reach the server (${why})`);
  };
}

function scheduleReconnect(why) {
  // Exponential backoff with jitter: 1, 2, 4 … 30 s, each between half and all of it.
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
  const delay = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
  attempt++;
  const seconds = Math.max(1, Math.round(delay / 1000));
  setState("waiting", "Reconnecting");
  setStatus(`Disconnected: ${why}. Reconnecting in ${seconds} s…`, { retry: true });
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, delay);
}

/** Marks the log as settled once the history burst after a join has paused. */
function settleSoon() {
  clearTimeout(quietTimer);
  quietTimer = setTimeout(() => {
    ui.messages.removeAttribute("aria-busy");
    if (replay) endReplay();
  }, REPLAY_QUIET_MS);
}

// ---------------------------------------------------------------------------
// The message list

/** A stable avatar hue (0-359) for a uid, so each person keeps one colour. */
function hue(uid) {
  let h = 0;
  for (let i = 0; i < uid.length; i++) h = (h * 31 + uid.charCodeAt(i)) >>> 0;
  return h % 360;
}

/**
 * What a frame means on screen: a join notice for a header, a message for a
 * `{"uid","text"}` JSON, the text itself otherwise, and the size of a binary.
 */
function classify(data) {
  if (typeof data !== "string") {
    return { kind: "binary", text: `binary frame, ${data.byteLength} bytes` };
  }
  let obj;
  if (data.trimStart().startsWith("{")) {
    try {
      obj = JSON.parse(data);
    } catch {
      obj = undefined;
    }
  }
  if (obj && typeof obj === "object" && !Array.isArray(obj)) {
    if ("text" in obj) {
      const uid = typeof obj.uid === "string" && obj.uid !== "" ? obj.uid : "unknown";
      const text = typeof obj.text === "string" ? obj.text : JSON.stringify(obj.text);
      return { kind: "message", uid, text };
    }
    if (typeof obj.uid === "string" && typeof obj.channel === "string") {
      return { kind: "join", uid: obj.uid, text: `${obj.uid} joined` };
    }
  }
  return { kind: "text", text: data };
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function append(li) {
  const stick = nearBottom();
  ui.messages.append(li);
  while (ui.messages.childElementCount > MAX_ITEMS) ui.messages.firstElementChild?.remove();
  ui.empty.hidden = true;
  if (stick) {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  } else {
    ui.jump.hidden = false;
  }
}

/** Renders a received frame, or our own message when `self` is set. */
function show(data, self = false) {
  const m = classify(data);
  const li = el("li", "item");
  li.dataset.kind = m.kind === "message" && (self || m.uid === session?.uid) ? "self" : m.kind;
  if (m.kind !== "message") {
    if (m.uid) li.dataset.uid = m.uid;
    li.append(el("p", "notice", m.text));
    append(li);
    return;
  }
  li.dataset.uid = m.uid;
  const mine = li.dataset.kind === "self";
  const prev = ui.messages.lastElementChild;
  const continued = prev instanceof HTMLElement && prev.dataset.uid === m.uid &&
    prev.dataset.kind === li.dataset.kind;
  if (continued) li.classList.add("continued");
  if (!mine) {
    const avatar = el("span", "avatar", [...m.uid][0]?.toUpperCase() ?? "?");
    avatar.setAttribute("aria-hidden", "true");
    avatar.style.setProperty("--hue", String(hue(m.uid)));
    li.append(avatar);
  }
  const bubble = el("div", "bubble");
  const who = el("p", "who", mine ? "You" : m.uid);
  bubble.append(who, el("p", "body", m.text));
  li.append(bubble);
  append(li);
}

/** A line from this page itself (not a frame): reconnects, disconnects. */
function note(text) {
  const li = el("li", "item");
  li.dataset.kind = "system";
  li.append(el("p", "notice", text));
  append(li);
}

function clearMessages() {
  ui.messages.replaceChildren();
  ui.empty.hidden = false;
  ui.jump.hidden = true;
  seen = [];
  replay = null;
}

// ---------------------------------------------------------------------------
// Forms

const ASCII = /^[\x20-\x7e]+$/;

function fieldError(input, message) {
  const out = document.getElementById(`${input.id}-error`);
  if (out) out.textContent = message;
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

function validate() {
  const uid = ui.uid.value.trim();
  const channel = ui.channel.value.trim();
  const server = ui.server.value.trim();
  const problems = [];
  const check = (input, value, what) => {
    let message = "";
    if (value === "") message = `Enter ${what}`;
    else if (!ASCII.test(value)) message = "Use ASCII letters, digits and symbols only";
    fieldError(input, message);
    if (message) problems.push(input);
  };
  check(ui.uid, uid, "a name");
  check(ui.channel, channel, "a channel");
  let serverMessage = "";
  try {
    const u = new URL(server);
    if (u.protocol !== "ws:" && u.protocol !== "wss:") serverMessage = "Use a ws:// or wss:// URL";
  } catch {
    serverMessage = "Enter a URL such as wss://example.com/";
  }
  fieldError(ui.server, serverMessage);
  fieldError(ui.key, "");
  if (serverMessage) {
    ui.more.open = true;
    problems.push(ui.server);
  }
  return { uid, channel, server, problems };
}

function showJoin() {
  ui.chatPanel.hidden = true;
  ui.joinPanel.hidden = false;
  ui.leave.hidden = true;
  ui.where.textContent = "Not connected";
  document.title = "Mles chat";
}

function showChat(s) {
  ui.joinPanel.hidden = true;
  ui.chatPanel.hidden = false;
  ui.leave.hidden = false;
  ui.where.textContent = `${s.channel} · ${s.uid}`;
  document.title = `${s.channel} – Mles chat`;
}

ui.joinForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const { uid, channel, server, problems } = validate();
  if (problems.length > 0) {
    problems[0].focus();
    setStatus("Please fix the highlighted fields.", { error: true });
    return;
  }
  savePrefs(uid, channel);
  const key = ui.key.value;
  const auth = mlesAuth(uid, channel, key);
  session = { uid, channel, server, header: JSON.stringify({ uid, channel, auth }) };
  attempt = 0;
  everJoined = false;
  clearMessages();
  showChat(session);
  connect();
  ui.text.focus();
});

function leave() {
  const s = session;
  session = null;
  clearTimeout(retryTimer);
  const sock = ws;
  ws = null;
  sock?.close(1000, "Leaving");
  setState("offline", "Offline");
  showJoin();
  setStatus(s ? `You left ${s.channel}.` : "Choose a name and a channel to join.");
  ui.channel.focus();
}

ui.leave.addEventListener("click", leave);
ui.retry.addEventListener("click", () => {
  attempt = 0;
  connect();
});
globalThis.addEventListener("online", () => {
  if (session && !ws) connect();
});

function autosize() {
  ui.text.style.height = "auto";
  ui.text.style.height = `${Math.min(ui.text.scrollHeight, 160)}px`;
}

ui.text.addEventListener("input", () => {
  autosize();
  ui.send.disabled = ui.app.dataset.state !== "online" || ui.text.value.trim() === "";
});

ui.text.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = ui.text.value;
  if (!session || !ws || ws.readyState !== WebSocket.OPEN || text.trim() === "") return;
  const frame = JSON.stringify({ uid: session.uid, text });
  ws.send(frame);
  remember(frameKey(frame));
  // The server never echoes to the sender: show it here.
  ui.messages.scrollTop = ui.messages.scrollHeight;
  show(frame, true);
  ui.text.value = "";
  autosize();
  ui.send.disabled = true;
});

ui.messages.addEventListener("scroll", () => {
  if (nearBottom()) ui.jump.hidden = true;
});
ui.jump.addEventListener("click", () => {
  ui.messages.scrollTop = ui.messages.scrollHeight;
  ui.jump.hidden = true;
  ui.text.focus();
});

// ---------------------------------------------------------------------------
// Start

const prefs = loadPrefs();
ui.uid.value = prefs.uid;
ui.channel.value = prefs.channel;
ui.server.value = defaultServer();
setState("offline", "Offline");
// Focus what is left to do: the first empty field, or Join when both are remembered.
(!prefs.uid ? ui.uid : !prefs.channel ? ui.channel : $("join")).focus();
