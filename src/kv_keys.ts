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

/** Every key the KV bus uses. */
export const keys = {
  /** Channel head: `{ head, big }`, checked by every append (one order per channel). */
  meta: (ch: string): Deno.KvKey => [ROOT, "c", ch],
  /** One stored frame at its sequence number. */
  entry: (ch: string, seq: number): Deno.KvKey => [ROOT, "h", ch, seq],
  /** Prefix of a channel's stored frames. */
  entries: (ch: string): Deno.KvKey => [ROOT, "h", ch],
  /** Piece `i` of a frame too large for one value (64 KiB), by frame id. */
  chunk: (ch: string, frameId: string, i: number): Deno.KvKey => [ROOT, "x", ch, frameId, i],
  /** Watched key of a shard: bumped by every append to a channel of that shard. */
  signal: (shard: number): Deno.KvKey => [ROOT, "s", shard],
  /** Prefix of a shard's "which channel moved" log, ordered by commit versionstamp. */
  movedLog: (shard: number): Deno.KvKey => [ROOT, "m", shard],
  /** Health probe key (read only). */
  health: (): Deno.KvKey => [ROOT, "health"],
} as const;
