/**
 * @module
 * One connection's life as a state machine, {@link Session}: awaiting the
 * header -> joining -> joined, and from any of them draining -> closing ->
 * closed. Validates the header (header.ts) and auth (auth.ts), applies the
 * duplicate-session rule, holds (within a bound) the frames a client sends
 * while its join is in progress, and wraps the connection as the hub's
 * {@link Member}. Every rejection closes with a code and reason and logs one
 * line (never the auth value or the key). {@link runSession} is the thin
 * WebSocket adapter. Imports: auth, close, config (type), frame, header,
 * hub (type), log (type), peer, rate_bucket, session_claims.
 */
import { verifyAuth } from "./auth.ts";
import { CLOSE, type Close } from "./close.ts";
import type { Config } from "./config.ts";
import { exceedsBytes, type Frame, utf8Length } from "./frame.ts";
import { type Header, parseHeader, PEER_UID_PREFIX } from "./header.ts";
import type { Hub, JoinOptions, Member, Membership } from "./hub.ts";
import type { Logger } from "./log.ts";
import { type PeerGate, type PeerLink, RESYNC_FRAMES } from "./peer.ts";
import { RateBucket } from "./rate_bucket.ts";
import { type SessionClaims, sessionIdentity } from "./session_claims.ts";

/** What a session needs from the server. */
export interface SessionContext {
  /** The channels (only `join` is used, so tests may pass a scripted hub). */
  readonly hub: Pick<Hub, "join">;
  readonly config: Config;
  readonly log: Logger;
  /** The duplicate-session rule across every isolate (SPEC section 5). */
  readonly claims: SessionClaims;
  /** Counts a refused join by its close reason (metrics). */
  readonly onReject?: (close: Close) => void;
  /** Counts a client paced for going over its publish rates (metrics). */
  readonly onPaced?: () => void;
  /** Counts a frame received from a joined client (metrics). */
  readonly onFrame?: (bytes: number) => void;
  /** Peer treatment for other servers' bridges (present when peering is configured). */
  readonly peers?: PeerGate;
  /** Per-address join budgets: the close for a join from `ip` over one, else undefined. */
  readonly admitJoin?: (ip: string, channel: string) => Close | undefined;
}

/**
 * The connection as a session uses it. {@link runSession} implements it over
 * a WebSocket; unit tests implement it with a recorder.
 */
export interface SessionSocket {
  /** Sends one frame; may throw if the connection is gone. */
  send(frame: Frame): void;
  /** Bytes accepted by `send` but not yet written to the network. */
  readonly bufferedAmount: number;
  /** Starts closing with `close`; never throws, and does nothing once closing or closed. */
  close(close: Close): void;
  /**
   * Where the transport can (node_server.ts; `Deno.upgradeWebSocket` cannot):
   * stops reading the client for `ms` (0: reads again now). TCP then holds
   * the client back; frames already read may still arrive meanwhile.
   */
  pauseReading?(ms: number): void;
}

/** Time as a session sees it (milliseconds and timers); tests pass a stepped clock. */
export interface SessionClock {
  /** Milliseconds on a monotonic clock. */
  now(): number;
  /** Starts a timer; the returned id is only ever passed to `clearTimeout`. */
  setTimeout(fn: () => void, ms: number): unknown;
  /** Stops a timer (an undefined or finished id is ignored). */
  clearTimeout(id: unknown): void;
}

const realClock: SessionClock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id as ReturnType<typeof setTimeout> | undefined),
};

/**
 * Where a session is. Resources (identity, membership, peer link) are held
 * only while `joining` or `joined`; every other state has released them.
 * - `awaitingHeader`: the header timer runs; the first frame is the header.
 * - `joining`: identity claim, then hub join, in flight; frames are held.
 * - `joined`: frames are published to the channel.
 * - `draining`: refused; the client's frames are read and dropped until it
 *   is quiet, then the close goes out (see {@link DRAIN_QUIET_MS}).
 * - `closing`: the close went out; waiting for the socket to finish.
 * - `closed`: the socket is gone. Final.
 */
export type SessionState =
  | "awaitingHeader"
  | "joining"
  | "joined"
  | "draining"
  | "closing"
  | "closed";

/** A refused client's close goes out once it has sent nothing for this long (exported for tests)... */
export const DRAIN_QUIET_MS = 50;
/** ...or at its first frame after this long, whichever comes first (exported for tests). */
export const DRAIN_MAX_MS = 1000;
/**
 * A frame held while a join is pending counts at least this many bytes
 * toward the bound (MLES_MAX_BUFFERED_BYTES), so many tiny frames are
 * bounded by what they cost in memory, not by their payload alone
 * (exported for tests).
 */
