/**
 * @module
 * The write side of the KV bus: one bounded queue per isolate and one commit
 * in flight, carrying every channel's queued frames. Each channel's frames of
 * a commit go in one value keyed by the commit versionstamp, so writers on
 * any isolate or region never conflict (no check, no retry on a lost race);
 * frames queued while a commit is in flight go together in the next one.
 * Imports: frame, kv_format, kv_keys, retry, log (type), metrics (type).
 */
import { type Delivery, position } from "./frame.ts";
import {
  chunksOf,
  type CommitPlan,
  entryBytes,
  movedBytes,
  type MovedRecord,
  planCommit,
  queued,
  type QueuedFrame,
  type StoredEntry,
  type StoredPage,
  toStored,
} from "./kv_format.ts";
import { keys, shardOf } from "./kv_keys.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import { backoffMs, errorText, isDatabaseLocked, sleep } from "./retry.ts";

/** Moved-log records are read within seconds; they go after a minute. */
export const MOVED_TTL_MS = 60_000;

/** KvWriter settings. */
export interface KvWriterOptions {
  readonly kv: Deno.Kv;
  /** Id of this isolate, stored with each batch. */
  readonly origin: string;
  /** Idle channels expire after this many ms. */
  readonly ttlMs: number;
  /** A frame not stored this long after it was queued is reported failed. */
  readonly storeTimeoutMs: number;
  /** Bytes of frames waiting to be stored, at most (whole isolate). */
  readonly queueBytes: number;
  /** Bytes one publisher may have waiting, at most (its first frame is always taken). */
  readonly sourceBytes: number;
  /** A commit waits this long after the first frame queued, to gather more (0 = none). */
  readonly batchDelayMs: number;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** The KV key part of a channel (cached by the caller). */
  readonly keyOf: (channel: string) => Promise<string>;
  /** One commit stored `bytes` bytes of frames of the channel keyed `ck` (their positions are set). */
  readonly onStored: (ck: string, bytes: number) => void;
  /** A frame that was not stored within the store timeout (reported once). */
  readonly onFailed: (channel: string, delivery: Delivery, error: Error) => void;
}

interface WriterChannel {
  readonly name: string;
  ck: string;
  shard: number;
  readonly keyReady: Promise<void>;
  queue: QueuedFrame[];
}

/** Backoff between failed commit attempts. */
const BACKOFF = { minMs: 20, maxMs: 2000, multiplier: 2, jitter: 0.5 };

/**
 * Stores published frames in Deno KV. Guarantees: a channel's frames are
 * stored in the order they were queued, each exactly once, with positions
 * increasing in that order; a frame is either stored (its `pos` set, then
 * `onStored`) or reported through `onFailed` once its store deadline passes
 * (it may still be stored afterwards if a slow commit later succeeds); no
 * commit exceeds a KV limit; the bytes waiting never exceed `queueBytes`.
 */
export class KvWriter {
  readonly #o: KvWriterOptions;
  readonly #channels = new Map<string, WriterChannel>();
  /** Frames of the commit in flight: never dropped from their queue before it settles. */
  readonly #inflight = new Set<QueuedFrame>();
  readonly #bySource = new Map<object, number>();
  #bytes = 0;
  #rotation = 0;
  #running: Promise<void> | undefined;
  #stopped = false;
  #wake: (() => void) | undefined;
  /** Date.now() when the commit in flight started, or 0. */
  #commitStarted = 0;
  #slowLogged = false;

  constructor(options: KvWriterOptions) {
    this.#o = options;
  }

  /** Bytes of frames waiting to be stored (queued or in flight). */
  get queuedBytes(): number {
    return this.#bytes;
  }

  /** Milliseconds the commit in flight has been waiting, or 0. */
  get commitWaitingMs(): number {
    return this.#commitStarted ? Date.now() - this.#commitStarted : 0;
  }

