/**
 * @module
 * The only place that spells a Deno KV key. Channel names can be longer than
 * a key may be (2 KiB), so channels are keyed by a hash of the name. Change
 * detection is sharded over a fixed set of signal keys so one `kv.watch`
 * (at most 10 keys) covers any number of channels. Imports nothing.
 */

const ROOT = "mles";

/** Number of signal shards; one `kv.watch` call covers them all (KV allows 10 keys). */
export const SHARDS = 8;

const encoder = new TextEncoder();

/**
 * A short, fixed-length KV key part for a channel name of any length:
 * the first 128 bits of SHA-256 of its UTF-8 bytes, base64url (22 chars).
 */
export async function channelKey(name: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(name)));
  let bin = "";
  for (let i = 0; i < 16; i++) bin += String.fromCharCode(digest[i]);
  return btoa(bin).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** The signal shard of a channel key (stable for the key's lifetime). */
export function shardOf(chKey: string): number {
  let h = 0;
  for (let i = 0; i < chKey.length; i++) h = (h * 31 + chKey.charCodeAt(i)) >>> 0;
  return h % SHARDS;
}

/**
 * Sorts after every versionstamp (20 hex digits) under a channel's entries,
 * so a list "after my cursor" ends with the trim mark and reads it for free.
 */
const TRIM_MARK = "~trim";

/** Every key the KV bus uses. `stamp` is a versionstamp string or `kv.commitVersionstamp()`. */
export const keys = {
  /**
   * The frames one commit stored for one channel (one value, at most 64 KiB),
   * keyed by that commit's versionstamp: appends never conflict and list in
   * commit order.
   */
  entry: (ch: string, stamp: string | symbol): Deno.KvKey => [ROOT, "e", ch, stamp],
  /** Prefix of a channel's entries (the trim mark lists last). */
  entries: (ch: string): Deno.KvKey => [ROOT, "e", ch],
  /** `{ v }`: every entry of the channel at or before versionstamp `v` has been deleted. */
  trimMark: (ch: string): Deno.KvKey => [ROOT, "e", ch, TRIM_MARK],
  /**
   * Overflow page `i` of one commit's batch for a channel (a batch larger than
   * one value). One prefix per page index, each key ending in the stamp, since
   * a commit may set one versionstamped key per prefix.
   */
  page: (ch: string, i: number, stamp: string | symbol): Deno.KvKey => [ROOT, "p", ch, i, stamp],
  /** Piece `i` of a frame too large for one value, by frame id. */
  chunk: (ch: string, frameId: string, i: number): Deno.KvKey => [ROOT, "x", ch, frameId, i],
  /** Watched key of a shard: bumped by every commit that stores frames of that shard's channels. */
  signal: (shard: number): Deno.KvKey => [ROOT, "s", shard],
  /** Prefix of a shard's "which channels moved" log, in commit order. */
  movedLog: (shard: number): Deno.KvKey => [ROOT, "mv", shard],
  /** One commit's record in a shard's moved log. */
  moved: (shard: number, stamp: string | symbol): Deno.KvKey => [ROOT, "mv", shard, stamp],
  /** Health probe key (read only). */
  health: (): Deno.KvKey => [ROOT, "health"],
} as const;

/** True when a listed entry key is the trim mark, not a stored batch. */
export function isTrimMark(key: Deno.KvKey): boolean {
  return key[3] === TRIM_MARK;
}

// ---- Keys outside the bus: session claims (session_claims.ts) and peering (peer_dedup.ts, lease.ts) ----

/** A claimed session identity, by a hash of (uid, channel, numeric auth): `{ owner }`. */
export function sessionClaimKey(identityHash: string): Deno.KvKey {
  return [ROOT, "sc", identityHash];
}

/** An isolate that holds session claims: `{ until }` (ms since epoch), renewed by its heartbeat. */
export function claimOwnerKey(owner: string): Deno.KvKey {
  return [ROOT, "so", owner];
}

/** A frame known to a peered channel, by channel key and a hash of the frame (type and bytes). */
export function peerFrameKey(chKey: string, frameHash: string): Deno.KvKey {
  return [ROOT, "pf", chKey, frameHash];
}

/** A peering bridge's lease (lease.ts), by a hash of its name: `{ owner, until }`. */
export function leaseKey(nameHash: string): Deno.KvKey {
  return [ROOT, "lease", nameHash];
}
