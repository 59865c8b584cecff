/**
 * @module
 * The duplicate-session rule (SPEC section 5) for a whole deployment: one
 * session per (uid, channel, auth) however many isolates serve it. The auth
 * counts by its value, as the server compares it (SPEC section 4), so
 * `00ab`, `AB` and `+ab` are one identity. Two implementations:
 *
 * - {@link KvSessionClaims}: the identity is claimed in Deno KV at join and
 *   released at close. Claims made at once share commits (up to
 *   {@link CLAIMS_PER_COMMIT} in one, at most {@link CLAIM_COMMITS_IN_FLIGHT}
 *   in flight), and so do releases: a join storm of a thousand sockets is
 *   about 130 commits, not a thousand queued ahead of the frame writer. Each claim names its owner
 *   isolate; the owner's liveness is one record `{ until }` that the isolate
 *   renews with one commit per heartbeat while it holds any claim (not one
 *   per session). A claim whose owner's `until` has passed is free: a new
 *   session takes it over with a check on both versionstamps. So a crashed
 *   isolate's claims are free at most `ttlMs` (15 s) after it died. The
 *   deadline lives in the value because an expired KV row stays readable.
 * - {@link MemorySessionClaims}: a set in this isolate's memory, for
 *   `MLES_BUS=memory` (one isolate, no KV).
 *
 * Imports: kv_keys, retry.
 */
import { claimOwnerKey, sessionClaimKey } from "./kv_keys.ts";
import { type BackoffOptions, errorText, isDatabaseLocked, retry, sleep } from "./retry.ts";

/** Who holds which session identity; the session layer asks before joining. */
export interface SessionClaims {
  /**
   * Takes `identity` (see {@link sessionIdentity}) for one session. False if
   * a live session holds it, on this isolate or any other.
   */
  claim(identity: string): Promise<boolean>;
  /** Gives `identity` back so a reconnect can take it at once. Never throws. */
  release(identity: string): void;
  /** Releases everything this isolate holds (bounded wait). */
  close(): Promise<void>;
}

/**
 * The identity SPEC section 5 compares: uid, channel and the auth VALUE
 * (16 lowercase hex digits, or null when absent). JSON, not a separator:
 * uid and channel may hold any ASCII, NUL included. `auth` must already
 * have passed the auth check (so it parses); an unparsable value is kept
 * as sent.
 */
export function sessionIdentity(uid: string, channel: string, auth: string | undefined): string {
  return JSON.stringify([uid, channel, auth === undefined ? null : authValue(auth)]);
}

/** `auth` as the number the server compares (SPEC section 4), in canonical hex. */
function authValue(auth: string): string {
  const digits = auth.startsWith("+") ? auth.slice(1) : auth;
  if (!/^[0-9a-fA-F]{1,}$/.test(digits)) return auth;
  return BigInt("0x" + digits).toString(16).padStart(16, "0");
}

/** {@link SessionClaims} for one isolate with no KV (`MLES_BUS=memory`). */
export class MemorySessionClaims implements SessionClaims {
  readonly #held = new Set<string>();

  claim(identity: string): Promise<boolean> {
    if (this.#held.has(identity)) return Promise.resolve(false);
    this.#held.add(identity);
    return Promise.resolve(true);
  }

  release(identity: string): void {
    this.#held.delete(identity);
  }

  /** Identities held (for tests). */
  get size(): number {
    return this.#held.size;
  }

  close(): Promise<void> {
    this.#held.clear();
    return Promise.resolve();
  }
}

/** Settings of {@link KvSessionClaims}. */
export interface KvSessionClaimsOptions {
  /** This isolate's id (unique per isolate and per start). */
  readonly owner: string;
  /** A claim is free this long after its owner's last heartbeat (default 15 s). */
  readonly ttlMs?: number;
  /** Heartbeat period while claims are held (default ttlMs / 3). */
  readonly heartbeatMs?: number;
  /** How long a join waits for KV before falling back to this isolate's check (default 3 s). */
  readonly kvTimeoutMs?: number;
  /** Warnings (KV trouble, a heartbeat that came too late). */
  readonly warn?: (message: string, fields?: Record<string, unknown>) => void;
}

interface ClaimValue {
  readonly owner: string;
}

interface OwnerValue {
  readonly until: number;
}

/** What this isolate holds for one identity. */
interface Held {
  readonly key: Deno.KvKey;
  /** Versionstamp of our claim row; null = held locally only (KV did not answer). */
  versionstamp: string | null;
  /** When the claim row was written (rows are rewritten before they expire). */
  setAt: number;
}

/** Claim rows expire this long after they were written; a heartbeat rewrites older ones. */
const CLAIM_EXPIRE_MS = 7 * 86_400_000;
const CLAIM_REWRITE_MS = 86_400_000;
/** denokv's portable bound on checks per atomic commit (and keys per getMany). */
const MAX_CHECKS = 10;
/** Claims that share one read and one commit, at most. */
export const CLAIMS_PER_COMMIT = 8;
/** Shared claim commits in flight at once per isolate; later claims wait and go together. */
export const CLAIM_COMMITS_IN_FLIGHT = 8;

/** A claim waiting for a shared commit: its versionstamp, false if held, null to try alone. */
interface QueuedClaim {
  readonly key: Deno.KvKey;
  readonly done: (result: string | false | null) => void;
}

/** A release waiting for a shared commit. */
interface QueuedRelease {
  readonly key: Deno.KvKey;
  readonly versionstamp: string;
}

const encoder = new TextEncoder();

/** Base64url of the first 128 bits of SHA-256: a short key part for a long identity. */
async function identityHash(identity: string): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(identity)));
  let bin = "";
  for (let i = 0; i < 16; i++) bin += String.fromCharCode(d[i]);
  return btoa(bin).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** Between attempts to claim: 2 ms doubling to 200 ms, jittered by half. */
