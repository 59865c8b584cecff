/**
 * @module
 * The contract between this isolate's hub and the store that carries frames
 * to other isolates and keeps history. Two implementations: `KvBus` (Deno KV,
 * the default; what Deploy runs) and `MemoryBus` (one isolate, no KV; for
 * tests and quick local runs). Imports: frame.
 */
import type { Delivery } from "./frame.ts";

/** Callbacks the hub registers with its bus; the bus never imports the hub. */
export interface BusHandler {
  /**
   * Frames of `channel` committed by OTHER isolates, in commit order, each
   * with its `seq`. Called at most once per frame per isolate, only for
   * channels this isolate subscribed to, only for frames committed after the
   * subscription began. Never called with `historyOnly` frames or with frames
   * this isolate published (it delivered those itself).
   */
  onFrames(channel: string, deliveries: Delivery[]): void;
  /**
   * A frame published on this isolate that could not be stored after
   * retrying; it reached this isolate's members but no other isolate.
   */
  onPublishFailed(channel: string, delivery: Delivery, error: Error): void;
}

/** What a newcomer is shown: the channel's recent frames and where they end. */
export interface History {
  /** At most `limit` frames, oldest first, including this isolate's not-yet-stored ones. */
  readonly deliveries: Delivery[];
  /** Every committed frame with `seq <= lastSeq` is either in `deliveries` or older than them. */
  readonly lastSeq: number;
}

/**
 * Carries frames between isolates and keeps per-channel history.
 *
 * Guarantees every implementation keeps (tests/bus_contract.ts checks them):
 * - Frames published to a channel on one isolate are stored in publish order
 *   and get increasing `seq`s; history is one order (commit order) for everyone.
 * - A subscribed isolate gets every frame other isolates commit after its
 *   `subscribe` resolved, exactly once, in commit order (via `onFrames`).
 * - `history` reads at least every frame committed before it was called.
 * The caller's duty: publish only to channels it subscribed to, and publish
 * one channel's frames from one place in order (the hub does).
 */
export interface Bus {
  /** Registers the hub's callbacks. Called once, before anything else. */
  listen(handler: BusHandler): void;
  /**
   * Starts following `channel`: once resolved, frames others commit from then
   * on reach `onFrames`. Rejects (channel named in the message) if the store
   * cannot be read; the caller then has no subscription.
   */
  subscribe(channel: string): Promise<void>;
  /**
   * Stops following `channel` (also while its `subscribe` is still pending;
   * a later `subscribe` starts afresh). Frames already queued by `publish`
   * are still stored.
   */
  unsubscribe(channel: string): void;
  /**
   * Queues a frame this isolate already delivered to its own members. It is
   * stored after every frame published before it on this channel, and
   * `delivery.seq` is set when its commit succeeds. Never throws; a frame
   * that cannot be stored is reported through `onPublishFailed`.
   */
  publish(channel: string, delivery: Delivery): void;
  /** The last `limit` frames of the channel, including this isolate's queued ones. */
  history(channel: string): Promise<History>;
  /** Stores what is queued (bounded wait), stops following everything, releases resources. */
  close(): Promise<void>;
}
