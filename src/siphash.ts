/**
 * @module
 * SipHash-2-4 (Aumasson and Bernstein, 2012) with 64-bit output: the hash
 * Mles auth is defined with (SPEC section 4, via auth.ts) and the keyed PRF
 * of the peering duplicate window (dedupe.ts). Pure and synchronous.
 * Imports nothing.
 *
 * SipHash works on 64-bit words. JavaScript numbers hold 53-bit integers and
 * BigInt allocates on every operation, so each word is kept as two unsigned
 * 32-bit halves (hi, lo) in a `Uint32Array`, whose stores wrap modulo 2^32 for
 * free. The only BigInt is the one built for the result of {@link siphash24}.
 */

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
