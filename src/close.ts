/**
 * @module
 * Every close the server sends, as a table: code and reason together, so
 * tests assert both and clients see one wording. Imports nothing.
 *
 * Platform facts that shape this table: a close reason is at most 123 UTF-8
 * bytes (RFC 6455 5.5: control frame payload <= 125, minus the 2-byte code),
 * and 1005/1006 are reserved and never sent. Reasons follow one style:
 * sentence case, no final period, say the action and show the value.
 */

/** A close frame to send: code and short reason. */
export interface Close {
  readonly code: number;
  readonly reason: string;
}

/** The closes sent by the server; functions fill in the offending value. */
export const CLOSE = {
  headerNotText: { code: 1003, reason: "Cannot join: header must be a text frame" },
  headerNotJson: { code: 1002, reason: "Cannot join: header is not valid JSON" },
  headerInvalid: (detail: string): Close => ({
    code: 1002,
    reason: clip(`Cannot join: ${detail}`),
  }),
  headerTooBig: (bytes: number, limit: number): Close => ({
    code: 1009,
    reason: clip(`Cannot join: header is ${bytes} bytes, limit is ${limit}`),
  }),
  headerTimeout: (ms: number): Close => ({
    code: 1008,
    reason: `Cannot join: no header within ${ms} ms`,
  }),
  authFailed: { code: 1008, reason: "Cannot join: auth does not match" },
  authRequired: { code: 1008, reason: "Cannot join: auth is required by this server" },
  duplicateSession: {
    code: 1008,
    reason: "Cannot join: the same uid, channel and auth are already joined",
  },
  frameTooBig: (bytes: number, limit: number): Close => ({
    code: 1009,
    reason: clip(`Frame is ${bytes} bytes, limit is ${limit}`),
  }),
  slowConsumer: (bytes: number): Close => ({
    code: 1013,
    reason: clip(`Too slow: ${bytes} bytes waiting to be sent`),
  }),
  tooManyFrames: (limit: number): Close => ({
    code: 1008,
    reason: `Too many frames: limit is ${limit} per second`,
  }),
  tooManyBytes: (limit: number): Close => ({
    code: 1008,
    reason: `Too many bytes: limit is ${limit} per second`,
  }),
  tooManyJoins: (limit: number): Close => ({
    code: 1008,
    reason: `Cannot join: limit is ${limit} joins per minute per address`,
  }),
  tooManyChannels: (limit: number): Close => ({
    code: 1008,
    reason: `Cannot join: limit is ${limit} different channels per hour per address`,
  }),
  /** A client sent more than this many bytes (MLES_MAX_BUFFERED_BYTES) while its join was pending. */
  heldTooMuch: (limit: number): Close => ({
    code: 1013,
    reason: `Too fast: more than ${limit} bytes sent before the join completed`,
  }),
  sendFailed: { code: 1011, reason: "Send failed" },
  storeFailed: { code: 1011, reason: "Cannot store frame: history store unavailable" },
  /** Most of the channel's members have a growing backlog of this publisher's frames (a flood). */
  publisherTooFast: {
    code: 1013,
    reason: "Too fast: the channel's members cannot keep up, slow down",
  },
  /** The store queue is full or this publisher has its share of it waiting (bus.publish refused). */
  storeBusy: { code: 1013, reason: "Server busy: too many frames waiting to be stored, slow down" },
  shuttingDown: { code: 1001, reason: "Server is shutting down" },
} as const;

const encoder = new TextEncoder();

/** Cuts a reason to the 123 bytes a close frame can carry, on a character boundary. */
export function clip(reason: string): string {
  if (encoder.encode(reason).byteLength <= 123) return reason;
  let out = reason.slice(0, 120);
  while (encoder.encode(out + "...").byteLength > 123) out = out.slice(0, -1);
  return out + "...";
}
