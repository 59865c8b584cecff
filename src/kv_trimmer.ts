/**
 * @module
 * Keeps each channel's stored history within its bounds (frames, bytes and
 * reader slack; see `planTrim`), off the publish path: the writer reports
 * what it stored and this deletes, in the background and one channel at a
 * time, the batches (and their chunks) that fell out. It first moves the
 * channel's trim mark, so a reader that lagged past deleted frames counts a
 * gap instead of missing them silently. Any isolate may trim any channel;
 * deletes are idempotent, so concurrent trims need no coordination.
 * Imports: kv_format, kv_keys, kv_reader (type), retry, log (type),
 * metrics (type).
 */
import { planTrim, type RetentionOptions, type StoredEntry, type TrimEntry } from "./kv_format.ts";
import { keys } from "./kv_keys.ts";
import type { KvReader } from "./kv_reader.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import { errorText, isDatabaseLocked, retry } from "./retry.ts";

/** KvTrimmer settings. */
export interface KvTrimmerOptions extends RetentionOptions {
  readonly kv: Deno.Kv;
  readonly reader: KvReader;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** A channel written to is trimmed at least this often (ms). */
  readonly intervalMs?: number;
}

interface Listed extends TrimEntry {
  readonly vs: string;
  /** Chunked frames of the batch: [frame id, chunks]. */
  readonly chunked: [string, number][];
  /** Overflow pages of the batch. */
  readonly pages: number;
}

/** Mutations per delete commit (KV allows 1,000). */
const DELETE_BATCH = 800;
/** Batches deleted per trim of one channel at most (the rest go next time). */
const MAX_DELETE = 4000;

/** Trims channels after writes; see the module doc. */
export class KvTrimmer {
  readonly #o: KvTrimmerOptions;
  /** Channel key -> bytes written since its last trim. */
  readonly #written = new Map<string, number>();
  readonly #due = new Set<string>();
  /** Channel key -> the batches this isolate knows are stored (oldest first) and the newest one read. */
  readonly #known = new Map<string, { batches: Listed[]; cursor: string; used: number }>();
  #running: Promise<void> | undefined;
  #timer: ReturnType<typeof setInterval> | undefined;
  #closed = false;

  constructor(options: KvTrimmerOptions) {
    this.#o = options;
  }

