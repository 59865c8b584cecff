/**
 * @module
 * How the KV bus lays frames out in Deno KV, as pure functions tested
 * without KV: the stored form of a frame and of a commit's batch, how a
 * queue of frames is cut into commits that never exceed a KV limit, and
 * which stored batches a trim deletes. Imports: frame.
 *
 * Platform limits this file exists for (Deno KV on Deploy and `denokv`):
 * a value is at most 65,536 bytes as V8 serialises it, a key at most 2 KiB,
 * one atomic commit at most 1,000 mutations and 800 KiB (819,200 bytes) of
 * keys and values. We fill to {@link VALUE_BUDGET}, {@link COMMIT_BYTES} and
 * {@link COMMIT_MUTATIONS}, well inside them, so no commit is ever refused
 * for its size whatever the frame sizes.
 */
import { type Delivery, type Frame, frameBytes } from "./frame.ts";

/** A frame inside a stored batch. */
export interface StoredFrame {
  /** Frame id (unique across isolates). */
  i: string;
  /** 0 = text, 1 = binary. */
  t: 0 | 1;
  /** Bytes on the wire (UTF-8 for text). */
  n: number;
  /** 1 = join header: history only, never delivered live. */
  h?: 1;
  /** The data, when it fits in the batch's value. */
  d?: string | Uint8Array;
  /** Otherwise: the number of chunks holding its bytes (text as UTF-8), keyed by frame id. */
  c?: number;
}

/**
 * One commit's frames of one channel: the value under
 * `keys.entry(channel, versionstamp)`. When they do not fit one value, the
 * rest are in `p` overflow pages (`keys.page(channel, i, versionstamp)`,
 * written by the same commit), in order after `f`.
 */
export interface StoredEntry {
  /** Origin: the isolate that wrote it. */
  o: string;
  f: StoredFrame[];
  /** Number of overflow pages (absent = 0). */
  p?: number;
  /** Frames in the whole batch (f and pages). */
  n: number;
  /** Bytes on the wire of the whole batch. */
  b: number;
  /** Chunked frames of the whole batch, [frame id, chunks] (so a trim need not read pages). */
  x?: [string, number][];
}

/** One overflow page: more frames of the batch, in order. */
export interface StoredPage {
  f: StoredFrame[];
}

/** Overflow pages one channel's batch may have in one commit. */
export const MAX_PAGES = 10;

/** One commit's record in a shard's moved log: which channel keys it stored frames for. */
export interface MovedRecord {
  o: string;
  c: string[];
  /** Commit time (ms), for cleanup. */
  t: number;
}

/** Bytes of one value we fill at most (KV allows 65,536 as serialised). */
export const VALUE_BUDGET = 62_000;
/** A frame whose stored form is larger than this is written as chunks. */
export const INLINE_MAX = 60_000;
/** Bytes of one chunk value. */
export const CHUNK_BYTES = 60_000;
/** Bytes of values in one commit at most (KV: 819,200 with keys). */
export const COMMIT_BYTES = 700_000;
/** Mutations in one commit at most (KV: 1,000). */
export const COMMIT_MUTATIONS = 900;
/** Estimated serialised bytes a stored frame adds besides its data. */
export const FRAME_OVERHEAD = 48;
/** Estimated serialised bytes of a moved record per channel and of its frame. */
const MOVED_PER_CHANNEL = 28;
const MOVED_BASE = 40;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Bytes a frame's data takes in a value as V8 serialises it: a string is one
 * byte per unit when every unit is Latin-1, two otherwise; bytes are bytes.
 */
export function inlineCost(frame: Frame): number {
  if (frame.kind === "binary") return frame.data.byteLength;
  const s = frame.data;
  if (s.length * 2 <= 4096) return s.length * 2; // small: the bound is cheap and safe
  // deno-lint-ignore no-control-regex
  return /^[\x00-\xff]*$/.test(s) ? s.length : s.length * 2;
}

