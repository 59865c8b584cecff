/**
 * @module
 * Peering (SPEC section 6): this server joins the same channel on each peer
 * Mles server as an ordinary client and forwards frames both ways.
 *
 * - A bridge is one (peer, channel) pair. It is a member of the local hub
 *   (it gets every frame of the channel from every isolate) and a client of
 *   the peer (uid `mles-peer-...`, auth per SPEC section 4 with the peer's
 *   key). With a shared KV, a lease makes exactly one isolate run a given
 *   bridge.
 * - No loops: every frame entering this server from peering (from a bridge
 *   of ours, or from a `mles-peer-` client of another server) passes one
 *   server-wide duplicate window; each bridge also never sends a peer what
 *   came from it or what it already sent.
 * - Resynchronization: when a bridge connects, the peer replays its history;
 *   the window was first filled with our own history, so only frames we
 *   lack are added.
 * - A dead or refusing peer is retried with capped exponential backoff and
 *   jitter, logged once per state change, and never blocks local delivery.
 * Imports: hub (type), auth, dedupe, frame, close, log (type).
 */
import { mlesAuth } from "./auth.ts";
import type { Close } from "./close.ts";
import { Dedupe } from "./dedupe.ts";
import type { Frame } from "./frame.ts";
import { PEER_UID_PREFIX } from "./header.ts";
import type { Hub, Member, Membership } from "./hub.ts";
import type { Logger } from "./log.ts";

/** Exclusive right to run one bridge across the isolates of a deployment. */
export interface Lease {
  /** Takes or renews the lease named `name` for `ms`; false if another holder has it. */
  acquire(name: string, ms: number): Promise<boolean>;
  /** Gives it up (best effort). */
  release(name: string): Promise<void>;
}

/** Peering settings. */
export interface PeeringOptions {
  readonly peers: string[];
  /** Channels to bridge, or "*" for every channel with local client members. */
  readonly channels: string[] | "*";
  /** Key of the peers (their MLES_KEY), for the auth value. */
  readonly peerKey: string | undefined;
  /** This server's bridge uid on peers (must start with {@link PEER_UID_PREFIX}). */
  readonly uid: string;
  readonly hub: Hub;
  readonly log: Logger;
  /** Present when several isolates share KV. */
  readonly lease?: Lease;
  /** The window shared by every entry point (see {@link Peering.isDuplicate}). */
  readonly window?: Dedupe;
}

const LEASE_MS = 15_000;

/** The set of bridges of this isolate. */
export class Peering {
  readonly #opts: PeeringOptions;
  readonly #window: Dedupe;
  readonly #bridges = new Map<string, Bridge>();
  #closed = false;

  constructor(options: PeeringOptions) {
    if (!options.uid.startsWith(PEER_UID_PREFIX)) {
      throw new Error(
        `Peer uid must start with ${PEER_UID_PREFIX}: ${JSON.stringify(options.uid)}`,
      );
    }
    this.#opts = options;
    this.#window = options.window ?? new Dedupe();
    if (options.channels !== "*") { for (const c of options.channels) this.#open(c); }
  }

  /**
   * The server-wide duplicate window: true if this frame already entered
   * this server through peering (so it must be dropped), else records it.
   */
  isDuplicate(frame: Frame): boolean {
    return this.#window.seen(frame.kind, frame.data);
  }

  /** The hub reports channels gaining or losing their last local client (for "*"). */
  channelActive(channel: string, active: boolean): void {
    if (this.#opts.channels !== "*" || this.#closed) return;
    if (active) this.#open(channel);
    else {
      for (const [k, b] of this.#bridges) {
        if (b.channel === channel) {
          b.stop();
          this.#bridges.delete(k);
        }
      }
    }
  }

  /** Bridges and their state, for tests and logs. */
  get states(): { peer: string; channel: string; state: string }[] {
    return [...this.#bridges.values()].map((b) => ({
      peer: b.peer,
      channel: b.channel,
      state: b.state,
    }));
  }

