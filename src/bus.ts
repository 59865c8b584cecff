/**
 * @module
 * The contract between this isolate's hub and the store that carries frames
 * to other isolates and keeps history. Two implementations: `KvBus` (Deno KV,
 * the default; what Deploy runs) and `MemoryBus` (one isolate, no KV; for
 * tests and quick local runs). Imports: frame (type).
 */
import type { Delivery, Position } from "./frame.ts";

/** Callbacks the hub registers with its bus; the bus never imports the hub. */
export interface BusHandler {
  /**
   * Frames of `channel` committed by OTHER isolates, in commit order, each
   * with its `pos`. Called at most once per frame per isolate, only for
   * channels this isolate subscribed to, only for frames committed after the
   * subscription began. Never called with `historyOnly` frames or with frames
   * this isolate published (it delivered those itself).
   */
  onFrames(channel: string, deliveries: Delivery[]): void;
  /**
   * A frame published on this isolate that was not stored within the store
   * timeout (reported once); it reached this isolate's members but perhaps
   * no other isolate.
   */
  onPublishFailed(channel: string, delivery: Delivery, error: Error): void;
}

/** What a newcomer is shown: the channel's recent frames and where they end. */
export interface History {
  /** At most `limit` frames, oldest first, including this isolate's not-yet-stored ones. */
  readonly deliveries: Delivery[];
  /**
   * The boundary between history and live: every stored frame with
   * `pos <= lastPos` is in `deliveries` or older than all of them, so a live
   * frame at or before it must not be sent again. "" when nothing is stored.
   */
  readonly lastPos: Position;
}

/**
 * Carries frames between isolates and keeps per-channel history.
 *
 * Guarantees every implementation keeps (tests/bus_contract.ts checks them):
 * - Frames published to a channel on one isolate are stored in publish order
 *   and get increasing positions (`pos`); history is one order (commit
 *   order), read the same from every isolate, and positions never go back
 *   (restarts and channel expiry included).
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
   * Queues a frame to be stored after every frame published before it on
   * this channel; `delivery.pos` is set when its commit succeeds. Returns
   * false, queueing nothing, when the store queue (bounded in bytes) is full
   * or the publisher (`delivery.source`) already has its share waiting: the
   * caller must then slow or close that publisher, not deliver the frame.
   * Never throws; a frame not stored in time is reported through
   * `onPublishFailed`.
   */
  publish(channel: string, delivery: Delivery): boolean;
  /**
   * The channel's newest frames within its frame and byte bounds, oldest
   * first, including this isolate's not-yet-stored ones, and the boundary
   * `lastPos`. Reads no further back than needed.
   */
  history(channel: string): Promise<History>;
  /** Stores what is queued (bounded wait), stops following everything, releases resources. */
  close(): Promise<void>;
}
