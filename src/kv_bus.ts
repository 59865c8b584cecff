/**
 * @module
 * `KvBus`: the {@link Bus} over Deno KV, so every isolate of a deployment (and
 * every region on Deploy) serves one channel as one Mles server. A thin
 * facade over its parts, each with one job:
 * - `kv_writer.ts`: one bounded queue and one commit in flight per isolate;
 *   batches keyed by the commit versionstamp, so writers never conflict.
 * - `kv_follower.ts`: one `kv.watch` over the shard signals; reads what other
 *   isolates stored for the followed channels, after each channel's cursor.
 * - `kv_reader.ts`: history for newcomers, bounded by frames and bytes.
 * - `kv_trimmer.ts`: retention (frames, bytes, reader slack), off the publish path.
 * - `kv_format.ts`: the stored layout and commit planning, pure.
 * Imports: bus (type), frame (type), kv_follower, kv_keys, kv_reader,
 * kv_trimmer, kv_writer, log (type), metrics (type).
 */
import type { Bus, BusHandler, History } from "./bus.ts";
import type { Delivery } from "./frame.ts";
import { KvFollower } from "./kv_follower.ts";
import { channelKey } from "./kv_keys.ts";
import { KvReader } from "./kv_reader.ts";
import { KvTrimmer } from "./kv_trimmer.ts";
import { KvWriter } from "./kv_writer.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";

/** KvBus settings (see README "Configuration" for the variables behind them). */
export interface KvBusOptions {
  /** Frames replayed to newcomers and kept (MLES_HISTORY_LIMIT). */
  readonly historyLimit: number;
  /** Bytes replayed to newcomers and kept, 0 = no byte bound (MLES_HISTORY_MAX_BYTES). */
  readonly historyMaxBytes?: number;
  /** Bytes kept beyond the history for readers that lag (MLES_READER_SLACK_BYTES). */
  readonly readerSlackBytes?: number;
  /** Idle channels expire after this many ms. */
  readonly ttlMs: number;
  /** Id of this isolate, stored with each batch it writes. */
  readonly origin: string;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** A frame not stored this long after it was published is reported (default 30 s). */
  readonly storeTimeoutMs?: number;
  /** Bytes waiting to be stored on this isolate, at most (MLES_STORE_QUEUE_BYTES). */
  readonly storeQueueBytes?: number;
  /** Bytes one publisher may have waiting to be stored (default: a quarter of the queue; the server passes twice MLES_MAX_BUFFERED_BYTES). */
  readonly sourceQueueBytes?: number;
  /** A commit waits this long for more frames after the first (MLES_BATCH_DELAY_MS). */
  readonly batchDelayMs?: number;
}

/** Defaults shared with config.ts's documentation. */
export const KV_BUS_DEFAULTS = {
  storeTimeoutMs: 30_000,
  storeQueueBytes: 64 * 1024 * 1024,
  readerSlackBytes: 4 * 1024 * 1024,
  batchDelayMs: 20,
} as const;

/** {@link Bus} over Deno KV; see the module doc. */
export class KvBus implements Bus {
  readonly #o: KvBusOptions;
  readonly #reader: KvReader;
  readonly #writer: KvWriter;
  readonly #follower: KvFollower;
  readonly #trimmer: KvTrimmer;
  #handler: BusHandler = { onFrames: () => {}, onPublishFailed: () => {} };
  readonly #keys = new Map<string, Promise<string>>();

  constructor(kv: Deno.Kv, options: KvBusOptions) {
    this.#o = options;
    const { metrics, log, origin } = options;
    this.#reader = new KvReader(kv, metrics);
    const queueBytes = options.storeQueueBytes ?? KV_BUS_DEFAULTS.storeQueueBytes;
    this.#trimmer = new KvTrimmer({
      kv,
      reader: this.#reader,
      metrics,
      log,
      limit: options.historyLimit,
      maxBytes: options.historyMaxBytes ?? 0,
      slackBytes: options.readerSlackBytes ?? KV_BUS_DEFAULTS.readerSlackBytes,
    });
    this.#writer = new KvWriter({
      kv,
      origin,
      ttlMs: options.ttlMs,
      storeTimeoutMs: options.storeTimeoutMs ?? KV_BUS_DEFAULTS.storeTimeoutMs,
      queueBytes,
      sourceBytes: options.sourceQueueBytes ?? Math.floor(queueBytes / 4),
      batchDelayMs: options.batchDelayMs ?? KV_BUS_DEFAULTS.batchDelayMs,
      metrics,
      log,
      keyOf: (channel) => this.#key(channel),
      onStored: (ck, bytes) => this.#trimmer.note(ck, bytes),
      onFailed: (channel, d, err) => this.#handler.onPublishFailed(channel, d, err),
    });
    this.#follower = new KvFollower({
      kv,
      keyOf: (channel) => this.#key(channel),
      reader: this.#reader,
      origin,
      metrics,
      log,
      onFrames: (channel, ds) => this.#handler.onFrames(channel, ds),
    });
  }

  /** Open `kv.watch` streams (0 or 1 whatever the number of channels). For tests and metrics. */
  get watchStreams(): number {
    return this.#follower.watchStreams;
  }

  /** Channels this bus follows. For tests and metrics. */
  get followedChannels(): number {
    return this.#follower.followedChannels;
  }

  /** Bytes waiting to be stored. For tests and metrics. */
  get queuedBytes(): number {
    return this.#writer.queuedBytes;
  }

  /** Milliseconds the commit in flight has been waiting (0 if none). For /healthz. */
  get commitWaitingMs(): number {
    return this.#writer.commitWaitingMs;
  }

  /** Deletes what fell out of the channel's bounds now (normally done in the background). For tests. */
  async trimNow(channel: string): Promise<number> {
    return await this.#trimmer.trim(await this.#key(channel));
  }

  listen(handler: BusHandler): void {
    this.#handler = handler;
  }

  subscribe(channel: string): Promise<void> {
    return this.#follower.subscribe(channel);
  }

  unsubscribe(channel: string): void {
    this.#follower.unsubscribe(channel);
  }

  publish(channel: string, delivery: Delivery): boolean {
    const ok = this.#writer.enqueue(channel, delivery);
    if (!ok) this.#o.metrics.storeRefusals++;
    return ok;
  }

  async history(channel: string): Promise<History> {
    // Snapshot this isolate's unstored frames before reading, so each frame
    // is in the snapshot, in KV, or both (deduplicated by id below).
    const pending = this.#writer.pending(channel);
    const limit = this.#o.historyLimit;
    const { deliveries, lastPos } = await this.#reader.recent(
      await this.#key(channel),
      limit,
      this.#o.historyMaxBytes ?? 0,
    );
    const ids = new Set(deliveries.map((d) => d.id));
    const all = deliveries.concat(pending.filter((d) => !ids.has(d.id)));
    return { deliveries: all.length > limit ? all.slice(-limit) : all, lastPos };
  }

  async close(): Promise<void> {
    await this.#writer.close(Date.now() + 5_000);
    await this.#follower.close();
    await this.#trimmer.close();
  }

  #key(channel: string): Promise<string> {
    let k = this.#keys.get(channel);
    if (!k) {
      if (this.#keys.size > 10_000) this.#keys.clear();
      this.#keys.set(channel, k = channelKey(channel));
    }
    return k;
  }
}
