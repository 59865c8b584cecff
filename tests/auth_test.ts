/**
 * @module
 * SPEC section 4: SipHash-2-4 known answers and the auth rule, with and
 * without a server key, including the number-not-string comparison mles-rs
 * makes (upper case, missing leading zeros).
 */
import assert from "node:assert/strict";
import { mlesAuth, verifyAuth } from "../src/auth.ts";
import { siphash24, siphash24Halves } from "../src/siphash.ts";

const bytes = (n: number) => Uint8Array.from({ length: n }, (_, i) => i);

Deno.test("auth: SipHash-2-4 paper vector (key 00..0f, message 00..0e) is a129ca6149be45e5", () => {
  assert.equal(siphash24(bytes(16), bytes(15)), 0xa129ca6149be45e5n);
  assert.deepEqual(siphash24Halves(bytes(16), bytes(15)), [0xa129ca61, 0x49be45e5]);
});

Deno.test("auth: SipHash-2-4 reference vectors for message lengths 0, 1, 7, 8, 15, 16 and 63", () => {
  // From the reference implementation's vectors.h (key 00..0f, message 00..len-1),
  // as little-endian u64; a sample covering empty, partial and whole last words.
  const expected: Record<number, bigint> = {
    0: 0x726fdb47dd0e0e31n,
    1: 0x74f839c593dc67fdn,
    7: 0xab0200f58b01d137n,
    8: 0x93f5f5799a932462n,
    15: 0xa129ca6149be45e5n,
    16: 0x3f2acc7f57c29bdbn,
    63: 0x958a324ceb064572n,
  };
  for (const [n, h] of Object.entries(expected)) {
    assert.equal(siphash24(bytes(16), bytes(Number(n))), h, `length ${n}`);
  }
});

Deno.test("auth: SipHash-2-4 reads a key and data that are views into larger buffers", () => {
  const buf = new Uint8Array(64);
  buf.set(bytes(16), 3);
  buf.set(bytes(15), 21);
  assert.equal(siphash24(buf.subarray(3, 19), buf.subarray(21, 36)), 0xa129ca6149be45e5n);
  assert.throws(() => siphash24(bytes(8), bytes(1)), RangeError);
});

Deno.test("auth: known answers for uid || channel with the zero key", () => {
  assert.equal(mlesAuth("alice", "example"), "9b3b95527f7c2d80");
  assert.equal(mlesAuth("bob", "example"), "046ade5ad5646648");
});

Deno.test("auth: known answers for uid || channel || key with the zero key", () => {
  assert.equal(mlesAuth("alice", "example", "secret"), "afa46b8689dae7a5");
  assert.equal(mlesAuth("bob", "example", "secret"), "6f862a3096e7c765");
});

Deno.test("auth: the value is 16 lowercase hex digits with leading zeros kept", () => {
  assert.equal(mlesAuth("bob", "example"), "046ade5ad5646648");
  for (let i = 0; i < 50; i++) assert.match(mlesAuth(`u${i}`, "c"), /^[0-9a-f]{16}$/);
});

Deno.test("auth: the hash covers the plain concatenation of UTF-8 bytes", () => {
  assert.equal(mlesAuth("ali", "ceexample"), mlesAuth("alice", "example"));
  assert.equal(mlesAuth("alice", "examplesecret"), mlesAuth("alice", "example", "secret"));
  const utf8 = new TextEncoder().encode("ä" + "ch");
  assert.equal(
    mlesAuth("ä", "ch"),
    siphash24(new Uint8Array(16), utf8).toString(16).padStart(16, "0"),
  );
});

Deno.test("auth: server with key requires auth", () => {
  assert.equal(verifyAuth({ uid: "alice", channel: "example" }, "secret"), false);
  assert.equal(verifyAuth({ uid: "alice", channel: "example", auth: null }, "secret"), false);
});

Deno.test("auth: server with key accepts SipHash(uid || channel || key)", () => {
  const h = { uid: "alice", channel: "example", auth: "afa46b8689dae7a5" };
  assert.equal(verifyAuth(h, "secret"), true);
});

Deno.test("auth: server with key rejects the keyless value and a value for another key", () => {
  assert.equal(
    verifyAuth({ uid: "alice", channel: "example", auth: "9b3b95527f7c2d80" }, "secret"),
    false,
  );
  const other = mlesAuth("alice", "example", "other");
  assert.equal(verifyAuth({ uid: "alice", channel: "example", auth: other }, "secret"), false);
});

Deno.test("auth: server with an empty key still requires auth", () => {
  // Rust's Some("") is a key: auth is required, and hashing "" adds no bytes.
  assert.equal(verifyAuth({ uid: "alice", channel: "example" }, ""), false);
  assert.equal(
    verifyAuth({ uid: "alice", channel: "example", auth: "9b3b95527f7c2d80" }, ""),
    true,
  );
});