/** A frame waiting in the writer's queue. */
export interface QueuedFrame {
  readonly delivery: Delivery;
  /** Bytes on the wire. */
  readonly bytes: number;
  /** Stored-form cost when inline, or -1 when chunked. */
  readonly inline: number;
  /** Number of chunks when chunked, else 0. */
  readonly chunkCount: number;
  /** Chunks already committed (a frame larger than a commit is written over several). */
  chunksWritten: number;
  /** Its chunk values, made once when first written (a frame may span several commits). */
  parts?: Uint8Array[];
  /** Date.now() when queued: the store deadline counts from here. */
  readonly queuedAt: number;
  /** The publisher was already told this frame could not be stored in time. */
  reported: boolean;
}

/** Wraps a delivery for the writer's queue. */
export function queued(delivery: Delivery, now: number): QueuedFrame {
  const bytes = delivery.bytes ?? frameBytes(delivery.frame);
  const cost = inlineCost(delivery.frame);
  const chunked = cost > INLINE_MAX;
  return {
    delivery,
    bytes,
    inline: chunked ? -1 : cost,
    chunkCount: chunked ? Math.max(1, Math.ceil(bytes / CHUNK_BYTES)) : 0,
    chunksWritten: 0,
    queuedAt: now,
    reported: false,
  };
}

/** Bytes of chunk `i` of a chunked frame of `bytes` bytes. */
function chunkSize(bytes: number, i: number): number {
  return Math.min(CHUNK_BYTES, bytes - i * CHUNK_BYTES);
}

/** The chunk values of a chunked frame (text as UTF-8), in order. */
export function chunksOf(frame: Frame): Uint8Array[] {
  const bytes = frame.kind === "binary" ? frame.data : encoder.encode(frame.data);
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.byteLength; i += CHUNK_BYTES) {
    out.push(bytes.slice(i, i + CHUNK_BYTES));
  }
  if (out.length === 0) out.push(new Uint8Array(0));
  return out;
}

/** The stored form of a queued frame. */
export function toStored(q: QueuedFrame): StoredFrame {
  const f = q.delivery.frame;
  const v: StoredFrame = { i: q.delivery.id, t: f.kind === "text" ? 0 : 1, n: q.bytes };
  if (q.inline >= 0) v.d = f.data;
  else v.c = q.chunkCount;
  if (q.delivery.historyOnly) v.h = 1;
  return v;
}

/** The frame a stored frame holds, given its chunks when it has them. */
export function fromStored(v: StoredFrame, chunks?: Uint8Array[]): Frame {
  if (v.c === undefined) {
    return v.t === 0
      ? { kind: "text", data: v.d as string }
      : { kind: "binary", data: v.d as Uint8Array };
  }
  const parts = chunks ?? [];
  let n = 0;
  for (const p of parts) n += p.byteLength;
  const all = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.byteLength;
  }
  return v.t === 0 ? { kind: "text", data: decoder.decode(all) } : { kind: "binary", data: all };
}

/** Estimated serialised bytes of a stored entry or page (for KV unit counting). */
export function entryBytes(e: { f: StoredFrame[] }): number {
  let n = 32;
  for (const f of e.f) {
    n += FRAME_OVERHEAD + f.i.length;
    if (f.d !== undefined) {
      n += typeof f.d === "string" ? f.d.length : f.d.byteLength;
    }
  }
  return n;
}

/** Estimated serialised bytes of a moved record with `channels` channels. */
export function movedBytes(channels: number): number {
  return MOVED_BASE + channels * MOVED_PER_CHANNEL;
}

/** A channel as the planner sees it: its key, shard and queue (oldest first). */
export interface PlanChannel {
  readonly ck: string;
  readonly shard: number;
  readonly queue: readonly QueuedFrame[];
}