export const HELD_FRAME_MIN_BYTES = 256;
/**
 * Where the transport can stop reading, a client that sends more than this
 * before its join completes is not read until it has (the join then
 * publishes what was held in one go: kept small, it delays nobody).
 */
export const HELD_PAUSE_BYTES = 64 * 1024;
/**
 * Where the transport can pace, a client's publish allowance holds at most
 * this fraction of a second's worth at once (elsewhere see
 * {@link CLOSING_BURST_S}): a flood then starts at the rate, not with a
 * second of frames at full speed (exported for tests).
 */
export const PACED_BURST_S = 0.1;
/**
 * Where going over a rate closes the client (Deno.serve, Deploy), its
 * allowance holds this many seconds' worth at once (and at least one
 * largest frame): a client that sends a backlog at once is not closed for
 * it; one that keeps sending faster than the rate is (exported for tests).
 */
export const CLOSING_BURST_S = 5;
/** A paced client is not read for longer than this at a time (its keepalive must still be read). */
export const MAX_PAUSE_MS = 5000;

function toFrame(data: unknown): Frame {
  if (typeof data === "string") return { kind: "text", data };
  if (data instanceof ArrayBuffer) return { kind: "binary", data: new Uint8Array(data) };
  return { kind: "binary", data: new Uint8Array(data as ArrayBufferLike) };
}

function frameSize(frame: Frame): number {
  return frame.kind === "binary" ? frame.data.byteLength : utf8Length(frame.data);
}

/**
 * One client connection's Mles session (SPEC sections 2, 3 and 5), driven
 * by events: {@link Session.frame} and {@link Session.socketClosed} from the
 * socket; claim and join results, the hub dropping the member and the
 * timers from inside. Each event is handled per {@link SessionState}; an
 * event that has no meaning in the current state is ignored. Never throws
 * from an event.
 */
export class Session {
  readonly #socket: SessionSocket;
  readonly #ctx: SessionContext;
  readonly #peer: string;
  readonly #clock: SessionClock;
  readonly #member: Member;
  readonly #frameRate: RateBucket | undefined;
  readonly #byteRate: RateBucket | undefined;
  #state: SessionState = "awaitingHeader";
  /** The header timer while awaiting the header, the drain timer while draining. */
  #timer: unknown;
  #drain: { close: Close; until: number } | undefined;
  #header: Header | undefined;
  /** Set for a proven peer server's bridge: its frames in and out go through peering's check. */
  #link: PeerLink | undefined;
  #identity: string | undefined;
  #membership: Membership | undefined;
  #released = false;
  /** Frames accepted while joining; the join publishes them (even if the session ended meanwhile). */
  #held: Frame[] = [];
  #heldBytes = 0;