  /**
   * Notes that `bytes` bytes of frames were stored in the channel
   * `ck`. The channel is trimmed within the interval (default 1 s), or at
   * once when more than max(1 MiB, slack) bytes were written since its last trim.
   */
  note(ck: string, bytes: number): void {
    if (this.#closed) return;
    const written = (this.#written.get(ck) ?? 0) + bytes;
    this.#written.set(ck, written);
    const o = this.#o;
    // Trimming reads the kept window back, so it runs about once per interval
    // per channel; sooner only when the bytes written since would let the
    // stored history grow past window + 2 x slack.
    if (written >= Math.max(1024 * 1024, o.slackBytes)) {
      this.#due.add(ck);
      this.#kick();
    }
    this.#timer ??= setInterval(() => {
      for (const k of this.#written.keys()) this.#due.add(k);
      // Forget what we knew of channels nobody wrote here for a minute.
      for (const [k, v] of this.#known) if (Date.now() - v.used > 60_000) this.#known.delete(k);
      this.#kick();
      if (this.#written.size === 0 && this.#timer !== undefined) {
        clearInterval(this.#timer);
        this.#timer = undefined;
      }
    }, o.intervalMs ?? 1000);
  }

  /** Stops trimming; waits for a trim in progress. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  #kick(): void {
    if (this.#running || this.#closed) return;
    this.#running = (async () => {
      while (this.#due.size > 0 && !this.#closed) {
        // Plan up to 256 channels, then delete for all of them in shared
        // commits: with many quiet channels, one commit instead of one each.
        const plans: { ck: string; doomed: Listed[] }[] = [];
        for (const ck of this.#due) {
          this.#due.delete(ck);
          this.#written.delete(ck);
          try {
            const doomed = await this.#plan(ck);
            if (doomed.length > 0) plans.push({ ck, doomed });
          } catch (err) {
            this.#o.log.warn("trim failed", { error: errorText(err) });
          }
          if (plans.length >= 256 || this.#closed) break;
        }
        try {
          await this.#delete(plans);
        } catch (err) {
          this.#o.log.warn("trim failed", { error: errorText(err) });
        }
      }
    })().finally(() => this.#running = undefined);
  }

  /**
   * Deletes the channel's batches that fell out of its bounds now; resolves
   * with how many. Exposed for tests.
   */
  async trim(ck: string): Promise<number> {
    // One pass at a time, as the background passes are: a plan advances this
    // isolate's view of the channel, and two plans reading the same new
    // batches at once counted them twice and deleted the whole window.
    while (this.#running) await this.#running;
    const pass = (async () => {
      const doomed = await this.#plan(ck);
      if (doomed.length > 0) await this.#delete([{ ck, doomed }]);
      return doomed.length;
    })();
    this.#running = pass.then(() => {}, () => {}).finally(() => this.#running = undefined);
    return await pass;
  }

  /**
   * The channel's batches to delete now (newest first), forgotten from what
   * this isolate knows of the channel. Reads only the batches stored since
   * the last plan, so it costs what was written, not the whole kept window.
   */
  async #plan(ck: string): Promise<Listed[]> {
    let st = this.#known.get(ck);
    if (!st) this.#known.set(ck, st = { batches: [], cursor: "", used: Date.now() });
    st.used = Date.now();
    const prefix = keys.entries(ck);
    const selector: Deno.KvListSelector = st.cursor === ""
      ? { prefix, end: keys.trimMark(ck) }
      : { start: [...prefix, st.cursor + "\0"], end: keys.trimMark(ck) };
    for await (
      const e of this.#o.reader.list<StoredEntry>("Cannot list channel for trimming", selector)
    ) {
      const v = e.value;
      const vs = e.key[3] as string;
      st.batches.push({ vs, frames: v.n, bytes: v.b, chunked: v.x ?? [], pages: v.p ?? 0 });
      st.cursor = vs;
    }
    const cut = planTrim(st.batches.slice().reverse(), this.#o);
    if (cut < 0) return [];
    // The oldest go first; beyond MAX_DELETE, the rest next time.
    const n = Math.min(MAX_DELETE, st.batches.length - cut);
    return st.batches.splice(0, n).reverse();
  }

  /**
   * Deletes each plan's batches (newest first) with their pages and chunks,
   * in commits of at most DELETE_BATCH mutations shared by channels; a
   * channel's trim mark goes in the first commit that deletes any of its rows.
   */
  async #delete(plans: { ck: string; doomed: Listed[] }[]): Promise<void> {
    let sets: [Deno.KvKey, { v: string }][] = [];
    let dels: Deno.KvKey[] = [];
    const flush = async () => {
      if (sets.length === 0 && dels.length === 0) return;
      const [s, d] = [sets, dels];
      sets = [];
      dels = [];
      await retry(async () => {
        const op = this.#o.kv.atomic();
        for (const [k, v] of s) op.set(k, v);
        for (const k of d) op.delete(k);
        this.#o.metrics.kvCommits++;
        this.#o.metrics.kvWriteUnits += s.length + d.length;
        await op.commit();
      }, {
        what: "Cannot trim channel history",
        minMs: 5,
        maxMs: 500,
        maxAttempts: 20,
        shouldRetry: isDatabaseLocked,
      });
    };
    for (const { ck, doomed } of plans) {
      if (sets.length + dels.length + 2 > DELETE_BATCH) await flush();
      // The mark first: readers behind it count a gap.
      sets.push([keys.trimMark(ck), { v: doomed[0].vs }]);
      for (const d of doomed) {
        if (sets.length + dels.length + 1 + d.pages > DELETE_BATCH) await flush();
        dels.push(keys.entry(ck, d.vs));
        for (let i = 0; i < d.pages; i++) dels.push(keys.page(ck, i, d.vs));
        for (const [id, c] of d.chunked) {
          for (let i = 0; i < c; i++) {
            dels.push(keys.chunk(ck, id, i));
            if (sets.length + dels.length >= DELETE_BATCH) await flush();
          }
        }
      }
      this.#o.metrics.trimmedBatches += doomed.length;
    }
    await flush();
  }
}
