/**
 * @module
 * The read side of the KV bus: follows the channels this isolate has
 * members in and hands the hub every frame other isolates store there.
 *
 * One `kv.watch` over the {@link SHARDS} signal keys (KV allows 10 keys per
 * watch), however many channels are followed, used as a wake-up only: a
 * notification may stand for many commits (watch reports the latest value).
 * On a wake-up the follower reads the shard's moved log after its cursor and,
 * for each followed channel another isolate moved, lists the channel's
 * batches after that channel's cursor. So coalesced notifications lose
 * nothing, and a channel moved only by this isolate is not read back.
 * Imports: frame, kv_format (type), kv_keys, kv_reader (type), retry,
 * log (type), metrics (type).
 */
import { type Delivery, position } from "./frame.ts";
import type { MovedRecord } from "./kv_format.ts";
import { keys, SHARDS } from "./kv_keys.ts";
import type { KvReader } from "./kv_reader.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import { backoffMs, errorText, sleep } from "./retry.ts";

/** KvFollower settings. */
export interface KvFollowerOptions {
  readonly kv: Deno.Kv;
  readonly reader: KvReader;
  /** The KV key part of a channel (cached by the caller). */
  readonly keyOf: (channel: string) => Promise<string>;
  /** This isolate's id: batches it wrote are not read back. */
  readonly origin: string;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Frames of `channel` stored by other isolates, in commit order, each once. */
  readonly onFrames: (channel: string, deliveries: Delivery[]) => void;
}

interface Followed {
  readonly name: string;
  ck: string;
  gen: number;
  /** The cursor is set for the current subscription: reads may start. */
  ready: boolean;
  /** Versionstamp of the newest batch handed on (or skipped as our own). */
  cursor: string;
  reading: boolean;
  again: boolean;
  /** Another isolate moved the channel and no read has started since. */
  dirty: boolean;
}

const WATCH_BACKOFF = { minMs: 100, maxMs: 5000, jitter: 0.2 };

/** Follows channels in KV; see the module doc. */
export class KvFollower {
  readonly #o: KvFollowerOptions;
  readonly #byName = new Map<string, Followed>();
  readonly #byKey = new Map<string, Followed>();
  #watch: Promise<void> | undefined;
  #watchReady: Promise<void> | undefined;
  #watchReader: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]> | undefined;
  readonly #shardCursor: string[] = new Array(SHARDS).fill("");
  readonly #shardVs: (string | null | undefined)[] = new Array(SHARDS).fill(undefined);
  readonly #shardReading: boolean[] = new Array(SHARDS).fill(false);
  readonly #shardAgain: boolean[] = new Array(SHARDS).fill(false);
  readonly #tasks = new Set<Promise<unknown>>();
  #closing = false;

  constructor(options: KvFollowerOptions) {
    this.#o = options;
  }

  /** Open `kv.watch` streams: 0 or 1, whatever the number of channels. */
  get watchStreams(): number {
    return this.#watchReader ? 1 : 0;
  }

  /** Channels followed. */
  get followedChannels(): number {
    return this.#byKey.size;
  }

  /**
   * Starts following `channel`: once resolved, every frame other isolates
   * store after the channel's newest batch at that moment reaches
   * `onFrames`. Rejects, naming the channel, if KV cannot be read.
   */
  async subscribe(channel: string): Promise<void> {
    let f = this.#byName.get(channel);
    if (!f) {
      f = {
        name: channel,
        ck: "",
        gen: 0,
        ready: false,
        cursor: "",
        reading: false,
        again: false,
        dirty: false,
      };
      this.#byName.set(channel, f);
    }
    const gen = ++f.gen;
    f.ready = false;
    if (f.ck === "") f.ck = await this.#o.keyOf(channel);
    if (f.gen !== gen) return;
    this.#byKey.set(f.ck, f);
    try {
      await this.#ensureWatch();
      const newest = await this.#o.reader.newest(f.ck);
      if (f.gen !== gen) return;
      f.cursor = newest;
      f.ready = true;
    } catch (err) {
      if (f.gen === gen) this.unsubscribe(channel);
      throw new Error(`Cannot follow channel ${JSON.stringify(channel)} in KV: ${errorText(err)}`, {
        cause: err,
      });
    }
    // Catch up on anything stored between the head read and the first wake-up.
    this.#scheduleRead(f);
  }