  /**
   * Starts a session on `socket` (the header timer runs from here). `peer`
   * (remote address) is used in log lines and join budgets only.
   */
  constructor(
    socket: SessionSocket,
    ctx: SessionContext,
    peer: string,
    clock: SessionClock = realClock,
  ) {
    this.#socket = socket;
    this.#ctx = ctx;
    this.#peer = peer;
    this.#clock = clock;
    const { config } = ctx;
    const now = () => clock.now();
    // Paced: bursts of PACED_BURST_S's worth (a bigger frame goes, then waits).
    // Closed when over: CLOSING_BURST_S's worth, and at least one largest frame.
    const paced = socket.pauseReading !== undefined;
    const bucket = (rate: number, least: number) =>
      rate > 0
        ? new RateBucket(
          rate,
          now,
          paced ? Math.max(1, rate * PACED_BURST_S) : Math.max(rate * CLOSING_BURST_S, least),
        )
        : undefined;
    this.#frameRate = bucket(config.maxFramesPerS, 1);
    this.#byteRate = bucket(config.maxBytesPerS, config.maxFrameBytes);
    const sendNow = (frame: Frame) => socket.send(frame);
    const send = (frame: Frame) => this.#link ? this.#link.send(frame, sendNow) : sendNow(frame);
    const linkBytes = () => this.#link?.queuedBytes ?? 0;
    this.#member = {
      send,
      get bufferedAmount() {
        return socket.bufferedAmount + linkBytes();
      },
      close: (close) => this.#onHubDrop(close),
      holdBack: socket.pauseReading && ((ms) => socket.pauseReading!(ms)),
    };
    this.#timer = clock.setTimeout(() => this.#onHeaderTimeout(), config.headerTimeoutMs);
  }

  /** Where the session is now. */
  get state(): SessionState {
    return this.#state;
  }

  /** Event: the client sent a text or binary frame. */
  frame(frame: Frame): void {
    switch (this.#state) {
      case "awaitingHeader":
        return this.#onHeader(frame);
      case "joining":
      case "joined":
        return this.#onData(frame);
      case "draining":
        return this.#onDrainFrame();
      case "closing":
      case "closed":
        return; // the close is out: nothing the client sends counts any more
    }
  }

  /**
   * Event: the socket closed or failed. The session is closed at once:
   * membership left, identity freed. A join still in flight publishes the
   * frames held for it, then leaves.
   */
  socketClosed(): void {
    if (this.#state === "closed") return;
    this.#clock.clearTimeout(this.#timer);
    this.#drain = undefined;
    this.#release();
    this.#state = "closed";
  }

  #onHeaderTimeout(): void {
    if (this.#state !== "awaitingHeader") return;
    this.#reject(CLOSE.headerTimeout(this.#ctx.config.headerTimeoutMs));
  }

  #onHeader(frame: Frame): void {
    this.#clock.clearTimeout(this.#timer);
    const { config, peers } = this.#ctx;
    const parsed = parseHeader(frame, config.maxHeaderBytes);
    if (!parsed.ok) return this.#reject(parsed.close);
    const h = parsed.header;
    if (!verifyAuth(h, config.key) && !peers?.authenticates(h)) {
      const close = config.key !== undefined && h.auth === undefined
        ? CLOSE.authRequired
        : CLOSE.authFailed;
      return this.#reject(close, h);
    }
    if (h.uid.startsWith(PEER_UID_PREFIX) && peers?.proves(h)) this.#link = peers.link(h.channel);
    const limited = this.#link ? undefined : this.#ctx.admitJoin?.(this.#peer, h.channel);
    if (limited) return this.#reject(limited, h);
    // Frames sent while the identity is being claimed are held like those sent while joining.
    this.#state = "joining";
    this.#header = h;
    const id = sessionIdentity(h.uid, h.channel, h.auth);
    this.#ctx.claims.claim(id).then(
      (ok) => this.#onClaimed(id, frame, ok),
      (err) => this.#onJoinFailed(err),
    );
  }

  /** Event: the identity claim answered (`ok` false: a duplicate session). */
  #onClaimed(id: string, headerFrame: Frame, ok: boolean): void {
    if (!ok) {
      this.#dropHeld();
      if (this.#state === "joining") this.#reject(CLOSE.duplicateSession, this.#header);
      return;
    }
    if (this.#state !== "joining") {
      // Ended while claiming: the identity goes back once the held frames are out.
      if (this.#held.length === 0) return this.#ctx.claims.release(id);
      return this.#join(headerFrame, () => this.#ctx.claims.release(id));
    }
    this.#identity = id;
    this.#join(headerFrame);
  }

  #join(headerFrame: Frame, after?: () => void): void {
    const options = joinOptions(headerFrame, this.#link, this.#socket);
    this.#ctx.hub.join(this.#member, this.#header!.channel, options).then(
      (m) => {
        this.#onJoined(m);
        after?.();
      },
      (err) => {
        after?.();
        this.#onJoinFailed(err);
      },
    );
  }

  /** Event: the hub join answered (undefined: the member left or was dropped meanwhile). */
  #onJoined(m: Membership | undefined): void {
    const held = this.#held;
    this.#dropHeld();
    if (!m) {
      // The hub drops a member with a close (already handled); reaching here still joining
      // would leave a session nobody serves, so it is closed explicitly.
      if (this.#state === "joining") this.#closeNow(CLOSE.sendFailed);
      return;
    }
    if (this.#state !== "joining") {
      // Header, frames and close came together (`echo hi | websocat`): the
      // frames were accepted before the close, so they still go out.
      for (const f of held) this.#publish(m, f);
      return m.leave();
    }
    this.#membership = m;
    this.#state = "joined";
    const h = this.#header!;
    this.#ctx.log.info("joined", { peer: this.#peer, uid: h.uid, channel: h.channel });
    for (const f of held) this.#publish(m, f);
    // Held back while joining (for up to MAX_PAUSE_MS): read again now, or as
    // soon as the client is within its rates. The held pause is ended first:
    // a shorter pause does not shorten a longer one.
    if (held.length > 0 && this.#socket.pauseReading) {
      this.#socket.pauseReading(0);
      const wait = Math.ceil(this.#rateWaitMs());
      if (wait > 0) this.#socket.pauseReading(wait);
    }
  }

  /** Event: the claim or the join failed (the store did not answer). */
  #onJoinFailed(err: unknown): void {
    if (this.#state !== "joining") return; // refused or gone meanwhile: nothing to tell
    const h = this.#header!;
    this.#ctx.log.error("join failed", {
      peer: this.#peer,
      uid: h.uid,
      channel: h.channel,
      error: err,
    });
    this.#dropHeld();
    this.#closeNow(CLOSE.storeFailed);
  }

  /** A frame after the header, while joining or joined. */
  #onData(frame: Frame): void {
    const { config } = this.#ctx;
    let refused: Close | undefined;
    let size: number | undefined; // measured once, when a check needs it
    if (exceedsBytes(frame, config.maxFrameBytes)) {
      refused = CLOSE.frameTooBig(frameSize(frame), config.maxFrameBytes);
    } else if (!this.#link) {
      // Both buckets take the frame: a paced frame still goes out and counts.
      // A proven peer carries other servers' clients, each paced there.
      const framesOk = this.#frameRate?.take(1) ?? true;
      const bytesOk = this.#byteRate?.take(size = frameSize(frame)) ?? true;
      if (!framesOk || !bytesOk) refused = this.#overRate(!framesOk);
    }
    if (!refused && this.#state === "joining") {
      size ??= frameSize(frame);
      this.#heldBytes += Math.max(size, HELD_FRAME_MIN_BYTES);
      if (this.#heldBytes <= config.maxBufferedBytes) {
        this.#held.push(frame);
        // Where the transport can, a client that sends much before its join
        // completes waits for it instead of being closed at the bound.
        if (this.#heldBytes > HELD_PAUSE_BYTES) this.#socket.pauseReading?.(MAX_PAUSE_MS);
        return;
      }
      refused = CLOSE.heldTooMuch(config.maxBufferedBytes);
    }
    if (refused) {
      this.#ctx.log.warn("frame refused", {
        peer: this.#peer,
        code: refused.code,
        reason: refused.reason,
      });
      this.#ctx.onReject?.(refused);
      // Frames held before the refusal still go out with the join, which then leaves.
      return this.#drainThenClose(refused);
    }
    this.#publish(this.#membership!, frame, size);
  }

  /**
   * The client went over MLES_MAX_FRAMES_PER_S or MLES_MAX_BYTES_PER_S with
   * the frame just read (which still counts). Where the transport can stop
   * reading, the client is paced: it is not read again until it is back
   * within both rates (at most {@link MAX_PAUSE_MS} at a time). Elsewhere
   * the close to send.
   */
  #overRate(framesOver: boolean): Close | undefined {
    const { config } = this.#ctx;
    if (this.#socket.pauseReading) {
      this.#socket.pauseReading(Math.min(MAX_PAUSE_MS, Math.ceil(this.#rateWaitMs())));
      this.#ctx.onPaced?.();
      return undefined;
    }
    return framesOver
      ? CLOSE.tooManyFrames(config.maxFramesPerS)
      : CLOSE.tooManyBytes(config.maxBytesPerS);
  }

  #publish(m: Membership, frame: Frame, size = frameSize(frame)): void {
    this.#ctx.onFrame?.(size);
    if (this.#link) this.#link.receive(frame, (f) => m.publish(f, size));
    else m.publish(frame, size);
  }

  /**
   * Event: the hub dropped this member (slow, failed send, flood, store
   * busy). It is gone at once, identity freed, whether or not its TCP ever
   * closes; the hub's close goes out now, without a drain.
   */
  #onHubDrop(close: Close): void {
    if (this.#state === "closed") return this.#release();
    this.#closeNow(close);
  }

  #reject(close: Close, h?: Header): void {
    this.#ctx.log.warn("connection refused", {
      peer: this.#peer,
      code: close.code,
      reason: close.reason,
      uid: h?.uid,
      channel: h?.channel,
    });
    this.#ctx.onReject?.(close);
    this.#drainThenClose(close);
  }

  // Closing a TCP socket that still has unread input makes the kernel send a
  // reset, and the client never sees the close frame with its reason. So a
  // client refused mid-stream is drained first: its further frames are read
  // and dropped, and the close goes out once it has been quiet for a moment.
  #drainThenClose(close: Close): void {
    this.#socket.pauseReading?.(0); // draining reads what the client still sends
    this.#release();
    this.#clock.clearTimeout(this.#timer);
    this.#state = "draining";
    this.#drain = { close, until: this.#clock.now() + DRAIN_MAX_MS };
    this.#timer = this.#clock.setTimeout(() => this.#onDrainQuiet(), DRAIN_QUIET_MS);
  }

  /** Event: a frame while draining (read and dropped). */
  #onDrainFrame(): void {
    this.#clock.clearTimeout(this.#timer);
    if (this.#clock.now() >= this.#drain!.until) return this.#closeNow(this.#drain!.close);
    this.#timer = this.#clock.setTimeout(() => this.#onDrainQuiet(), DRAIN_QUIET_MS);
  }

  /** Event: the drain timer (the client has been quiet). */
  #onDrainQuiet(): void {
    if (this.#state === "draining") this.#closeNow(this.#drain!.close);
  }

  /** Milliseconds until the client is within both of its rates again. */
  #rateWaitMs(): number {
    return Math.max(this.#frameRate?.waitMs() ?? 0, this.#byteRate?.waitMs() ?? 0);
  }

  #closeNow(close: Close): void {
    this.#socket.pauseReading?.(0); // the client's answer to our close must be read
    this.#clock.clearTimeout(this.#timer);
    this.#drain = undefined;
    this.#release();
    this.#state = "closing";
    this.#socket.close(close);
  }

  /** Leaves the channel, frees the identity and closes the peer link. Idempotent. */
  #release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#membership?.leave();
    this.#membership = undefined;
    if (this.#identity !== undefined) this.#ctx.claims.release(this.#identity);
    this.#identity = undefined;
    this.#link?.close();
  }

  #dropHeld(): void {
    this.#held = [];
    this.#heldBytes = 0;
  }
}

