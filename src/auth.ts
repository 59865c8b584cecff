/**
 * @module
 * Mles authentication (SPEC section 4): SipHash-2-4 with 64-bit output, and
 * the check of a header's `auth` value exactly as mles-rs does it. Pure and
 * synchronous; imports nothing.
 *
 * SipHash works on 64-bit words. JavaScript numbers hold 53-bit integers and
 * BigInt allocates on every operation, so each word is kept as two unsigned
 * 32-bit halves (hi, lo) in a `Uint32Array`, whose stores wrap modulo 2^32 for
 * free. The only BigInt is the one built for the result of {@link siphash24}.
 */

const encoder = new TextEncoder();

/** The hash key mles-rs and mles-client use: 128 zero bits (`SipHasher::new()`). */
const ZERO_KEY = new Uint8Array(16);

// The state v0..v3 as [hi, lo] pairs: v0 = s[0], s[1]; v1 = s[2], s[3]; ...
const V0 = 0, V1 = 2, V2 = 4, V3 = 6;

/** v[a] += v[b] (mod 2^64). */
function add(s: Uint32Array, a: number, b: number): void {
  const lo = s[a + 1] + s[b + 1]; // < 2^33: exact as a number
  s[a] = s[a] + s[b] + (lo > 0xffffffff ? 1 : 0);
  s[a + 1] = lo;
}

/** v[a] ^= v[b]. */
function xor(s: Uint32Array, a: number, b: number): void {
  s[a] ^= s[b];
  s[a + 1] ^= s[b + 1];
}

/** v[a] = v[a] rotated left by `n` bits, 0 < n < 32. */
function rotl(s: Uint32Array, a: number, n: number): void {
  const hi = s[a], lo = s[a + 1];
  s[a] = (hi << n) | (lo >>> (32 - n));
  s[a + 1] = (lo << n) | (hi >>> (32 - n));
}

/** v[a] = v[a] rotated by 32 bits: the halves swap. */
function swap(s: Uint32Array, a: number): void {
  const hi = s[a];
  s[a] = s[a + 1];
  s[a + 1] = hi;
}

/** One SipRound, as in the paper (Aumasson and Bernstein, 2012), figure 2.1. */
function sipRound(s: Uint32Array): void {
  add(s, V0, V1);
  rotl(s, V1, 13);
  xor(s, V1, V0);
  swap(s, V0);
  add(s, V2, V3);
  rotl(s, V3, 16);
  xor(s, V3, V2);
  add(s, V0, V3);
  rotl(s, V3, 21);
  xor(s, V3, V0);
  add(s, V2, V1);
  rotl(s, V1, 17);
  xor(s, V1, V2);
  swap(s, V2);
}

/** Absorbs one 64-bit little-endian message word m = (hi, lo): c = 2 rounds. */
function compress(s: Uint32Array, hi: number, lo: number): void {
  s[V3] ^= hi;
  s[V3 + 1] ^= lo;
  sipRound(s);
  sipRound(s);
  s[V0] ^= hi;
  s[V0 + 1] ^= lo;
}

/**
 * SipHash-2-4 of `data` under the 16-byte `key`, as its two 32-bit halves
 * `[hi, lo]` (each an unsigned integer < 2^32; the 64-bit value is
 * hi * 2^32 + lo). Deterministic and allocation-light: no BigInt.
 * @throws {RangeError} if `key` is not 16 bytes.
 */
export function siphash24Halves(key: Uint8Array, data: Uint8Array): [hi: number, lo: number] {
  if (key.length !== 16) throw new RangeError(`SipHash key must be 16 bytes: got ${key.length}`);
  const kv = new DataView(key.buffer, key.byteOffset, 16);
  const k0lo = kv.getUint32(0, true), k0hi = kv.getUint32(4, true);
  const k1lo = kv.getUint32(8, true), k1hi = kv.getUint32(12, true);
  // The initial constants spell "somepseudorandomlygeneratedbytes".
  const s = new Uint32Array([
    k0hi ^ 0x736f6d65,
    k0lo ^ 0x70736575,
    k1hi ^ 0x646f7261,
    k1lo ^ 0x6e646f6d,
    k0hi ^ 0x6c796765,
    k0lo ^ 0x6e657261,
    k1hi ^ 0x74656462,
    k1lo ^ 0x79746573,
  ]);
  const n = data.length;
  const end = n - (n % 8);
  const dv = new DataView(data.buffer, data.byteOffset, n);
  for (let i = 0; i < end; i += 8) compress(s, dv.getUint32(i + 4, true), dv.getUint32(i, true));
  // Last word: the remaining 0..7 bytes, little-endian, with (n mod 256) in the top byte.
  let lo = 0, hi = (n & 0xff) << 24;
  for (let j = 0; end + j < n; j++) {
    const b = data[end + j];
    if (j < 4) lo |= b << (8 * j);
    else hi |= b << (8 * (j - 4));
  }
  compress(s, hi >>> 0, lo >>> 0);
  s[V2 + 1] ^= 0xff; // finalization: v2 ^= 0xff, then d = 4 rounds
  sipRound(s);
  sipRound(s);
  sipRound(s);
  sipRound(s);
  return [(s[0] ^ s[2] ^ s[4] ^ s[6]) >>> 0, (s[1] ^ s[3] ^ s[5] ^ s[7]) >>> 0];
}

/**
 * SipHash-2-4 of `data` under the 16-byte `key`, as an unsigned 64-bit
 * BigInt (0 <= value < 2^64), the value Rust's `SipHasher::finish()` returns
 * for the same key and bytes. Use {@link siphash24Halves} to avoid the BigInt.
 * @throws {RangeError} if `key` is not 16 bytes.
 */
export function siphash24(key: Uint8Array, data: Uint8Array): bigint {
  const [hi, lo] = siphash24Halves(key, data);
  return (BigInt(hi) << 32n) | BigInt(lo);
}

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