  /** Stops following `channel` (also while its subscribe is pending). */
  unsubscribe(channel: string): void {
    const f = this.#byName.get(channel);
    if (!f) return;
    f.gen++;
    f.ready = false;
    this.#byName.delete(channel);
    if (this.#byKey.get(f.ck) === f) this.#byKey.delete(f.ck);
    if (this.#byKey.size === 0) this.#stopWatch();
  }

  /** Stops following everything and waits (bounded) for reads in progress. */
  async close(): Promise<void> {
    this.#closing = true;
    for (const f of this.#byName.values()) {
      f.gen++;
      f.ready = false;
    }
    this.#byName.clear();
    this.#byKey.clear();
    this.#stopWatch();
    const bound = sleep(2000);
    await Promise.race([Promise.allSettled([...this.#tasks]), bound]);
    if (this.#watch) await Promise.race([this.#watch.catch(() => {}), bound]);
  }

  #track(p: Promise<unknown>): void {
    this.#tasks.add(p);
    p.finally(() => this.#tasks.delete(p)).catch(() => {});
  }

  #ensureWatch(): Promise<void> {
    if (this.#watch) return this.#watchReady!;
    const ready = Promise.withResolvers<void>();
    this.#watchReady = ready.promise;
    this.#watchReady.catch(() => {});
    this.#watch = this.#runWatch(ready.resolve, ready.reject);
    return this.#watchReady;
  }

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
          // Each shard's moved log is read from its newest record on.
          for (let s = 0; s < SHARDS; s++) {
            const it = this.#o.reader.list<MovedRecord>(
              "Cannot read moved log",
              { prefix: keys.movedLog(s) },
              true,
            );
            for await (const e of it) {
              this.#shardCursor[s] = e.key[3] as string;
              break;
            }
            this.#shardVs[s] = undefined;
          }
          const stream = this.#o.kv.watch(Array.from({ length: SHARDS }, (_, s) => keys.signal(s)));
          const reader = stream.getReader();
          this.#watchReader = reader;
          if (first) {
            first = false;
            ready();
          } else {
            // The stream broke: anything may have moved meanwhile.
            for (const f of this.#byKey.values()) this.#scheduleRead(f);
          }
          if (this.#byKey.size === 0) reader.cancel().catch(() => {});
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            attempt = 0;
            this.#o.metrics.kvWatchWakeups++;
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
            this.#o.log.warn("kv.watch ended, restarting", { error: errorText(err) });
            await sleep(backoffMs(attempt++, WATCH_BACKOFF));
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
        const moved = new Set<Followed>();
        const prefix = keys.movedLog(s);
        const cursor = this.#shardCursor[s];
        const selector: Deno.KvListSelector = cursor === ""
          ? { prefix }
          : { prefix, start: [...prefix, cursor + "\0"] };
        for await (const e of this.#o.reader.list<MovedRecord>("Cannot read moved log", selector)) {
          const vs = e.key[3] as string;
          this.#shardCursor[s] = vs;
          const rec = e.value;
          for (const ck of rec.c) {
            const f = this.#byKey.get(ck);
            if (!f || !f.ready || vs <= f.cursor) continue;
            if (rec.o === this.#o.origin && !f.reading && !f.dirty) {
              f.cursor = vs; // our own batch, nothing unread before it: no need to read it back
            } else {
              f.dirty = true;
              moved.add(f);
            }
          }
        }
        for (const f of moved) this.#scheduleRead(f);
      } while (this.#shardAgain[s] && !this.#closing);
    } catch (err) {
      if (!this.#closing) {
        this.#o.log.error("shard read failed", { shard: s, error: errorText(err) });
      }
    } finally {
      this.#shardReading[s] = false;
    }
  }

  #scheduleRead(f: Followed): void {
    if (f.reading) {
      f.again = true;
      return;
    }
    this.#track(this.#readChannel(f));
  }

  /** Hands the hub every batch after the channel's cursor, in commit order, once. */
  async #readChannel(f: Followed): Promise<void> {
    f.reading = true;
    try {
      do {
        f.again = false;
        f.dirty = false;
        if (!f.ready) break;
        const gen = f.gen;
        const from = f.cursor;
        const { entries, trimmedTo } = await this.#o.reader.after(f.ck, from);
        if (f.gen !== gen || !f.ready) continue;
        if (trimmedTo > from) this.#gap(f, from, trimmedTo);
        const out: Delivery[] = [];
        let cursor = from;
        for (const { vs, entry } of entries) {
          cursor = vs;
          if (entry.o === this.#o.origin) continue;
          const fs = await this.#o.reader.framesOf(f.ck, vs, entry);
          for (let i = 0; i < fs.length; i++) {
            const v = fs[i];
            if (v.h === 1) continue; // join headers are history only
            const frame = await this.#o.reader.frame(f.ck, v);
            if (!frame) {
              this.#gap(f, vs, vs);
              continue;
            }
            out.push({ id: v.i, frame, pos: position(vs, i) });
          }
        }
        if (f.gen !== gen || !f.ready) continue;
        if (cursor > f.cursor) f.cursor = cursor;
        if (out.length > 0) this.#o.onFrames(f.name, out);
      } while (f.again && !this.#closing);
    } catch (err) {
      if (!this.#closing) {
        this.#o.log.error("channel read failed", { channel: f.name, error: errorText(err) });
      }
    } finally {
      f.reading = false;
    }
  }

  #gap(f: Followed, from: string, to: string): void {
    this.#o.metrics.busGaps++;
    this.#o.log.warn("reader fell behind the kept history; frames were missed", {
      channel: f.name,
      from,
      to,
    });
  }
}
