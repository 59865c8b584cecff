// @ts-check
/**
 * @module
 * The Mles load generator, runtime-neutral: `load.ts` runs it on Deno (the
 * global `WebSocket`), `load.mjs` on Node (npm `ws`). Publishers and
 * subscribers live in this one process, so a frame's send time
 * (`performance.now()`) can travel in its payload and be compared on receipt.
 *
 * Payload layout (little endian), padded to `--bytes`:
 *   0 u32 magic "MLSB" | 4 u32 run nonce | 8 u32 publisher id | 12 u32 seq
 *   16 f64 send time (ms, performance.now; the *scheduled* time in fixed-rate
 *   mode, so a stalled sender shows as latency instead of hiding it)
 *   24 u8 phase (0 warm-up, 1 measured, 2 join probe)
 * Anything else a socket receives (text frames: other members' headers replayed
 * as history by mles-deno; frames of earlier runs from history) is ignored.
 *
 * Phases: connect every subscriber, then every publisher (first frame = JSON
 * header); warm up at the workload's own rate until every receiver has seen a
 * warm-up frame from every publisher of its channel (this is also the proof
 * that the server has joined everyone); measure until each publisher has sent
 * `--frames` or `--seconds` ran out; drain until everything expected arrived
 * or nothing moved for `--drain-idle-ms`.
 *
 * Imports: npm:hdr-histogram-js and node: built-ins only.
 */
