/**
 * @module
 * One connection's life: awaiting the header -> joining -> joined -> closed.
 * Validates the header (header.ts) and auth (auth.ts), applies the
 * duplicate-session rule, holds frames a client sends while its join is in
 * progress, and wraps the WebSocket as the hub's {@link Member}. Every
 * rejection closes with a code and reason and logs one line (never the auth
 * value or the key). Imports: auth, close, config (type), frame, header, hub (type), log (type),
 * peer, session_claims.
 */
import { verifyAuth } from "./auth.ts";
import { CLOSE, type Close } from "./close.ts";
import type { Config } from "./config.ts";
import { exceedsBytes, type Frame, utf8Length } from "./frame.ts";
import { type Header, parseHeader, PEER_UID_PREFIX } from "./header.ts";
import type { Hub, Member, Membership } from "./hub.ts";
import type { Logger } from "./log.ts";
import { type PeerGate, type PeerLink, RESYNC_FRAMES } from "./peer.ts";
import { type SessionClaims, sessionIdentity } from "./session_claims.ts";

/** What a session needs from the server. */
export interface SessionContext {
  readonly hub: Hub;
  readonly config: Config;
  readonly log: Logger;
  /** The duplicate-session rule across every isolate (SPEC section 5). */
  readonly claims: SessionClaims;
  /** Counts a refused join by its close reason (metrics). */
  readonly onReject?: (close: Close) => void;
  /** Counts a frame received from a joined client (metrics). */
  readonly onFrame?: (bytes: number) => void;
  /** Peer treatment for other servers' bridges (present when peering is configured). */
  readonly peers?: PeerGate;
  /** Per-address join budgets: the close for a join from `ip` over one, else undefined. */
  readonly admitJoin?: (ip: string, channel: string) => Close | undefined;
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
 * A token bucket: `rate` per second, bursts up to one second's worth.
 * `take(n)` is false once the client has sent more than it allows.
 */
class RateBucket {
  readonly #rate: number;
  #tokens: number;
  #at = performance.now();

  constructor(rate: number) {
    this.#rate = rate;
    this.#tokens = rate;
  }

