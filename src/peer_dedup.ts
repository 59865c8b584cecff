/**
 * @module
 * The duplicate check for frames crossing between servers (SPEC section 6),
 * by what the channel holds rather than by what one bridge happened to see,
 * and shared by every isolate of a deployment. Two layers:
 *
 * - Per channel, per isolate, a window ({@link Dedupe}) of what the channel
 *   holds: filled from the channel's history each time a peering link
 *   (bridge or peer session) (re)starts, then with every frame the hub hands
 *   that link (local and other isolates' publishes, whatever the link's
 *   state) and every frame admitted from a peer. Frames published while a
 *   link was down are in history, so they are known on reconnect.
 * - With Deno KV, a row per frame (`peerFrameKey`, by SHA-256 of type and
 *   bytes) that makes the check shared by isolates: a frame arriving from a
 *   peer is admitted by a commit that checks the row is absent and writes it
 *   (so two isolates receiving the same frame through two paths publish it
 *   once), and a frame leaving to a peer is written first (blind, batched),
 *   so if it comes back to any isolate before that isolate's bus has shown
 *   it, the row catches it. Rows expire after an hour; older frames are
 *   caught by the history window.
 *
 * KV cost per peered frame: arriving, one read and one checked commit per
 * batch of up to 10 frames (a frame the window already knows costs nothing);
 * leaving, one mutation in a blind commit per batch of up to 500 frames per
 * isolate. Without KV (`MLES_BUS=memory`), the window alone (one isolate).
 * Imports: dedupe, frame (type), kv_keys, retry.
 */
import { Dedupe } from "./dedupe.ts";
import type { Frame } from "./frame.ts";
import { channelKey, peerFrameKey } from "./kv_keys.ts";
import { type BackoffOptions, errorText, isDatabaseLocked, retry } from "./retry.ts";

/** Settings of {@link PeerDedup}. */
export interface PeerDedupOptions {
  /**
   * The KV every isolate of the deployment shares. Required: pass undefined
   * only where there is one isolate (`MLES_BUS=memory`), since without it
   * the check is this isolate's window alone and isolates would forward
   * each other's frames back.
   */
  readonly kv: Deno.Kv | undefined;
  /** Frames remembered per channel window (default 10,000). */
  readonly windowSize?: number;
  /** How long a frame row stays in KV (default 1 h). */
  readonly rowTtlMs?: number;
  readonly warn?: (message: string, fields?: Record<string, unknown>) => void;
}

const encoder = new TextEncoder();

/** Between KV attempts: 2 ms doubling to 200 ms, jittered by half. */
const BACKOFF: BackoffOptions = { minMs: 2, maxMs: 200, jitter: 0.5 };
/** `database is locked` is retried this many times before giving up. */
const LOCKED_RETRIES = 12;

/** A checked commit lost to another isolate's write: read again. */
class Conflict extends Error {}

/**
 * A frame's identity across isolates and servers: base64url of the first
 * 128 bits of SHA-256 over a type byte (t/b) and the frame's bytes.
 */
