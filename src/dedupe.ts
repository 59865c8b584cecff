/**
 * @module
 * A bounded window of recently seen frames, for peering: whoever forwards
 * between servers drops what it has already seen, or frames loop forever
 * (SPEC section 6; mles-client keeps 40,000). Imports: auth.
 */
import { siphash24 } from "./auth.ts";

const encoder = new TextEncoder();

/**
 * Remembers the last `capacity` distinct frames (type + exact bytes) by a
 * keyed 64-bit SipHash. The key is random per process, so frames cannot be
 * crafted to collide with others. Oldest entries are forgotten first.
 */
export class Dedupe {
  readonly #capacity: number;
  readonly #key = crypto.getRandomValues(new Uint8Array(16));
  readonly #set = new Set<bigint>();
  readonly #ring: bigint[] = [];
  #next = 0;

  constructor(capacity = 40_000) {
    this.#capacity = capacity;
  }

  /** True if this exact frame is in the window; otherwise records it and returns false. */
  seen(kind: "text" | "binary", data: string | Uint8Array): boolean {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    const tagged = new Uint8Array(bytes.length + 1);
    tagged[0] = kind === "text" ? 1 : 2;
    tagged.set(bytes, 1);
    const h = siphash24(this.#key, tagged);
    if (this.#set.has(h)) return true;
    if (this.#ring.length < this.#capacity) this.#ring.push(h);
    else {
      this.#set.delete(this.#ring[this.#next]);
      this.#ring[this.#next] = h;
      this.#next = (this.#next + 1) % this.#capacity;
    }
    this.#set.add(h);
    return false;
  }

  /** Frames currently remembered. */
  get size(): number {
    return this.#set.size;
  }
}
