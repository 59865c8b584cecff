/**
 * @module
 * Mles authentication (SPEC section 4): the `auth` value a client sends and
 * the check of a header's `auth` exactly as mles-rs does it, both over
 * SipHash-2-4 with the all-zero key. Pure and synchronous. Imports: siphash.
 */
import { siphash24Halves } from "./siphash.ts";

const encoder = new TextEncoder();

/** The hash key mles-rs and mles-client use: 128 zero bits (`SipHasher::new()`). */
const ZERO_KEY = new Uint8Array(16);

function hex8(x: number): string {
  return x.toString(16).padStart(8, "0");
}

/** The three fields hashed in order: SipHash(zero key, uid || channel || serverKey). */
function authHalves(uid: string, channel: string, serverKey: string | undefined): [number, number] {
  return siphash24Halves(ZERO_KEY, encoder.encode(uid + channel + (serverKey ?? "")));
}

/**
 * The `auth` value a client sends: exactly 16 lowercase hex digits (leading
 * zeros kept, like Rust's `format!("{:016x}", h)`) of SipHash-2-4 with the
 * all-zero key over the UTF-8 bytes of `uid || channel || serverKey`
 * (`serverKey` omitted when undefined). This is what mles-client computes.
 */
export function mlesAuth(uid: string, channel: string, serverKey?: string): string {
  const [hi, lo] = authHalves(uid, channel, serverKey);
  return hex8(hi) + hex8(lo);
}

/**
 * Parses `auth` like Rust's `u64::from_str_radix(auth, 16)`: an optional
 * single `+`, then 1 or more ASCII hex digits of either case whose value fits
 * in 64 bits (any number of leading zeros). Anything else (empty, `0x`,
 * whitespace, `-`, a non-hex character, a value >= 2^64) is null.
 */
function parseHexU64(auth: string): [number, number] | null {
  const digits = auth.startsWith("+") ? auth.slice(1) : auth;
  if (!/^[0-9a-fA-F]+$/.test(digits)) return null;
  const significant = digits.replace(/^0+/, "");
  if (significant.length > 16) return null;
  const padded = significant.padStart(16, "0");
  return [parseInt(padded.slice(0, 8), 16), parseInt(padded.slice(8), 16)];
}

/**
 * Decides SPEC section 4 for a header, matching mles-rs `verify_auth`:
 * - `serverKey` defined (even ""): true only if `auth` is present and its
 *   value equals SipHash(uid || channel || serverKey);
 * - `serverKey` undefined: true if `auth` is absent (undefined or null),
 *   otherwise only if its value equals SipHash(uid || channel).
 *
 * `auth` is compared as a number, so upper case, missing leading zeros and a
 * leading `+` (which Rust's parser also takes) are accepted; an unparsable
 * value is a failed auth (mles-rs maps it to 0, which no real hash equals).
 * Both halves are always computed and compared; no early exit on a prefix.
 */
export function verifyAuth(
  header: { uid: string; channel: string; auth?: string | null },
  serverKey: string | undefined,
): boolean {
  const auth = header.auth ?? undefined;
  if (auth === undefined) return serverKey === undefined;
  const given = parseHexU64(auth);
  const [hi, lo] = authHalves(header.uid, header.channel, serverKey);
  if (given === null) return false;
  return ((given[0] ^ hi) | (given[1] ^ lo)) === 0;
}
