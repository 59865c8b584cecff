// TEMPORARY placeholder written by the lead so the server compiles; the owner of
// src/auth.ts overwrites this whole file with the real implementation.
function rotl(x: bigint, b: bigint) {
  return ((x << b) | (x >> (64n - b))) & 0xffffffffffffffffn;
}
export function siphash24(key: Uint8Array, data: Uint8Array): bigint {
  const M = 0xffffffffffffffffn;
  const k0 = new DataView(key.buffer, key.byteOffset).getBigUint64(0, true);
  const k1 = new DataView(key.buffer, key.byteOffset).getBigUint64(8, true);
  let v0 = k0 ^ 0x736f6d6570736575n, v1 = k1 ^ 0x646f72616e646f6dn;
  let v2 = k0 ^ 0x6c7967656e657261n, v3 = k1 ^ 0x7465646279746573n;
  const round = () => {
    v0 = (v0 + v1) & M;
    v1 = rotl(v1, 13n);
    v1 ^= v0;
    v0 = rotl(v0, 32n);
    v2 = (v2 + v3) & M;
    v3 = rotl(v3, 16n);
    v3 ^= v2;
    v0 = (v0 + v3) & M;
    v3 = rotl(v3, 21n);
    v3 ^= v0;
    v2 = (v2 + v1) & M;
    v1 = rotl(v1, 17n);
    v1 ^= v2;
    v2 = rotl(v2, 32n);
  };
  const n = data.length, end = n - (n % 8);
  for (let i = 0; i < end; i += 8) {
    let m = 0n;
    for (let j = 7; j >= 0; j--) m = (m << 8n) | BigInt(data[i + j]);
    v3 ^= m;
    round();
    round();
    v0 ^= m;
  }
  let b = BigInt(n & 0xff) << 56n;
  for (let j = n - 1; j >= end; j--) b |= BigInt(data[j]) << BigInt(8 * (j - end));
  v3 ^= b;
  round();
  round();
  v0 ^= b;
  v2 ^= 0xffn;
  round();
  round();
  round();
  round();
  return v0 ^ v1 ^ v2 ^ v3;
}
export function mlesAuth(uid: string, channel: string, serverKey?: string): string {
  const d = new TextEncoder().encode(uid + channel + (serverKey ?? ""));
  return siphash24(new Uint8Array(16), d).toString(16).padStart(16, "0");
}
export function verifyAuth(
  h: { uid: string; channel: string; auth?: string | null },
  key: string | undefined,
): boolean {
  if (h.auth == null) return key === undefined;
  if (!/^[0-9a-fA-F]{1,16}$/.test(h.auth)) return false;
  return BigInt("0x" + h.auth) === BigInt("0x" + mlesAuth(h.uid, h.channel, key));
}
