/**
 * @module
 * The workloads of `deno task bench`: each is a set of load generator flags,
 * the candidates it runs on, and the figure it is judged by. Imports: nothing.
 */

/** The figure a workload is compared by (median over repetitions). */
export type Primary =
  | "deliveriesPerSecond"
  | "p50"
  | "p99"
  | "rssPerConnectionKiB";

/** One workload. */
export interface Workload {
  readonly id: string;
  readonly title: string;
  /** load generator flags (besides url, server pid, label, timing). */
  readonly args: string[];
  readonly primary: Primary;
  /** Candidates it runs on (names from candidates.ts); default: all but ours-multi. */
  readonly candidates?: string[];
  /** Spread sockets over 127.0.0.1..N (W5: 10,000 sockets). */
  readonly hosts?: number;
  /** Overrides the run's generator (GEN compares both). */
  readonly generators?: string[];
  /** The candidate ratios are taken against (default deno-baseline). */
  readonly reference?: string;
  /** Not in the default set. */
  readonly optional?: boolean;
}

const STANDARD = ["deno-baseline", "node-ws", "bun", "ours"];

/** Every workload, in run order. */
export const WORKLOADS: readonly Workload[] = [
  {
    id: "W1",
    title: "fan-out: 1 channel, 100 subs, 1 pub, 64 B, max rate",
    args: [
      "--channels",
      "1",
      "--subs",
      "100",
      "--pubs",
      "1",
      "--bytes",
      "64",
      "--mode",
      "max",
      "--window",
      "32",
    ],
    primary: "deliveriesPerSecond",
  },
  {
    id: "W2",
    title: "many channels: 100 channels x (10 subs + 1 pub), 64 B, max rate",
    args: [
      "--channels",
      "100",
      "--subs",
      "10",
      "--pubs",
      "1",
      "--bytes",
      "64",
      "--mode",
      "max",
      "--window",
      "4",
    ],
    primary: "deliveriesPerSecond",
  },
  {
    id: "W3",
    title: "latency: 1 channel, 50 subs, 1 pub at 200 frames/s, 64 B",
    args: [
      "--channels",
      "1",
      "--subs",
      "50",
      "--pubs",
      "1",
      "--bytes",
      "64",
      "--mode",
      "rate",
      "--rate",
      "200",
    ],
    primary: "p99",
  },
  {
    id: "W4",
    title: "large frames: 1 channel, 10 subs, 1 pub, 64 KiB, max rate",
    args: [
      "--channels",
      "1",
      "--subs",
      "10",
      "--pubs",
      "1",
      "--bytes",
      "65536",
      "--mode",
      "max",
      "--window",
      "4",
    ],
    primary: "deliveriesPerSecond",
  },
  {
    id: "W5",
    title: "idle: 10,000 joined connections (100 channels x 100) -> server RSS per connection",
    args: [
      "--channels",
      "100",
      "--subs",
      "100",
      "--pubs",
      "0",
      "--bytes",
      "64",
      "--mode",
      "idle",
      "--connect-batch",
      "1000",
      "--join-timeout",
      "90",
    ],
    primary: "rssPerConnectionKiB",
    hosts: 8,
  },
  {
    id: "W6",
    title: "multi-isolate throughput: 1 channel, 20 subs, 1 pub, 64 B, max rate; 2 isolates on KV",
    args: [
      "--channels",
      "1",
      "--subs",
      "20",
      "--pubs",
      "1",
      "--bytes",
      "64",
      "--mode",
      "max",
      "--window",
      "32",
    ],
    primary: "deliveriesPerSecond",
    candidates: ["deno-baseline", "ours", "ours-multi"],
  },
  {
    id: "W6L",
    title: "multi-isolate latency: 1 channel, 20 subs, 1 pub at 200 frames/s; 2 isolates on KV",
    args: [
      "--channels",
      "1",
      "--subs",
      "20",
      "--pubs",
      "1",
      "--bytes",
      "64",
      "--mode",
      "rate",
      "--rate",
      "200",
    ],
    primary: "p99",
    candidates: ["ours", "ours-multi"],
    reference: "ours",
  },
  {
    id: "GEN",
    title: "load generator per core: W1 on the Deno baseline and on Bun, Deno vs Node generator",
    args: [
      "--channels",
      "1",
      "--subs",
      "100",
      "--pubs",
      "1",
      "--bytes",
      "64",
      "--mode",
      "max",
      "--window",
      "32",
    ],
    primary: "deliveriesPerSecond",
    candidates: ["deno-baseline", "bun"], // on Bun the generator is the limit
    generators: ["deno", "node"],
    optional: true,
  },
];

/** Candidates a workload runs on. */
export function workloadCandidates(w: Workload): string[] {
  return w.candidates ?? STANDARD;
}
