/**
 * @module
 * `KvBus`: the {@link Bus} over Deno KV, so every isolate of a deployment (and
 * every region on Deploy) serves one channel as one Mles server.
 *
 * Write path (per channel, one commit in flight): frames queue while a commit
 * is in flight and go together into the next atomic commit (group commit).
 * Each commit checks the channel head, appends the frames at `head+1..`,
 * deletes the frames that fall out of the kept window, and records "channel
 * moved, seqs a..b" in its shard's log plus a bump of the shard's signal
 * key. A lost check (another isolate appended) re-reads the head and retries
 * the same frames in the same order; `database is locked` and other thrown
 * errors are retried with backoff. Frames over one KV value (64 KiB) are
 * written as chunks in earlier commits and become visible with the small
 * commit that appends their entry, so no reader sees half a frame.
 *
 * Read path: one `kv.watch` over the {@link SHARDS} signal keys, used as a
 * wake-up only. On a wake-up the bus reads the shard's moved log after its
 * cursor and, for each local channel that moved, lists the entries after that
 * channel's cursor (strong reads). Coalesced notifications lose nothing; a
 * frame is handed to the hub once, in seq order. Frames this isolate wrote are
 * skipped (the hub delivered them before the commit); when only this isolate
 * moved a channel the entries are not read back at all.
 *
 * Trimming keeps the last `limit` frames plus every frame younger than the
 * reader slack (60 s), at most {@link HARD_SLACK} frames beyond the limit:
 * a reader that lags less than that never misses a frame; one that lags
 * more counts a gap (metric + log) and continues. The channel head records
 * one (seq, time) mark per second to know which frames are old enough.
 * Idle channels expire via `expireIn`.
 * Imports: bus, frame, kv_keys, log (type), metrics (type).
 */
import type { Bus, BusHandler, History } from "./bus.ts";
import type { Delivery, Frame } from "./frame.ts";
import { channelKey, keys, shardOf, SHARDS } from "./kv_keys.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";

/** KvBus settings. */
export interface KvBusOptions {
  /** Frames replayed to newcomers. */
  readonly historyLimit: number;
  /** Idle channels expire after this many ms. */
  readonly ttlMs: number;
  /** Id of this isolate, stored with each frame it writes. */
  readonly origin: string;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** How long a frame may keep failing to store before it is given up (default 30 s). */
  readonly storeTimeoutMs?: number;
  /** Frames beyond the limit are kept this long for lagging readers (default 60 s). */
  readonly readerSlackMs?: number;
}

/** A frame as stored in one KV value. */
interface StoredFrame {
  /** Frame id (unique across isolates). */
  i: string;
  /** Origin: the isolate that wrote it. */
  o: string;
  /** 0 = text, 1 = binary. */
  t: 0 | 1;
  /** The bytes (or text) when they fit in this value. */
  d?: string | Uint8Array;
  /** Number of chunks when they do not. */
  c?: number;
  /** 1 = join header: history only, never delivered live. */
  h?: 1;
}

/** Channel head, checked and rewritten by every append. */
interface Meta {
  head: number;
  /** Every seq up to this one has been deleted. */
  trimmed?: number;
  /** [seq, time]: every seq <= seq was written at or before time (about one per second). */
  marks?: [number, number][];
  /** Chunked frames still in the kept window: [seq, frame id, chunks]. */
  big: [number, string, number][];
}

/** One "channel moved" record in a shard log. */
interface Moved {
  c: string;
  a: number;
  b: number;
  o: string;
}

// Platform limits (Deno KV / denokv): a value is at most 64 KiB, a commit at
// most 800 KiB and 1,000 mutations. Stay well inside them.
const INLINE_MAX = 60_000; // bytes of frame data in one value
const TEXT_CHUNK = 30_000; // UTF-16 units: at most 60,000 bytes as V8 serialises them
const COMMIT_BYTES = 600_000;
const COMMIT_FRAMES = 300; // each frame: one set + one trim delete
const COMMIT_MUTATIONS = 900;
const CHUNKS_PER_COMMIT = 10;
const MOVED_TTL_MS = 10 * 60_000;
const PAGE = 256;
/** Frames kept beyond the limit at most, however young (bounds storage of a hot channel). */
const HARD_SLACK = 100_000;

