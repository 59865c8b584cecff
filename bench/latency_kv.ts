/**
 * @module
 * A KV latency model for benchmarks and tests, never for production: wraps a
 * real `Deno.Kv` (SQLite here) so each isolate sees Deploy-like round trips.
 * Commits take `commitMs` more, strong reads (get, getMany, each list page)
 * `readMs` more, and every watch notification arrives `watchMs` late. Half
 * of each delay is spent before the real call and half after, so the real
 * operation happens in the middle of the modelled round trip, as it would at
 * the write region. Imports nothing.
 */

/** Extra milliseconds one isolate's KV calls take. */
export interface KvLatency {
  /** Added to each commit (atomic or set/delete). */
  readonly commitMs: number;
  /** Added to each strong read: get, getMany, each page of a list. */
  readonly readMs: number;
  /** Added to each watch notification. */
  readonly watchMs: number;
}

const wait = (ms: number) =>
  ms > 0 ? new Promise<void>((r) => setTimeout(r, ms)) : Promise.resolve();

async function around<T>(ms: number, fn: () => Promise<T>): Promise<T> {
  await wait(ms / 2);
  const out = await fn();
  await wait(ms / 2);
  return out;
}

function delayedList<T>(
  it: Deno.KvListIterator<T>,
  ms: number,
): Deno.KvListIterator<T> {
  const inner = it[Symbol.asyncIterator]();
  let first = true;
  const wrapped = {
    get cursor() {
      return it.cursor;
    },
    next: async () => {
      if (!first) return await inner.next();
      first = false;
      return await around(ms, () => inner.next());
    },
    [Symbol.asyncIterator]() {
      return wrapped;
    },
  };
  return wrapped as unknown as Deno.KvListIterator<T>;
}

function delayedWatch<T>(
  stream: ReadableStream<T>,
  ms: number,
): ReadableStream<T> {
  if (ms <= 0) return stream;
  const reader = stream.getReader();
  let pending = Promise.resolve();
  return new ReadableStream<T>({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) {
        await pending;
        controller.close();
        return;
      }
      const due = wait(ms);
      // Constant delay keeps notification order.
      pending = pending.then(() => due).then(() => controller.enqueue(value));
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

/** `kv` as seen from an isolate `latency` away from the KV write region. */
export function withLatency(kv: Deno.Kv, latency: KvLatency): Deno.Kv {
  const { commitMs, readMs, watchMs } = latency;
  const wrapOp = (op: Deno.AtomicOperation): Deno.AtomicOperation => {
    const proxy: Deno.AtomicOperation = new Proxy(op, {
      get(target, prop) {
        if (prop === "commit") {
          return () => around(commitMs, () => target.commit());
        }
        const v = Reflect.get(target, prop, target);
        if (typeof v !== "function") return v;
        return (...args: unknown[]) => {
          const r = v.apply(target, args);
          return r === target ? proxy : r;
        };
      },
    });
    return proxy;
  };
  return new Proxy(kv, {
    get(target, prop) {
      switch (prop) {
        case "atomic":
          return () => wrapOp(target.atomic());
        case "get":
        case "getMany":
          return (...args: unknown[]) =>
            around(
              readMs,
              () =>
                (target[prop] as (...a: unknown[]) => Promise<unknown>)(
                  ...args,
                ),
            );
        case "set":
        case "delete":
          return (...args: unknown[]) =>
            around(
              commitMs,
              () =>
                (target[prop] as (...a: unknown[]) => Promise<unknown>)(
                  ...args,
                ),
            );
        case "list":
          return (
            selector: Deno.KvListSelector,
            options?: Deno.KvListOptions,
          ) => delayedList(target.list(selector, options), readMs);
        case "watch":
          return (keys: Deno.KvKey[], options?: { raw?: boolean }) =>
            delayedWatch(target.watch(keys, options), watchMs);
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}