  /** Stops every bridge. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#bridges.values()].map((b) => b.stop()));
    this.#bridges.clear();
  }

  #open(channel: string): void {
    for (const peer of this.#opts.peers) {
      const k = `${peer}\n${channel}`;
      if (this.#bridges.has(k)) continue;
      const b = new Bridge(peer, channel, this.#opts, this);
      this.#bridges.set(k, b);
      b.start();
    }
  }
}

/** One (peer, channel) link. */
class Bridge implements Member {
  readonly peer: string;
  readonly channel: string;
  state: "idle" | "waiting-lease" | "connecting" | "connected" | "down" | "refused" = "idle";
  readonly #opts: PeeringOptions;
  readonly #peering: Peering;
  /** What this bridge got from or sent to its peer: never sent (back) there. */
  readonly #sent = new Dedupe();
  #ws: WebSocket | undefined;
  #membership: Membership | undefined;
  #stopped = false;
  #attempt = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #leaseTimer: ReturnType<typeof setInterval> | undefined;

  constructor(peer: string, channel: string, opts: PeeringOptions, peering: Peering) {
    this.peer = peer;
    this.channel = channel;
    this.#opts = opts;
    this.#peering = peering;
  }

  get #leaseName(): string {
    return `bridge\n${this.peer}\n${this.channel}`;
  }

  // ---- Member (frames from the local hub, to the peer) ----

  send(frame: Frame): void {
    // While the peer is unreachable frames are not queued: the peer's own
    // bridge to us (or its next resynchronization) brings them.
    const ws = this.#ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (this.#sent.seen(frame.kind, frame.data)) return;
    // Known now: if it comes back through another path, it is a duplicate.
    this.#peering.isDuplicate(frame);
    ws.send(frame.data as string);
  }

  get bufferedAmount(): number {
    return this.#ws?.bufferedAmount ?? 0;
  }

  close(_close: Close): void {
    // The hub dropped us (e.g. the peer reads too slowly): start over.
    this.#membership = undefined;
    this.#ws?.close();
  }

  // ---- lifecycle ----

  start(): void {
    void this.#run();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearInterval(this.#leaseTimer);
    this.#membership?.leave();
    this.#membership = undefined;
    const ws = this.#ws;
    this.#ws = undefined;
    if (ws && ws.readyState <= WebSocket.OPEN) {
      const closed = new Promise((r) => ws.addEventListener("close", r, { once: true }));
      ws.close(1000, "Bridge stopped");
      await Promise.race([closed, new Promise((r) => setTimeout(r, 1000))]);
    }
    if (this.#opts.lease && this.state !== "waiting-lease") {
      await this.#opts.lease.release(this.#leaseName).catch(() => {});
    }
  }