const CLAIM_BACKOFF: BackoffOptions = { minMs: 2, maxMs: 200, jitter: 0.5 };
/** Between attempts of a release or heartbeat commit: 5 ms doubling to 500 ms (a few seconds in all). */
const COMMIT_BACKOFF: BackoffOptions = { minMs: 5, maxMs: 500, jitter: 0.5 };

/** A claim's checks failed: someone wrote the row meanwhile; read again. */
class Conflict extends Error {}

/** {@link SessionClaims} shared by every isolate on one Deno KV. */
export class KvSessionClaims implements SessionClaims {
  readonly #kv: Deno.Kv;
  readonly #owner: string;
  readonly #ttlMs: number;
  readonly #heartbeatMs: number;
  readonly #kvTimeoutMs: number;
  readonly #warn: NonNullable<KvSessionClaimsOptions["warn"]>;
  readonly #held = new Map<string, Held>();
  /** Identities whose claim is in flight on this isolate. */
  readonly #pending = new Set<string>();
  readonly #tasks = new Set<Promise<unknown>>();
  #timer: ReturnType<typeof setInterval> | undefined;
  readonly #claimQueue: QueuedClaim[] = [];
  #claimCommits = 0;
  #releaseQueue: QueuedRelease[] = [];
  /** Our owner record's deadline as last written. */
  #liveUntil = 0;
  #closed = false;

  constructor(kv: Deno.Kv, options: KvSessionClaimsOptions) {
    this.#kv = kv;
    this.#owner = options.owner;
    this.#ttlMs = options.ttlMs ?? 15_000;
    this.#heartbeatMs = options.heartbeatMs ?? Math.floor(this.#ttlMs / 3);
    this.#kvTimeoutMs = options.kvTimeoutMs ?? 3_000;
    this.#warn = options.warn ?? (() => {});
  }

  /** Identities held by this isolate (for tests and metrics). */
  get size(): number {
    return this.#held.size;
  }

