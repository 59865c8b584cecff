/**
 * @module
 * `MemoryBus`: one isolate only, history in memory (lost on restart). For
 * tests and `MLES_BUS=memory` single-process runs; it never calls `onFrames`
 * because there is no other isolate. Imports: bus, frame.
 */
import type { Bus, BusHandler, History } from "./bus.ts";
import type { Delivery } from "./frame.ts";

/** {@link Bus} held in this isolate's memory. */
export class MemoryBus implements Bus {
  readonly #limit: number;
  readonly #channels = new Map<string, { head: number; log: Delivery[] }>();

  /** `limit`: frames of history kept per channel. */
  constructor(limit: number) {
    this.#limit = limit;
  }

  listen(_handler: BusHandler): void {}

  subscribe(_channel: string): Promise<void> {
    return Promise.resolve();
  }

  unsubscribe(_channel: string): void {}

  publish(channel: string, delivery: Delivery): void {
    let ch = this.#channels.get(channel);
    if (!ch) this.#channels.set(channel, ch = { head: 0, log: [] });
    delivery.seq = ++ch.head;
    ch.log.push(delivery);
    // Trim in batches so the array shift cost stays amortised O(1).
    if (ch.log.length >= this.#limit * 2) ch.log.splice(0, ch.log.length - this.#limit);
  }

  history(channel: string): Promise<History> {
    const ch = this.#channels.get(channel);
    if (!ch) return Promise.resolve({ deliveries: [], lastSeq: 0 });
    return Promise.resolve({ deliveries: ch.log.slice(-this.#limit), lastSeq: ch.head });
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
