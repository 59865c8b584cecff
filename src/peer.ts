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
 * - Peer treatment: a client whose uid starts with `mles-peer-` is treated
 *   as another server's bridge only when it proves it: its auth equals
 *   SipHash(uid || channel || MLES_PEER_KEY) with this server's peer key;
 *   with no peer key set, only on a server that peers itself (MLES_PEERS).
 * - No loops, no duplicates: every frame entering from peering (through a
 *   bridge of ours or a proven peer's session) passes {@link PeerDedup}:
 *   per channel, by what the channel holds, shared by every isolate through
 *   KV. Each link never sends its peer what came from it.
 * - Resynchronization between two mles-deno servers sends only what is
 *   missing: the bridge's header carries the hashes of the last
 *   {@link RESYNC_FRAMES} frames we hold (`resync_have`, an extra field that
 *   mles-rs ignores); the peer then replays only the history frames absent
 *   from that list. The bridge asks the peer's {@link PEER_SYNC_PATH}
 *   (authorized like the bridge) for the peer's hashes and sends only what
 *   the peer lacks. A peer that is mles-rs (or answers that path with
 *   anything else) replays its whole history as before, and duplicates are
 *   dropped by the check.
 * - A dead or refusing peer is retried with capped exponential backoff and
 *   jitter, logged once per state change, and never blocks local delivery.
 * - No bridge leaks a hub member: a bridge stopped during its lease or its
 *   local join leaves (and gives the lease back) as soon as that settles.
 * Imports: auth, close (type), dedupe, frame (type), header, hub (type),
 * lease (type), link, log (type), peer_dedup, retry.
 */
import { mlesAuth, verifyAuth } from "./auth.ts";
import type { Close } from "./close.ts";
import { Dedupe } from "./dedupe.ts";
import type { Frame } from "./frame.ts";
import { PEER_UID_PREFIX } from "./header.ts";
import type { Hub, Member, Membership } from "./hub.ts";
import type { KvLease } from "./lease.ts";
import { type Attempt, Link, type LinkEvent } from "./link.ts";
import type { Logger } from "./log.ts";
import { type PeerDedup, shortHashes } from "./peer_dedup.ts";
import { errorText } from "./retry.ts";

/** HTTP path (POST) where a proven peer asks for the hashes of a channel's last frames. */
export const PEER_SYNC_PATH = "/.well-known/mles-peer-sync";

/** Frames compared on a (re)connect: the newest this many on each side (8 bytes of hash each). */
export const RESYNC_FRAMES = 200;

/** What a peering link has sent and received (for tests and the resync measurement). */
export interface PeerStats {
  /** Frames sent to peers (live and resync). */
  sent: number;
  /** Frames received from peers (live, replay and resync). */
  received: number;
  /** Of `received`, frames dropped as already held. */
  duplicates: number;
  /** Resync comparisons completed (missing frames sent), either direction. */
  resyncs: number;
}

/** Settings of {@link PeerGate}. */
export interface PeerGateOptions {
  /** This server bridges channels itself (MLES_PEERS is set). */
  readonly peered: boolean;
  /** MLES_PEER_KEY: the key peers prove themselves with. */
  readonly peerKey: string | undefined;
  readonly dedup: PeerDedup;
  /** The channel's newest frames, oldest first (the bus's history). */
  readonly history: (channel: string) => Promise<Frame[]>;
}

/**
 * Everything peering shares on one isolate: who counts as a peer, the links
 * (bridges and peer sessions) through the duplicate check, and the sync
 * endpoint.
 */
export class PeerGate {
  readonly #opts: PeerGateOptions;
  readonly stats: PeerStats = { sent: 0, received: 0, duplicates: 0, resyncs: 0 };
  #links = 0;

  constructor(options: PeerGateOptions) {
    this.#opts = options;
  }

  /** Open links on this isolate (for leak tests). */
  get links(): number {
    return this.#links;
  }

  /** The duplicate check (for tests). */
  get dedup(): PeerDedup {
    return this.#opts.dedup;
  }

  /**
   * True if the header authenticates with the peer key: accepted as a peer
   * even where it does not match MLES_KEY (the peer key is the stronger proof).
   */
  authenticates(h: { uid: string; channel: string; auth?: string }): boolean {
    return h.uid.startsWith(PEER_UID_PREFIX) && this.#opts.peerKey !== undefined &&
      h.auth !== undefined && verifyAuth(h, this.#opts.peerKey);
  }

  /** True if this (already authenticated) header gets peer treatment (issue 12 row 8). */
  proves(h: { uid: string; channel: string; auth?: string }): boolean {
    if (!h.uid.startsWith(PEER_UID_PREFIX)) return false;
    if (this.#opts.peerKey !== undefined) return this.authenticates(h);
    return this.#opts.peered;
  }

  /** A new link on `channel` (close it when done). */
  link(channel: string): PeerLink {
    this.#links++;
    return new PeerLink(this.#opts.dedup, channel, this.stats, () => this.#links--);
  }

  /** The channel's newest frames (at most {@link RESYNC_FRAMES}), oldest first. */
  async recent(channel: string): Promise<Frame[]> {
    return (await this.#opts.history(channel)).slice(-RESYNC_FRAMES);
  }

  /**
   * Serves {@link PEER_SYNC_PATH}: body `{uid, channel, auth}` of a proven
   * peer; answers `{v: 1, have}` (hashes of the channel's newest frames).
   */
  async handleSync(req: Request): Promise<Response> {
    if (req.method !== "POST") return new Response("Method not allowed", { status: 405 });
    let body: { uid?: unknown; channel?: unknown; auth?: unknown };
    try {
      body = await req.json();
    } catch {
      return new Response("Bad request", { status: 400 });
    }
    const { uid, channel, auth } = body;
    if (typeof uid !== "string" || typeof channel !== "string" || typeof auth !== "string") {
      return new Response("Bad request", { status: 400 });
    }
    // The peer key authorizes this; with no peer key, a peering server answers its peers' uids.
    const h = { uid, channel, auth };
    const allowed = this.#opts.peerKey !== undefined
      ? this.authenticates(h)
      : this.#opts.peered && uid.startsWith(PEER_UID_PREFIX) && verifyAuth(h, undefined);
    if (!allowed) return new Response("Forbidden", { status: 403 });
    const have = await shortHashes(await this.recent(channel));
    return Response.json({ v: 1, have });
  }
}

/**
 * One peering link's view of one channel: frames in pass the duplicate
 * check and are published in arrival order; frames out are made known to
 * every isolate first and sent in order.
 */
export class PeerLink {
  readonly channel: string;
  readonly #dedup: PeerDedup;
  readonly #stats: PeerStats;
  readonly #onClose: () => void;
  #in: Promise<void> = Promise.resolve();
  #out: Promise<void> = Promise.resolve();
  #queuedBytes = 0;
  #closed = false;

  constructor(dedup: PeerDedup, channel: string, stats: PeerStats, onClose: () => void) {
    this.channel = channel;
    this.#dedup = dedup;
    this.#stats = stats;
    this.#onClose = onClose;
    dedup.retain(channel);
  }

  /** Bytes waiting for their KV row before being sent. */
  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /** Records a frame the channel holds. */
  know(frame: Frame): void {
    if (!this.#closed) this.#dedup.know(this.channel, frame);
  }

  /** A frame from the peer: `publish` is called, in arrival order, if the channel lacks it. */
  receive(frame: Frame, publish: (frame: Frame) => void): void {
    if (this.#closed) return;
    this.#stats.received++;
    const verdict = this.#dedup.admit(this.channel, frame);
    this.#in = this.#in.then(async () => {
      if (!(await verdict)) this.#stats.duplicates++;
      else if (!this.#closed) publish(frame);
    });
  }

  /** Sends a frame to the peer (via `send`) once every isolate knows it, in call order. */
  send(frame: Frame, send: (frame: Frame) => void): void {
    if (this.#closed) return;
    const size = frame.kind === "binary" ? frame.data.byteLength : frame.data.length;
    this.#queuedBytes += size;
    const marked = this.#dedup.markOut(this.channel, frame);
    this.#out = this.#out.then(async () => {
      await marked;
      this.#queuedBytes -= size;
      if (this.#closed) return;
      try {
        send(frame);
        this.#stats.sent++;
      } catch {
        // The socket is gone: its close handler starts over.
      }
    });
  }

  /**
   * Resync: of `frames` (ours, oldest first), sends those whose hash is not
   * in `theirs` (the peer's {@link shortHashes}), in order, before anything
   * sent after this call.
   */
  sendMissing(frames: Frame[], theirs: string, send: (frame: Frame) => void): void {
    if (this.#closed) return;
    const have = new Set(splitHashes(theirs));
    const hashes = shortHashList(frames);
    const prev = this.#out;
    const sent = Promise.withResolvers<void>();
    this.#out = sent.promise;
    (async () => {
      await prev;
      const list = await hashes;
      const missing = frames.filter((_, i) => !have.has(list[i]));
      await Promise.all(missing.map((f) => this.#dedup.markOut(this.channel, f)));
      for (const f of missing) {
        if (this.#closed) break;
        try {
          send(f);
          this.#stats.sent++;
        } catch {
          break;
        }
      }
    })().finally(() => {
      this.#stats.resyncs++;
      sent.resolve();
    });
  }

  /** Ends the link; frames still waiting are not sent. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#dedup.release(this.channel);
    this.#onClose();
  }
}

async function shortHashList(frames: Frame[]): Promise<string[]> {
  return splitHashes(await shortHashes(frames));
}

/** The 8-byte hashes in a {@link shortHashes} string, each as 11 base64 characters... */
function splitHashes(joined: string): string[] {
  let bin: string;
  try {
    bin = atob(joined);
  } catch {
    return [];
  }
  const out: string[] = [];
  for (let i = 0; i + 8 <= bin.length; i += 8) out.push(bin.slice(i, i + 8));
  return out;
}

/** Peering settings. */
export interface PeeringOptions {
  readonly peers: string[];
  /** Channels to bridge, or "*" for every channel with local client members. */
  readonly channels: string[] | "*";
  /** Key of the peers (their MLES_PEER_KEY or MLES_KEY), for the auth value. */
  readonly peerKey: string | undefined;
  /** This server's bridge uid on peers (must start with {@link PEER_UID_PREFIX}). */
  readonly uid: string;
  readonly hub: Hub;
  readonly log: Logger;
  /** The links' duplicate check and resync (shared with peer sessions). */
  readonly gate: PeerGate;
  /** Present when several isolates share KV: one isolate at a time runs a given bridge. */
  readonly lease?: KvLease;
}

const LEASE_MS = 15_000;

/** The set of bridges of this isolate. */
export class Peering {
  readonly #opts: PeeringOptions;
  readonly #bridges = new Map<string, Bridge>();
  #closed = false;

  constructor(options: PeeringOptions) {
    if (!options.uid.startsWith(PEER_UID_PREFIX)) {
      throw new Error(
        `Peer uid must start with ${PEER_UID_PREFIX}: ${JSON.stringify(options.uid)}`,
      );
    }
    this.#opts = options;
    if (options.channels !== "*") { for (const c of options.channels) this.#open(c); }
  }

  /** The hub reports channels gaining or losing their last local client (for "*"). */
  channelActive(channel: string, active: boolean): void {
    if (this.#opts.channels !== "*" || this.#closed) return;
    if (active) this.#open(channel);
    else {
      for (const [k, b] of this.#bridges) {
        if (b.channel === channel) {
          void b.stop();
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
      const b = new Bridge(peer, channel, this.#opts);
      this.#bridges.set(k, b);
      b.start();
    }
  }
}

/** The peer's sync endpoint: same host as its WebSocket URL, over HTTP(S). */
function syncUrl(peer: string): string {
  const u = new URL(peer);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.pathname = PEER_SYNC_PATH;
  u.search = "";
  return u.href;
}

/** Close codes with which a peer refuses our header (logged as "refused", not "down"). */
const REFUSALS = new Set([1002, 1003, 1008]);

/**
 * One (peer, channel) bridge: a member of the local hub that forwards to a
 * {@link Link} to the peer and back. Before each attempt it holds the lease
 * (if any), joins the hub once, and reads what the channel holds now, which
 * rides in the header (`resync_have`) and drives the resync.
 */
class Bridge implements Member {
  readonly peer: string;
  readonly channel: string;
  state: "idle" | "waiting-lease" | "connecting" | "connected" | "down" | "refused" = "idle";
  readonly #opts: PeeringOptions;
  readonly #check: PeerLink;
  readonly #link: Link;
  /** What this bridge got from or sent to its peer on this connection: never sent (back) there. */
  #sent = new Dedupe();
  #membership: Membership | undefined;
  /** The channel's newest frames when the current attempt was prepared (for the resync). */
  #ours: Frame[] = [];
  #stopped = false;
  #leaseTimer: ReturnType<typeof setInterval> | undefined;

  constructor(peer: string, channel: string, opts: PeeringOptions) {
    this.peer = peer;
    this.channel = channel;
    this.#opts = opts;
    this.#check = opts.gate.link(channel);
    this.#link = new Link({
      url: peer,
      header: () => this.#prepare(),
      outboxLimit: 0, // while the peer is down, the resync on reconnect brings what it missed
      onFrame: (frame) => {
        this.#sent.firstSight(frame.kind, frame.data); // never send it back to this peer
        this.#check.receive(frame, (f) => this.#membership?.publish(f));
      },
      onEvent: (e) => this.#onLinkEvent(e),
    });
  }

  get #leaseName(): string {
    return `bridge\n${this.peer}\n${this.channel}`;
  }

  // ---- Member (frames from the local hub, to the peer) ----

  send(frame: Frame): void {
    // Known to the check whatever the link's state: if it comes back, it is a duplicate.
    this.#check.know(frame);
    if (!this.#link.open || !this.#sent.firstSight(frame.kind, frame.data)) return;
    const connection = this.#link.connection;
    this.#check.send(frame, (f) => this.#sendOn(connection, f));
  }

  get bufferedAmount(): number {
    return this.#link.bufferedAmount + this.#check.queuedBytes;
  }

  close(_close: Close): void {
    // The hub dropped us (e.g. the peer reads too slowly): start over.
    this.#membership = undefined;
    this.#link.drop();
  }

  // ---- lifecycle ----

  start(): void {
    this.#link.start();
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#leaseTimer);
    this.#membership?.leave();
    this.#membership = undefined;
    this.#check.close();
    await this.#link.close(1000, "Bridge stopped", 1000);
    if (this.#opts.lease && this.state !== "waiting-lease") {
      await this.#opts.lease.release(this.#leaseName).catch(() => {});
    }
  }

  /** Sends on the socket numbered `connection` only; throws if that socket is gone. */
  #sendOn(connection: number, f: Frame): void {
    if (this.#link.connection !== connection || !this.#link.send(f)) {
      throw new Error("The peer link closed");
    }
  }

  #onLinkEvent(e: LinkEvent): void {
    if (e.type === "open") {
      this.#sent = new Dedupe();
      void this.#pushMissing(this.#link.connection, this.#ours);
    } else if (e.type === "up") this.#setState("connected");
    else if (e.type === "failed") this.#setState("down", { error: e.error });
    else if (e.type === "closed") {
      const state = REFUSALS.has(e.code) ? "refused" : "down";
      this.#setState(state, { code: e.code, reason: e.reason });
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

  /**
   * Before each attempt: the lease (or a wait for it), the hub membership,
   * and the header carrying what the channel holds now. Rejects (the link
   * retries with backoff) when the hub or history cannot be read.
   */
  async #prepare(): Promise<Attempt> {
    // No lease, no await: the join starts in the same turn as the attempt.
    if (this.#opts.lease && !await this.#holdLease(this.#opts.lease)) {
      if (!this.#stopped) this.#setState("waiting-lease");
      return { waitMs: LEASE_MS / 3 };
    }
    this.#setState("connecting");
    if (!this.#membership) {
      const m = await this.#opts.hub.join(this, this.channel, {
        bridge: true,
        onHistory: (frames) => {
          for (const f of frames) this.#check.know(f);
        },
      });
      // Stopped while joining: stop() found no membership to leave, so leave now.
      if (this.#stopped) {
        m?.leave();
        return { waitMs: 0 }; // the link is stopped: it makes no further attempt
      }
      this.#membership = m;
    }
    // Every (re)connect starts from what the channel holds now.
    const ours = await this.#opts.gate.recent(this.channel);
    for (const f of ours) this.#check.know(f);
    this.#ours = ours;
    const { uid, peerKey } = this.#opts;
    const auth = mlesAuth(uid, this.channel, peerKey);
    // `resync_have`: an mles-deno peer replays only what is not in it; mles-rs ignores it.
    const resync_have = await shortHashes(ours);
    return { header: JSON.stringify({ uid, channel: this.channel, auth, resync_have }) };
  }

  /** True once this isolate holds the bridge's lease; renews it meanwhile. */
  async #holdLease(lease: KvLease): Promise<boolean> {
    let mine = false;
    try {
      mine = await lease.acquire(this.#leaseName, LEASE_MS);
    } catch (err) {
      this.#opts.log.warn("peer lease failed", { peer: this.peer, error: errorText(err) });
    }
    if (this.#stopped) {
      // Stopped while acquiring: stop() could not give back what it did not hold yet.
      if (mine) await lease.release(this.#leaseName).catch(() => {});
      return false;
    }
    if (!mine) return false;
    clearInterval(this.#leaseTimer);
    this.#leaseTimer = setInterval(async () => {
      const still = await lease.acquire(this.#leaseName, LEASE_MS).catch(() => false);
      if (!still && !this.#stopped) {
        // Another isolate took over: step back and wait for the lease again.
        clearInterval(this.#leaseTimer);
        this.#membership?.leave();
        this.#membership = undefined;
        this.#link.drop();
      }
    }, LEASE_MS / 3);
    return true;
  }

  /** Asks an mles-deno peer what it holds and sends only what it lacks; a plain peer is left alone. */
  async #pushMissing(connection: number, ours: Frame[]): Promise<void> {
    const { uid, peerKey } = this.#opts;
    let theirs: string | undefined;
    try {
      const res = await fetch(syncUrl(this.peer), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          uid,
          channel: this.channel,
          auth: mlesAuth(uid, this.channel, peerKey),
        }),
        signal: AbortSignal.timeout(10_000),
      });
      const body = res.ok ? await res.json().catch(() => undefined) : await res.body?.cancel();
      if (body?.v === 1 && typeof body.have === "string") theirs = body.have;
    } catch (err) {
      this.#opts.log.debug("peer sync unavailable", { peer: this.peer, error: errorText(err) });
    }
    if (theirs === undefined || this.#link.connection !== connection || !this.#link.open) return;
    this.#check.sendMissing(ours, theirs, (f) => {
      // Checked before the window: a frame for a closed socket must not count as sent on the next.
      if (this.#link.connection !== connection) throw new Error("The peer link closed");
      if (this.#sent.firstSight(f.kind, f.data)) this.#sendOn(connection, f);
    });
  }
}
