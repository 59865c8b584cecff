/**
 * @module
 * Turns the environment (Deno Deploy has no command line) into one frozen,
 * typed {@link Config}. Nothing else reads `Deno.env`. Every error names the
 * variable, the accepted range and the value it got.
 * Imports: node:util (parseArgs), npm:zod, retry (errorText).
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { errorText } from "./retry.ts";

/** Validated server settings; see README "Configuration" for each one. */
export interface Config {
  /** TCP port for `deno task start` (ignored under `deno serve` and Deploy). */
  readonly port: number;
  /** Server key appended to the SipHash input (SPEC section 4); undefined = no key. */
  readonly key: string | undefined;
  /** Frames of history kept and replayed per channel. */
  readonly historyLimit: number;
  /** Deno KV location: file path, ":memory:", KV Connect URL, or undefined = Deno's default. */
  readonly kvPath: string | undefined;
  /** "kv" (default: frames cross isolates through Deno KV) or "memory" (one isolate, no KV). */
  readonly bus: "kv" | "memory";
  /** Largest frame accepted; bigger frames close the sender with 1009. */
  readonly maxFrameBytes: number;
  /** Largest header (first frame) accepted. */
  readonly maxHeaderBytes: number;
  /** A socket that sends no header within this many ms is closed. */
  readonly headerTimeoutMs: number;
  /** Server pings a silent client after this many seconds and drops it after twice that. */
  readonly pingIntervalS: number;
  /** A member with more than this many bytes waiting to be sent is dropped. */
  readonly maxBufferedBytes: number;
  /** Channels idle this many days expire from KV. */
  readonly channelTtlDays: number;
  /** Log level for the JSON log lines on stderr. */
  readonly logLevel: "debug" | "info" | "warn" | "error" | "silent";
  /** New WebSocket connections per client IP per minute; 0 = unlimited. */
  readonly rateLimitPerMinute: number;
  /**
   * Frames per second one connection may send (proven peers aside); over it
   * a client is paced where the transport can stop reading it (bursts of a
   * tenth of a second's worth), else closed 1008 (bursts of five seconds'
   * worth). 0 = unlimited.
   */
  readonly maxFramesPerS: number;
  /**
   * Bytes per second one connection may send, likewise; where over it
   * closes, a burst is at least one largest frame. 0 = unlimited.
   */
  readonly maxBytesPerS: number;
  /** Open WebSockets per isolate; 0 = unlimited. */
  readonly maxConnections: number;
  /** `deno task start`'s transport: "node" (node:http + npm:ws, bounded; default) or "deno" (Deno.serve). */
  readonly transport: "node" | "deno";
  /** Open connections per client address (WebSockets; and TCP under `deno task start`); 0 = unlimited. */
  readonly maxConnectionsPerIp: number;
  /** Joins per client address per minute (a bucket of that size refilled evenly); 0 = unlimited. */
  readonly joinRatePerMinute: number;
  /** Different channels one client address may join per hour; 0 = unlimited. */
  readonly channelRatePerHour: number;
  /** Bytes of history replayed per channel (besides the frame count); 0 = unlimited. */
  readonly historyMaxBytes: number;
  /** Bearer token required by GET /metrics; undefined = open. */
  readonly metricsToken: string | undefined;
  /** PEM certificate and key paths: serve wss:// directly (`deno task start`). */
  readonly tlsCert: string | undefined;
  readonly tlsKey: string | undefined;
  /** How long a frame may keep failing to store before its sender is closed (1011). */
  readonly storeTimeoutMs: number;
  /** Bytes waiting to be stored in KV per isolate; a publisher past it (or past its share: twice MLES_MAX_BUFFERED_BYTES) is closed with 1013. */
  readonly storeQueueBytes: number;
  /** Bytes of history kept beyond the replayed window for lagging isolates. */
  readonly readerSlackBytes: number;
  /** A KV commit waits this many ms after its first frame to gather more (fewer commits and write units). */
  readonly batchDelayMs: number;
  /** Shutdown finishes (or is cut short) within this many ms. */
  readonly shutdownTimeoutMs: number;
  /** Peer Mles servers (ws:// or wss:// URLs) to bridge channels with. */
  readonly peers: string[];
  /** Channels to bridge with every peer, or "*" = every channel with local members. */
  readonly peerChannels: string[] | "*";
  /** The peers' MLES_KEY, for the bridge's auth value. */
  readonly peerKey: string | undefined;
  /** This server's bridge uid on peers (starts with "mles-peer-"). */
  readonly peerUid: string | undefined;
  /** Folder served over HTTP instead of the built-in page; undefined = the built-in `web/`. */
  readonly wwwroot: string | undefined;
}

