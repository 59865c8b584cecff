/**
 * @module
 * SipHash-2-4 in plain 32-bit JavaScript arithmetic (no BigInt, no
 * dependencies), and the Mles auth value of SPEC section 4 built on it:
 * SipHash-2-4 with the all-zero 128-bit key over the UTF-8 bytes of
 * `uid + channel + key`, as 16 lowercase hex digits. A browser ES module;
 * imports nothing.
 *
 * Each 64-bit word lives in two 32-bit halves in a Uint32Array, whose
 * stores wrap modulo 2^32 exactly as the Rust `u64` halves do.
 */

// v0..v3 as [lo, hi] pairs: v0 = s[0..1], v1 = s[2..3], v2 = s[4..5], v3 = s[6..7].
const V0 = 0, V1 = 2, V2 = 4, V3 = 6;

/** s[a] += s[b] (mod 2^64). */
function add(s, a, b) {
  const lo = s[a] + s[b];
  s[a + 1] = s[a + 1] + s[b + 1] + (lo > 0xffffffff ? 1 : 0);
  s[a] = lo;
}

/** s[a] ^= s[b]. */
function xor(s, a, b) {
  s[a] ^= s[b];
  s[a + 1] ^= s[b + 1];
}

/** s[a] = rotl(s[a], n) for 0 < n < 32. */
function rotl(s, a, n) {
  const lo = s[a], hi = s[a + 1];
  s[a] = (lo << n) | (hi >>> (32 - n));
  s[a + 1] = (hi << n) | (lo >>> (32 - n));
}

/** s[a] = rotl(s[a], 32): swap the halves. */
function rotl32(s, a) {
  const lo = s[a];
  s[a] = s[a + 1];
  s[a + 1] = lo;
}

function round(s) {
  add(s, V0, V1);
  rotl(s, V1, 13);
  xor(s, V1, V0);
  rotl32(s, V0);
  add(s, V2, V3);
  rotl(s, V3, 16);
  xor(s, V3, V2);
  add(s, V0, V3);
  rotl(s, V3, 21);
  xor(s, V3, V0);
  add(s, V2, V1);
  rotl(s, V1, 17);
  xor(s, V1, V2);
  rotl32(s, V2);
}

/** Little-endian u32 at `i` (bytes past the end read as 0). */
function u32(b, i) {
  return ((b[i] ?? 0) | ((b[i + 1] ?? 0) << 8) | ((b[i + 2] ?? 0) << 16) |
    ((b[i + 3] ?? 0) << 24)) >>>
    0;
}

function hex8(n) {
  return n.toString(16).padStart(8, "0");
}

/**
 * SipHash-2-4 of `data` under the 16-byte `key`, as 16 lowercase hex digits
 * of the 64-bit value (Rust `format!("{:016x}", h)`). Pure; throws a
 * TypeError if `key` is not exactly 16 bytes.
 *
 * @param {Uint8Array} key 16 bytes
 * @param {Uint8Array} data any length
 * @returns {string}
 */
export function sipHash24Hex(key, data) {
  if (!(key instanceof Uint8Array) || key.length !== 16) {
    throw new TypeError("SipHash key must be 16 bytes");
  }
  const k0lo = u32(key, 0), k0hi = u32(key, 4), k1lo = u32(key, 8), k1hi = u32(key, 12);
  const s = new Uint32Array([
    k0lo ^ 0x70736575,
    k0hi ^ 0x736f6d65,
    k1lo ^ 0x6e646f6d,
    k1hi ^ 0x646f7261,
    k0lo ^ 0x6e657261,
    k0hi ^ 0x6c796765,
    k1lo ^ 0x79746573,
    k1hi ^ 0x74656462,
  ]);
  const m = new Uint32Array(2);
  const n = data.length;
  const end = n - (n % 8);
  const compress = () => {
    s[V3] ^= m[0];
    s[V3 + 1] ^= m[1];
    round(s);
    round(s);
    s[V0] ^= m[0];
    s[V0 + 1] ^= m[1];
  };
  for (let i = 0; i < end; i += 8) {
    m[0] = u32(data, i);
    m[1] = u32(data, i + 4);
    compress();
  }
  // Last block: the 0..7 remaining bytes, and the length's low byte on top.
  const tail = data.subarray(end);
  m[0] = u32(tail, 0);
  m[1] = (u32(tail, 4) & 0x00ffffff) | ((n & 0xff) << 24);
  compress();
  s[V2] ^= 0xff;
  round(s);
  round(s);
  round(s);
  round(s);
  const lo = (s[0] ^ s[2] ^ s[4] ^ s[6]) >>> 0;
  const hi = (s[1] ^ s[3] ^ s[5] ^ s[7]) >>> 0;
  return hex8(hi) + hex8(lo);
}

const ZERO_KEY = new Uint8Array(16);
const encoder = new TextEncoder();

/**
 * The Mles auth value (SPEC section 4): SipHash-2-4, all-zero key, over the
 * UTF-8 bytes of `uid + channel + serverKey`, as 16 lowercase hex digits.
 * With an empty or absent `serverKey` this is the keyless value a server
 * without `MLES_KEY` accepts (and that mles-client always sends).
 *
 * @param {string} uid
 * @param {string} channel
 * @param {string} [serverKey]
 * @returns {string}
 */
export function mlesAuth(uid, channel, serverKey = "") {
  return sipHash24Hex(ZERO_KEY, encoder.encode(uid + channel + serverKey));
}
