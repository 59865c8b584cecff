/**
 * @module
 * One Mles membership that survives disconnects, shared by the terminal
 * client (client.ts) and the peering bridge (peer.ts): opens a WebSocket
 * offering `mles-websocket`, sends the header first, hands every received
 * frame to its owner and, after a close or a failed attempt, tries again
 * after {@link backoffMs} from retry.ts. The state is explicit
 * ({@link LinkState}); the owner hears every transition that matters as a
 * {@link LinkEvent}. Imports: frame (type), retry.
 */
import type { Frame } from "./frame.ts";
import { backoffMs, type BackoffOptions, sleep } from "./retry.ts";

/** The subprotocol every Mles client offers (SPEC section 1). */
const SUBPROTOCOL = "mles-websocket";

/**
 * Mles has no join acknowledgement (a refused header is closed at once), so
 * a link counts as up after its first frame or after this long open.
 */
const UP_AFTER_MS = 1000;

/**
 * The links' backoff: retry `n` (0-based) waits uniformly in [d/2, d) with
 * d = min(capMs, baseMs * 2^n). Never 0, so a server that refuses at once is
 * not hammered; spread out, so clients cut off together do not return
 * together. In retry.ts's terms (a centre scaled by 1 ± jitter) the centre
 * is 3/4 d and the jitter 1/3.
 */
export function linkBackoff(baseMs = 250, capMs = 30_000): BackoffOptions {
  return { minMs: baseMs * 0.75, maxMs: capMs * 0.75, multiplier: 2, jitter: 1 / 3 };
}

/** A received WebSocket message as a frame: a string is text, anything else binary bytes. */
export function frameOf(data: string | ArrayBuffer): Frame {
  return typeof data === "string"
    ? { kind: "text", data }
    : { kind: "binary", data: new Uint8Array(data) };
}

/**
 * Where a {@link Link} is. Legal transitions: idle -> preparing | connecting;
 * preparing -> connecting | retrying; connecting -> open | retrying;
 * open -> up | retrying; up -> retrying; retrying -> preparing | connecting;
 * any -> stopped (final).
 */
export type LinkState =
  /** Not started. */
  | "idle"
  /** The owner is preparing the next attempt (its header). */
  | "preparing"
  /** A socket is opening. */
  | "connecting"
  /** The header is sent; not yet known to be accepted. */
  | "open"
  /** A frame arrived, or the socket stayed open {@link UP_AFTER_MS}: the backoff restarts. */
  | "up"
  /** Waiting before the next attempt. */
  | "retrying"
  /** Closed by its owner; never reconnects. */
  | "stopped";

/** What a {@link Link} reports to its owner. */
export type LinkEvent =
  /** A socket opened and the header went out first on it. */
  | { type: "open" }
  /** The open socket is taken as accepted (first frame, or a quiet second). */
  | { type: "up" }
  /** The socket closed (`opened`: after it had opened); the next attempt is in `retryInMs`. */
  | { type: "closed"; opened: boolean; code: number; reason: string; retryInMs: number }
  /** The attempt failed before a socket existed (preparation or the WebSocket constructor threw). */
  | { type: "failed"; error: unknown; retryInMs: number }
  /** The owner's preparation said "not now"; the next attempt is in `retryInMs` (no backoff). */
  | { type: "waiting"; retryInMs: number };

/** The owner's answer before an attempt: the header to send, or a wait (not counted as a failure). */
export type Attempt = { readonly header: string } | { readonly waitMs: number };

/** Options for {@link Link}. */
export interface LinkOptions {
  readonly url: string;
  /**
   * The header text sent first on every connection, or a function called
   * before each attempt that resolves with it (or with a wait). A rejection
   * is a failed attempt, retried with backoff.
   */
  readonly header: string | (() => Promise<Attempt>);
  readonly onFrame: (frame: Frame) => void;
  readonly onEvent?: (event: LinkEvent) => void;
  /**
   * Frames kept while disconnected, oldest dropped first (default 1000).
   * 0: a frame sent while the socket is not open is dropped.
   */
  readonly outboxLimit?: number;
  /** Default: {@link linkBackoff}() (250 ms doubling to 30 s). */
  readonly backoff?: BackoffOptions;
}

/**
 * One Mles membership that survives disconnects: connects, sends the header,
 * delivers every received frame to `onFrame` in order, and after a close
 * reconnects with backoff. Frames sent while disconnected wait in a bounded
 * outbox and go out right after the next header. Never throws from an event
 * handler; the owner learns of failures through `onEvent`.
 */
export class Link {
  readonly #o: LinkOptions;
  readonly #backoff: BackoffOptions;
  readonly #outbox: Frame[] = [];
  #state: LinkState = "idle";
  #ws: WebSocket | undefined;
  #connection = 0;
  #closedWs: Promise<void> = Promise.resolve();
  #attempt = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #upTimer: ReturnType<typeof setTimeout> | undefined;
  /** Frames dropped from a full outbox. */
  lost = 0;

  constructor(options: LinkOptions) {
    this.#o = options;
    this.#backoff = options.backoff ?? linkBackoff();
  }