import * as hdr from "hdr-histogram-js";
import { Buffer } from "node:buffer";
import { readdirSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import process from "node:process";
import { parseArgs } from "node:util";

const MAGIC = 0x42534c4d; // "MLSB" read as little-endian u32
const HEAD_BYTES = 25;
const PHASE_WARM = 0;
const PHASE_MEASURE = 1;
const PHASE_PROBE = 2;

/** Command-line options, shared by load.ts and load.mjs. */
export const OPTIONS = /** @type {const} */ ({
  url: { type: "string", default: "ws://127.0.0.1:8000/" },
  hosts: { type: "string" }, // comma list of 127.0.0.x to spread sockets over (many 4-tuples)
  channels: { type: "string", default: "1" },
  subs: { type: "string", default: "10" },
  pubs: { type: "string", default: "1" },
  frames: { type: "string", default: "1000000" },
  bytes: { type: "string", default: "64" },
  mode: { type: "string", default: "max" }, // max | rate | idle
  rate: { type: "string", default: "200" }, // frames/s per publisher (mode rate)
  window: { type: "string", default: "32" }, // frames in flight per publisher (mode max)
  warmup: { type: "string", default: "1" }, // seconds
  seconds: { type: "string", default: "3" }, // cap on the measured phase
  "drain-idle-ms": { type: "string", default: "1000" },
  "join-timeout": { type: "string", default: "30" }, // seconds for connect + warm-up barrier
  "connect-batch": { type: "string", default: "250" },
  "server-pid": { type: "string" }, // for CPU and RSS of the server's process tree
  metrics: { type: "string" }, // http URL of /metrics to scrape before/after
  label: { type: "string", default: "" },
  quiet: { type: "boolean", default: false },
  help: { type: "boolean", default: false },
});

export const USAGE = `Mles load generator
  --url ws://127.0.0.1:8000/   server
  --hosts 127.0.0.1,127.0.0.2  spread sockets over these destination addresses
  --channels N --subs N --pubs N   per channel: subscribers, publishers
  --frames N --bytes N             per publisher; payload size (>= ${HEAD_BYTES})
  --mode max|rate|idle             max: window of --window frames in flight per
                                   publisher; rate: --rate frames/s per publisher;
                                   idle: join everyone, probe once, report server RSS
  --warmup S --seconds S --drain-idle-ms MS --join-timeout S
  --server-pid PID   measure server CPU (and RSS in idle mode) from /proc
  --metrics URL      scrape mles-deno /metrics (per isolate) around the measurement
Prints progress on stderr, one JSON line on stdout and a table on stderr.`;

/**
 * Parses argv into options.
 * @param {string[]} argv
 */
export function parseOptions(argv) {
  const { values } = parseArgs({ args: argv, options: OPTIONS, strict: true });
  const num = (/** @type {string} */ k) => {
    const v = Number(/** @type {Record<string, unknown>} */ (values)[k]);
    if (!Number.isFinite(v) || v < 0) {
      throw new Error(`--${k} must be a number >= 0`);
    }
    return v;
  };
  const mode = String(values.mode);
  if (!["max", "rate", "idle"].includes(mode)) {
    throw new Error(`--mode must be max, rate or idle`);
  }
  const bytes = num("bytes");
  if (bytes < HEAD_BYTES) throw new Error(`--bytes must be >= ${HEAD_BYTES}`);
  return {
    help: Boolean(values.help),
    url: String(values.url),
    hosts: values.hosts ? String(values.hosts).split(",").filter(Boolean) : [],
    channels: num("channels"),
    subs: num("subs"),
    pubs: num("pubs"),
    frames: num("frames"),
    bytes,
    mode: /** @type {"max" | "rate" | "idle"} */ (mode),
    rate: num("rate"),
    window: Math.max(1, num("window")),
    warmup: num("warmup"),
    seconds: num("seconds"),
    drainIdleMs: num("drain-idle-ms"),
    joinTimeout: num("join-timeout"),
    connectBatch: Math.max(1, num("connect-batch")),
    serverPid: values["server-pid"] ? Number(values["server-pid"]) : undefined,
    metrics: values.metrics ? String(values.metrics) : undefined,
    label: String(values.label ?? ""),
    quiet: Boolean(values.quiet),
  };
}

/** @typedef {ReturnType<typeof parseOptions>} LoadOptions */

/**
 * A growable bitset of sequence numbers seen on one (receiver, publisher) stream.
 */
class SeqSet {
  bits = new Uint8Array(64);
  max = -1;
  /** Returns true if seq was new. @param {number} seq */
  add(seq) {
    const i = seq >>> 3;
    if (i >= this.bits.length) {
      const next = new Uint8Array(Math.max(i + 1, this.bits.length * 2));
      next.set(this.bits);
      this.bits = next;
    }
    const m = 1 << (seq & 7);
    if (this.bits[i] & m) return false;
    this.bits[i] |= m;
    return true;
  }
}

/**
 * Sums utime+stime (clock ticks) and VmRSS (KiB) over a process and its descendants.
 * @param {number} root
 */
export function procTree(root) {
  const pids = [root];
  for (let i = 0; i < pids.length; i++) {
    try {
      for (const tid of readdirSync(`/proc/${pids[i]}/task`)) {
        const kids = readFileSync(
          `/proc/${pids[i]}/task/${tid}/children`,
          "utf8",
        ).trim();
        if (kids) { for (const k of kids.split(/\s+/)) pids.push(Number(k)); }
      }
    } catch {
      // gone
    }
  }
  let ticks = 0;
  let rssKiB = 0;
  let maxRssKiB = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(f[11]) + Number(f[12]);
      const m = /VmRSS:\s+(\d+)/.exec(
        readFileSync(`/proc/${pid}/status`, "utf8"),
      );
      const rss = m ? Number(m[1]) : 0;
      rssKiB += rss;
      maxRssKiB = Math.max(maxRssKiB, rss);
    } catch {
      // gone
    }
  }
  return { pids, ticks, rssKiB, maxRssKiB };
}

const CLK_TCK = 100;

/** Busy and total ticks of each core (cpu0, cpu1, ...) from /proc/stat. */
export function coreTicks() {
  return readFileSync("/proc/stat", "utf8").split("\n").filter((l) => /^cpu\d+ /.test(l)).map(
    (l) => {
      const f = l.split(/\s+/).slice(1).map(Number);
      const idle = f[3] + f[4];
      const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
      return { busy: total - idle, total };
    },
  );
}

/**
 * Each core's busy share between two samples (0..1).
 * @param {ReturnType<typeof coreTicks>} a @param {ReturnType<typeof coreTicks>} b
 */