/** A configuration value that cannot be used; the message names the variable. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

const MiB = 1024 * 1024;

function int(name: string, min: number, max: number, fallback: number) {
  return z.string().optional().transform((raw, ctx) => {
    if (raw === undefined || raw.trim() === "") return fallback;
    const n = z.coerce.number().int().min(min).max(max).safeParse(raw.trim());
    if (!n.success || !/^[+]?\d+$/.test(raw.trim())) {
      ctx.addIssue({
        code: "custom",
        message: `${name} must be an integer from ${min} to ${max}: current value is ${
          JSON.stringify(raw)
        }`,
      });
      return z.NEVER;
    }
    return n.data;
  });
}

function oneOf<T extends string>(name: string, values: readonly T[], fallback: T) {
  return z.string().optional().transform((raw, ctx): T => {
    if (raw === undefined || raw.trim() === "") return fallback;
    const v = raw.trim().toLowerCase() as T;
    if (!values.includes(v)) {
      ctx.addIssue({
        code: "custom",
        message: `${name} must be one of ${values.join(", ")}: current value is ${
          JSON.stringify(raw)
        }`,
      });
      return z.NEVER;
    }
    return v;
  });
}

const optionalText = z.string().optional().transform((raw) =>
  raw === undefined || raw === "" ? undefined : raw
);

const schema = z.object({
  PORT: int("PORT", 0, 65535, 8000),
  MLES_KEY: optionalText,
  MLES_HISTORY_LIMIT: int("MLES_HISTORY_LIMIT", 1, 1_000_000, 200),
  MLES_KV: optionalText,
  MLES_BUS: oneOf("MLES_BUS", ["kv", "memory"] as const, "kv"),
  MLES_MAX_FRAME_BYTES: int("MLES_MAX_FRAME_BYTES", 1, 64 * MiB, 4 * MiB),
  MLES_MAX_HEADER_BYTES: int("MLES_MAX_HEADER_BYTES", 64, 65536, 4096),
  MLES_HEADER_TIMEOUT_MS: int("MLES_HEADER_TIMEOUT_MS", 1, 3_600_000, 10_000),
  MLES_PING_INTERVAL_S: int("MLES_PING_INTERVAL_S", 1, 3600, 24),
  MLES_MAX_BUFFERED_BYTES: int("MLES_MAX_BUFFERED_BYTES", 1024, 1024 * MiB, 16 * MiB),
  MLES_CHANNEL_TTL_DAYS: int("MLES_CHANNEL_TTL_DAYS", 1, 3650, 30),
  MLES_LOG_LEVEL: oneOf(
    "MLES_LOG_LEVEL",
    ["debug", "info", "warn", "error", "silent"] as const,
    "warn",
  ),
  MLES_RATE_LIMIT: int("MLES_RATE_LIMIT", 0, 1_000_000, 0),
  MLES_MAX_FRAMES_PER_S: int("MLES_MAX_FRAMES_PER_S", 0, 10_000_000, 1000),
  MLES_MAX_BYTES_PER_S: int("MLES_MAX_BYTES_PER_S", 0, 1024 * 1024 * MiB, MiB),
  MLES_MAX_CONNECTIONS: int("MLES_MAX_CONNECTIONS", 0, 10_000_000, 0),
  MLES_TRANSPORT: oneOf("MLES_TRANSPORT", ["node", "deno"] as const, "node"),
  MLES_MAX_CONNECTIONS_PER_IP: int("MLES_MAX_CONNECTIONS_PER_IP", 0, 10_000_000, 1024),
  MLES_JOIN_RATE: int("MLES_JOIN_RATE", 0, 1_000_000, 600),
  MLES_CHANNEL_RATE: int("MLES_CHANNEL_RATE", 0, 1_000_000, 600),
  MLES_HISTORY_MAX_BYTES: int("MLES_HISTORY_MAX_BYTES", 0, 1024 * 1024 * MiB, 8 * MiB),
  MLES_METRICS_TOKEN: optionalText,
  MLES_TLS_CERT: optionalText,
  MLES_TLS_KEY: optionalText,
  MLES_STORE_TIMEOUT_MS: int("MLES_STORE_TIMEOUT_MS", 100, 3_600_000, 30_000),
  MLES_STORE_QUEUE_BYTES: int("MLES_STORE_QUEUE_BYTES", 1024, 16 * 1024 * MiB, 64 * MiB),
  MLES_READER_SLACK_BYTES: int("MLES_READER_SLACK_BYTES", 0, 1024 * MiB, 4 * MiB),
  MLES_BATCH_DELAY_MS: int("MLES_BATCH_DELAY_MS", 0, 10_000, 20),
  MLES_SHUTDOWN_TIMEOUT_MS: int("MLES_SHUTDOWN_TIMEOUT_MS", 100, 600_000, 4_000),
  MLES_PEERS: z.string().optional().transform((raw, ctx) => {
    const list = (raw ?? "").split(",").map((u) => u.trim()).filter((u) => u !== "");
    for (const u of list) {
      let ok = false;
      try {
        ok = ["ws:", "wss:"].includes(new URL(u).protocol);
      } catch { /* reported below */ }
      if (!ok) {
        ctx.addIssue({
          code: "custom",
          message: `MLES_PEERS must be comma-separated ws:// or wss:// URLs: ${
            JSON.stringify(u)
          } is not one`,
        });
        return z.NEVER;
      }
    }
    return list;
  }),
  MLES_PEER_CHANNELS: z.string().optional().transform((raw): string[] | "*" => {
    const v = (raw ?? "").trim();
    if (v === "*" || v === "") return "*";
    return v.split(",").map((c) => c.trim()).filter((c) => c !== "");
  }),
  MLES_PEER_KEY: optionalText,
  MLES_WWWROOT: optionalText,
  MLES_PEER_UID: z.string().optional().transform((raw, ctx) => {
    if (raw === undefined || raw === "") return undefined;
    if (!raw.startsWith("mles-peer-") || !/^[\x21-\x7e]+$/.test(raw)) {
      ctx.addIssue({
        code: "custom",
        message:
          `MLES_PEER_UID must be printable ASCII starting with "mles-peer-": current value is ${
            JSON.stringify(raw)
          }`,
      });
      return z.NEVER;
    }
    return raw;
  }),
});

