/**
 * @module
 * A token bucket for per-connection limits (frames per second, bytes per
 * second). Pure: time comes from an injected clock. Imports nothing.
 */

/**
 * A token bucket holding at most `burst` tokens (default one second's
 * worth, `rate`) and refilled evenly at `rate` per second. It starts full,
 * so a client may take up to `burst` at once; after that it may take `rate`
 * per second on average.
 */
export class RateBucket {
  readonly #rate: number;
  readonly #burst: number;
  readonly #now: () => number;
  #tokens: number;
  #at: number;

  /**
   * `rate` per second (> 0), at most `burst` (> 0, default `rate`) at once;
   * `now` gives milliseconds (default `performance.now`).
   */
  constructor(rate: number, now: () => number = () => performance.now(), burst = rate) {
    this.#rate = rate;
    this.#burst = burst;
    this.#now = now;
    this.#tokens = burst;
    this.#at = now();
  }

  /**
   * Takes `n` tokens. False once the taker has gone over its allowance (the
   * tokens stay taken: a refused taker must wait for the refill like any).
   */
  take(n: number): boolean {
    this.#refill();
    this.#tokens -= n;
    return this.#tokens >= 0;
  }

  /** Milliseconds until the taker is back within its allowance (0 if it is). */
  waitMs(): number {
    this.#refill();
    return this.#tokens >= 0 ? 0 : (-this.#tokens / this.#rate) * 1000;
  }

  #refill(): void {
    const now = this.#now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#at) / 1000) * this.#rate);
    this.#at = now;
  }
}
