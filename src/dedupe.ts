/**
 * @module
 * A bounded window of recently seen frames, for whoever forwards between
 * servers: it drops what it has already seen, or frames loop forever
 * (SPEC section 6; mles-client keeps 40,000). Imports: siphash.
 */
import { siphash24Halves } from "./siphash.ts";

const encoder = new TextEncoder();

/** mles-client's window size. */
const DEFAULT_CAPACITY = 40_000;

/**
 * Remembers the last `capacity` distinct frames, each identified by its type
 * (text or binary) and its exact bytes (UTF-8 for text), and answers "first
 * sight?" in O(size of the frame). Oldest entries are forgotten first (FIFO,
 * not LRU: seeing a frame again does not extend its life).
 *
 * Why keyed SipHash-2-4 and not a faster FNV/murmur-style hash: the window
 * decides which frames get *dropped*, and frames come from anyone. With a
 * public hash, a client could craft a frame that collides with one it expects
 * another member to send (a fixed announcement, a resync replay) and so
 * suppress it across the peering. SipHash under a random per-process,
 * per-type key is a PRF: nobody outside the process can aim a collision, and
 * the chance of an accidental one among 40,000 entries is about 2^-48 per
 * frame. Text and binary use different keys, so the type is part of the
 * identity without copying the bytes. The cost is speed: SipHash in
 * JavaScript on 32-bit halves runs at roughly 80 MB/s, so a 1 MiB frame
 * costs ~12 ms of CPU. Only frames that cross a peering link pass through a
 * window, and that is what we chose to pay for it.
 *
 * Memory: one 16-character string per entry in a Set plus the same string in
 * a ring array, about 3-4 MB at the default capacity.
 */
export class Dedupe {
  /** How many frames the window holds before evicting the oldest. */
  readonly capacity: number;
  readonly #keys = {
    text: crypto.getRandomValues(new Uint8Array(16)),
    binary: crypto.getRandomValues(new Uint8Array(16)),
  };
  readonly #set = new Set<string>();
  readonly #ring: string[] = [];
  #oldest = 0;

  /**
   * @param capacity frames remembered, an integer >= 1 (default 40,000).
   * @throws {RangeError} for any other capacity.
   */
  constructor(capacity: number = DEFAULT_CAPACITY) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`Dedupe capacity must be an integer >= 1: got ${capacity}`);
    }
    this.capacity = capacity;
  }

  /**
   * Records a frame and says whether this is its first sight: true if this
   * exact frame (same type, same bytes) is not among the last `capacity`
   * distinct frames recorded (it is now recorded, evicting the oldest entry
   * when full); false for a repeat (the window is then unchanged). A string
   * is identified by its UTF-8 bytes.
   */
  firstSight(kind: "text" | "binary", data: string | Uint8Array): boolean {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    const [hi, lo] = siphash24Halves(this.#keys[kind], bytes);
    const id = hi.toString(16).padStart(8, "0") + lo.toString(16).padStart(8, "0");
    if (this.#set.has(id)) return false;
    if (this.#ring.length < this.capacity) this.#ring.push(id);
    else {
      this.#set.delete(this.#ring[this.#oldest]);
      this.#ring[this.#oldest] = id;
      this.#oldest = (this.#oldest + 1) % this.capacity;
    }
    this.#set.add(id);
    return true;
  }

  /** Frames currently remembered (at most `capacity`). */
  get size(): number {
    return this.#set.size;
  }
}