Deno.test("auth: server without key accepts a header without auth", () => {
  assert.equal(verifyAuth({ uid: "alice", channel: "example" }, undefined), true);
  assert.equal(verifyAuth({ uid: "alice", channel: "example", auth: undefined }, undefined), true);
});

Deno.test("auth: null auth counts as absent", () => {
  assert.equal(verifyAuth({ uid: "alice", channel: "example", auth: null }, undefined), true);
  assert.equal(verifyAuth({ uid: "alice", channel: "example", auth: null }, "secret"), false);
});

Deno.test("auth: server without key checks auth when present", () => {
  assert.equal(
    verifyAuth({ uid: "alice", channel: "example", auth: "9b3b95527f7c2d80" }, undefined),
    true,
  );
  assert.equal(
    verifyAuth({ uid: "bob", channel: "example", auth: "046ade5ad5646648" }, undefined),
    true,
  );
  // Valid for another uid, or for the keyed hash: wrong here.
  assert.equal(
    verifyAuth({ uid: "bob", channel: "example", auth: "9b3b95527f7c2d80" }, undefined),
    false,
  );
  assert.equal(
    verifyAuth({ uid: "alice", channel: "example", auth: "afa46b8689dae7a5" }, undefined),
    false,
  );
});

Deno.test("auth: a wrong value fails, however close", () => {
  for (const auth of ["9b3b95527f7c2d81", "1b3b95527f7c2d80", "0", "ffffffffffffffff"]) {
    assert.equal(verifyAuth({ uid: "alice", channel: "example", auth }, undefined), false, auth);
    assert.equal(verifyAuth({ uid: "alice", channel: "example", auth }, "secret"), false, auth);
  }
});

Deno.test("auth: upper case hex is accepted", () => {
  assert.equal(
    verifyAuth({ uid: "alice", channel: "example", auth: "9B3B95527F7C2D80" }, undefined),
    true,
  );
  assert.equal(
    verifyAuth({ uid: "alice", channel: "example", auth: "AFA46b8689DAE7A5" }, "secret"),
    true,
  );
});

Deno.test("auth: a value without its leading zeros is accepted (JavaScript toString(16))", () => {
  // Find uids whose hash has one or more leading zero nibbles: 1 in 16 has one.
  let found = 0;
  for (let i = 0; i < 2000 && found < 3; i++) {
    const uid = `user${i}`;
    const full = mlesAuth(uid, "example", "secret");
    if (!full.startsWith("0")) continue;
    found++;
    const short = siphash24(new Uint8Array(16), new TextEncoder().encode(`${uid}examplesecret`))
      .toString(16);
    assert.ok(short.length < 16, short);
    assert.equal(short, full.replace(/^0+/, ""));
    assert.equal(verifyAuth({ uid, channel: "example", auth: short }, "secret"), true, short);
    // Extra leading zeros are harmless too, as in Rust's from_str_radix.
    assert.equal(verifyAuth({ uid, channel: "example", auth: "000" + full }, "secret"), true);
  }
  assert.equal(found, 3, "no hash with a leading zero among 2000 uids");
  // And the known row with a leading zero: bob + example = 046ade5ad5646648.
  assert.equal(
    verifyAuth({ uid: "bob", channel: "example", auth: "46ade5ad5646648" }, undefined),
    true,
  );
});

Deno.test("auth: an unparsable value fails", () => {
  const ok = "9b3b95527f7c2d80";
  const bad = [
    "", // empty
    "0x" + ok, // prefix
    " " + ok, // whitespace
    ok + "\n",
    "9b3b 95527f7c2d80",
    "g" + ok.slice(1), // non-hex
    "-" + ok,
    "+", // a sign alone
    "1" + ok, // 17 significant digits: more than 64 bits
    "١٢", // non-ASCII digits
  ];
  for (const auth of bad) {
    assert.equal(
      verifyAuth({ uid: "alice", channel: "example", auth }, undefined),
      false,
      JSON.stringify(auth),
    );
    assert.equal(
      verifyAuth({ uid: "alice", channel: "example", auth }, "secret"),
      false,
      JSON.stringify(auth),
    );
  }
});

Deno.test("auth: a leading + is accepted, as Rust's u64::from_str_radix accepts it", () => {
  assert.equal(
    verifyAuth({ uid: "alice", channel: "example", auth: "+9b3b95527f7c2d80" }, undefined),
    true,
  );
  assert.equal(
    verifyAuth({ uid: "alice", channel: "example", auth: "++9b3b95527f7c2d80" }, undefined),
    false,
  );
});