  take(n: number): boolean {
    const now = performance.now();
    this.#tokens = Math.min(this.#rate, this.#tokens + ((now - this.#at) / 1000) * this.#rate);
    this.#at = now;
    this.#tokens -= n;
    return this.#tokens >= 0;
  }
}

function toFrame(data: unknown): Frame {
  if (typeof data === "string") return { kind: "text", data };
  if (data instanceof ArrayBuffer) return { kind: "binary", data: new Uint8Array(data) };
  return { kind: "binary", data: new Uint8Array(data as ArrayBufferLike) };
}

function frameSize(frame: Frame): number {
  return frame.kind === "binary" ? frame.data.byteLength : utf8Length(frame.data);
}

/**
 * Runs the Mles session on an upgraded socket (SPEC sections 2, 3 and 5).
 * Returns at once; the socket's events drive the rest. `peer` (remote
 * address) is used in log lines only; `onClosing` is called whenever the
 * session starts closing the socket.
 */
export function runSession(
  socket: WebSocket,
  ctx: SessionContext,
  peer: string,
  onClosing?: () => void,
): void {
  const { hub, config, log } = ctx;
  /** Every close this session starts goes through here, so the transport can watch it finish. */
  const closeSocket = (close: Close) => {
    closeQuietly(socket, close);
    onClosing?.();
  };
  socket.binaryType = "arraybuffer";
  let state: "header" | "joining" | "joined" | "closed" = "header";
  let identity: string | undefined;
  let membership: Membership | undefined;
  let early: Frame[] = [];
  /** Set for a proven peer server's bridge: its frames in and out go through peering's check. */
  let link: PeerLink | undefined;
  const frameRate = config.maxFramesPerS > 0 ? new RateBucket(config.maxFramesPerS) : undefined;
  const byteRate = config.maxBytesPerS > 0 ? new RateBucket(config.maxBytesPerS) : undefined;

  const sendNow = (frame: Frame) => socket.send(frame.data as string);
  const member: Member = {
    send: (frame) => link ? link.send(frame, sendNow) : sendNow(frame),
    get bufferedAmount() {
      return socket.bufferedAmount + (link?.queuedBytes ?? 0);
    },
    // The hub dropped this member (slow, failed send, flood, store busy): it
    // is gone at once, identity freed, whether or not its TCP ever closes.
    close: (close) => {
      closeSocket(close);
      end();
    },
  };

  // Closing a TCP socket that still has unread input makes the kernel send a
  // reset, and the client never sees the close frame with its reason. So a
  // client refused mid-stream is drained first: its further frames are read
  // and dropped, and the close goes out once it has been quiet for a moment.
  let drain: { timer: ReturnType<typeof setTimeout>; close: Close; until: number } | undefined;
  const closeAfterDrain = (close: Close) => {
    drain = { close, until: Date.now() + 1000, timer: setTimeout(() => flushDrain(), 50) };
  };
  const flushDrain = () => {
    if (!drain) return;
    clearTimeout(drain.timer);
    closeSocket(drain.close);
    drain = undefined;
  };

  const reject = (close: Close, uid?: string, channel?: string) => {
    log.warn("connection refused", { peer, code: close.code, reason: close.reason, uid, channel });
    ctx.onReject?.(close);
    closeAfterDrain(close);
  };

  const publish = (m: Membership, frame: Frame, size = frameSize(frame)) => {
    ctx.onFrame?.(size);
    if (link) link.receive(frame, (f) => m.publish(f, size));
    else m.publish(frame, size);
  };

  const headerTimer = setTimeout(() => {
    if (state === "header") reject(CLOSE.headerTimeout(config.headerTimeoutMs));
  }, config.headerTimeoutMs);

  const onFirstFrame = (frame: Frame) => {
    clearTimeout(headerTimer);
    const parsed = parseHeader(frame, config.maxHeaderBytes);
    if (!parsed.ok) return reject(parsed.close);
    const h = parsed.header;
    if (!verifyAuth(h, config.key) && !ctx.peers?.authenticates(h)) {
      return reject(
        config.key !== undefined && h.auth === undefined ? CLOSE.authRequired : CLOSE.authFailed,
        h.uid,
        h.channel,
      );
    }
    if (h.uid.startsWith(PEER_UID_PREFIX) && ctx.peers?.proves(h)) link = ctx.peers.link(h.channel);
    const limited = link ? undefined : ctx.admitJoin?.(peer, h.channel);
    if (limited) return reject(limited, h.uid, h.channel);
    // Frames sent while the identity is being claimed are held like those sent while joining.
    state = "joining";
    const id = sessionIdentity(h.uid, h.channel, h.auth);
    ctx.claims.claim(id).then((ok) => {
      if (!ok) {
        early = [];
        if (state === "closed") return;
        return reject(CLOSE.duplicateSession, h.uid, h.channel);
      }
      // Closed while claiming: the identity goes back once the held frames are out.
      if (state === "closed") {
        if (early.length === 0) return ctx.claims.release(id);
        return join(h, frame, () => ctx.claims.release(id));
      }
      identity = id;
      join(h, frame);
    }, (err) => {
      if (state === "closed") return;
      log.error("join failed", { peer, uid: h.uid, channel: h.channel, error: err });
      closeSocket(CLOSE.storeFailed);
    });
  };

  const join = (h: Header, frame: Frame, after?: () => void) => {
    hub.join(member, h.channel, joinOptions(frame)).then((m) => {
      if (!m) return after?.();
      const queued = early;
      early = [];
      if (state !== "joining") {
        // Header, frames and close came together (`echo hi | websocat`): the
        // frames were accepted before the close, so they still go out.
        for (const f of queued) publish(m, f);
        m.leave();
        return after?.();
      }
      membership = m;
      state = "joined";
      log.info("joined", { peer, uid: h.uid, channel: h.channel });
      for (const f of queued) publish(m, f);
    }, (err) => {
      after?.();
      if (state === "closed") return; // the socket went first (e.g. shutdown): nothing to tell
      log.error("join failed", { peer, uid: h.uid, channel: h.channel, error: err });
      closeSocket(CLOSE.storeFailed);
    });
  };

  /**
   * A peer bridge of mles-deno sends the hashes of what it holds
   * (`resync_have`): it gets only the history frames it lacks, and its
   * header is not stored (a bridge is not a user joining).
   */
  const joinOptions = (header: Frame) => {
    let have: unknown;
    if (link) {
      try {
        have = JSON.parse(header.data as string).resync_have;
      } catch { /* parsed before: cannot fail */ }
    }
    if (!link || typeof have !== "string") return { header };
    const l = link;
    return {
      onHistory: (frames: Frame[]) => {
        for (const f of frames) l.know(f);
        l.sendMissing(frames.slice(-RESYNC_FRAMES), have as string, sendNow);
      },
    };
  };

  socket.onmessage = (ev: MessageEvent) => {
    if (drain) {
      clearTimeout(drain.timer);
      if (Date.now() >= drain.until) return flushDrain();
      drain.timer = setTimeout(() => flushDrain(), 50);
      return;
    }
    const frame = toFrame(ev.data);
    if (state === "header") return onFirstFrame(frame);
    if (state === "closed") return;
    let refused: Close | undefined;
    let size: number | undefined; // measured once, when a check needs it
    if (exceedsBytes(frame, config.maxFrameBytes)) {
      refused = CLOSE.frameTooBig(frameSize(frame), config.maxFrameBytes);
    } else if (frameRate && !frameRate.take(1)) {
      refused = CLOSE.tooManyFrames(config.maxFramesPerS);
    } else if (byteRate && !byteRate.take(size = frameSize(frame))) {
      refused = CLOSE.tooManyBytes(config.maxBytesPerS);
    }
    if (refused) {
      log.warn("frame refused", { peer, code: refused.code, reason: refused.reason });
      ctx.onReject?.(refused);
      end();
      return closeAfterDrain(refused);
    }
    if (state === "joining") {
      early.push(frame);
      return;
    }
    publish(membership!, frame, size);
  };

  function end() {
    if (state === "closed" && membership === undefined && identity === undefined) return;
    // Frames held during a join stay queued: the join publishes them, then leaves.
    if (state !== "joining") early = [];
    state = "closed";
    clearTimeout(headerTimer);
    membership?.leave();
    membership = undefined;
    if (identity !== undefined) ctx.claims.release(identity);
    identity = undefined;
    link?.close();
  }
  const ended = () => {
    if (drain) clearTimeout(drain.timer);
    drain = undefined;
    end();
  };
  socket.onclose = ended;
  socket.onerror = ended;
}
