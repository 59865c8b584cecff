/**
 * @module
 * The first frame (SPEC section 2) as a pure function: {@link parseHeader}
 * on each kind of bad header gives the close code and reason the session
 * sends, and a good one gives uid, channel, auth and the exact text. No
 * server: protocol_test.ts keeps one end-to-end refusal per close code.
 */
import assert from "node:assert/strict";
import type { Frame } from "../src/frame.ts";
import { parseHeader } from "../src/header.ts";

const LIMIT = 4096;
const text = (data: string): Frame => ({ kind: "text", data });

/** [case, first frame, close code, exact reason] */
const REFUSED: [string, Frame, number, string][] = [
  [
    "a binary first frame",
    { kind: "binary", data: new TextEncoder().encode('{"uid":"a","channel":"c"}') },
    1003,
    "Cannot join: header must be a text frame",
  ],
  ["invalid JSON", text("{uid: a"), 1002, "Cannot join: header is not valid JSON"],
  ["JSON that is an array", text('["a","c"]'), 1002, "Cannot join: header must be a JSON object"],
  ["JSON that is null", text("null"), 1002, "Cannot join: header must be a JSON object"],
  ["JSON that is a string", text('"a"'), 1002, "Cannot join: header must be a JSON object"],
  ["a missing uid", text('{"channel":"c"}'), 1002, 'Cannot join: "uid" is required'],
  ["a missing channel", text('{"uid":"a"}'), 1002, 'Cannot join: "channel" is required'],
  ["an empty uid", text('{"uid":"","channel":"c"}'), 1002, 'Cannot join: "uid" must not be empty'],
  [
    "an empty channel",
    text('{"uid":"a","channel":""}'),
    1002,
    'Cannot join: "channel" must not be empty',
  ],
  ["a numeric uid", text('{"uid":5,"channel":"c"}'), 1002, 'Cannot join: "uid" must be a string'],
  [
    "a null channel",
    text('{"uid":"a","channel":null}'),
    1002,
    'Cannot join: "channel" must be a string',
  ],
  [
    "a non-ASCII uid",
    text('{"uid":"zoë","channel":"c"}'),
    1002,
    'Cannot join: "uid" must be ASCII',
  ],
  [
    "a non-ASCII channel",
    text('{"uid":"a","channel":"kanava✓"}'),
    1002,
    'Cannot join: "channel" must be ASCII',
  ],
  [
    "a numeric auth",
    text('{"uid":"a","channel":"c","auth":42}'),
    1002,
    'Cannot join: "auth" must be a string or null',
  ],
];

for (const [what, frame, code, reason] of REFUSED) {
  Deno.test(`header: ${what} is refused with ${code} "${reason}"`, () => {
    const r = parseHeader(frame, LIMIT);
    assert.equal(r.ok, false);
    if (!r.ok) assert.deepEqual({ code: r.close.code, reason: r.close.reason }, { code, reason });
  });
}

Deno.test("header: a header over the byte limit is refused with 1009 naming its size", () => {
  const data = JSON.stringify({ uid: "a", channel: "c", pad: "x".repeat(LIMIT) });
  const r = parseHeader(text(data), LIMIT);
  assert.equal(r.ok, false);
  if (!r.ok) {
    assert.equal(r.close.code, 1009);
    assert.equal(r.close.reason, `Cannot join: header is ${data.length} bytes, limit is ${LIMIT}`);
  }
});

Deno.test("header: the byte limit counts UTF-8 bytes, not characters", () => {
  // 2 bytes per "ä": within the limit in characters, over it in bytes.
  const data = JSON.stringify({ uid: "a", channel: "c", pad: "ä".repeat(LIMIT / 2) });
  assert.ok(data.length <= LIMIT + 40);
  const r = parseHeader(text(data), LIMIT);
  assert.equal(r.ok, false);
  if (!r.ok) assert.equal(r.close.code, 1009);
});

Deno.test("header: a valid header keeps uid, channel, auth and its exact text", () => {
  const data = '{ "uid": "alice", "channel": "example", "auth": "9b3b95527f7c2d80" }';
  assert.deepEqual(parseHeader(text(data), LIMIT), {
    ok: true,
    header: { uid: "alice", channel: "example", auth: "9b3b95527f7c2d80", text: data },
  });
});

Deno.test('header: "auth": null and a missing auth are both absent', () => {
  for (const data of ['{"uid":"a","channel":"c","auth":null}', '{"uid":"a","channel":"c"}']) {
    const r = parseHeader(text(data), LIMIT);
    assert.ok(r.ok, data);
    if (r.ok) assert.equal(r.header.auth, undefined);
  }
});

Deno.test("header: extra JSON fields are ignored (serde's default in mles-rs)", () => {
  const data = JSON.stringify({ uid: "a", channel: "c", extra: [1, 2], n: null, resync_have: "" });
  const r = parseHeader(text(data), LIMIT);
  assert.ok(r.ok);
  if (r.ok) assert.deepEqual([r.header.uid, r.header.channel], ["a", "c"]);
});

Deno.test("header: any ASCII is allowed in uid and channel, control characters included", () => {
  const data = JSON.stringify({ uid: "a\u0000b", channel: "\u007f~ !" });
  const r = parseHeader(text(data), LIMIT);
  assert.ok(r.ok);
  if (r.ok) assert.deepEqual([r.header.uid, r.header.channel], ["a\u0000b", "\u007f~ !"]);
});