/** What one commit writes for one channel. */
export interface PlannedEntry {
  readonly channel: PlanChannel;
  /** The first `frames.length` frames of the channel's queue, in order. */
  readonly frames: QueuedFrame[];
  /** Where each overflow page starts in `frames` (page i holds frames[pageStarts[i]..]). */
  readonly pageStarts: number[];
}

/** Chunks `from..to-1` of a queued frame written by this commit. */
export interface PlannedChunks {
  readonly channel: PlanChannel;
  readonly frame: QueuedFrame;
  readonly from: number;
  readonly to: number;
}

/** One commit: entries (each makes its frames visible), chunks, and the shards to signal. */
export interface CommitPlan {
  readonly entries: PlannedEntry[];
  readonly chunks: PlannedChunks[];
  /** Shard -> channel keys with an entry in this commit. */
  readonly shards: Map<number, string[]>;
  /** Estimated bytes of values. */
  readonly bytes: number;
  readonly mutations: number;
}

/**
 * Cuts the next commit from the channels' queues, visiting channels in the
 * given order (the caller rotates it for fairness). Guarantees: the commit
 * stays within {@link COMMIT_BYTES} and {@link COMMIT_MUTATIONS}; each entry
 * value within {@link VALUE_BUDGET}; each channel contributes a prefix of its
 * queue (order kept), a chunked frame only once all its chunks are written
 * (in this commit or earlier ones); a channel whose first frame is larger
 * than what is left of the commit gets as many of its chunks as fit. Returns
 * a plan with no entries and no chunks only when every queue is empty.
 */
export function planCommit(channels: readonly PlanChannel[]): CommitPlan {
  const entries: PlannedEntry[] = [];
  const chunks: PlannedChunks[] = [];
  const shards = new Map<number, string[]>();
  let bytes = 0;
  let mutations = 0;
  for (const ch of channels) {
    if (ch.queue.length === 0) continue;
    // Room this channel needs besides its frames: its entry, and its shard's
    // moved record and signal when the shard is new to this commit.
    const newShard = !shards.has(ch.shard);
    const fixedMut = 1 + (newShard ? 2 : 0);
    const fixedBytes = 24 + (newShard ? movedBytes(1) + 16 : MOVED_PER_CHANNEL);
    if (mutations + fixedMut > COMMIT_MUTATIONS || bytes + fixedBytes > COMMIT_BYTES) break;
    const p = planChannel(
      ch,
      COMMIT_BYTES - bytes - fixedBytes,
      COMMIT_MUTATIONS - mutations - fixedMut,
    );
    chunks.push(...p.chunks);
    if (p.frames.length === 0) {
      // Only chunks of a frame larger than what was left: no entry yet.
      bytes += p.bytes;
      mutations += p.mutations;
      continue;
    }
    entries.push({ channel: ch, frames: p.frames, pageStarts: p.pageStarts });
    bytes += fixedBytes + p.bytes;
    mutations += fixedMut + p.mutations;
    const list = shards.get(ch.shard);
    if (list) list.push(ch.ck);
    else shards.set(ch.shard, [ch.ck]);
  }
  return { entries, chunks, shards, bytes, mutations };
}

/** What one channel puts in a commit, and the bytes and mutations it uses (its fixed part aside). */
interface ChannelPlan {
  readonly frames: QueuedFrame[];
  readonly pageStarts: number[];
  readonly chunks: PlannedChunks[];
  readonly bytes: number;
  readonly mutations: number;
}

/**
 * The longest prefix of the channel's queue that fits `roomBytes` and
 * `roomMut` (with pages as needed), or, when not even its first frame fits,
 * as many of that frame's chunks as do.
 */