  get state(): LinkState {
    return this.#state;
  }

  /** True while the socket is open (the header has been sent on it). */
  get open(): boolean {
    return this.#ws?.readyState === WebSocket.OPEN;
  }

  /** Numbers the sockets: compare two readings to know whether a frame would go on the same one. */
  get connection(): number {
    return this.#connection;
  }

  /** Bytes the open socket has not handed to the network yet. */
  get bufferedAmount(): number {
    return this.#ws?.bufferedAmount ?? 0;
  }

  /** Starts connecting. Later calls do nothing. */
  start(): void {
    if (this.#state === "idle") void this.#next();
  }

  /**
   * Sends `frame` now if the socket is open (true), else queues it for the
   * next connection, dropping the oldest queued frame when the outbox is
   * full (false; with `outboxLimit` 0 the frame itself is dropped).
   */
  send(frame: Frame): boolean {
    if (this.#ws && this.open) {
      this.#ws.send(frame.data as string);
      return true;
    }
    const limit = this.#o.outboxLimit ?? 1000;
    if (limit === 0) return false;
    this.#outbox.push(frame);
    if (this.#outbox.length > limit) {
      this.#outbox.shift();
      this.lost++;
    }
    return false;
  }

  /** Closes the current socket, if any; the link reconnects as after any other close. */
  drop(): void {
    this.#ws?.close();
  }

  /**
   * Resolves true once nothing is queued or buffered (everything sent has
   * been handed to the network), false if that takes longer than `ms`.
   * Polls: a WebSocket has no event for "bufferedAmount reached 0".
   */
  async flushed(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (this.#outbox.length === 0 && this.bufferedAmount === 0) return true;
      await sleep(10);
    }
    return false;
  }

  /**
   * Stops reconnecting, closes the socket with `code` and `reason` and waits
   * for it to close (at most `waitMs`, if given). Safe to call twice.
   */
  async close(code = 1000, reason?: string, waitMs?: number): Promise<void> {
    this.#state = "stopped";
    clearTimeout(this.#timer);
    clearTimeout(this.#upTimer);
    const ws = this.#ws;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(code, reason);
    if (waitMs === undefined) return await this.#closedWs;
    const settled = new AbortController();
    await Promise.race([this.#closedWs, sleep(waitMs, settled.signal)]);
    settled.abort(); // clears the bound's timer
  }

  /** A getter, so a check after an `await` is not narrowed away. */
  get #stopped(): boolean {
    return this.#state === "stopped";
  }

  /** One attempt: the owner's preparation (if any), then a socket. */
  async #next(): Promise<void> {
    if (this.#stopped) return;
    if (typeof this.#o.header === "string") return this.#connect(this.#o.header);
    this.#state = "preparing";
    let attempt: Attempt;
    try {
      attempt = await this.#o.header();
    } catch (error) {
      if (this.#stopped) return;
      return this.#retry({ type: "failed", error });
    }
    if (this.#stopped) return;
    if ("header" in attempt) return this.#connect(attempt.header);
    this.#state = "retrying";
    this.#o.onEvent?.({ type: "waiting", retryInMs: attempt.waitMs });
    this.#timer = setTimeout(() => void this.#next(), attempt.waitMs);
  }

  #connect(header: string): void {
    let ws: WebSocket;
    try {
      ws = new WebSocket(this.#o.url, SUBPROTOCOL);
    } catch (error) {
      return this.#retry({ type: "failed", error });
    }
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    this.#connection++;
    this.#state = "connecting";
    const closed = Promise.withResolvers<void>();
    this.#closedWs = closed.promise;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.#state = "open";
      ws.send(header);
      for (const f of this.#outbox.splice(0)) ws.send(f.data as string);
      this.#o.onEvent?.({ type: "open" });
      if (this.#ws === ws && this.#state === "open") {
        this.#upTimer = setTimeout(() => this.#up(ws), UP_AFTER_MS);
      }
    };
    ws.onmessage = (ev) => {
      this.#up(ws);
      this.#o.onFrame(frameOf(ev.data));
    };
    ws.onerror = () => {}; // a close event follows with the code
    ws.onclose = (ev) => {
      clearTimeout(this.#upTimer);
      if (this.#ws === ws) this.#ws = undefined;
      closed.resolve();
      if (this.#stopped) return;
      this.#retry({ type: "closed", opened, code: ev.code, reason: ev.reason });
    };
  }

  #up(ws: WebSocket): void {
    clearTimeout(this.#upTimer);
    if (this.#ws !== ws || this.#state !== "open") return;
    this.#state = "up";
    this.#attempt = 0;
    this.#o.onEvent?.({ type: "up" });
  }

  #retry(
    event:
      | Omit<Extract<LinkEvent, { type: "closed" }>, "retryInMs">
      | Omit<Extract<LinkEvent, { type: "failed" }>, "retryInMs">,
  ): void {
    const retryInMs = backoffMs(this.#attempt++, this.#backoff);
    this.#state = "retrying";
    this.#o.onEvent?.({ ...event, retryInMs } as LinkEvent);
    this.#timer = setTimeout(() => void this.#next(), retryInMs);
  }
}