export function busy(a, b) {
  return b.map((x, i) => round((x.busy - a[i].busy) / Math.max(1, x.total - a[i].total), 2));
}

/**
 * Scrapes mles-deno's /metrics until every isolate seen so far was seen again
 * or `tries` ran out (`deno serve --parallel` answers each request from one
 * isolate); keeps the latest counters per isolate id.
 * @param {string} url
 * @param {number} tries
 * @param {Map<string, Record<string, number>>} [into]
 */
export async function scrapeMetrics(url, tries = 16, into = new Map()) {
  for (let i = 0; i < tries; i++) {
    let text;
    try {
      text = await httpGet(url);
    } catch {
      continue;
    }
    /** @type {Record<string, number>} */
    const c = {};
    let iso = "";
    for (const line of text.split("\n")) {
      const m = /^(mles_[a-z_]+)\{isolate="([^"]*)"\}\s+([0-9.e+-]+)\r?$/.exec(
        line,
      );
      if (m) {
        c[m[1]] = Number(m[3]);
        iso = m[2];
      }
    }
    if (iso) into.set(iso, c);
    if (i >= 3 && i >= into.size * 4) break;
  }
  return into;
}

/**
 * GET over a fresh TCP connection (HTTP/1.0, so the server closes it): with
 * `deno serve --parallel` each new connection may land on another isolate,
 * which a pooled fetch would not do.
 * @param {string} url
 * @returns {Promise<string>}
 */
function httpGet(url) {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const chunks = /** @type {Uint8Array[]} */ ([]);
    const sock = connect(
      { host: u.hostname, port: Number(u.port || 80) },
      () => {
        sock.write(`GET ${u.pathname} HTTP/1.0\r\nHost: ${u.host}\r\n\r\n`);
      },
    );
    sock.setTimeout(5000, () => sock.destroy(new Error("timeout")));
    sock.on("data", (d) => chunks.push(d));
    sock.on("error", reject);
    sock.on("close", () => {
      const text = new TextDecoder().decode(Buffer.concat(chunks));
      if (!/^HTTP\/1\.[01] 200/.test(text)) {
        reject(new Error(text.split("\r\n")[0] || "no answer"));
      } else resolve(text);
    });
  });
}

/**
 * Runs one load test.
 * @param {LoadOptions} o
 * @param {{ WebSocket: any, runtime: string }} env
 */