  /**
   * Queues a frame to be stored after every frame queued before it on this
   * channel. False (and nothing queued) when the queue is full, or when its
   * publisher (`delivery.source`) already has its share waiting: the caller
   * slows or closes that publisher.
   */
  enqueue(channel: string, delivery: Delivery): boolean {
    if (this.#stopped) return false;
    const q = queued(delivery, Date.now());
    const src = delivery.source;
    const mine = src ? this.#bySource.get(src) ?? 0 : 0;
    if (this.#bytes > 0 && this.#bytes + q.bytes > this.#o.queueBytes) return false;
    if (mine > 0 && mine + q.bytes > this.#o.sourceBytes) return false;
    let ch = this.#channels.get(channel);
    if (!ch) {
      const c: WriterChannel = {
        name: channel,
        ck: "",
        shard: 0,
        queue: [],
        keyReady: this.#o.keyOf(channel).then((k) => {
          c.ck = k;
          c.shard = shardOf(k);
        }),
      };
      this.#channels.set(channel, ch = c);
    }
    ch.queue.push(q);
    this.#bytes += q.bytes;
    if (src) this.#bySource.set(src, mine + q.bytes);
    this.#o.metrics.storeQueueBytes = this.#bytes;
    if (!this.#running) {
      this.#running = this.#run()
        .catch((err) => this.#o.log.error("KV writer stopped", { error: errorText(err) }))
        .finally(() => this.#running = undefined);
    } else this.#wake?.();
    return true;
  }

  /** This channel's frames not yet stored, oldest first (a snapshot). */
  pending(channel: string): Delivery[] {
    const ch = this.#channels.get(channel);
    return ch ? ch.queue.map((q) => q.delivery) : [];
  }

  /**
   * Waits until everything queued is stored or `deadline` (Date.now() ms)
   * passes, then stops taking frames. Frames left are logged, not stored.
   */
  async close(deadline: number): Promise<void> {
    while (this.#running && Date.now() < deadline) {
      await Promise.race([this.#running, sleep(Math.max(1, deadline - Date.now()))]);
    }
    this.#stopped = true;
    this.#wake?.();
    if (this.#bytes > 0) {
      this.#o.log.warn("shutdown: frames not stored", {
        bytes: this.#bytes,
        frames: [...this.#channels.values()].reduce((n, c) => n + c.queue.length, 0),
      });
    }
  }

  async #run(): Promise<void> {
    let attempt = 0;
    let lingered = false;
    const watchdog = setInterval(() => this.#expire(), 250);
    try {
      while (!this.#stopped && this.#bytes > 0) {
        if (!lingered && this.#o.batchDelayMs > 0) {
          await sleep(this.#o.batchDelayMs);
          lingered = true;
        }
        const order = await this.#order();
        const plan = planCommit(order);
        if (plan.entries.length === 0 && plan.chunks.length === 0) break;
        const vs = await this.#commit(plan);
        if (vs === undefined) {
          // Failed: back off (woken early on shutdown), drop what is past its deadline, re-plan.
          await new Promise<void>((resolve) => {
            this.#wake = resolve;
            setTimeout(resolve, backoffMs(attempt++, BACKOFF));
          });
          this.#wake = undefined;
          this.#expire();
          continue;
        }
        attempt = 0;
        this.#apply(plan, vs);
        // Frames that queued during the commit go next, without another delay.
        if (this.#bytes === 0) lingered = false;
      }
    } finally {
      clearInterval(watchdog);
    }
  }

  /** Channels with frames, resolved keys, rotated so every channel gets first place in turn. */
  async #order(): Promise<WriterChannel[]> {
    const list: WriterChannel[] = [];
    for (const ch of this.#channels.values()) {
      if (ch.queue.length > 0) list.push(ch);
      else this.#channels.delete(ch.name);
    }
    await Promise.all(list.map((c) => c.keyReady));
    if (list.length === 0) return list;
    const start = this.#rotation++ % list.length;
    return list.slice(start).concat(list.slice(0, start));
  }

  /** Commits `plan` once; its versionstamp, or undefined if it threw. */
  async #commit(plan: CommitPlan): Promise<string | undefined> {
    let op: Deno.AtomicOperation;
    try {
      op = this.#build(plan);
    } catch (err) {
      // A closed handle throws here, not at commit: the same as a failed commit.
      this.#o.metrics.kvCommitErrors++;
      this.#inflight.clear();
      this.#o.log.warn("KV commit failed, retrying", { error: errorText(err) });
      return undefined;
    }
    const { metrics } = this.#o;
    this.#commitStarted = Date.now();
    this.#slowLogged = false;
    try {
      const t0 = performance.now();
      const res = await op.commit();
      metrics.observeCommit((performance.now() - t0) / 1000);
      if (this.#slowLogged) {
        this.#o.log.warn("KV commit completed late", { ms: Date.now() - this.#commitStarted });
      }
      if (!res.ok) throw new Error("commit refused a check it does not have");
      return res.versionstamp;
    } catch (err) {
      metrics.kvCommitErrors++;
      const frames = plan.entries.reduce((n, e) => n + e.frames.length, 0);
      if (!isDatabaseLocked(err)) {
        this.#o.log.warn("KV commit failed, retrying", { frames, error: errorText(err) });
      }
      return undefined;
    } finally {
      this.#commitStarted = 0;
      this.#inflight.clear();
    }
  }

  /** The atomic operation for `plan`; counts its write units and marks its frames in flight. */
  #build(plan: CommitPlan): Deno.AtomicOperation {
    const { kv, origin, ttlMs, metrics } = this.#o;
    const op = kv.atomic();
    const stamp = kv.commitVersionstamp();
    let units = 0;
    for (const e of plan.entries) {
      const stored = e.frames.map(toStored);
      const cuts = [0, ...e.pageStarts, stored.length];
      let b = 0;
      for (const q of e.frames) b += q.bytes;
      const value: StoredEntry = { o: origin, f: stored.slice(0, cuts[1]), n: stored.length, b };
      if (e.pageStarts.length > 0) value.p = e.pageStarts.length;
      const chunked = stored.filter((v) => v.c !== undefined).map((
        v,
      ): [string, number] => [v.i, v.c!]);
      if (chunked.length > 0) value.x = chunked;
      op.set(keys.entry(e.channel.ck, stamp), value, { expireIn: ttlMs });
      units += Math.max(1, Math.ceil(entryBytes(value) / 1024));
      for (let i = 1; i < cuts.length - 1; i++) {
        const page: StoredPage = { f: stored.slice(cuts[i], cuts[i + 1]) };
        op.set(keys.page(e.channel.ck, i - 1, stamp), page, { expireIn: ttlMs });
        units += Math.max(1, Math.ceil(entryBytes(page) / 1024));
      }
      for (const q of e.frames) this.#inflight.add(q);
    }
    for (const c of plan.chunks) {
      const parts = c.frame.parts ??= chunksOf(c.frame.delivery.frame);
      for (let i = c.from; i < c.to; i++) {
        op.set(keys.chunk(c.channel.ck, c.frame.delivery.id, i), parts[i], { expireIn: ttlMs });
        units += Math.max(1, Math.ceil(parts[i].byteLength / 1024));
      }
      this.#inflight.add(c.frame);
    }
    const t = Date.now();
    for (const [shard, cks] of plan.shards) {
      const rec: MovedRecord = { o: origin, c: cks, t };
      op.set(keys.moved(shard, stamp), rec, { expireIn: MOVED_TTL_MS });
      op.sum(keys.signal(shard), 1n);
      units += Math.max(1, Math.ceil(movedBytes(cks.length) / 1024)) + 1;
    }
    metrics.kvCommits++;
    metrics.kvWriteUnits += units;
    return op;
  }

  /** A commit succeeded: frames get positions, leave their queues, and are reported stored. */
  #apply(plan: CommitPlan, vs: string): void {
    for (const c of plan.chunks) c.frame.chunksWritten = c.to;
    for (const e of plan.entries) {
      const ch = this.#channels.get((e.channel as WriterChannel).name) ??
        e.channel as WriterChannel;
      const n = e.frames.length;
      let bytes = 0;
      for (let i = 0; i < n; i++) {
        const q = e.frames[i];
        q.delivery.pos = position(vs, i);
        this.#release(q);
        bytes += q.bytes;
      }
      // The planned frames are the head of the queue: nothing removes in-flight frames.
      ch.queue.splice(0, n);
      this.#o.onStored(ch.ck, bytes);
    }
    this.#o.metrics.storeQueueBytes = this.#bytes;
  }

  #release(q: QueuedFrame): void {
    this.#bytes -= q.bytes;
    const src = q.delivery.source;
    if (!src) return;
    const left = (this.#bySource.get(src) ?? 0) - q.bytes;
    if (left > 0) this.#bySource.set(src, left);
    else this.#bySource.delete(src);
  }

  /**
   * Reports every frame past its store deadline (once); drops those not in
   * the commit in flight. Logs once when the commit in flight is slow.
   */
  #expire(): void {
    const now = Date.now();
    const timeout = this.#o.storeTimeoutMs;
    if (
      this.#commitStarted && !this.#slowLogged &&
      now - this.#commitStarted > Math.min(2000, timeout / 2)
    ) {
      this.#slowLogged = true;
      this.#o.metrics.kvCommitsSlow++;
      this.#o.log.warn("KV commit still waiting", { ms: now - this.#commitStarted });
    }
    for (const ch of this.#channels.values()) {
      if (ch.queue.length === 0 || now - ch.queue[0].queuedAt <= timeout) continue;
      const keep: QueuedFrame[] = [];
      for (const q of ch.queue) {
        if (now - q.queuedAt <= timeout) {
          keep.push(q);
          continue;
        }
        if (!q.reported) {
          q.reported = true;
          this.#o.metrics.storeFailures++;
          this.#o.onFailed(
            ch.name,
            q.delivery,
            new Error(`Frame not stored within MLES_STORE_TIMEOUT_MS=${timeout}`),
          );
        }
        if (this.#inflight.has(q)) keep.push(q);
        else this.#release(q);
      }
      ch.queue = keep;
    }
    this.#o.metrics.storeQueueBytes = this.#bytes;
  }
}