function planChannel(ch: PlanChannel, roomBytes: number, roomMut: number): ChannelPlan {
  const frames: QueuedFrame[] = [];
  const pageStarts: number[] = [];
  const chunks: PlannedChunks[] = [];
  let entry = 24;
  let used = 0;
  let muts = 0;
  /** Opens an overflow page for a frame of `cost` bytes, if there is room. */
  const newPage = (cost: number): boolean => {
    if (pageStarts.length >= MAX_PAGES || muts + 1 > roomMut) return false;
    if (used + 24 + cost > roomBytes) return false;
    pageStarts.push(frames.length);
    muts++;
    used += 24;
    entry = 24;
    return true;
  };
  for (const q of ch.queue) {
    const pointer = FRAME_OVERHEAD + q.delivery.id.length;
    if (q.inline >= 0) {
      const cost = pointer + q.inline;
      if (entry + cost > VALUE_BUDGET && !newPage(cost)) break;
      if (used + cost > roomBytes) break;
      entry += cost;
      used += cost;
      frames.push(q);
      continue;
    }
    // Chunked: the rest of its chunks must fit beside what is planned.
    let restBytes = 0;
    for (let i = q.chunksWritten; i < q.chunkCount; i++) restBytes += chunkSize(q.bytes, i) + 32;
    const restMut = q.chunkCount - q.chunksWritten;
    if (used + restBytes + pointer <= roomBytes && muts + restMut <= roomMut) {
      if (entry + pointer > VALUE_BUDGET && !newPage(pointer)) break;
      if (used + restBytes + pointer > roomBytes) break;
      if (restMut > 0) {
        chunks.push({ channel: ch, frame: q, from: q.chunksWritten, to: q.chunkCount });
      }
      entry += pointer;
      used += restBytes + pointer;
      muts += restMut;
      frames.push(q);
      continue;
    }
    if (frames.length === 0) {
      // The channel's first frame is bigger than what is left: write what fits of it now.
      let k = 0;
      while (q.chunksWritten + k < q.chunkCount && muts + k < roomMut) {
        const next = chunkSize(q.bytes, q.chunksWritten + k) + 32;
        if (used + next > roomBytes) break;
        used += next;
        k++;
      }
      muts += k;
      if (k > 0) {
        chunks.push({ channel: ch, frame: q, from: q.chunksWritten, to: q.chunksWritten + k });
      }
    }
    break;
  }
  // A page opened for a frame that then did not fit stays unwritten.
  while (pageStarts.length > 0 && pageStarts[pageStarts.length - 1] === frames.length) {
    pageStarts.pop();
    muts--;
    used -= 24;
  }
  return { frames, pageStarts, chunks, bytes: used, mutations: muts };
}

/** A stored batch as the trimmer sees it, newest first. */
export interface TrimEntry {
  /** Frames in the batch. */
  readonly frames: number;
  /** Bytes of the frames on the wire. */
  readonly bytes: number;
}

/** What a channel keeps. */
export interface RetentionOptions {
  /** Frames replayed to newcomers (MLES_HISTORY_LIMIT). */
  readonly limit: number;
  /** Bytes replayed to newcomers; 0 = no byte bound (MLES_HISTORY_MAX_BYTES). */
  readonly maxBytes: number;
  /** Bytes kept beyond that for readers that lag (MLES_READER_SLACK_BYTES). */
  readonly slackBytes: number;
}

/**
 * Given a channel's batches newest first, the index of the first batch to
 * delete (it and every older one go), or -1 to keep everything. Kept: the
 * batches holding the newest `limit` frames within `maxBytes` (the window a
 * newcomer is replayed), then older batches while their bytes add up to at
 * most `slackBytes`.
 */
export function planTrim(newestFirst: readonly TrimEntry[], opts: RetentionOptions): number {
  let frames = 0;
  let bytes = 0;
  let i = 0;
  for (; i < newestFirst.length; i++) {
    if (frames >= opts.limit || (opts.maxBytes > 0 && bytes >= opts.maxBytes)) break;
    frames += newestFirst[i].frames;
    bytes += newestFirst[i].bytes;
  }
  let slack = 0;
  for (; i < newestFirst.length; i++) {
    slack += newestFirst[i].bytes;
    if (slack > opts.slackBytes) return i;
  }
  return -1;
}
