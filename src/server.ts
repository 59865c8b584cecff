/**
 * @module
 * The composition root: builds one isolate's server from a {@link Config}.
 * The only module that opens Deno KV and chooses the bus (KV or memory).
 * Imports: bus (type), config (type), health, http, hub, kv_bus, lease, log,
 * kv_keys, memory_bus, metrics, peer, peer_dedup, retry, session_claims, static.
 */
import type { Bus } from "./bus.ts";
import type { Config } from "./config.ts";
import { keys } from "./kv_keys.ts";
import { errorText } from "./retry.ts";
import { createHttpHandler, type HttpHandler } from "./http.ts";
import { WriteProbe } from "./health.ts";
import { Hub } from "./hub.ts";
import { KvBus } from "./kv_bus.ts";
import { Logger } from "./log.ts";
import { MemoryBus } from "./memory_bus.ts";
import { Metrics } from "./metrics.ts";
import { KvLease } from "./lease.ts";
import { PEER_SYNC_PATH, PeerGate, Peering } from "./peer.ts";
import { PeerDedup } from "./peer_dedup.ts";
import { createStaticHandler } from "./static.ts";
import { KvSessionClaims, MemorySessionClaims, type SessionClaims } from "./session_claims.ts";

/** The server cannot start; the message names the setting and the cause (no stack needed). */
export class StartError extends Error {
  override name = "StartError";
  constructor(message: string, cause?: unknown) {
    super(message, { cause });
  }
}