  #setState(state: Bridge["state"], fields: Record<string, unknown> = {}): void {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    // A retry after a failure stays quiet until the outcome differs: one line per real change.
    if (state === "connecting" && previous !== "idle") {
      this.state = previous;
      return;
    }
    const level = state === "connected" ? "info" : state === "connecting" ? "debug" : "warn";
    this.#opts.log[level]("peer bridge " + state, {
      peer: this.peer,
      channel: this.channel,
      ...fields,
    });
  }

  #retry(): void {
    if (this.#stopped) return;
    // Capped exponential backoff with full jitter: 0.25 s .. 30 s.
    const cap = Math.min(30_000, 250 * 2 ** this.#attempt++);
    this.#timer = setTimeout(() => void this.#run(), cap / 2 + Math.random() * cap / 2);
  }

  async #run(): Promise<void> {
    if (this.#stopped) return;
    const lease = this.#opts.lease;
    if (lease) {
      let mine = false;
      try {
        mine = await lease.acquire(this.#leaseName, LEASE_MS);
      } catch (err) {
        this.#opts.log.warn("peer lease failed", { peer: this.peer, error: err });
      }
      if (this.#stopped) return;
      if (!mine) {
        this.#setState("waiting-lease");
        this.#timer = setTimeout(() => void this.#run(), LEASE_MS / 3);
        return;
      }
      clearInterval(this.#leaseTimer);
      this.#leaseTimer = setInterval(async () => {
        const still = await lease.acquire(this.#leaseName, LEASE_MS).catch(() => false);
        if (!still && !this.#stopped) {
          // Another isolate took over: step back and wait for the lease again.
          clearInterval(this.#leaseTimer);
          this.#membership?.leave();
          this.#membership = undefined;
          this.#ws?.close();
        }
      }, LEASE_MS / 3);
    }
    this.#setState("connecting");
    try {
      if (!this.#membership) {
        // Join locally first: our history fills the window, so a peer's replay adds only what we lack.
        this.#membership = await this.#opts.hub.join(this, this.channel, {
          bridge: true,
          onHistory: (frames) => {
            for (const f of frames) {
              this.#peering.isDuplicate(f);
              this.#sent.seen(f.kind, f.data);
            }
          },
        });
      }
    } catch (err) {
      this.#setState("down", { error: err });
      return this.#retry();
    }
    if (this.#stopped) return;
    this.#connect();
  }

  #connect(): void {
    const { uid, peerKey } = this.#opts;
    let ws: WebSocket;
    try {
      ws = new WebSocket(this.peer, "mles-websocket");
    } catch (err) {
      this.#setState("down", { error: err });
      return this.#retry();
    }
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    // Mles has no join acknowledgement: a refused header is closed at once,
    // so the link counts as up after its first frame or a quiet second.
    let upTimer: ReturnType<typeof setTimeout> | undefined;
    const up = () => {
      clearTimeout(upTimer);
      if (this.#ws !== ws || this.state === "connected") return;
      this.#attempt = 0;
      this.#setState("connected");
    };
    ws.onopen = () => {
      ws.send(
        JSON.stringify({ uid, channel: this.channel, auth: mlesAuth(uid, this.channel, peerKey) }),
      );
      upTimer = setTimeout(up, 1000);
    };
    ws.onmessage = (ev) => {
      up();
      const frame: Frame = typeof ev.data === "string"
        ? { kind: "text", data: ev.data }
        : { kind: "binary", data: new Uint8Array(ev.data as ArrayBuffer) };
      this.#sent.seen(frame.kind, frame.data); // never send it back to this peer
      if (this.#peering.isDuplicate(frame)) return;
      this.#membership?.publish(frame);
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      clearTimeout(upTimer);
      if (this.#ws === ws) this.#ws = undefined;
      if (this.#stopped) return;
      const refused = ev.code === 1008 || ev.code === 1002 || ev.code === 1003;
      this.#setState(refused ? "refused" : "down", { code: ev.code, reason: ev.reason });
      this.#retry();
    };
  }
}

/** A {@link Lease} in Deno KV: the holder and deadline live in the value (an expired row may stay readable). */
export class KvLease implements Lease {
  readonly #kv: Deno.Kv;
  readonly #owner: string;

  constructor(kv: Deno.Kv, owner: string) {
    this.#kv = kv;
    this.#owner = owner;
  }

  async acquire(name: string, ms: number): Promise<boolean> {
    const key = ["mles", "lease", await leaseKey(name)];
    for (let attempt = 0; attempt < 5; attempt++) {
      const cur = await this.#kv.get<{ owner: string; until: number }>(key, {
        consistency: "strong",
      });
      const now = Date.now();
      if (cur.value && cur.value.owner !== this.#owner && cur.value.until > now) return false;
      try {
        const res = await this.#kv.atomic()
          .check(cur)
          .set(key, { owner: this.#owner, until: now + ms }, { expireIn: ms * 4 })
          .commit();
        if (res.ok) return true;
      } catch (err) {
        // `database is locked` with several SQLite handles: back off and retry.
        if (!(err instanceof Error && /locked|busy/i.test(err.message))) throw err;
        await new Promise((r) => setTimeout(r, 5 * 2 ** attempt));
      }
    }
    return false;
  }

  async release(name: string): Promise<void> {
    const key = ["mles", "lease", await leaseKey(name)];
    const cur = await this.#kv.get<{ owner: string }>(key, { consistency: "strong" });
    if (cur.value?.owner === this.#owner) await this.#kv.atomic().check(cur).delete(key).commit();
  }
}

async function leaseKey(name: string): Promise<string> {
  const d = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(name)),
  );
  return Array.from(d.subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
}