export async function runLoad(o, env) {
  const WS = env.WebSocket;
  const now = () => performance.now();
  const log = (/** @type {string} */ s) => {
    if (!o.quiet) process.stderr.write(s + "\n");
  };
  const nonce = (Math.random() * 0xffffffff) >>> 0;
  const tag = nonce.toString(16);
  const hist = hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 120_000_000,
    numberOfSignificantValueDigits: 3,
  });
  const hosts = o.hosts.length ? o.hosts : [new URL(o.url).hostname];
  const urls = hosts.map((h) => {
    const u = new URL(o.url);
    u.hostname = h;
    return u.href;
  });
  const pubsPerChannel = o.mode === "idle" ? 0 : o.pubs;

  /** @typedef {{ ws: any, channel: number, pubIdx: number, warmSeen: Uint8Array, warmCount: number, streams: SeqSet[], probeSeen: boolean, latSum: number, latCount: number }} Peer */
  /** @typedef {{ id: number, peer: Peer, buf: Uint8Array, view: DataView, sentWarm: number, sentMeasured: number, acked: number, lastAckAt: number, stalls: number, done: boolean }} Pub */
  /** @type {Peer[]} */
  const peers = [];
  /** @type {Pub[]} */
  const pubs = [];
  /** @type {(Peer | undefined)[]} */
  const designated = [];

  let phase = PHASE_WARM;
  let delivered = 0;
  let duplicates = 0;
  let orderViolations = 0;
  let foreign = 0;
  let closedEarly = 0;
  let lastDeliveryAt = 0;
  let readyReceivers = 0;
  let probesSeen = 0;
  let receivers = 0;

  /** @param {Peer} peer @param {any} ev */
  const onMessage = (peer, ev) => {
    const data = ev.data;
    if (typeof data === "string" || data.byteLength < HEAD_BYTES) return;
    const v = new DataView(data);
    if (v.getUint32(0, true) !== MAGIC || v.getUint32(4, true) !== nonce) {
      foreign++;
      return;
    }
    const pubId = v.getUint32(8, true);
    const seq = v.getUint32(12, true);
    const p = v.getUint8(24);
    const pub = pubs[pubId];
    if (
      pub === undefined || pub.peer.channel !== peer.channel ||
      pub.peer === peer
    ) {
      foreign++;
      return;
    }
    if (designated[peer.channel] === peer) {
      pub.acked++;
      pub.lastAckAt = now();
      if (o.mode === "max") pump(pub);
    }
    if (p === PHASE_MEASURE) {
      const t = now();
      const s = peer.streams[pub.peer.pubIdx];
      if (!s.add(seq)) {
        duplicates++;
        return;
      }
      delivered++;
      lastDeliveryAt = t;
      if (seq < s.max) orderViolations++;
      else s.max = seq;
      const us = Math.round((t - v.getFloat64(16, true)) * 1000);
      hist.recordValue(us < 1 ? 1 : us);
      peer.latSum += us;
      peer.latCount++;
    } else if (p === PHASE_WARM) {
      const k = pub.peer.pubIdx;
      if (!peer.warmSeen[k]) {
        peer.warmSeen[k] = 1;
        if (++peer.warmCount === pubsPerChannel - (peer.pubIdx >= 0 ? 1 : 0)) {
          readyReceivers++;
        }
      }
    } else if (p === PHASE_PROBE && !peer.probeSeen) {
      peer.probeSeen = true;
      probesSeen++;
    }
  };

  let opened = 0;
  /** @type {any[]} */
  let timers = [];
  let sending = false;
  /**
   * Opens one socket and sends its header.
   * @param {number} channel @param {number} pubIdx @param {number} n
   * @returns {Promise<Peer>}
   */
  const open = (channel, pubIdx, n) =>
    new Promise((resolve, reject) => {
      const ws = new WS(urls[n % urls.length], "mles-websocket");
      ws.binaryType = "arraybuffer";
      /** @type {Peer} */
      const peer = {
        ws,
        channel,
        pubIdx,
        warmSeen: new Uint8Array(pubsPerChannel),
        warmCount: 0,
        latSum: 0,
        latCount: 0,
        streams: Array.from({ length: pubsPerChannel }, () => new SeqSet()),
        probeSeen: false,
      };
      ws.onopen = () => {
        const uid = `${pubIdx >= 0 ? "p" : "s"}${channel}-${n}-${tag}`;
        ws.send(JSON.stringify({ uid, channel: `bench-${tag}-${channel}` }));
        opened++;
        resolve(peer);
      };
      ws.onerror = (/** @type {any} */ e) =>
        reject(new Error(`socket ${n}: ${e?.message ?? "error"}`));
      ws.onclose = () => {
        if (phase !== -1) closedEarly++;
      };
      ws.onmessage = (/** @type {any} */ ev) => onMessage(peer, ev);
    });

  const t0All = now();
  const serverBefore = o.serverPid ? procTree(o.serverPid) : undefined;
  const rssBaseKiB = serverBefore?.rssKiB;

  // Progress line.
  let lastProgress = { t: now(), delivered: 0 };
  let stage = "connect";
  const progress = setInterval(() => {
    const t = now();
    const rate = (delivered - lastProgress.delivered) /
      ((t - lastProgress.t) / 1000);
    lastProgress = { t, delivered };
    log(
      `[${o.label || "load"}] ${stage} t=${((t - t0All) / 1000).toFixed(1)}s open=${opened}` +
        ` ready=${readyReceivers}/${receivers} sent=${
          pubs.reduce((a, p) => a + p.sentMeasured, 0)
        } delivered=${delivered} rate=${Math.round(rate)}/s`,
    );
  }, 1000);

  const result = /** @type {Record<string, any>} */ ({
    label: o.label,
    generator: env.runtime,
    url: o.url,
    mode: o.mode,
    channels: o.channels,
    subs: o.subs,
    pubs: pubsPerChannel,
    bytes: o.bytes,
    ok: false,
  });

  try {
    const joinDeadline = now() + o.joinTimeout * 1000;
    if (o.mode === "idle") await idleRun(joinDeadline);
    else await measureRun(joinDeadline);
  } catch (err) {
    result.error = err instanceof Error ? err.message : String(err);
  } finally {
    clearInterval(progress);
    stopSending();
    phase = -1;
    for (const peer of peers) {
      try {
        peer.ws.close();
      } catch {
        // already closed
      }
    }
  }
  result.wallSeconds = round((now() - t0All) / 1000, 2);
  return result;

  // --- the phases and helpers, sharing this closure ---

  /** Connect, warm up until everyone is joined, measure, drain. @param {number} joinDeadline */
  async function measureRun(joinDeadline) {
    await connectChannels(0, o.channels, joinDeadline);
    // Receivers that expect warm-up frames (a lone publisher expects none).
    receivers = peers.filter((p) => pubsPerChannel - (p.pubIdx >= 0 ? 1 : 0) > 0).length;
    for (const peer of peers) {
      if (peer.pubIdx < 0) designated[peer.channel] = peer; // the last subscriber joined
    }
    for (const peer of peers) {
      if (peer.pubIdx < 0) continue;
      const buf = new Uint8Array(o.bytes);
      for (let i = HEAD_BYTES; i < buf.length; i++) buf[i] = i & 0xff;
      const view = new DataView(buf.buffer);
      view.setUint32(0, MAGIC, true);
      view.setUint32(4, nonce, true);
      view.setUint32(8, pubs.length, true);
      pubs.push({
        id: pubs.length,
        peer,
        buf,
        view,
        sentWarm: 0,
        sentMeasured: 0,
        acked: 0,
        lastAckAt: now(),
        stalls: 0,
        done: false,
      });
    }
    if (pubs.length === 0) throw new Error("no publishers");
    {
      // Warm-up, then the barrier: every receiver has a warm-up frame from every publisher.
      stage = "warm-up";
      startSending();
      await sleep(o.warmup * 1000);
      while (readyReceivers < receivers) {
        if (now() > joinDeadline + o.warmup * 1000) {
          throw new Error(
            `join barrier: only ${readyReceivers}/${receivers} receivers got warm-up frames`,
          );
        }
        await sleep(20);
      }
      stage = "measure";
      const metricsBefore = o.metrics ? await scrapeMetrics(o.metrics) : undefined;
      const cpuBefore = o.serverPid ? procTree(o.serverPid).ticks : 0;
      const cores0 = coreTicks();
      const genCpu0 = process.cpuUsage();
      const t0 = now();
      phase = PHASE_MEASURE;
      for (const p of pubs) p.view.setUint8(24, PHASE_MEASURE);
      const measureDeadline = t0 + o.seconds * 1000;
      while (now() < measureDeadline && pubs.some((p) => !p.done)) {
        await sleep(20);
      }
      for (const p of pubs) p.done = true;
      const tSendEnd = now();
      stopSending();
      const sent = pubs.reduce((a, p) => a + p.sentMeasured, 0);
      let expected = 0;
      for (const p of pubs) {
        expected += p.sentMeasured * (o.subs + pubsPerChannel - 1);
      }
      stage = "drain";
      let seen = delivered;
      let lastMove = now();
      while (delivered < expected && now() - lastMove < o.drainIdleMs) {
        await sleep(20);
        if (delivered !== seen) {
          seen = delivered;
          lastMove = now();
        }
      }
      const genCpu = process.cpuUsage(genCpu0);
      const cpuAfter = o.serverPid ? procTree(o.serverPid).ticks : 0;
      const cores1 = coreTicks();
      const tEnd = lastDeliveryAt > t0 ? lastDeliveryAt : now();
      const secs = (tEnd - t0) / 1000;
      const metricsAfter = o.metrics ? await scrapeMetrics(o.metrics) : undefined;
      Object.assign(result, {
        ok: true,
        seconds: round(secs, 3),
        sendSeconds: round((tSendEnd - t0) / 1000, 3),
        framesSent: sent,
        framesPerSecond: Math.round(sent / ((tSendEnd - t0) / 1000)),
        expected,
        delivered,
        deliveriesPerSecond: Math.round(delivered / secs),
        mbPerSecond: round((delivered * o.bytes) / secs / 1e6, 1),
        lost: Math.max(0, expected - delivered),
        lossRatio: expected ? round((expected - delivered) / expected, 6) : 0,
        duplicates,
        orderViolations,
        foreign,
        stalls: pubs.reduce((a, p) => a + p.stalls, 0),
        closedEarly,
        coreBusy: busy(cores0, cores1),
        latencyUs: latency(),
        receiverMeanUs: receiverMeans(),
        serverCpu: o.serverPid ? round((cpuAfter - cpuBefore) / CLK_TCK / secs, 2) : undefined,
        generatorCpu: round((genCpu.user + genCpu.system) / 1e6 / secs, 2),
        ...(o.mode === "max" ? { window: o.window } : { ratePerPublisher: o.rate }),
      });
      if (metricsBefore && metricsAfter) {
        result.metrics = metricsDelta(metricsBefore, metricsAfter);
      }
    }
  }

  function latency() {
    if (hist.totalCount === 0) return undefined;
    return {
      count: hist.totalCount,
      p50: hist.getValueAtPercentile(50),
      p90: hist.getValueAtPercentile(90),
      p99: hist.getValueAtPercentile(99),
      p999: hist.getValueAtPercentile(99.9),
      max: hist.maxValue,
      mean: Math.round(hist.mean),
    };
  }

  /**
   * Mean latency per receiver, then the lowest, median and highest of those:
   * with two isolates, receivers on the publisher's isolate and on the other
   * one show up as the low and the high end.
   */
  function receiverMeans() {
    const m = peers.filter((p) => p.latCount > 0).map((p) => p.latSum / p.latCount).sort((a, b) =>
      a - b
    );
    if (m.length === 0) return undefined;
    return {
      min: Math.round(m[0]),
      median: Math.round(m[m.length >> 1]),
      max: Math.round(m[m.length - 1]),
    };
  }

  /** @param {Pub} p */
  function sendOne(p, t = now()) {
    if (phase === PHASE_MEASURE) {
      p.view.setUint32(12, p.sentMeasured++, true);
      if (p.sentMeasured >= o.frames) p.done = true;
    } else {
      p.view.setUint32(12, p.sentWarm++, true);
    }
    p.view.setFloat64(16, t, true);
    p.peer.ws.send(p.buf);
  }

  /** Max-rate: keep `window` frames in flight per publisher. @param {Pub} p */
  function pump(p) {
    if (p.done || !sending) return;
    const sent = p.sentWarm + p.sentMeasured;
    let room = o.window - (sent - p.acked);
    while (
      room-- > 0 && !p.done && p.peer.ws.bufferedAmount < 4 * 1024 * 1024
    ) sendOne(p);
  }

  function startSending() {
    sending = true;
    if (o.mode === "max") {
      for (const p of pubs) pump(p);
      // Unstick a publisher whose window never drains (lost frames): after 1 s
      // without an ack, forget what is in flight.
      timers.push(setInterval(() => {
        const t = now();
        for (const p of pubs) {
          if (p.done) continue;
          if (
            t - p.lastAckAt > 1000 &&
            p.sentWarm + p.sentMeasured - p.acked >= o.window
          ) {
            p.acked = p.sentWarm + p.sentMeasured;
            p.lastAckAt = t;
            p.stalls++;
          }
          pump(p);
        }
      }, 50));
    } else {
      const interval = 1000 / o.rate;
      for (const p of pubs) {
        // Spread publishers' phases so fixed-rate sends do not all fire together.
        let due = now() + Math.random() * interval;
        const tick = () => {
          if (!sending) return;
          const t = now();
          let burst = 0;
          while (due <= t && !p.done && burst++ < 1000) {
            sendOne(p, due);
            due += interval;
          }
          if (!p.done) timers.push(setTimeout(tick, Math.max(0, due - now())));
        };
        timers.push(setTimeout(tick, Math.max(0, due - now())));
      }
    }
  }

  function stopSending() {
    sending = false;
    for (const t of timers) {
      clearInterval(t);
      clearTimeout(t);
    }
    timers = [];
  }

  /**
   * Connects channels [from, to): their subscribers, then their publishers, in
   * bounded batches; each socket's first frame is its header.
   * @param {number} from @param {number} to @param {number} deadline
   */
  async function connectChannels(from, to, deadline) {
    /** @type {[number, number][]} */
    const plan = [];
    for (let c = from; c < to; c++) {
      for (let s = 0; s < o.subs; s++) plan.push([c, -1]);
    }
    for (let c = from; c < to; c++) {
      for (let p = 0; p < pubsPerChannel; p++) plan.push([c, p]);
    }
    for (let i = 0; i < plan.length; i += o.connectBatch) {
      const base = peers.length;
      const batch = plan.slice(i, i + o.connectBatch).map(([c, p], j) => open(c, p, base + j));
      peers.push(
        ...await withDeadline(Promise.all(batch), deadline, "connect"),
      );
    }
  }

  /**
   * In each channel one member sends one probe frame; once every other member
   * got it, the server has joined everyone.
   * @param {number} from @param {number} to @param {number} deadline
   */
  async function probeChannels(from, to, deadline) {
    let expect = probesSeen;
    /** @type {{ ws: any, buf: Uint8Array }[]} */
    const senders = [];
    for (let c = from; c < to; c++) {
      const members = peers.filter((p) => p.channel === c);
      if (members.length === 0) continue;
      expect += members.length - 1;
      const first = members[0];
      const buf = new Uint8Array(o.bytes);
      const v = new DataView(buf.buffer);
      v.setUint32(0, MAGIC, true);
      v.setUint32(4, nonce, true);
      v.setUint32(8, pubs.length, true);
      v.setUint8(24, PHASE_PROBE);
      pubs.push({
        id: pubs.length,
        peer: first,
        buf,
        view: v,
        sentWarm: 0,
        sentMeasured: 0,
        acked: 0,
        lastAckAt: 0,
        stalls: 0,
        done: true,
      });
      first.ws.send(buf);
      senders.push({ ws: first.ws, buf });
    }
    // The server may still be reading some members' headers when a probe
    // arrives on another connection (nothing orders two sockets), so probes
    // are repeated until everyone has one; receivers count only their first.
    let resendAt = now() + 500;
    while (probesSeen < expect) {
      if (now() > deadline) {
        throw new Error(`probe: only ${probesSeen}/${expect} joined`);
      }
      await sleep(20);
      if (now() > resendAt) {
        for (const x of senders) x.ws.send(x.buf);
        resendAt = now() + 500;
      }
    }
  }

  /**
   * Idle connections: join a tenth of the channels (the server's fixed costs:
   * JIT, first buffers), read RSS, join the rest, read RSS again; the slope is
   * the cost of one more joined, idle connection.
   * @param {number} deadline
   */
  async function idleRun(deadline) {
    const first = Math.max(1, Math.ceil(o.channels / 10));
    stage = "join 1/10";
    await connectChannels(0, first, deadline);
    await probeChannels(0, first, deadline);
    await sleep(500);
    const mid = o.serverPid ? procTree(o.serverPid) : undefined;
    const midConns = peers.length;
    stage = "join rest";
    await connectChannels(first, o.channels, deadline);
    await probeChannels(first, o.channels, deadline);
    const joinedAt = now();
    stage = "settle";
    await sleep(1000); // let the server settle (buffers, GC) before reading RSS
    const after = o.serverPid ? procTree(o.serverPid) : undefined;
    const per = (
      /** @type {number | undefined} */ a,
      /** @type {number | undefined} */ b,
      /** @type {number} */ n,
    ) => a !== undefined && b !== undefined && n > 0 ? round((b - a) / n, 2) : undefined;
    Object.assign(result, {
      ok: true,
      connections: peers.length,
      joinSeconds: round((joinedAt - t0All) / 1000, 2),
      closedEarly,
      rssFreshKiB: rssBaseKiB,
      rssMidKiB: mid?.rssKiB,
      rssAfterKiB: after?.rssKiB,
      rssPerConnectionKiB: per(
        mid?.rssKiB,
        after?.rssKiB,
        peers.length - midConns,
      ),
      rssPerConnectionFromFreshKiB: per(
        rssBaseKiB,
        after?.rssKiB,
        peers.length,
      ),
    });
  }
}

