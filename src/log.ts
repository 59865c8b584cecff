/**
 * @module
 * Structured logs: one JSON object per line on stderr, filtered by level.
 * Callers never pass auth values or keys; fields are data, not prose.
 * Imports nothing.
 */

/** Log levels, least to most severe. */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };

/** A logger that writes one JSON line per event at or above its level. */
export class Logger {
  readonly #rank: number;
  readonly #write: (line: string) => void;

  constructor(level: LogLevel, write: (line: string) => void = (l) => console.error(l)) {
    this.#rank = RANK[level];
    this.#write = write;
  }

  /** True if an event at `level` would be written (to skip building costly fields). */
  enabled(level: LogLevel): boolean {
    return RANK[level] >= this.#rank;
  }

  debug(msg: string, fields?: Record<string, unknown>): void {
    this.#log("debug", msg, fields);
  }
  info(msg: string, fields?: Record<string, unknown>): void {
    this.#log("info", msg, fields);
  }
  warn(msg: string, fields?: Record<string, unknown>): void {
    this.#log("warn", msg, fields);
  }
  error(msg: string, fields?: Record<string, unknown>): void {
    this.#log("error", msg, fields);
  }

  #log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    if (RANK[level] < this.#rank) return;
    const line: Record<string, unknown> = { t: new Date().toISOString(), level, msg, ...fields };
    for (const [k, v] of Object.entries(line)) {
      if (v instanceof Error) line[k] = v.message;
    }
    this.#write(JSON.stringify(line));
  }
}
