/**
 * @module
 * Gives memory the process freed back to the operating system. Sockets,
 * frames and KV values live in buffers malloc hands out outside the V8
 * heap; after a burst (a flood, an attack) they are freed, but glibc keeps
 * the pages in its arenas, so the process stays as large as its peak. A
 * periodic `malloc_trim(0)` (glibc, through FFI: Linux only, needs
 * `--allow-ffi`, which `deno task start` has) returns them: in the adversary
 * soak, RSS after the attack went from 155 to 105 MiB. And V8 keeps the
 * heap it grew during the burst until it next needs to collect, which an
 * idle server never does: where `gc` is exposed (`deno task start` runs
 * with `--v8-flags=--expose-gc`), the first quiet turn after a busy one
 * also runs one full collection that gives unused heap back (about 5 MiB
 * after the soak's mix; a pause of 40-60 ms, once per burst). Not used
 * under `deno serve` or Deploy. Imports nothing.
 */

/** A running trimmer. */
export interface MemoryReturn {
  /** Stops trimming. */
  stop(): void;
}

/** Trims at most this often. */
export const INTERVAL_MS = 10_000;
/** ...and only while RSS is this much above where it was at start. */
export const GROWTH_BYTES = 16 * 1024 * 1024;
/** A turn with more frames in and out than this per second is busy; one with fewer is quiet. */
export const QUIET_FRAMES_PER_S = 200;

/** What one turn of the trimmer sees. */
export interface MemorySample {
  /** Resident set size, bytes. */
  readonly rss: number;
  /** Frames in plus frames out since start (a counter). */
  readonly frames: number;
}

/** What one turn does: nothing, `malloc_trim`, or a full V8 collection then `malloc_trim`. */
export type ReturnAction = "none" | "trim" | "collect";

/**
 * When to give memory back, one decision per {@link INTERVAL_MS} turn.
 * Nothing while RSS is within {@link GROWTH_BYTES} of `floor`. Above it: a
 * trim, skipped while the last one returned less than a quarter of
 * GROWTH_BYTES and RSS has not moved by GROWTH_BYTES since (a trim that
 * finds nothing is not repeated every turn); and, when `canCollect`, the
 * first quiet turn (at most {@link QUIET_FRAMES_PER_S}) after a busy one
 * collects before it trims, once per burst, never while busy.
 */
export class ReturnPolicy {
  readonly #floor: number;
  readonly #canCollect: boolean;
  #lastFrames: number | undefined;
  #busySinceCollect = false;
  #lastAfter: number;
  #lastFreed = Infinity;

  constructor(floor: number, canCollect: boolean) {
    this.#floor = floor;
    this.#canCollect = canCollect;
    this.#lastAfter = floor;
  }

  /** The action for this turn, given the sample at its start. */
  decide(s: MemorySample): ReturnAction {
    const perS = this.#lastFrames === undefined
      ? 0
      : (s.frames - this.#lastFrames) / (INTERVAL_MS / 1000);
    this.#lastFrames = s.frames;
    const busy = perS > QUIET_FRAMES_PER_S;
    if (busy) this.#busySinceCollect = true;
    if (s.rss < this.#floor + GROWTH_BYTES) return "none";
    if (this.#canCollect && !busy && this.#busySinceCollect) {
      this.#busySinceCollect = false;
      return "collect";
    }
    if (
      this.#lastFreed < GROWTH_BYTES / 4 && Math.abs(s.rss - this.#lastAfter) < GROWTH_BYTES
    ) return "none";
    return "trim";
  }

  /** Records what the action returned: RSS before and after it. */
  done(before: number, after: number): void {
    this.#lastAfter = after;
    this.#lastFreed = before - after;
  }
}

/** V8's `gc()` as `--expose-gc` installs it (V8 15: options pick the kind of collection). */
type ExposedGc = (options: { type: "major"; execution: "sync"; flavor: "last-resort" }) => void;

/**
 * Starts giving memory back every {@link INTERVAL_MS} as
 * {@link ReturnPolicy} decides; `frames` counts frames in and out (the
 * busy/quiet signal; without it every turn is quiet and no collection
 * runs). Undefined where glibc's `malloc_trim` is not available (not
 * Linux/glibc, no FFI permission). A trim takes about 1 ms, up to about
 * 15 ms when it returns a hundred megabytes.
 */
export function startMemoryReturn(frames: () => number = () => 0): MemoryReturn | undefined {
  if (Deno.build.os !== "linux") return undefined;
  let lib;
  try {
    lib = Deno.dlopen("libc.so.6", {
      malloc_trim: { parameters: ["usize"], result: "i32" },
    });
  } catch {
    return undefined;
  }
  const trim = lib.symbols.malloc_trim;
  const gc = (globalThis as { gc?: ExposedGc }).gc;
  const policy = new ReturnPolicy(Deno.memoryUsage().rss, gc !== undefined);
  const timer = setInterval(() => {
    const rss = Deno.memoryUsage().rss;
    const action = policy.decide({ rss, frames: frames() });
    if (action === "none") return;
    if (action === "collect") gc!({ type: "major", execution: "sync", flavor: "last-resort" });
    trim(0n);
    policy.done(rss, Deno.memoryUsage().rss);
  }, INTERVAL_MS);
  Deno.unrefTimer(timer);
  return {
    stop() {
      clearInterval(timer);
      lib.close();
    },
  };
}
