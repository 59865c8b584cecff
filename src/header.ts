/**
 * @module
 * Parses and validates the first frame of a connection (SPEC section 2) into
 * a {@link Header}, or names the {@link Close} to send. Pure; never throws.
 * Auth is checked by the caller with auth.ts. Imports: frame, close, npm:zod.
 */
import { z } from "zod";
import { CLOSE, type Close } from "./close.ts";
import { exceedsBytes, type Frame, utf8Length } from "./frame.ts";

/**
 * Uids starting with this belong to peering bridges of other servers (a
 * naming convention, invisible to other clients): frames from them pass the
 * server's duplicate window so a ring of servers never loops.
 */
export const PEER_UID_PREFIX = "mles-peer-";

/** A valid Mles header. `text` is the exact JSON text the client sent. */
export interface Header {
  readonly uid: string;
  readonly channel: string;
  /** The auth value as sent (hex), or undefined when absent or null. */
  readonly auth: string | undefined;
  readonly text: string;
}

// deno-lint-ignore no-control-regex
const ASCII = /^[\x00-\x7f]*$/;

function field(name: "uid" | "channel") {
  return z.string({
    error: (i) => i.input === undefined ? `"${name}" is required` : `"${name}" must be a string`,
  })
    .min(1, `"${name}" must not be empty`)
    .regex(ASCII, `"${name}" must be ASCII`);
}

// Extra fields are ignored, like serde's default in mles-rs.
const schema = z.object({
  uid: field("uid"),
  channel: field("channel"),
  auth: z.string({ error: `"auth" must be a string or null` }).nullish(),
});

/** Outcome of reading a first frame: a header, or the close to send. */
export type HeaderResult = { ok: true; header: Header } | { ok: false; close: Close };

/**
 * Reads a first frame. Rejects a binary frame, a frame over `maxBytes`,
 * invalid JSON, a non-object, a missing/empty/non-string/non-ASCII uid or
 * channel, and a non-string auth. Guarantees: `ok` only for a header that
 * SPEC section 2 accepts.
 */
export function parseHeader(frame: Frame, maxBytes: number): HeaderResult {
  if (frame.kind !== "text") return { ok: false, close: CLOSE.headerNotText };
  if (exceedsBytes(frame, maxBytes)) {
    return { ok: false, close: CLOSE.headerTooBig(utf8Length(frame.data), maxBytes) };
  }
  let json: unknown;
  try {
    json = JSON.parse(frame.data);
  } catch {
    return { ok: false, close: CLOSE.headerNotJson };
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    return { ok: false, close: CLOSE.headerInvalid("header must be a JSON object") };
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    return { ok: false, close: CLOSE.headerInvalid(parsed.error.issues[0].message) };
  }
  const { uid, channel, auth } = parsed.data;
  return { ok: true, header: { uid, channel, auth: auth ?? undefined, text: frame.data } };
}