/**
 * Per-isolate counter deltas, summed, with the number of isolates seen.
 * @param {Map<string, Record<string, number>>} before
 * @param {Map<string, Record<string, number>>} after
 */
function metricsDelta(before, after) {
  /** @type {Record<string, number>} */
  const sum = {};
  for (const [iso, a] of after) {
    const b = before.get(iso) ?? {};
    for (const [k, v] of Object.entries(a)) {
      if (!k.endsWith("_total")) continue;
      sum[k] = (sum[k] ?? 0) + v - (b[k] ?? 0);
    }
  }
  const fin = sum.mles_frames_in_total ?? 0;
  const fout = sum.mles_frames_out_total ?? 0;
  return {
    isolates: after.size,
    isolatesBefore: before.size,
    framesIn: fin,
    framesOut: fout,
    kvCommits: sum.mles_kv_commits_total ?? 0,
    kvReads: sum.mles_kv_reads_total ?? 0,
    kvCommitsPerFrameIn: fin ? round((sum.mles_kv_commits_total ?? 0) / fin, 4) : undefined,
    kvReadsPerFrameOut: fout ? round((sum.mles_kv_reads_total ?? 0) / fout, 4) : undefined,
  };
}

/** @param {number} ms */
function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** @param {number} x @param {number} d */
function round(x, d) {
  const f = 10 ** d;
  return Math.round(x * f) / f;
}