/** A running server: the request handler and its shutdown. */
export interface Server {
  /** Handles one request (WebSocket upgrade, /healthz, /metrics, static files). */
  fetch(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> | Response;
  /**
   * Stops accepting, closes sockets with 1001, stores frames already
   * accepted (bounded wait) and closes KV if this server opened it.
   * Idempotent.
   */
  close(): Promise<void>;
  readonly hub: Hub;
  readonly metrics: Metrics;
  /** Bridges to peer servers, when MLES_PEERS is set. */
  readonly peering: Peering | undefined;
  /** The HTTP edge, for a transport that upgrades by itself (node_server.ts). */
  readonly http: HttpHandler;
  /** Peer treatment, duplicate check and resync, when MLES_PEERS or MLES_PEER_KEY is set. */
  readonly peerGate: PeerGate | undefined;
}

/** Things a caller may supply instead of letting the server open them. */
export interface ServerDeps {
  /** An open KV handle; the server will not close it. */
  readonly kv?: Deno.Kv;
  readonly log?: Logger;
  /** Serves static files for GET/HEAD; default: MLES_WWWROOT or the built-in page in web/. */
  readonly staticFiles?: (req: Request) => Promise<Response | undefined>;
}

/**
 * Builds a server. Opens KV at `config.kvPath` unless `deps.kv` is given.
 * @throws {StartError} naming the setting (MLES_KV, MLES_WWWROOT) and the
 * cause when KV cannot be opened or written, or the web root is unusable.
 */
export async function createServer(config: Config, deps: ServerDeps = {}): Promise<Server> {
  const log = deps.log ?? new Logger(config.logLevel);
  let staticFiles = deps.staticFiles;
  if (!staticFiles) {
    const root = config.wwwroot ?? new URL("../web/", import.meta.url);
    if (config.wwwroot !== undefined) {
      try {
        if (!Deno.statSync(config.wwwroot).isDirectory) throw new Error("not a directory");
      } catch (err) {
        throw new StartError(
          `Cannot start: MLES_WWWROOT=${JSON.stringify(config.wwwroot)} is not a readable folder: ${
            errorText(err)
          }`,
          err,
        );
      }
    }
    staticFiles = createStaticHandler({ root });
  }
  let kv = deps.kv;
  const ownsKv = config.bus === "kv" && !kv;
  const where = `MLES_KV=${JSON.stringify(config.kvPath ?? "(Deno's default location)")}`;
  if (ownsKv) {
    try {
      kv = await Deno.openKv(config.kvPath);
    } catch (err) {
      throw new StartError(`Cannot start: cannot open Deno KV at ${where}: ${errorText(err)}`, err);
    }
  }
  if (config.bus === "kv") {
    // A read-only file or a full disk opens fine and fails on the first write: find out now.
    try {
      await kv!.set(keys.health(), Date.now());
    } catch (err) {
      if (ownsKv) kv!.close();
      throw new StartError(
        `Cannot start: Deno KV at ${where} is not writable: ${errorText(err)}`,
        err,
      );
    }
  }
  const origin = crypto.randomUUID().slice(0, 8);
  const metrics = new Metrics(origin);
  const bus: Bus = config.bus === "kv"
    ? new KvBus(kv!, {
      historyLimit: config.historyLimit,
      historyMaxBytes: config.historyMaxBytes,
      readerSlackBytes: config.readerSlackBytes,
      ttlMs: config.channelTtlDays * 86_400_000,
      storeTimeoutMs: config.storeTimeoutMs,
      storeQueueBytes: config.storeQueueBytes,
      // One publisher's share: room for everything it may send while its
      // join is pending (held up to MLES_MAX_BUFFERED_BYTES) and as much again,
      // at least a quarter of the queue and one frame, at most the queue.
      sourceQueueBytes: Math.min(
        config.storeQueueBytes,
        Math.max(
          config.maxFrameBytes,
          2 * config.maxBufferedBytes,
          Math.floor(config.storeQueueBytes / 4),
        ),
      ),
      batchDelayMs: config.batchDelayMs,
      origin,
      metrics,
      log,
    })
    : new MemoryBus(config.historyLimit);
  const peerGate = config.peers.length > 0 || config.peerKey !== undefined
    ? new PeerGate({
      peered: config.peers.length > 0,
      peerKey: config.peerKey,
      dedup: new PeerDedup({
        kv: config.bus === "kv" ? kv : undefined,
        warn: (m, f) => log.warn(m, f),
      }),
      history: async (channel) => (await bus.history(channel)).deliveries.map((d) => d.frame),
    })
    : undefined;
  const claims: SessionClaims = config.bus === "kv"
    ? new KvSessionClaims(kv!, { owner: origin, warn: (m, f) => log.warn(m, f) })
    : new MemorySessionClaims();
  let peering: Peering | undefined;
  const hub = new Hub(bus, {
    onChannelActive: (channel, active) => peering?.channelActive(channel, active),
    maxBufferedBytes: config.maxBufferedBytes,
    onDrop: (c) => metrics.drop(c.code),
    onSent: (n) => metrics.framesOut += n,
    onHoldBack: () => metrics.heldBackPublishers++,
    historyMaxBytes: config.historyMaxBytes,
  });
  const health = kv ? new WriteProbe(() => kv!.set(keys.health(), Date.now())) : undefined;
  const http = createHttpHandler({
    session: {
      hub,
      config,
      log,
      claims,
      onReject: (c) => metrics.reject(c.code),
      onPaced: () => metrics.pacedClients++,
      onFrame: (bytes) => {
        metrics.framesIn++;
        metrics.bytesIn += bytes;
      },
      peers: peerGate,
    },
    metrics,
    rateLimitPerMinute: config.rateLimitPerMinute,
    maxConnections: config.maxConnections,
    maxSocketsPerIp: config.maxConnectionsPerIp,
    joinRatePerMinute: config.joinRatePerMinute,
    channelRatePerHour: config.channelRatePerHour,
    metricsToken: config.metricsToken,
    gauges: () => ({
      mles_sockets: { help: "Open WebSockets on this isolate", value: http.socketCount },
      mles_members: { help: "Members joined or joining on this isolate", value: hub.memberCount },
      mles_channels: { help: "Channels with local members", value: hub.channelCount },
    }),
    // A read (KV gone) and a timed write probe (reads go on answering while commits fail).
    healthy: async () => {
      if (!kv || !health) return true;
      try {
        await kv.get(keys.health());
      } catch {
        return false;
      }
      return await health.healthy();
    },
    staticFiles,
    peers: () => peering?.states,
  });

  if (config.peers.length > 0) {
    peering = new Peering({
      peers: config.peers,
      channels: config.peerChannels,
      peerKey: config.peerKey,
      uid: config.peerUid ?? `mles-peer-${origin}`,
      hub,
      log,
      lease: kv && config.bus === "kv" ? new KvLease(kv, origin) : undefined,
      gate: peerGate!,
    });
  }

  // Resync between mles-deno peers (authorized by the peer key inside), on
  // every transport: Deno.serve calls `fetch`, the node transport `http.fetch`.
  const fetch: HttpHandler["fetch"] = (req, info) => {
    if (peerGate && req.method === "POST" && new URL(req.url).pathname === PEER_SYNC_PATH) {
      return peerGate.handleSync(req);
    }
    return http.fetch(req, info);
  };
  let closed: Promise<void> | undefined;
  return {
    fetch,
    hub,
    metrics,
    peering,
    // The same handler with the sync route, for transports that upgrade by themselves.
    http: {
      fetch,
      closeSockets: (waitMs) => http.closeSockets(waitMs),
      get socketCount() {
        return http.socketCount;
      },
      admitUpgrade: (req, peer) => http.admitUpgrade(req, peer),
      adoptSocket: (socket, peer, controls) => http.adoptSocket(socket, peer, controls),
    },
    peerGate,
    close() {
      closed ??= (async () => {
        await peering?.close();
        await http.closeSockets();
        await claims.close();
        await bus.close();
        if (ownsKv) kv!.close();
      })();
      return closed;
    },
  };
}

/**
 * Closes `server` and exits on SIGINT/SIGTERM, within `boundMs` even if
 * something hangs (Deploy kills an evicted isolate 5 s after SIGINT; a
 * `deno serve` process holding a `kv.watch` did not exit on SIGTERM without
 * this). No-op where signals are not available (Deploy, workers).
 */
export function shutdownOnSignals(server: Server, boundMs: number): void {
  const stop = () => {
    const timer = setTimeout(() => Deno.exit(0), boundMs);
    server.close().finally(() => {
      clearTimeout(timer);
      Deno.exit(0);
    });
  };
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    try {
      Deno.addSignalListener(sig, stop);
    } catch {
      // Signals are not available here (Deploy isolate or worker): the platform stops us.
    }
  }
}