export async function frameHash(frame: Frame): Promise<string> {
  const d = await digest(frame);
  let bin = "";
  for (let i = 0; i < 16; i++) bin += String.fromCharCode(d[i]);
  return btoa(bin).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** SHA-256 over a type byte (t/b) and the frame's bytes. */
async function digest(frame: Frame): Promise<Uint8Array> {
  const body = frame.kind === "text" ? encoder.encode(frame.data) : frame.data;
  const buf = new Uint8Array(body.byteLength + 1);
  buf[0] = frame.kind === "text" ? 0x74 : 0x62;
  buf.set(body, 1);
  return new Uint8Array(await crypto.subtle.digest("SHA-256", buf));
}

interface Pending<T> {
  readonly channel: string;
  readonly frame: Frame;
  readonly done: (v: T) => void;
}

/** Per-isolate duplicate check for every peered channel. */
export class PeerDedup {
  readonly #kv: Deno.Kv | undefined;
  readonly #windowSize: number;
  readonly #rowTtlMs: number;
  readonly #warn: NonNullable<PeerDedupOptions["warn"]>;
  readonly #windows = new Map<string, { win: Dedupe; refs: number }>();
  readonly #chKeys = new Map<string, Promise<string>>();
  #admitQueue: Pending<boolean>[] = [];
  #markQueue: Pending<void>[] = [];
  #admitting = false;
  #marking = false;
  /** Counters for tests and benchmarks. */
  readonly stats = { admitted: 0, dropped: 0, kvCommits: 0, kvReads: 0 };

  constructor(options: PeerDedupOptions) {
    this.#kv = options.kv;
    this.#windowSize = options.windowSize ?? 10_000;
    this.#rowTtlMs = options.rowTtlMs ?? 3_600_000;
    this.#warn = options.warn ?? (() => {});
  }

  /** A peering link of this isolate starts using `channel`'s window. */
  retain(channel: string): void {
    const w = this.#windows.get(channel);
    if (w) w.refs++;
    else this.#windows.set(channel, { win: new Dedupe(this.#windowSize), refs: 1 });
  }

  /** A link stops using it; the window goes with the last one. */
  release(channel: string): void {
    const w = this.#windows.get(channel);
    if (w && --w.refs <= 0) {
      this.#windows.delete(channel);
      this.#chKeys.delete(channel);
    }
  }

  /** Channels with a window on this isolate (for leak tests). */
  get channels(): number {
    return this.#windows.size;
  }

  /** Records a frame the channel holds (history or live): it is never admitted from a peer. */
  know(channel: string, frame: Frame): void {
    this.#windows.get(channel)?.win.firstSight(frame.kind, frame.data);
  }

  /**
   * Decides a frame that arrived from a peer: resolves true if it is new to
   * the channel (publish it), false if the channel already holds it.
   * Callers keep their own order by awaiting results in arrival order.
   */
  admit(channel: string, frame: Frame): Promise<boolean> {
    const w = this.#windows.get(channel);
    if (w && !w.win.firstSight(frame.kind, frame.data)) {
      this.stats.dropped++;
      return Promise.resolve(false);
    }
    if (!this.#kv) {
      this.stats.admitted++;
      return Promise.resolve(true);
    }
    const p = Promise.withResolvers<boolean>();
    this.#admitQueue.push({ channel, frame, done: p.resolve });
    if (!this.#admitting) void this.#flushAdmits();
    return p.promise;
  }

  /** Before a frame leaves to a peer: resolves once every isolate's check knows it. */
  markOut(channel: string, frame: Frame): Promise<void> {
    this.know(channel, frame);
    if (!this.#kv) return Promise.resolve();
    const p = Promise.withResolvers<void>();
    this.#markQueue.push({ channel, frame, done: p.resolve });
    if (!this.#marking) void this.#flushMarks();
    return p.promise;
  }

  #chKey(channel: string): Promise<string> {
    let k = this.#chKeys.get(channel);
    if (!k) this.#chKeys.set(channel, k = channelKey(channel));
    return k;
  }

  async #rowKey(p: { channel: string; frame: Frame }): Promise<Deno.KvKey> {
    return peerFrameKey(await this.#chKey(p.channel), await frameHash(p.frame));
  }

  async #flushAdmits(): Promise<void> {
    this.#admitting = true;
    try {
      while (this.#admitQueue.length > 0) {
        const batch = this.#admitQueue.splice(0, 10);
        const rows = await Promise.all(batch.map((p) => this.#rowKey(p)));
        let verdict: boolean[];
        try {
          verdict = await this.#checkAndSet(rows);
        } catch (err) {
          // KV is not answering: admit (a duplicate beats a lost frame), say so.
          this.#warn("peer duplicate check without KV", { error: errorText(err) });
          verdict = batch.map(() => true);
        }
        batch.forEach((p, i) => {
          if (verdict[i]) this.stats.admitted++;
          else this.stats.dropped++;
          p.done(verdict[i]);
        });
      }
    } finally {
      this.#admitting = false;
    }
  }

  /** For each row: true if it was absent and is now written by us, false if present. */
  #checkAndSet(rows: Deno.KvKey[]): Promise<boolean[]> {
    const kv = this.#kv!;
    let locked = 0;
    return retry(async () => {
      this.stats.kvReads++;
      const cur = await kv.getMany<unknown[]>(rows, { consistency: "strong" });
      const op = kv.atomic();
      const fresh = cur.map((e) => e.versionstamp === null);
      // The same frame twice in one batch: only the first is new.
      const seen = new Set<string>();
      rows.forEach((k, i) => {
        const id = JSON.stringify(k);
        if (seen.has(id)) fresh[i] = false;
        seen.add(id);
        if (fresh[i]) op.check(cur[i]).set(k, 1, { expireIn: this.#rowTtlMs });
      });
      if (!fresh.some((f) => f)) return fresh;
      this.stats.kvCommits++;
      if ((await op.commit()).ok) return fresh;
      throw new Conflict("another isolate wrote a frame row meanwhile");
    }, {
      ...BACKOFF,
      what: "Cannot check peer frame rows",
      // A lost check is read again for as long as it takes; a locked file only so often.
      shouldRetry: (err) =>
        err instanceof Conflict || (isDatabaseLocked(err) && ++locked <= LOCKED_RETRIES),
    });
  }

  async #flushMarks(): Promise<void> {
    this.#marking = true;
    try {
      while (this.#markQueue.length > 0) {
        const batch = this.#markQueue.splice(0, 500);
        const rows = await Promise.all(batch.map((p) => this.#rowKey(p)));
        try {
          await retry(async () => {
            const op = this.#kv!.atomic();
            for (const k of rows) op.set(k, 1, { expireIn: this.#rowTtlMs });
            this.stats.kvCommits++;
            await op.commit();
          }, {
            ...BACKOFF,
            what: "Cannot store peer frame rows",
            maxAttempts: LOCKED_RETRIES + 1,
            shouldRetry: isDatabaseLocked,
          });
        } catch (err) {
          this.#warn("peer frame rows not stored", { error: errorText(err) });
        }
        for (const p of batch) p.done();
      }
    } finally {
      this.#marking = false;
    }
  }
}

/**
 * The resync comparison's list: the first 8 bytes of SHA-256 (type byte and
 * bytes) of each frame, concatenated, base64. 200 frames fit in 2,136
 * characters, so the list rides in a header within the 4 KiB header bound.
 */
export async function shortHashes(frames: Frame[]): Promise<string> {
  let bin = "";
  for (const f of frames) {
    const d = await digest(f);
    for (let i = 0; i < 8; i++) bin += String.fromCharCode(d[i]);
  }
  return btoa(bin);
}
