/**
 * @module
 * The unit every layer passes around: a frame (text or binary, exact bytes)
 * and a delivery (a frame with its identity and, once stored, its sequence).
 * Imports nothing; everything else imports this.
 */

/** One WebSocket message as a client sent it. Text stays a string, binary stays bytes. */
export type Frame =
  | { readonly kind: "text"; readonly data: string }
  | { readonly kind: "binary"; readonly data: Uint8Array };

/**
 * A frame travelling through one channel. `id` is unique across every isolate
 * and restart (origin isolate + counter), so the same frame seen through two
 * paths (a live delivery and a history read) can be recognised. `pos` is the
 * frame's {@link Position} in the channel's commit order; a frame published
 * on this isolate has none until its commit succeeds (the bus sets it then).
 */
export interface Delivery {
  readonly id: string;
  readonly frame: Frame;
  /** Commit-ordered position in the channel, set once stored. */
  pos?: Position;
  /** Size on the wire when the publisher already measured it (saves measuring twice). */
  readonly bytes?: number;
  /** A join header: stored in history, never delivered live (SPEC section 3). */
  readonly historyOnly?: boolean;
  /** Opaque handle of the local publisher, so a frame that cannot be stored can be traced to it. */
  readonly source?: object;
}

/**
 * Where a stored frame sits in its channel's one order: the same string on
 * every isolate, and for two frames of one channel `a < b` (plain string
 * comparison) exactly when `a` was committed before `b`. It is the commit's
 * versionstamp (20 hex digits) followed by the frame's index in that
 * commit's batch (4 hex digits), so it never goes back, across restarts and
 * channel expiry included.
 */
export type Position = string;

/** The position of frame `index` of the batch stored by the commit `versionstamp`. */
export function position(versionstamp: string, index: number): Position {
  return versionstamp + index.toString(16).padStart(4, "0");
}

/** The commit versionstamp part of a position. */
export function positionStamp(pos: Position): string {
  return pos.slice(0, 20);
}

/** Bytes of the frame on the wire (UTF-8 for text). */
export function frameBytes(frame: Frame): number {
  return frame.kind === "binary" ? frame.data.byteLength : utf8Length(frame.data);
}

/**
 * True when the frame is larger than `limit` bytes on the wire (UTF-8 for
 * text). Text is only measured when its length alone cannot decide.
 */
export function exceedsBytes(frame: Frame, limit: number): boolean {
  if (frame.kind === "binary") return frame.data.byteLength > limit;
  const s = frame.data;
  if (s.length > limit) return true; // every UTF-16 unit is at least one UTF-8 byte
  if (s.length * 3 <= limit) return false; // every UTF-16 unit is at most three UTF-8 bytes
  return utf8Length(s) > limit;
}

/** Exact UTF-8 length of a string without allocating the encoded bytes. */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}
