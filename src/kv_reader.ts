/**
 * @module
 * Reading stored frames back from Deno KV: a channel's batches after a
 * cursor (what the follower delivers live), the newest frames within a
 * frame and byte bound (what a newcomer is replayed), and the chunks of
 * frames too large for one value. Every read is strong (a replica may lag
 * the write region) and retried when the SQLite file is locked. Counts KV
 * read units as Deploy bills them (4 KiB per key read). Imports: frame,
 * kv_format, kv_keys, retry, metrics (type).
 */
import { type Delivery, type Position, position } from "./frame.ts";
import {
  entryBytes,
  fromStored,
  type StoredEntry,
  type StoredFrame,
  type StoredPage,
} from "./kv_format.ts";
import { isTrimMark, keys } from "./kv_keys.ts";
import type { Metrics } from "./metrics.ts";
import { isDatabaseLocked, retry } from "./retry.ts";

const PAGE = 128;
const READ_RETRY = {
  minMs: 2,
  maxMs: 200,
  maxAttempts: 50,
  shouldRetry: isDatabaseLocked,
};

/** A stored batch as listed: its commit versionstamp and frames. */
export interface ListedEntry {
  readonly vs: string;
  readonly entry: StoredEntry;
}

/** Reads of one KV handle on behalf of the bus. */
export class KvReader {
  readonly #kv: Deno.Kv;
  readonly #metrics: Metrics;

  constructor(kv: Deno.Kv, metrics: Metrics) {
    this.#kv = kv;
    this.#metrics = metrics;
  }

  /** Counts one key read of about `bytes` bytes. */
  #units(bytes: number): void {
    this.#metrics.kvReads++;
    this.#metrics.kvReadUnits += Math.max(1, Math.ceil(bytes / 4096));
  }

  /**
   * Lists keys of `selector` in pages (strong), yielding each entry.
   * @throws Error naming `what` if KV keeps failing.
   */
  async *list<T>(
    what: string,
    selector: Deno.KvListSelector,
    reverse = false,
  ): AsyncGenerator<Deno.KvEntry<T>> {
    let cursor: string | undefined;
    for (;;) {
      const page: Deno.KvEntry<T>[] = [];
      await retry(async () => {
        page.length = 0;
        const it = this.#kv.list<T>(selector, {
          limit: PAGE,
          cursor,
          reverse,
          consistency: "strong",
        });
        for await (const e of it) page.push(e);
        cursor = it.cursor;
      }, { what, ...READ_RETRY });
      this.#metrics.kvReads++;
      yield* page;
      if (page.length < PAGE || !cursor) return;
    }
  }

  /**
   * The channel's batches committed after versionstamp `after` ("" = from
   * the start), in commit order, and the trim mark: `trimmedTo` is the
   * newest versionstamp whose batches were deleted (a reader whose cursor
   * is older missed frames).
   */
  async after(ck: string, after: string): Promise<{ entries: ListedEntry[]; trimmedTo: string }> {
    const prefix = keys.entries(ck);
    const selector: Deno.KvListSelector = after === ""
      ? { prefix }
      : { prefix, start: [...prefix, after + "\0"] };
    const entries: ListedEntry[] = [];
    let trimmedTo = "";
    for await (const e of this.list<StoredEntry | { v: string }>("Cannot read channel", selector)) {
      if (isTrimMark(e.key)) {
        trimmedTo = (e.value as { v: string }).v;
        this.#units(32);
        continue;
      }
      const entry = e.value as StoredEntry;
      this.#units(entryBytes(entry));
      entries.push({ vs: e.key[3] as string, entry });
    }
    return { entries, trimmedTo };
  }

  /** The versionstamp of the channel's newest batch, or "" if it has none. */
  async newest(ck: string): Promise<string> {
    const it = this.list<StoredEntry>(
      "Cannot read channel head",
      { prefix: keys.entries(ck), end: keys.trimMark(ck) },
      true,
    );
    for await (const e of it) {
      this.#units(64);
      return e.key[3] as string;
    }
    return "";
  }

  /**
   * The channel's newest frames, oldest first: at most `limit` frames and,
   * when `maxBytes` > 0, at most `maxBytes` bytes (a contiguous run ending
   * at the newest frame). `lastPos` is the newest stored frame's position
   * ("" if none): every frame at or before it is in `deliveries` or older
   * than all of them. Reads no further back than needed; loads the chunks
   * of returned frames only.
   */
  async recent(
    ck: string,
    limit: number,
    maxBytes: number,
  ): Promise<{ deliveries: Delivery[]; lastPos: Position }> {
    const picked: { v: StoredFrame; pos: Position }[] = [];
    let bytes = 0;
    let lastPos = "";
    let full = false;
    const it = this.list<StoredEntry>(
      "Cannot read channel history",
      { prefix: keys.entries(ck), end: keys.trimMark(ck) },
      true,
    );
    for await (const e of it) {
      const vs = e.key[3] as string;
      this.#units(entryBytes(e.value));
      const fs = await this.framesOf(ck, vs, e.value);
      if (lastPos === "" && fs.length > 0) lastPos = position(vs, fs.length - 1);
      for (let i = fs.length - 1; i >= 0; i--) {
        if (picked.length >= limit || (maxBytes > 0 && bytes + fs[i].n > maxBytes)) {
          full = true;
          break;
        }
        bytes += fs[i].n;
        picked.push({ v: fs[i], pos: position(vs, i) });
      }
      if (full) break;
    }
    picked.reverse();
    const deliveries: Delivery[] = [];
    for (const p of picked) {
      const frame = await this.frame(ck, p.v);
      if (!frame) continue; // trimmed while we read: older than what follows
      deliveries.push({ id: p.v.i, frame, pos: p.pos, historyOnly: p.v.h === 1 });
    }
    return { deliveries, lastPos };
  }

  /**
   * Every frame of a listed batch, in order: the entry's own and those of its
   * overflow pages. Pages gone (trimmed meanwhile) end the list early.
   */
  async framesOf(ck: string, vs: string, entry: StoredEntry): Promise<StoredFrame[]> {
    if (!entry.p) return entry.f;
    const ks: Deno.KvKey[] = [];
    for (let i = 0; i < entry.p; i++) ks.push(keys.page(ck, i, vs));
    const out = entry.f.slice();
    for (let i = 0; i < ks.length; i += 10) {
      const got = await retry(
        () => this.#kv.getMany<StoredPage[]>(ks.slice(i, i + 10), { consistency: "strong" }),
        { what: "Cannot read batch pages", ...READ_RETRY },
      );
      for (const g of got) {
        if (g.value === null) return out;
        this.#units(entryBytes(g.value));
        out.push(...g.value.f);
      }
    }
    return out;
  }

  /** The frame a stored frame holds, loading its chunks; undefined if they are gone. */
  async frame(ck: string, v: StoredFrame): Promise<Delivery["frame"] | undefined> {
    if (v.c === undefined) return fromStored(v);
    const parts: Uint8Array[] = [];
    for (let i = 0; i < v.c; i += 10) {
      const ks: Deno.KvKey[] = [];
      for (let j = i; j < Math.min(v.c, i + 10); j++) ks.push(keys.chunk(ck, v.i, j));
      const got = await retry(
        () => this.#kv.getMany<Uint8Array[]>(ks, { consistency: "strong" }),
        { what: "Cannot read frame chunks", ...READ_RETRY },
      );
      for (const g of got) {
        if (g.value === null) return undefined;
        this.#units(g.value.byteLength);
        parts.push(g.value);
      }
    }
    return fromStored(v, parts);
  }
}
