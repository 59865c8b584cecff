/**
 * @module
 * The one retry mechanism: capped exponential backoff with jitter, a
 * deadline or an attempt bound, and the Deno KV error that is always worth
 * retrying (`database is locked`, from several SQLite handles on one file).
 * Every loop that retries (KV commits and reads, links to peers, the client)
 * uses this instead of its own sleep arithmetic. Imports nothing.
 */

/** How the wait grows between attempts. */
export interface BackoffOptions {
  /** Wait before the second attempt, in ms (before jitter). */
  readonly minMs: number;
  /** The wait never exceeds this, in ms (before jitter). */
  readonly maxMs: number;
  /** Growth per attempt (2 = doubling). */
  readonly multiplier?: number;
  /** 0..1: the wait is scaled by a random factor in [1 - jitter, 1 + jitter]. */
  readonly jitter?: number;
}

/**
 * The wait after failed attempt number `attempt` (0 = the first failure).
 * `random` is injectable so tests can step it; defaults to Math.random.
 */
export function backoffMs(
  attempt: number,
  opts: BackoffOptions,
  random: () => number = Math.random,
): number {
  const base = Math.min(opts.maxMs, opts.minMs * (opts.multiplier ?? 2) ** attempt);
  const jitter = opts.jitter ?? 0.5;
  return Math.max(0, base * (1 - jitter + 2 * jitter * random()));
}

/**
 * True for the error Deno KV throws when another handle on the same SQLite
 * file holds the write lock. It says nothing about the data: retry it.
 */
export function isDatabaseLocked(err: unknown): boolean {
  return err instanceof Error &&
    /database is locked|database is busy|SQLITE_BUSY/i.test(err.message);
}

/** The message of an error or the text of anything else thrown. */
export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** When {@link retry} gives up and what it tells the caller. */
export interface RetryOptions extends BackoffOptions {
  /** What is being tried, for the error message ("Cannot read channel history"). */
  readonly what: string;
  /** Give up after this many attempts (default: unbounded, so set a deadline). */
  readonly maxAttempts?: number;
  /** Give up once this time (Date.now() ms) has passed. */
  readonly deadline?: number;
  /** Whether an error is worth another attempt (default: every error). */
  readonly shouldRetry?: (err: unknown) => boolean;
  /** Called before each wait, e.g. to count or log the failure. */
  readonly onRetry?: (err: unknown, attempt: number) => void;
  /** Stops retrying early (e.g. on shutdown); the last error is thrown. */
  readonly signal?: AbortSignal;
}

/**
 * Runs `fn` until it resolves, waiting {@link backoffMs} between attempts.
 * @throws Error `"<what>: <last error>"` (cause: the last error) once the
 * error is not retryable, the attempts or the deadline are used up, or the
 * signal is aborted.
 */
export async function retry<T>(
  fn: (attempt: number) => Promise<T>,
  opts: RetryOptions,
): Promise<T> {
  for (let attempt = 0;; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      const wait = backoffMs(attempt, opts);
      const out = (opts.shouldRetry && !opts.shouldRetry(err)) ||
        (opts.maxAttempts !== undefined && attempt + 1 >= opts.maxAttempts) ||
        (opts.deadline !== undefined && Date.now() + wait > opts.deadline) ||
        opts.signal?.aborted;
      if (out) throw new Error(`${opts.what}: ${errorText(err)}`, { cause: err });
      opts.onRetry?.(err, attempt);
      await sleep(wait, opts.signal);
    }
  }
}

/** Resolves after `ms`, or at once when `signal` aborts; never leaves a timer behind. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}
