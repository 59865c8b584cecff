/**
 * @module
 * An exclusive, renewable right to run one thing (a peering bridge) among
 * the isolates that share one Deno KV. Imports: kv_keys, retry.
 */
import { leaseKey } from "./kv_keys.ts";
import { type BackoffOptions, isDatabaseLocked, retry } from "./retry.ts";

/** Between attempts: 5 ms doubling, jittered by half; five attempts in all. */
const BACKOFF: BackoffOptions = { minMs: 5, maxMs: 80, jitter: 0.5 };
const ATTEMPTS = 5;

interface LeaseValue {
  readonly owner: string;
  /** Deadline, ms since epoch: the holder and deadline live in the value, since an expired row may stay readable. */
  readonly until: number;
}

/** Another isolate wrote the lease between our read and our commit. */
class Conflict extends Error {}

const retryable = (err: unknown) => err instanceof Conflict || isDatabaseLocked(err);

/**
 * Leases in Deno KV held by `owner` (this isolate). A lease past its
 * deadline is free: it is taken over with a check on its versionstamp, so
 * two isolates never both win it.
 */
export class KvLease {
  readonly #kv: Deno.Kv;
  readonly #owner: string;

  constructor(kv: Deno.Kv, owner: string) {
    this.#kv = kv;
    this.#owner = owner;
  }

  /**
   * Takes or renews the lease `name` for `ms`. Resolves false if another
   * holder has it, or if the commit kept losing to other writers or to a
   * locked file (a few attempts with backoff).
   * @throws Error from KV for anything else (e.g. KV closed).
   */
  async acquire(name: string, ms: number): Promise<boolean> {
    const key = leaseKey(await nameHash(name));
    try {
      return await retry(async () => {
        const cur = await this.#kv.get<LeaseValue>(key, { consistency: "strong" });
        const now = Date.now();
        if (cur.value && cur.value.owner !== this.#owner && cur.value.until > now) return false;
        const value: LeaseValue = { owner: this.#owner, until: now + ms };
        const res = await this.#kv.atomic().check(cur).set(key, value, { expireIn: ms * 4 })
          .commit();
        if (!res.ok) throw new Conflict("the lease changed meanwhile");
        return true;
      }, { ...BACKOFF, what: "Cannot take lease", maxAttempts: ATTEMPTS, shouldRetry: retryable });
    } catch (err) {
      if (retryable((err as Error).cause)) return false;
      throw err;
    }
  }

  /** Gives the lease up if this owner holds it (best effort: a lost check leaves it to expire). */
  async release(name: string): Promise<void> {
    const key = leaseKey(await nameHash(name));
    const cur = await this.#kv.get<LeaseValue>(key, { consistency: "strong" });
    if (cur.value?.owner === this.#owner) await this.#kv.atomic().check(cur).delete(key).commit();
  }
}

/** Hex of the first 128 bits of SHA-256: a short key part for a long name. */
async function nameHash(name: string): Promise<string> {
  const d = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(name)),
  );
  return Array.from(d.subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
}