function storedBytes(f: Frame): number {
  return f.kind === "binary" ? f.data.byteLength : f.data.length * 2;
}

/** Bytes a frame adds to an append commit: its data when inline, a small pointer when chunked. */
function commitBytes(f: Frame): number {
  const size = storedBytes(f);
  return size <= INLINE_MAX ? size : 64;
}

function isLocked(err: unknown): boolean {
  return err instanceof Error && /database is locked|busy/i.test(err.message);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

class ChannelState {
  readonly name: string;
  ck = "";
  shard = 0;
  readonly keyReady: Promise<void>;
  // Follower (read side)
  following = false;
  /** The cursor is set for the current subscription: reads may start. */
  ready = false;
  gen = 0;
  cursor = 0;
  reading = false;
  readAgain = false;
  // Writer (write side)
  queue: Delivery[] = [];
  inflight: Delivery[] = [];
  writing = false;
  head: number | undefined;
  metaVs: string | null = null;
  trimmed = 0;
  marks: [number, number][] = [];
  big: [number, string, number][] = [];

  constructor(name: string) {
    this.name = name;
    this.keyReady = channelKey(name).then((k) => {
      this.ck = k;
      this.shard = shardOf(k);
    });
  }
}

/** {@link Bus} over Deno KV; see the module doc for the algorithm. */
export class KvBus implements Bus {
  readonly #kv: Deno.Kv;
  readonly #opts: KvBusOptions;
  readonly #channels = new Map<string, ChannelState>();
  readonly #byKey = new Map<string, ChannelState>();
  #handler: BusHandler = { onFrames: () => {}, onPublishFailed: () => {} };
  // Watch (one stream over all shard signal keys) while anything is followed.
  #watch: Promise<void> | undefined;
  #watchReader: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]> | undefined;
  readonly #shardCursor: string[] = new Array(SHARDS).fill("");
  readonly #shardVs: (string | null | undefined)[] = new Array(SHARDS).fill(undefined);
  readonly #shardReading: boolean[] = new Array(SHARDS).fill(false);
  readonly #shardAgain: boolean[] = new Array(SHARDS).fill(false);
  readonly #tasks = new Set<Promise<unknown>>();
  #closing = false;
  readonly #slackMs: number;

  constructor(kv: Deno.Kv, options: KvBusOptions) {
    this.#slackMs = options.readerSlackMs ?? 60_000;
    this.#kv = kv;
    this.#opts = options;
  }

  /** Open `kv.watch` streams (0 or 1 whatever the number of channels). For tests and metrics. */
  get watchStreams(): number {
    return this.#watchReader ? 1 : 0;
  }

  /** Channels this bus follows. For tests and metrics. */
  get followedChannels(): number {
    return this.#byKey.size;
  }

  listen(handler: BusHandler): void {
    this.#handler = handler;
  }

  async subscribe(channel: string): Promise<void> {
    const st = this.#state(channel);
    const gen = ++st.gen;
    st.following = true;
    st.ready = false;
    await st.keyReady;
    if (st.gen !== gen) return;
    this.#byKey.set(st.ck, st);
    try {
      await this.#ensureWatch();
      const meta = await this.#readMeta(st);
      if (st.gen !== gen) return;
      st.cursor = meta.head;
      st.ready = true;
    } catch (err) {
      if (st.gen === gen) this.unsubscribe(channel);
      throw new Error(`Cannot follow channel ${JSON.stringify(channel)} in KV: ${message(err)}`, {
        cause: err,
      });
    }
    // Catch up on anything committed between the head read and the first wake-up.
    this.#scheduleRead(st);
  }

  unsubscribe(channel: string): void {
    const st = this.#channels.get(channel);
    if (!st || !st.following) return;
    st.following = false;
    st.ready = false;
    st.gen++;
    if (this.#byKey.get(st.ck) === st) this.#byKey.delete(st.ck);
    this.#forgetIfIdle(st);
    if (this.#byKey.size === 0) this.#stopWatch();
  }

  publish(channel: string, delivery: Delivery): void {
    const st = this.#state(channel);
    st.queue.push(delivery);
    if (!st.writing) this.#track(this.#write(st));
  }

  async history(channel: string): Promise<History> {
    const st = this.#state(channel);
    // Snapshot this isolate's unstored frames before reading, so each frame
    // is in the snapshot, in KV, or both (deduplicated by id below).
    const pending = [...st.inflight, ...st.queue];
    await st.keyReady;
    const limit = this.#opts.historyLimit;
    const meta = await this.#readMeta(st);
    const from = Math.max(0, meta.head - limit) + 1;
    const stored: Delivery[] = [];
    if (meta.head >= from) {
      for await (
        const e of this.#list({
          start: keys.entry(st.ck, from),
          end: keys.entry(st.ck, meta.head + 1),
        })
      ) {
        const d = await this.#toDelivery(st, e);
        if (d) stored.push(d);
      }
    }
    const ids = new Set(stored.map((d) => d.id));
    const all = stored.concat(pending.filter((d) => !ids.has(d.id)));
    return { deliveries: all.length > limit ? all.slice(-limit) : all, lastSeq: meta.head };
  }

  async close(): Promise<void> {
    this.#closing = true;
    const deadline = Date.now() + 5_000;
    while (this.#tasks.size > 0 && Date.now() < deadline) {
      await Promise.race([Promise.allSettled([...this.#tasks]), sleep(deadline - Date.now())]);
    }
    for (const st of this.#channels.values()) {
      st.following = false;
      st.gen++;
    }
    this.#byKey.clear();
    this.#stopWatch();
    if (this.#watch) await this.#watch.catch(() => {});
  }

  // ---- shared ------------------------------------------------------------

  #state(channel: string): ChannelState {
    let st = this.#channels.get(channel);
    if (!st) this.#channels.set(channel, st = new ChannelState(channel));
    return st;
  }

  #forgetIfIdle(st: ChannelState): void {
    if (!st.following && !st.writing && !st.reading && st.queue.length === 0) {
      if (this.#channels.get(st.name) === st) this.#channels.delete(st.name);
    }
  }

  #track<T>(p: Promise<T>): void {
    this.#tasks.add(p);
    p.finally(() => this.#tasks.delete(p)).catch(() => {});
  }

  /** Runs a KV call, retrying `database is locked` (several SQLite handles) with backoff. */
  async #retry<T>(what: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0;; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (!isLocked(err) || attempt >= 50) {
          throw new Error(`${what}: ${message(err)}`, { cause: err });
        }
        await sleep(Math.min(200, 2 ** attempt) * (0.5 + Math.random()));
      }
    }
  }

  async #readMeta(st: ChannelState): Promise<Meta> {
    this.#opts.metrics.kvReads++;
    const e = await this.#retry(
      `Cannot read head of channel ${JSON.stringify(st.name)}`,
      () => this.#kv.get<Meta>(keys.meta(st.ck), { consistency: "strong" }),
    );
    const meta = e.value ?? { head: 0, big: [] };
    if (!st.writing || st.head === undefined) {
      st.head = meta.head;
      st.metaVs = e.versionstamp;
      st.big = meta.big;
      st.trimmed = meta.trimmed ?? 0;
      st.marks = meta.marks ?? [];
    }
    return meta;
  }

  async *#list(selector: Deno.KvListSelector): AsyncGenerator<Deno.KvEntry<StoredFrame>> {
    let cursor: string | undefined;
    for (;;) {
      this.#opts.metrics.kvReads++;
      const page: Deno.KvEntry<StoredFrame>[] = [];
      await this.#retry("Cannot list channel history", async () => {
        page.length = 0;
        const it = this.#kv.list<StoredFrame>(selector, {
          limit: PAGE,
          cursor,
          consistency: "strong",
        });
        for await (const e of it) page.push(e);
        cursor = it.cursor;
      });
      yield* page;
      if (page.length < PAGE || !cursor) return;
    }
  }

  /** Turns a stored entry into a delivery, joining chunks; undefined if they are gone. */
  async #toDelivery(st: ChannelState, e: Deno.KvEntry<StoredFrame>): Promise<Delivery | undefined> {
    const v = e.value;
    const seq = e.key[3] as number;
    let data: string | Uint8Array;
    if (v.c === undefined) {
      data = v.d!;
    } else {
      const parts: (string | Uint8Array)[] = [];
      for (let i = 0; i < v.c; i += 10) {
        const ks: Deno.KvKey[] = [];
        for (let j = i; j < Math.min(v.c, i + 10); j++) ks.push(keys.chunk(st.ck, v.i, j));
        this.#opts.metrics.kvReads++;
        const got = await this.#retry(
          `Cannot read frame chunks in channel ${JSON.stringify(st.name)}`,
          () => this.#kv.getMany<(string | Uint8Array)[]>(ks, { consistency: "strong" }),
        );
        for (const g of got) {
          if (g.value === null) {
            this.#opts.metrics.busGaps++;
            this.#opts.log.warn("frame chunks missing (trimmed)", { channel: st.name, seq });
            return undefined;
          }
          parts.push(g.value);
        }
      }
      data = v.t === 0 ? (parts as string[]).join("") : concat(parts as Uint8Array[]);
    }
    const frame: Frame = v.t === 0
      ? { kind: "text", data: data as string }
      : { kind: "binary", data: data as Uint8Array };
    return { id: v.i, frame, seq, historyOnly: v.h === 1 };
  }

  // ---- write path --------------------------------------------------------

  async #write(st: ChannelState): Promise<void> {
    st.writing = true;
    try {
      await st.keyReady;
      while (st.queue.length > 0) {
        const batch = this.#takeBatch(st);
        st.inflight = batch;
        try {
          await this.#storeChunks(st, batch);
          await this.#commit(st, batch);
        } catch (err) {
          this.#opts.log.error("frames not stored", {
            channel: st.name,
            frames: batch.length,
            error: err,
          });
          st.head = undefined; // re-read the head before the next commit
          for (const d of batch) this.#handler.onPublishFailed(st.name, d, err as Error);
        }
        st.inflight = [];
      }
    } finally {
      st.writing = false;
      this.#forgetIfIdle(st);
    }
  }

  #takeBatch(st: ChannelState): Delivery[] {
    let bytes = 0;
    let n = 0;
    for (; n < st.queue.length && n < COMMIT_FRAMES; n++) {
      const inline = commitBytes(st.queue[n].frame);
      if (n > 0 && bytes + inline > COMMIT_BYTES) break;
      bytes += inline;
    }
    return st.queue.splice(0, n);
  }

  /** Writes the chunks of frames too big for one value, in commits of bounded size. */
  async #storeChunks(st: ChannelState, batch: Delivery[]): Promise<void> {
    for (const d of batch) {
      if (storedBytes(d.frame) <= INLINE_MAX) continue;
      const parts = split(d.frame);
      for (let i = 0; i < parts.length; i += CHUNKS_PER_COMMIT) {
        await this.#commitWithBackoff(
          `Cannot store chunks in channel ${JSON.stringify(st.name)}`,
          () => {
            const op = this.#kv.atomic();
            for (let j = i; j < Math.min(parts.length, i + CHUNKS_PER_COMMIT); j++) {
              op.set(keys.chunk(st.ck, d.id, j), parts[j], { expireIn: this.#opts.ttlMs });
            }
            return op;
          },
        );
      }
    }
  }

  /** Commits an unchecked operation, retrying thrown errors with capped backoff. */
  async #commitWithBackoff(what: string, build: () => Deno.AtomicOperation): Promise<void> {
    const deadline = Date.now() + (this.#opts.storeTimeoutMs ?? 30_000);
    for (let attempt = 0;; attempt++) {
      this.#opts.metrics.kvCommits++;
      try {
        const t0 = performance.now();
        const res = await build().commit();
        this.#opts.metrics.observeCommit((performance.now() - t0) / 1000);
        if (res.ok) return;
      } catch (err) {
        this.#opts.metrics.kvCommitErrors++;
        if (Date.now() > deadline) throw new Error(`${what}: ${message(err)}`, { cause: err });
        if (!isLocked(err)) this.#opts.log.warn("KV commit failed, retrying", { error: err });
      }
      await sleep(Math.min(1000, 2 ** attempt) * (0.5 + Math.random()));
    }
  }

  /** Appends `batch` at the channel head (checked), trims the window, signals the shard. */
  async #commit(st: ChannelState, batch: Delivery[]): Promise<void> {
    const { origin, ttlMs } = this.#opts;
    if (st.head === undefined) await this.#readMeta(st);
    const deadline = Date.now() + (this.#opts.storeTimeoutMs ?? 30_000);
    const stored = (d: Delivery): StoredFrame => {
      const f = d.frame;
      const v: StoredFrame = { i: d.id, o: origin, t: f.kind === "text" ? 0 : 1 };
      if (storedBytes(f) <= INLINE_MAX) v.d = f.data;
      else v.c = split(f).length;
      if (d.historyOnly) v.h = 1;
      return v;
    };
    const values: StoredFrame[] = batch.map(stored);
    for (let attempt = 0;; attempt++) {
      const head = st.head!;
      const first = head + 1;
      const last = head + batch.length;
      const op = this.#kv.atomic().check({ key: keys.meta(st.ck), versionstamp: st.metaVs });
      let mutations = 4;
      values.forEach((v, i) => op.set(keys.entry(st.ck, first + i), v, { expireIn: ttlMs }));
      mutations += values.length;
      // Trim what is outside the replayed window and older than the reader
      // slack (or too far behind), within this commit's mutation budget.
      const now = Date.now();
      const limit = this.#opts.historyLimit;
      let old = st.trimmed;
      for (const [seq, t] of st.marks) if (t <= now - this.#slackMs) old = Math.max(old, seq);
      const want = Math.min(last - limit, Math.max(old, last - limit - HARD_SLACK));
      const trimTo = Math.min(want, st.trimmed + Math.max(0, COMMIT_MUTATIONS - 100 - mutations));
      for (let s = st.trimmed + 1; s <= trimTo; s++) {
        op.delete(keys.entry(st.ck, s));
        mutations++;
      }
      const trimmed = Math.max(st.trimmed, trimTo);
      const marks = st.marks.filter(([seq]) => seq > trimmed);
      if (marks.length === 0 || now - marks[marks.length - 1][1] >= 1000) marks.push([last, now]);
      // Dropping the oldest marks only delays trimming: a newer mark covers their seqs.
      while (marks.length > 64) marks.shift();
      const big: [number, string, number][] = [];
      for (const b of st.big) {
        if (b[0] <= trimTo && mutations + b[2] <= COMMIT_MUTATIONS) {
          for (let j = 0; j < b[2]; j++) op.delete(keys.chunk(st.ck, b[1], j));
          mutations += b[2];
        } else big.push(b);
      }
      values.forEach((v, i) => {
        if (v.c !== undefined) big.push([first + i, v.i, v.c]);
      });
      const meta: Meta = { head: last, trimmed, marks, big };
      op.set(keys.meta(st.ck), meta, { expireIn: ttlMs });
      const moved: Moved = { c: st.ck, a: first, b: last, o: origin };
      op.set([...keys.movedLog(st.shard), this.#kv.commitVersionstamp()], moved, {
        expireIn: MOVED_TTL_MS,
      });
      op.sum(keys.signal(st.shard), 1n);
      this.#opts.metrics.kvCommits++;
      let res: Deno.KvCommitResult | Deno.KvCommitError;
      try {
        const t0 = performance.now();
        res = await op.commit();
        this.#opts.metrics.observeCommit((performance.now() - t0) / 1000);
      } catch (err) {
        this.#opts.metrics.kvCommitErrors++;
        if (Date.now() > deadline) {
          throw new Error(`Cannot append to channel ${JSON.stringify(st.name)}: ${message(err)}`, {
            cause: err,
          });
        }
        if (!isLocked(err)) this.#opts.log.warn("KV commit failed, retrying", { error: err });
        await sleep(Math.min(1000, 2 ** attempt) * (0.5 + Math.random()));
        continue;
      }
      if (res.ok) {
        st.head = last;
        st.metaVs = res.versionstamp;
        st.big = big;
        st.trimmed = trimmed;
        st.marks = marks;
        batch.forEach((d, i) => d.seq = first + i);
        return;
      }
      // Another isolate appended first: take its head and retry the same frames
      // in order, joined by small frames that queued meanwhile (a hot channel
      // then needs fewer commits, not more).
      this.#opts.metrics.kvCommitConflicts++;
      st.head = undefined;
      await this.#readMeta(st);
      let bytes = 0;
      for (const d of batch) bytes += commitBytes(d.frame);
      while (st.queue.length > 0 && batch.length < COMMIT_FRAMES) {
        const size = storedBytes(st.queue[0].frame);
        if (size > INLINE_MAX || bytes + size > COMMIT_BYTES) break;
        bytes += size;
        const d = st.queue.shift()!;
        batch.push(d);
        values.push(stored(d));
      }
    }
  }

  // ---- read path ---------------------------------------------------------

  #ensureWatch(): Promise<void> {
    if (this.#watch) return this.#watchReady!;
    let ready!: () => void;
    let failed!: (e: unknown) => void;
    this.#watchReady = new Promise<void>((res, rej) => {
      ready = res;
      failed = rej;
    });
    this.#watchReady.catch(() => {});
    this.#watch = this.#runWatch(ready, failed);
    return this.#watchReady;
  }
  #watchReady: Promise<void> | undefined;

  #stopWatch(): void {
    const r = this.#watchReader;
    this.#watchReader = undefined;
    if (r) r.cancel().catch(() => {});
  }

  async #runWatch(ready: () => void, failed: (e: unknown) => void): Promise<void> {
    let attempt = 0;
    let first = true;
    try {
      while (this.#byKey.size > 0 && !this.#closing) {
        try {
          // Cursor of each shard log: start after its newest record.
          for (let s = 0; s < SHARDS; s++) {
            this.#opts.metrics.kvReads++;
            const it = this.#kv.list<Moved>({ prefix: keys.movedLog(s) }, {
              reverse: true,
              limit: 1,
              consistency: "strong",
            });
            for await (const e of it) this.#shardCursor[s] = e.key[3] as string;
            this.#shardVs[s] = undefined;
          }
          const stream = this.#kv.watch(Array.from({ length: SHARDS }, (_, s) => keys.signal(s)));
          const reader = stream.getReader();
          this.#watchReader = reader;
          if (first) {
            first = false;
            ready();
          } else {
            // The stream broke: anything may have moved meanwhile.
            for (const st of this.#byKey.values()) this.#scheduleRead(st);
          }
          if (this.#byKey.size === 0) reader.cancel().catch(() => {});
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            attempt = 0;
            this.#opts.metrics.kvWatchWakeups++;
            value.forEach((e, s) => {
              if (e.versionstamp !== this.#shardVs[s]) {
                this.#shardVs[s] = e.versionstamp;
                this.#scheduleShard(s);
              }
            });
          }
        } catch (err) {
          if (first) throw err;
          if (this.#byKey.size > 0 && !this.#closing) {
            this.#opts.log.warn("kv.watch ended, restarting", { error: err });
            await sleep(Math.min(5000, 100 * 2 ** attempt++));
          }
        }
      }
    } catch (err) {
      failed(err);
    } finally {
      this.#watchReader = undefined;
      this.#watch = undefined;
      // Someone subscribed while the loop was finishing: start again.
      if (this.#byKey.size > 0 && !this.#closing) void this.#ensureWatch();
    }
  }

  #scheduleShard(s: number): void {
    if (this.#shardReading[s]) {
      this.#shardAgain[s] = true;
      return;
    }
    this.#track(this.#readShard(s));
  }

  async #readShard(s: number): Promise<void> {
    this.#shardReading[s] = true;
    try {
      do {
        this.#shardAgain[s] = false;
        const moved = new Set<ChannelState>();
        let cursor = this.#shardCursor[s];
        for (;;) {
          this.#opts.metrics.kvReads++;
          const page: Deno.KvEntry<Moved>[] = [];
          await this.#retry("Cannot read moved log", async () => {
            page.length = 0;
            // Versionstamp key parts order like commits; cursor + "\0" is just after the cursor.
            const start = [...keys.movedLog(s), cursor + "\0"];
            const it = this.#kv.list<Moved>({ prefix: keys.movedLog(s), start }, {
              limit: PAGE,
              consistency: "strong",
            });
            for await (const e of it) page.push(e);
          });
          for (const e of page) {
            cursor = e.key[3] as string;
            const m = e.value;
            const st = this.#byKey.get(m.c);
            if (!st || !st.ready || m.b <= st.cursor) continue;
            if (m.o === this.#opts.origin && m.a === st.cursor + 1 && !st.reading) {
              st.cursor = m.b; // our own frames, nothing in between: no need to read them back
            } else {
              moved.add(st);
            }
          }
          if (page.length < PAGE) break;
        }
        this.#shardCursor[s] = cursor;
        for (const st of moved) this.#scheduleRead(st);
      } while (this.#shardAgain[s] && !this.#closing);
    } catch (err) {
      if (!this.#closing) this.#opts.log.error("shard read failed", { shard: s, error: err });
    } finally {
      this.#shardReading[s] = false;
    }
  }

  #scheduleRead(st: ChannelState): void {
    if (st.reading) {
      st.readAgain = true;
      return;
    }
    this.#track(this.#readChannel(st));
  }

  /** Hands the hub every frame after the channel's cursor, in seq order, once. */
  async #readChannel(st: ChannelState): Promise<void> {
    st.reading = true;
    try {
      do {
        st.readAgain = false;
        if (!st.ready) break;
        const gen = st.gen;
        const from = st.cursor + 1;
        const out: Delivery[] = [];
        let cursor = st.cursor;
        let gap = false;
        for await (
          const e of this.#list({ prefix: keys.entries(st.ck), start: keys.entry(st.ck, from) })
        ) {
          const seq = e.key[3] as number;
          if (seq !== cursor + 1) gap = true;
          cursor = seq;
          if (e.value.o === this.#opts.origin || e.value.h === 1) continue;
          const d = await this.#toDelivery(st, e);
          if (d) out.push(d);
        }
        if (st.gen !== gen || !st.ready) continue;
        if (gap) {
          this.#opts.metrics.busGaps++;
          this.#opts.log.warn("reader fell behind the kept history; frames were missed", {
            channel: st.name,
            from,
            to: cursor,
          });
        }
        st.cursor = Math.max(st.cursor, cursor);
        if (out.length > 0) this.#handler.onFrames(st.name, out);
      } while (st.readAgain && !this.#closing);
    } catch (err) {
      if (!this.#closing) {
        this.#opts.log.error("channel read failed", { channel: st.name, error: err });
      }
    } finally {
      st.reading = false;
      this.#forgetIfIdle(st);
    }
  }
}

/** Splits a frame's data into pieces that each fit one KV value. */
function split(f: Frame): (string | Uint8Array)[] {
  const out: (string | Uint8Array)[] = [];
  if (f.kind === "binary") {
    for (let i = 0; i < f.data.byteLength; i += INLINE_MAX) {
      out.push(f.data.slice(i, i + INLINE_MAX));
    }
    return out;
  }
  const s = f.data;
  for (let i = 0; i < s.length;) {
    let end = Math.min(s.length, i + TEXT_CHUNK);
    // Never cut a surrogate pair in two.
    const c = s.charCodeAt(end - 1);
    if (end < s.length && c >= 0xd800 && c <= 0xdbff) end--;
    out.push(s.slice(i, end));
    i = end;
  }
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.byteLength;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