  async claim(identity: string): Promise<boolean> {
    if (this.#closed || this.#held.has(identity) || this.#pending.has(identity)) return false;
    this.#pending.add(identity);
    try {
      const key = sessionClaimKey(await identityHash(identity));
      // Most claims go in a commit shared with the claims made at the same
      // time; one that met a conflict or a KV error there is tried alone.
      let won = await new Promise<string | false | null>((done) => {
        this.#claimQueue.push({ key, done });
        this.#pumpClaims();
      });
      if (this.#closed) return false;
      if (won === null) won = await this.#claimAlone(key);
      if (won === false) return false;
      this.#held.set(identity, { key, versionstamp: won, setAt: Date.now() });
      if (won !== null) this.#startHeartbeat();
      return true;
    } finally {
      this.#pending.delete(identity);
    }
  }

  /**
   * Claims `key` alone, retrying conflicts, and `database is locked` until
   * the KV deadline: our versionstamp, false if a live session holds it, or
   * null when KV is not answering (the join then goes ahead with this
   * isolate's check only, logged: local delivery must not depend on KV).
   */
  async #claimAlone(key: Deno.KvKey): Promise<string | false | null> {
    const deadline = Date.now() + this.#kvTimeoutMs;
    try {
      return await retry(async () => {
        const won = await this.#tryClaim(key);
        if (won === null) throw new Conflict("the claim row changed meanwhile");
        return won;
      }, {
        ...CLAIM_BACKOFF,
        what: "Cannot claim the session in KV",
        shouldRetry: (err) =>
          err instanceof Conflict || (isDatabaseLocked(err) && Date.now() <= deadline),
      });
    } catch (err) {
      this.#warn("session claim without KV: checked on this isolate only", {
        error: errorText(err),
      });
      return null;
    }
  }

  /** Starts shared claim commits while fewer than CLAIM_COMMITS_IN_FLIGHT are running. */
  #pumpClaims(): void {
    while (this.#claimCommits < CLAIM_COMMITS_IN_FLIGHT && this.#claimQueue.length > 0) {
      const batch = this.#claimQueue.splice(0, CLAIMS_PER_COMMIT);
      this.#claimCommits++;
      this.#claimTogether(batch).finally(() => {
        this.#claimCommits--;
        this.#pumpClaims();
      });
    }
  }

  /**
   * One strong read of every claim row (and of foreign owners' records),
   * then one commit taking every free row, checked like {@link #tryClaim}.
   * Each claim is answered: its versionstamp, false (a live session holds
   * it), or null (conflict, KV error, no room for its checks: try alone).
   */
  async #claimTogether(batch: QueuedClaim[]): Promise<void> {
    const open = new Set(batch);
    const answer = (q: QueuedClaim, result: string | false | null) => {
      if (open.delete(q)) q.done(result);
    };
    try {
      if (this.#closed) return;
      const rows = await this.#kv.getMany<ClaimValue[]>(batch.map((q) => q.key), {
        consistency: "strong",
      });
      const holders = [
        ...new Set(rows.map((r) => r.value?.owner).filter((o) => o && o !== this.#owner)),
      ] as string[];
      const owners = new Map<string, Deno.KvEntryMaybe<OwnerValue>>();
      if (holders.length > 0) {
        const got = await this.#kv.getMany<OwnerValue[]>(holders.map(claimOwnerKey), {
          consistency: "strong",
        });
        holders.forEach((h, i) => owners.set(h, got[i]));
      }
      const op = this.#kv.atomic();
      const taking: QueuedClaim[] = [];
      const checkedOwners = new Set<string>();
      let checks = 0;
      const now = Date.now();
      batch.forEach((q, i) => {
        const holder = rows[i].value?.owner;
        const o = holder !== undefined && holder !== this.#owner ? owners.get(holder)! : undefined;
        if (o?.value && o.value.until > now) return answer(q, false);
        const extra = o && !checkedOwners.has(holder!) ? 1 : 0;
        if (checks + 1 + extra > MAX_CHECKS) return answer(q, null);
        if (extra) {
          op.check(o!); // its owner stopped renewing: take over unless it renews meanwhile
          checkedOwners.add(holder!);
        }
        op.check(rows[i]).set(q.key, { owner: this.#owner } satisfies ClaimValue, {
          expireIn: CLAIM_EXPIRE_MS,
        });
        checks += 1 + extra;
        taking.push(q);
      });
      if (taking.length === 0) return;
      const until = Date.now() + this.#ttlMs;
      op.set(claimOwnerKey(this.#owner), { until } satisfies OwnerValue, {
        expireIn: this.#ttlMs * 4,
      });
      const res = await op.commit();
      if (!res.ok) return; // one row changed meanwhile: each is tried alone
      this.#liveUntil = Math.max(this.#liveUntil, until);
      for (const q of taking) answer(q, res.versionstamp);
    } catch {
      // KV error: each claim is tried alone, with retries and its deadline.
    } finally {
      for (const q of open) q.done(null);
    }
  }

  /** One read (two if the row has another owner) and one commit: our versionstamp, false if held, null to retry. */
  async #tryClaim(key: Deno.KvKey): Promise<string | false | null> {
    const cur = await this.#kv.get<ClaimValue>(key, { consistency: "strong" });
    const op = this.#kv.atomic().check(cur);
    const holder = cur.value?.owner;
    if (holder !== undefined && holder !== this.#owner) {
      const o = await this.#kv.get<OwnerValue>(claimOwnerKey(holder), { consistency: "strong" });
      if (o.value && o.value.until > Date.now()) return false;
      // Its owner stopped renewing: take it over, unless the owner renews meanwhile.
      op.check(o);
    }
    // A row of our own that we no longer hold is a release still in flight: take it back.
    const until = Date.now() + this.#ttlMs;
    op.set(key, { owner: this.#owner } satisfies ClaimValue, { expireIn: CLAIM_EXPIRE_MS })
      .set(claimOwnerKey(this.#owner), { until } satisfies OwnerValue, {
        expireIn: this.#ttlMs * 4,
      });
    const res = await op.commit();
    if (!res.ok) return null;
    this.#liveUntil = until;
    return res.versionstamp;
  }

  release(identity: string): void {
    const h = this.#held.get(identity);
    if (!h) return;
    this.#held.delete(identity);
    if (h.versionstamp !== null) {
      this.#releaseQueue.push({ key: h.key, versionstamp: h.versionstamp });
      // Releases made in the same turn share commits.
      if (this.#releaseQueue.length === 1) queueMicrotask(() => this.#flushReleases());
    }
    if (this.#held.size === 0) this.#stopHeartbeat();
  }

  /** Deletes the queued claim rows, MAX_CHECKS per commit, each checked unchanged. */
  #flushReleases(): void {
    const all = this.#releaseQueue;
    this.#releaseQueue = [];
    for (let i = 0; i < all.length; i += MAX_CHECKS) {
      const group = all.slice(i, i + MAX_CHECKS);
      this.#track(this.#deleteRows(group));
    }
  }

  /** One commit for `group`; if a row was taken meanwhile (checks fail), the others alone. */
  async #deleteRows(group: QueuedRelease[]): Promise<void> {
    const build = (rows: QueuedRelease[]) => {
      const op = this.#kv.atomic();
      for (const r of rows) op.check(r).delete(r.key);
      return op;
    };
    const res = await this.#commit(() => build(group));
    if (res.ok || group.length === 1) return;
    await Promise.all(group.map((r) => this.#commit(() => build([r]))));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopHeartbeat();
    for (const q of this.#claimQueue.splice(0)) q.done(false);
    for (const h of this.#held.values()) {
      if (h.versionstamp !== null) {
        this.#releaseQueue.push({ key: h.key, versionstamp: h.versionstamp });
      }
    }
    this.#held.clear();
    this.#flushReleases();
    this.#track(this.#commit(() => this.#kv.atomic().delete(claimOwnerKey(this.#owner))));
    const settled = new AbortController();
    await Promise.race([
      Promise.allSettled([...this.#tasks]).then(() => settled.abort()),
      sleep(2_000, settled.signal),
    ]);
    settled.abort(); // clears the bound's timer
  }

  #startHeartbeat(): void {
    if (this.#timer !== undefined || this.#closed) return;
    this.#timer = setInterval(() => this.#track(this.#heartbeat()), this.#heartbeatMs);
  }

  #stopHeartbeat(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** One commit for every claim of this isolate; rewrites claim rows nearing their expiry. */
  async #heartbeat(): Promise<void> {
    const now = Date.now();
    if (now > this.#liveUntil && this.#liveUntil > 0) {
      // Stalled past our own deadline: another isolate may have taken some identities over.
      this.#warn("session claims lapsed: the heartbeat came late", {
        lateMs: now - this.#liveUntil,
      });
    }
    const until = now + this.#ttlMs;
    await this.#commit(() =>
      this.#kv.atomic().set(claimOwnerKey(this.#owner), { until } satisfies OwnerValue, {
        expireIn: this.#ttlMs * 4,
      })
    );
    this.#liveUntil = until;
    const old = [...this.#held.values()].filter((h) =>
      h.versionstamp !== null && now - h.setAt > CLAIM_REWRITE_MS
    ).slice(0, MAX_CHECKS);
    if (old.length > 0) {
      const op = this.#kv.atomic();
      for (const h of old) {
        op.check({ key: h.key, versionstamp: h.versionstamp })
          .set(h.key, { owner: this.#owner } satisfies ClaimValue, { expireIn: CLAIM_EXPIRE_MS });
      }
      const res = await op.commit();
      if (res.ok) {
        for (const h of old) Object.assign(h, { versionstamp: res.versionstamp, setAt: now });
      }
    }
  }

  /** Commits `build()`, retrying `database is locked` with backoff (a few seconds at most). */
  #commit(build: () => Deno.AtomicOperation): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
    return retry(() => build().commit(), {
      ...COMMIT_BACKOFF,
      what: "Cannot commit session claims",
      maxAttempts: 13,
      shouldRetry: isDatabaseLocked,
    });
  }

  #track(p: Promise<unknown>): void {
    const t = p.catch((err) => this.#warn("session claim store failed", { error: errorText(err) }))
      .finally(() => this.#tasks.delete(t));
    this.#tasks.add(t);
  }
}
