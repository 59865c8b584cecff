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
  /** A probe still unanswered after this long counts as failed (default 2000). */
  readonly timeoutMs?: number;
  /** Unhealthy once probes have kept failing this long (default 5000). */
  readonly failAfterMs?: number;
}

/**
 * Health from a write probe. Guarantee: once every write fails or hangs,
 * {@link healthy} turns false within `failAfterMs` + `intervalMs` of the
 * first failed probe (6 s by default, counting from the first `/healthz`
 * asked after the store broke); one successful write makes it true again.
 */
export class WriteProbe {
  readonly #write: () => Promise<unknown>;
  readonly #intervalMs: number;
  readonly #timeoutMs: number;
  readonly #failAfterMs: number;
  #inFlightSince: number | undefined;
  #lastStart = -Infinity;
  #failingSince: number | undefined;

  constructor(write: () => Promise<unknown>, options: WriteProbeOptions = {}) {
    this.#write = write;
    this.#intervalMs = options.intervalMs ?? 1000;
    this.#timeoutMs = options.timeoutMs ?? 2000;
    this.#failAfterMs = options.failAfterMs ?? 5000;
  }

  /** How long probes have kept failing, in ms (0 when the last one succeeded). */
  get failingMs(): number {
    const now = performance.now();
    let since = this.#failingSince;
    if (this.#inFlightSince !== undefined && now - this.#inFlightSince >= this.#timeoutMs) {
      since = Math.min(since ?? Infinity, this.#inFlightSince);
    }
    return since === undefined ? 0 : now - since;
  }

  /** Starts a probe if one is due, and tells whether the store has been failing too long. */
  healthy(): boolean {
    const now = performance.now();
    if (this.#inFlightSince === undefined && now - this.#lastStart >= this.#intervalMs) {
      this.#lastStart = now;
      this.#inFlightSince = now;
      this.#probe(now);
    }
    return this.failingMs < this.#failAfterMs;
  }

  async #probe(started: number): Promise<void> {
    let ok = false;
    try {
      await this.#write();
      ok = true;
    } catch {
      // counted below
    }
    this.#inFlightSince = undefined;
    if (ok) this.#failingSince = undefined;
    else this.#failingSince ??= started;
  }
}
