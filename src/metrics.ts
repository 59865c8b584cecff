/**
 * @module
 * This isolate's counters, rendered in the Prometheus text format for
 * `GET /metrics`. Counters only go up; gauges are read from their owners at
 * render time. Every series carries `isolate` so scrapes of a deployment with
 * many isolates can be told apart. The latency histogram comes from
 * prom-client; plain counters stay plain fields (they sit on the per-frame
 * path). Imports: npm:prom-client.
 */
import { Histogram, Registry } from "prom-client";

/** Monotonic counters, incremented where things happen. */
export class Metrics {
  readonly isolate: string;
  framesIn = 0;
  bytesIn = 0;
  framesOut = 0;
  kvCommits = 0;
  kvCommitConflicts = 0;
  kvCommitErrors = 0;
  kvReads = 0;
  kvWatchWakeups = 0;
  busGaps = 0;
  /** Deploy-style KV write units: 1 per KiB (rounded up) per key written, 1 per sum or delete. */
  kvWriteUnits = 0;
  /** Deploy-style KV read units: 1 per 4 KiB (rounded up) per key read. */
  kvReadUnits = 0;
  /** Commits still waiting after min(2 s, half the store timeout). */
  kvCommitsSlow = 0;
  /** Frames refused because the store queue or the publisher's share of it was full. */
  storeRefusals = 0;
  /** Frames not stored within the store timeout. */
  storeFailures = 0;
  /** Stored batches deleted by retention. */
  trimmedBatches = 0;
  /** Bytes waiting to be stored now (a gauge kept by the writer). */
  storeQueueBytes = 0;
  connections = 0;
  abandonedSockets = 0;
  /** TCP connections closed at accept (descriptor budget or per-address share; node_server.ts). */
  refusedSockets = 0;
  readonly rejected = new Map<string, number>();
  readonly dropped = new Map<string, number>();

  readonly #registry = new Registry();
  readonly #commitSeconds: Histogram;

  constructor(isolate: string) {
    this.isolate = isolate;
    this.#registry.setDefaultLabels({ isolate });
    this.#commitSeconds = new Histogram({
      name: "mles_kv_commit_seconds",
      help: "Latency of KV commits made by the bus (appends and chunk writes)",
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [this.#registry],
    });
  }

  /** Records one KV commit's latency. */
  observeCommit(seconds: number): void {
    this.#commitSeconds.observe(seconds);
  }

  /** Counts a refused join or frame by close code. */
  reject(code: number): void {
    const k = String(code);
    this.rejected.set(k, (this.rejected.get(k) ?? 0) + 1);
  }

  /** Counts a member the hub dropped (slow or failed send) by close code. */
  drop(code: number): void {
    const k = String(code);
    this.dropped.set(k, (this.dropped.get(k) ?? 0) + 1);
  }

  /** Prometheus text exposition (version 0.0.4) with the given gauges appended. */
  async render(gauges: Record<string, { help: string; value: number }>): Promise<string> {
    const l = `isolate="${this.isolate}"`;
    const out: string[] = [];
    const counter = (name: string, help: string, value: number) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`, `${name}{${l}} ${value}`);
    };
    counter("mles_connections_total", "WebSocket connections accepted", this.connections);
    counter("mles_frames_in_total", "Frames received from joined clients", this.framesIn);
    counter("mles_bytes_in_total", "Bytes received from joined clients", this.bytesIn);
    counter("mles_frames_out_total", "Frames sent to clients (live fan-out)", this.framesOut);
    counter("mles_kv_commits_total", "KV commits attempted by the bus", this.kvCommits);
    counter(
      "mles_kv_commit_conflicts_total",
      "KV commits that lost a check (retried)",
      this.kvCommitConflicts,
    );
    counter("mles_kv_commit_errors_total", "KV commits that threw (retried)", this.kvCommitErrors);
    counter("mles_kv_reads_total", "KV read operations (get, getMany, list pages)", this.kvReads);
    counter("mles_kv_watch_wakeups_total", "kv.watch notifications handled", this.kvWatchWakeups);
    counter("mles_bus_gaps_total", "Times a reader found history trimmed past it", this.busGaps);
    counter(
      "mles_kv_write_units_total",
      "KV write units as Deploy bills them (1 KiB per key written)",
      this.kvWriteUnits,
    );
    counter(
      "mles_kv_read_units_total",
      "KV read units as Deploy bills them (4 KiB per key read)",
      this.kvReadUnits,
    );
    counter(
      "mles_kv_commits_slow_total",
      "KV commits that kept waiting (logged as 'KV commit still waiting')",
      this.kvCommitsSlow,
    );
    counter(
      "mles_store_refusals_total",
      "Frames refused because the store queue was full (publisher closed 1013)",
      this.storeRefusals,
    );
    counter(
      "mles_store_failures_total",
      "Frames not stored within MLES_STORE_TIMEOUT_MS (publisher closed 1011)",
      this.storeFailures,
    );
    counter(
      "mles_trimmed_batches_total",
      "Stored batches deleted by retention",
      this.trimmedBatches,
    );
    out.push(
      "# HELP mles_store_queue_bytes Bytes waiting to be stored in KV on this isolate",
      "# TYPE mles_store_queue_bytes gauge",
      `mles_store_queue_bytes{${l}} ${this.storeQueueBytes}`,
    );
    counter(
      "mles_abandoned_sockets_total",
      "Sockets whose client never completed a close the server started (no longer counted)",
      this.abandonedSockets,
    );
    counter(
      "mles_refused_sockets_total",
      "TCP connections closed at accept: descriptor budget or per-address share (deno task start)",
      this.refusedSockets,
    );
    for (
      const [name, map, help] of [
        ["mles_rejections_total", this.rejected, "Joins or frames refused, by close code"],
        ["mles_dropped_members_total", this.dropped, "Members dropped by the hub, by close code"],
      ] as const
    ) {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`);
      for (const [code, n] of map) out.push(`${name}{${l},code="${code}"} ${n}`);
    }
    for (const [name, g] of Object.entries(gauges)) {
      out.push(`# HELP ${name} ${g.help}`, `# TYPE ${name} gauge`, `${name}{${l}} ${g.value}`);
    }
    return out.join("\n") + "\n" + await this.#registry.metrics();
  }
}