/**
 * Validates an environment (e.g. `Deno.env.toObject()`) into a frozen Config.
 * Unknown variables are ignored. @throws {ConfigError} naming every bad
 * variable with its accepted range and current value.
 */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => i.message);
    throw new ConfigError(`Cannot start: ${lines.join("; ")}`);
  }
  const e = parsed.data;
  if (e.MLES_MAX_BUFFERED_BYTES < e.MLES_MAX_FRAME_BYTES) {
    throw new ConfigError(
      `Cannot start: MLES_MAX_BUFFERED_BYTES must be at least MLES_MAX_FRAME_BYTES (${e.MLES_MAX_FRAME_BYTES}): current value is "${e.MLES_MAX_BUFFERED_BYTES}"`,
    );
  }
  if (e.MLES_STORE_QUEUE_BYTES < e.MLES_MAX_FRAME_BYTES) {
    throw new ConfigError(
      `Cannot start: MLES_STORE_QUEUE_BYTES must be at least MLES_MAX_FRAME_BYTES (${e.MLES_MAX_FRAME_BYTES}): current value is "${e.MLES_STORE_QUEUE_BYTES}"`,
    );
  }
  if ((e.MLES_TLS_CERT === undefined) !== (e.MLES_TLS_KEY === undefined)) {
    throw new ConfigError(
      "Cannot start: MLES_TLS_CERT and MLES_TLS_KEY must be set together: only " +
        (e.MLES_TLS_CERT ? "MLES_TLS_CERT" : "MLES_TLS_KEY") + " is set",
    );
  }
  return Object.freeze({
    port: e.PORT,
    key: e.MLES_KEY,
    historyLimit: e.MLES_HISTORY_LIMIT,
    kvPath: e.MLES_KV,
    bus: e.MLES_BUS,
    maxFrameBytes: e.MLES_MAX_FRAME_BYTES,
    maxHeaderBytes: e.MLES_MAX_HEADER_BYTES,
    headerTimeoutMs: e.MLES_HEADER_TIMEOUT_MS,
    pingIntervalS: e.MLES_PING_INTERVAL_S,
    maxBufferedBytes: e.MLES_MAX_BUFFERED_BYTES,
    channelTtlDays: e.MLES_CHANNEL_TTL_DAYS,
    logLevel: e.MLES_LOG_LEVEL,
    rateLimitPerMinute: e.MLES_RATE_LIMIT,
    maxFramesPerS: e.MLES_MAX_FRAMES_PER_S,
    maxBytesPerS: e.MLES_MAX_BYTES_PER_S,
    maxConnections: e.MLES_MAX_CONNECTIONS,
    transport: e.MLES_TRANSPORT,
    maxConnectionsPerIp: e.MLES_MAX_CONNECTIONS_PER_IP,
    joinRatePerMinute: e.MLES_JOIN_RATE,
    channelRatePerHour: e.MLES_CHANNEL_RATE,
    historyMaxBytes: e.MLES_HISTORY_MAX_BYTES,
    metricsToken: e.MLES_METRICS_TOKEN,
    tlsCert: e.MLES_TLS_CERT,
    tlsKey: e.MLES_TLS_KEY,
    storeTimeoutMs: e.MLES_STORE_TIMEOUT_MS,
    storeQueueBytes: e.MLES_STORE_QUEUE_BYTES,
    readerSlackBytes: e.MLES_READER_SLACK_BYTES,
    batchDelayMs: e.MLES_BATCH_DELAY_MS,
    shutdownTimeoutMs: e.MLES_SHUTDOWN_TIMEOUT_MS,
    peers: e.MLES_PEERS,
    peerChannels: e.MLES_PEER_CHANNELS,
    peerKey: e.MLES_PEER_KEY,
    peerUid: e.MLES_PEER_UID,
    wwwroot: e.MLES_WWWROOT,
  });
}

/**
 * Maps mles-rs style command-line flags to their environment variables, for
 * local runs: `--port N` -> PORT, `--limit N` -> MLES_HISTORY_LIMIT,
 * `--key K` -> MLES_KEY, `--kv PATH` -> MLES_KV. Flags win over the
 * environment. @throws {ConfigError} on an unknown flag, naming it.
 */
export function configFromArgs(args: string[]): Record<string, string> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        port: { type: "string" },
        limit: { type: "string" },
        key: { type: "string" },
        kv: { type: "string" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new ConfigError(
      `Cannot start: ${errorText(err)} (known flags: --port, --limit, --key, --kv)`,
    );
  }
  const env: Record<string, string> = {};
  if (values.port !== undefined) env.PORT = values.port;
  if (values.limit !== undefined) env.MLES_HISTORY_LIMIT = values.limit;
  if (values.key !== undefined) env.MLES_KEY = values.key;
  if (values.kv !== undefined) env.MLES_KV = values.kv;
  return env;
}
