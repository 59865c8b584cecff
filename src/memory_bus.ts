/**
 * @module
 * `MemoryBus`: one isolate only, history in memory (lost on restart). For
 * tests and `MLES_BUS=memory` single-process runs; it never calls `onFrames`
 * because there is no other isolate. Imports: bus (type), frame.
 */
import type { Bus, BusHandler, History } from "./bus.ts";
import { type Delivery, position } from "./frame.ts";

/** {@link Bus} held in this isolate's memory. */
export class MemoryBus implements Bus {
  readonly #limit: number;
  readonly #channels = new Map<string, { log: Delivery[] }>();
  /** One counter for all channels, like a commit versionstamp. */
  #stamp = 0;

  /** `limit`: frames of history kept per channel. */
  constructor(limit: number) {
    this.#limit = limit;
  }

  listen(_handler: BusHandler): void {}

  subscribe(_channel: string): Promise<void> {
    return Promise.resolve();
  }

  unsubscribe(_channel: string): void {}

  /** Always stores at once (memory is bounded by the history limit): never refuses. */
  publish(channel: string, delivery: Delivery): boolean {
    let ch = this.#channels.get(channel);
    if (!ch) this.#channels.set(channel, ch = { log: [] });
    delivery.pos = position((++this.#stamp).toString(16).padStart(20, "0"), 0);
    ch.log.push(delivery);
    // Trim in batches so the array shift cost stays amortised O(1).
    if (ch.log.length >= this.#limit * 2) ch.log.splice(0, ch.log.length - this.#limit);
    return true;
  }

  history(channel: string): Promise<History> {
    const ch = this.#channels.get(channel);
    if (!ch) return Promise.resolve({ deliveries: [], lastPos: "" });
    const deliveries = ch.log.slice(-this.#limit);
    return Promise.resolve({ deliveries, lastPos: ch.log.at(-1)?.pos ?? "" });
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
