/**
 * @module
 * This isolate's counters, rendered in the Prometheus text format (version
 * 0.0.4) for `GET /metrics`. One mechanism for every series: plain fields
 * and maps written here, no metrics library (prom-client served one
 * histogram beside these; the counters sit on the per-frame path, where a
 * field increment is the cheapest thing there is). Counters only go up;
 * gauges are read from their owners at render time. Every series carries
 * `isolate` so scrapes of a deployment with many isolates can be told
 * apart. Imports nothing.
 */

/** A Prometheus histogram: cumulative buckets by upper bound, plus sum and count. */
class Histogram {
  readonly #bounds: readonly number[];
  readonly #counts: number[];
  #sum = 0;
  #count = 0;

  constructor(bounds: readonly number[]) {
    this.#bounds = bounds;
    this.#counts = bounds.map(() => 0);
  }

  observe(value: number): void {
    const i = this.#bounds.findIndex((b) => value <= b);
    if (i >= 0) this.#counts[i]++;
    this.#sum += value;
    this.#count++;
  }

  /** The exposition lines of series `name` with labels `l` (already rendered). */
  lines(name: string, help: string, l: string): string[] {
    const out = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
    let cumulative = 0;
    this.#bounds.forEach((b, i) => {
      cumulative += this.#counts[i];
      out.push(`${name}_bucket{${l},le="${b}"} ${cumulative}`);
    });
    out.push(`${name}_bucket{${l},le="+Inf"} ${this.#count}`);
    out.push(`${name}_sum{${l}} ${this.#sum}`, `${name}_count{${l}} ${this.#count}`);
    return out;
  }
}

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
  /** Times a client over MLES_MAX_FRAMES_PER_S / MLES_MAX_BYTES_PER_S was paced (not read for a while). */
  pacedClients = 0;
  /** Times a publisher flooding its channel was held back (not read for a while) instead of closed. */
  heldBackPublishers = 0;
  /** TCP connections closed at accept (descriptor budget or per-address share; node_server.ts). */
  refusedSockets = 0;
  /** Joins and frames refused, by WebSocket close code. */
  readonly rejected = new Map<string, number>();
  /** WebSocket upgrades refused before a socket existed, by HTTP status. */
  readonly refusedUpgrades = new Map<string, number>();
  readonly dropped = new Map<string, number>();

  readonly #commitSeconds = new Histogram([
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
  ]);

  constructor(isolate: string) {
    this.isolate = isolate;
  }

  /** Records one KV commit's latency. */
  observeCommit(seconds: number): void {
    this.#commitSeconds.observe(seconds);
  }

  /**
   * Counts a refusal. A WebSocket close code (1000 and up: a refused join or
   * frame) counts in `mles_rejections_total{code}`; an HTTP status (below
   * 1000: an upgrade refused before any socket existed) counts in
   * `mles_upgrade_refusals_total{status}`. The two numbering spaces never
   * overlap, so one call site per refusal is enough.
   */
  reject(code: number): void {
    const map = code >= 1000 ? this.rejected : this.refusedUpgrades;
    const k = String(code);
    map.set(k, (map.get(k) ?? 0) + 1);
  }

  /** Counts a member the hub dropped (slow or failed send) by close code. */
  drop(code: number): void {
    const k = String(code);
    this.dropped.set(k, (this.dropped.get(k) ?? 0) + 1);
  }

  /** Prometheus text exposition (version 0.0.4) with the given gauges appended. */
  render(gauges: Record<string, { help: string; value: number }>): Promise<string> {
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
      "mles_paced_total",
      "Times a client over its publish rates was not read for a while (deno task start)",
      this.pacedClients,
    );
    counter(
      "mles_held_back_total",
      "Times a publisher flooding its channel was not read for a while instead of closed",
      this.heldBackPublishers,
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
      const [name, map, label, help] of [
        ["mles_rejections_total", this.rejected, "code", "Joins or frames refused, by close code"],
        [
          "mles_upgrade_refusals_total",
          this.refusedUpgrades,
          "status",
          "WebSocket upgrades refused (no socket opened), by HTTP status",
        ],
        [
          "mles_dropped_members_total",
          this.dropped,
          "code",
          "Members dropped by the hub, by close code",
        ],
      ] as const
    ) {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`);
      for (const [k, n] of map) out.push(`${name}{${l},${label}="${k}"} ${n}`);
    }
    out.push(
      ...this.#commitSeconds.lines(
        "mles_kv_commit_seconds",
        "Latency of KV commits made by the bus (appends and chunk writes)",
        l,
      ),
    );
    for (const [name, g] of Object.entries(gauges)) {
      out.push(`# HELP ${name} ${g.help}`, `# TYPE ${name} gauge`, `${name}{${l}} ${g.value}`);
    }
    return Promise.resolve(out.join("\n") + "\n");
  }
}
