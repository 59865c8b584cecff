/**
 * @module
 * What `/healthz` says about the store: a timed write probe. Reads keep
 * working when KV cannot commit (a write lock held elsewhere, a full disk,
 * a Deploy KV outage), so only a write tells the truth. Probes run when
 * `/healthz` is asked, at most one at a time and one per `intervalMs`, so
 * polling it cannot become write load. Imports nothing.
 */

/** Options for {@link WriteProbe}. */
export interface WriteProbeOptions {
  /** At most one probe per this many ms (default 1000). */
  readonly intervalMs?: number;
  /** A probe unanswered for this long counts as failed (default 2000). */
  readonly timeoutMs?: number;
}

/**
 * Health from a write probe. Guarantees: {@link healthy} is false when the
 * last probe failed, or when one has hung for `timeoutMs`; so once every
 * write fails or hangs, `/healthz` answers 503 within `timeoutMs` (2 s) of
 * being asked. The first successful write makes it true again.
 */
export class WriteProbe {
  readonly #write: () => Promise<unknown>;
  readonly #intervalMs: number;
  readonly #timeoutMs: number;
  #inFlight: { since: number; done: Promise<void> } | undefined;
  #lastStart = -Infinity;
  #lastFailed = false;

  constructor(write: () => Promise<unknown>, options: WriteProbeOptions = {}) {
    this.#write = write;
    this.#intervalMs = options.intervalMs ?? 1000;
    this.#timeoutMs = options.timeoutMs ?? 2000;
  }

  /**
   * Starts a probe if one is due and waits for it (at most until it counts
   * as hung), then tells whether the store takes writes.
   */
  async healthy(): Promise<boolean> {
    const now = performance.now();
    if (!this.#inFlight && now - this.#lastStart >= this.#intervalMs) {
      this.#lastStart = now;
      const done = this.#write().then(() => this.#lastFailed = false, () => this.#lastFailed = true)
        .then(() => this.#inFlight = undefined);
      this.#inFlight = { since: now, done };
    }
    const p = this.#inFlight;
    if (p) {
      const left = this.#timeoutMs - (performance.now() - p.since);
      let timer: ReturnType<typeof setTimeout> | undefined;
      if (left > 0) {
        await Promise.race([p.done, new Promise((r) => timer = setTimeout(r, left))]);
      }
      clearTimeout(timer);
      if (this.#inFlight === p) return false; // hung for timeoutMs
    }
    return !this.#lastFailed;
  }
}