/**
 * @template T
 * @param {Promise<T>} p @param {number} deadline @param {string} what
 * @returns {Promise<T>}
 */
function withDeadline(p, deadline, what) {
  /** @type {any} */
  let timer;
  return Promise.race([
    p,
    new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${what}: timed out`)),
        Math.max(0, deadline - performance.now()),
      );
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * A one-line summary table of results.
 * @param {Record<string, any>[]} results
 */
export function formatTable(results) {
  const rows = [[
    "label",
    "gen",
    "deliveries/s",
    "p50 ms",
    "p99 ms",
    "p999 ms",
    "lost",
    "dup",
    "order",
    "srv cpu",
    "gen cpu",
  ]];
  for (const r of results) {
    if (!r.ok) {
      rows.push([r.label, r.generator, `error: ${r.error}`]);
      continue;
    }
    if (r.mode === "idle") {
      rows.push([
        r.label,
        r.generator,
        `${r.connections} idle, ${r.rssPerConnectionKiB} KiB/conn`,
      ]);
      continue;
    }
    const l = r.latencyUs ?? {};
    const ms = (/** @type {number | undefined} */ us) =>
      us === undefined ? "-" : (us / 1000).toFixed(2);
    rows.push([
      r.label,
      r.generator,
      String(r.deliveriesPerSecond),
      ms(l.p50),
      ms(l.p99),
      ms(l.p999),
      String(r.lost),
      String(r.duplicates),
      String(r.orderViolations),
      r.serverCpu === undefined ? "-" : String(r.serverCpu),
      String(r.generatorCpu),
    ]);
  }
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => (c ?? "").padEnd(w[i])).join("  "))
    .join("\n");
}