/**
 * How a session joins the hub. A peer bridge of mles-deno sends the hashes
 * of what it holds (`resync_have`): it gets only the history frames it
 * lacks, and its header is not stored (a bridge is not a user joining).
 */
function joinOptions(
  header: Frame,
  link: PeerLink | undefined,
  socket: SessionSocket,
): JoinOptions {
  let have: unknown;
  if (link) {
    try {
      have = JSON.parse(header.data as string).resync_have;
    } catch { /* parsed before: cannot fail */ }
  }
  if (!link || typeof have !== "string") return { header };
  return {
    onHistory: (frames: Frame[]) => {
      for (const f of frames) link.know(f);
      link.sendMissing(frames.slice(-RESYNC_FRAMES), have as string, (f) => socket.send(f));
    },
  };
}

/**
 * Closes a socket with `close`, ignoring the errors a close can raise when
 * the socket is already closing or closed (there is nothing left to tell).
 */
export function closeQuietly(socket: WebSocket, close: Close): void {
  try {
    if (socket.readyState === WebSocket.OPEN || socket.readyState === WebSocket.CONNECTING) {
      socket.close(close.code, close.reason);
    }
  } catch {
    // Already closing, or the connection is gone: nothing more to send.
  }
}

/**
 * Runs a {@link Session} on an upgraded WebSocket (SPEC sections 2, 3 and
 * 5) and returns it; the socket's events drive the rest. This adapter only
 * converts frames, closes quietly and reports the socket's end.
 * `onClosing` is called whenever the session starts closing the socket;
 * `pauseReading`, where the transport has it, paces the client (see
 * {@link SessionSocket.pauseReading}).
 */
export function runSession(
  socket: WebSocket,
  ctx: SessionContext,
  peer: string,
  onClosing?: () => void,
  pauseReading?: (ms: number) => void,
): Session {
  socket.binaryType = "arraybuffer";
  const session = new Session(
    {
      send: (frame) => socket.send(frame.data as string),
      get bufferedAmount() {
        return socket.bufferedAmount;
      },
      close: (close) => {
        closeQuietly(socket, close);
        onClosing?.();
      },
      pauseReading,
    },
    ctx,
    peer,
  );
  socket.onmessage = (ev: MessageEvent) => session.frame(toFrame(ev.data));
  socket.onclose = () => session.socketClosed();
  socket.onerror = () => session.socketClosed();
  return session;
}
