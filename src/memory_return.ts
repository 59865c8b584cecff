/**
 * @module
 * Gives memory the process freed back to the operating system. Sockets,
 * frames and KV values live in buffers malloc hands out outside the V8
 * heap; after a burst (a flood, an attack) they are freed, but glibc keeps
 * the pages in its arenas, so the process stays as large as its peak. A
 * periodic `malloc_trim(0)` (glibc, through FFI: Linux only, needs
 * `--allow-ffi`, which `deno task start` has) returns them: in the adversary
 * soak, RSS after the attack went from 155 to 105 MiB. Not used under
 * `deno serve` or Deploy. Imports nothing.
 */

/** A running trimmer. */
export interface MemoryReturn {
  /** Stops trimming. */
  stop(): void;
}

/** Trims at most this often. */
const INTERVAL_MS = 10_000;
/** ...and only while RSS is this much above where it was at start. */
const GROWTH_BYTES = 16 * 1024 * 1024;

/**
 * Starts trimming every {@link INTERVAL_MS} while RSS is more than
 * {@link GROWTH_BYTES} above its size at start, skipping a turn when the
 * last trim returned little and RSS has not moved since. Undefined where
 * glibc's `malloc_trim` is not available (not Linux/glibc, no FFI
 * permission). A trim takes about 1 ms, up to about 15 ms when it returns
 * a hundred megabytes.
 */
export function startMemoryReturn(): MemoryReturn | undefined {
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
  const floor = Deno.memoryUsage().rss;
  let lastAfter = floor;
  let lastFreed = Infinity;
  const timer = setInterval(() => {
    const rss = Deno.memoryUsage().rss;
    if (rss < floor + GROWTH_BYTES) return;
    if (lastFreed < GROWTH_BYTES / 4 && Math.abs(rss - lastAfter) < GROWTH_BYTES) return;
    trim(0n);
    lastAfter = Deno.memoryUsage().rss;
    lastFreed = rss - lastAfter;
  }, INTERVAL_MS);
  Deno.unrefTimer(timer);
  return {
    stop() {
      clearInterval(timer);
      lib.close();
    },
  };
}
