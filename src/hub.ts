/**
 * @module
 * This isolate's channels: which local members sit in which channel, the
 * join handoff (history, then live, no gap, no duplicate), fan-out to every
 * member but the sender, and per-member isolation (one bad or slow socket
 * never delays or breaks delivery to the others). Tells the bus when a
 * channel gets its first local member and loses its last. Nothing here knows
 * about WebSockets: members are anything with `send`/`close`.
 * Imports: bus (type), frame, close, retry.
 */
import type { Bus } from "./bus.ts";
import { CLOSE, type Close } from "./close.ts";
import { type Delivery, type Frame, type Position, utf8Length } from "./frame.ts";
import { errorText } from "./retry.ts";

/** One local connection as the hub sees it. */
export interface Member {
  /** Sends one frame; may throw if the connection is gone. */
  send(frame: Frame): void;
  /** Bytes accepted by `send` but not yet written to the network. */
  readonly bufferedAmount: number;
  /** Closes the connection with a code and reason; must not throw. */
  close(close: Close): void;
  /**
   * Where the transport can: stops reading this member's frames for `ms`
   * (TCP then holds the client back). The hub slows a flooding publisher
   * this way instead of closing it. Absent where it cannot.
   */
  holdBack?(ms: number): void;
}

/** Hub settings. */
export interface HubOptions {
  /** A member with more than this many bytes waiting to be sent is dropped (1013). */
  readonly maxBufferedBytes: number;
  /** Called when the hub drops a member, with the close it sent (for logs and metrics). */
  readonly onDrop?: (close: Close) => void;
  /** Called when a flooding publisher is held back instead of closed (for metrics). */
  readonly onHoldBack?: () => void;
  /** Called with the number of frames sent to members (for metrics). */
  readonly onSent?: (frames: number) => void;
  /** The clock (ms), for tests; default Date.now. */
  readonly now?: () => number;
  /** Bytes of history replayed to a newcomer at most (oldest dropped first); 0 = no bound. */
  readonly historyMaxBytes?: number;
  /**
   * Called when a channel gets its first client member on this isolate
   * (`true`) and when it loses its last (`false`). Members joined with
   * `bridge: true` do not count.
   */
  readonly onChannelActive?: (channel: string, active: boolean) => void;
}

/** How a member joins. */
export interface JoinOptions {
  /** The client's header frame, appended to history (not sent live) once joined. */
  readonly header?: Frame;
  /** Receives the history instead of the member's `send` (peering prefills its window). */
  readonly onHistory?: (frames: Frame[]) => void;
  /** A peering bridge, not a client: not counted by `onChannelActive`. */
  readonly bridge?: boolean;
}

/** A member's place in a channel, returned by {@link Hub.join}. */
export interface Membership {
  /**
   * Delivers `frame` to every other member of the channel (on every isolate)
   * and to history. `bytes`, its size on the wire, saves measuring it again.
   * If the store cannot take it (queue full), the member is closed with 1013
   * and the frame goes nowhere.
   */
  publish(frame: Frame, bytes?: number): void;
  /** Leaves the channel. Idempotent. */
  leave(): void;
}

interface Slot {
  readonly member: Member;
  /** Live deliveries held back while this member's history is being read; null once live. */
  buffer: Delivery[] | null;
  /** Bytes in `buffer`: they count toward the member's bound like bytes waiting to be sent. */
  held: number;
  /** Bytes waiting to be sent at the last send, and when the member last drained any. */
  lastWaiting: number;
  progressAt: number;
  /**
   * The newest stored position this member has been sent (or that its
   * history covered): a frame at or before it is never sent to it again.
   */
  after: Position;
  left: boolean;
  /** Join completed (counted in joinedCount). */
  live: boolean;
  readonly bridge: boolean;
}

interface Channel {
  readonly name: string;
  readonly slots: Map<Member, Slot>;
  /** Slots that are clients, not bridges. */
  clients: number;
  /** Settles when the bus follows this channel. */
  readonly ready: Promise<void>;
}

/** Random id of this isolate, prefix of every frame id it creates. */
function newOrigin(): string {
  const b = crypto.getRandomValues(new Uint8Array(6));
  return Array.from(b, (x) => x.toString(36).padStart(2, "0")).join("");
}

/** This isolate's channel membership and fan-out. */
export class Hub {
  readonly #bus: Bus;
  readonly #opts: HubOptions;
  readonly #channels = new Map<string, Channel>();
  readonly #origin = newOrigin();
  #nextId = 0;
  #members = 0;
  #joined = 0;

  constructor(bus: Bus, options: HubOptions) {
    this.#bus = bus;
    this.#opts = options;
    bus.listen({
      onFrames: (channel, deliveries) => this.#onBusFrames(channel, deliveries),
      onPublishFailed: (channel, d) => this.#onPublishFailed(channel, d),
    });
  }

  /** Channels with at least one local member (joined or joining). */
  get channelCount(): number {
    return this.#channels.size;
  }

  /** Local members, joined or joining. */
  get memberCount(): number {
    return this.#members;
  }

  /** Local members whose join has completed (history sent, header stored or queued). */
  get joinedCount(): number {
    return this.#joined;
  }

  /**
   * Joins `member` to `channel`: sends it the channel's history (oldest
   * first), then every frame published after that point exactly once, then
   * appends `options.header` to history without delivering it live (SPEC
   * section 3).
   * Resolves undefined if the member left meanwhile. Rejects, with the
   * channel in the message, if history cannot be read; the member is then
   * not in the channel.
   */
  async join(
    member: Member,
    channel: string,
    options: JoinOptions = {},
  ): Promise<Membership | undefined> {
    let ch = this.#channels.get(channel);
    if (!ch) {
      ch = { name: channel, slots: new Map(), clients: 0, ready: this.#bus.subscribe(channel) };
      this.#channels.set(channel, ch);
      ch.ready.catch(() => {}); // observed below by every joiner
    }
    const bridge = options.bridge ?? false;
    const slot: Slot = {
      member,
      buffer: [],
      held: 0,
      lastWaiting: 0,
      progressAt: this.#now(),
      left: false,
      live: false,
      bridge,
      after: "",
    };
    ch.slots.set(member, slot);
    this.#members++;
    if (!bridge && ch.clients++ === 0) this.#opts.onChannelActive?.(channel, true);
    try {
      await ch.ready;
      if (slot.left) return undefined;
      const history = await this.#bus.history(channel);
      if (slot.left) return undefined;
      const replay = this.#boundBytes(history.deliveries);
      if (options.onHistory) options.onHistory(replay.map((d) => d.frame));
      else {
        // At the pace the newcomer reads: a big history never piles up in
        // its send buffer (nor makes the channel unjoinable).
        const high = this.#replayHighWater();
        for (const d of replay) {
          if (!this.#deliver(ch, slot, d.frame)) return undefined;
          if (slot.member.bufferedAmount > high && !await this.#drained(ch, slot, high / 4)) {
            return undefined;
          }
        }
      }
      slot.after = history.lastPos;
      const buffered = slot.buffer!;
      slot.buffer = null;
      slot.held = 0;
      if (buffered.length > 0) {
        const seen = new Set(history.deliveries.map((d) => d.id));
        for (const d of buffered) {
          // Read as part of history (by id: this isolate's unstored frames
          // have no position yet), or stored at or before its boundary.
          if (seen.has(d.id)) continue;
          this.#deliverLive(ch, slot, d);
          if (slot.left) return undefined;
        }
      }
    } catch (err) {
      this.#remove(ch, slot);
      throw new Error(`Cannot join channel ${JSON.stringify(channel)}: ${errorText(err)}`, {
        cause: err,
      });
    }
    if (options.header) {
      const h: Delivery = { id: this.#newId(), frame: options.header, historyOnly: true };
      if (!this.#bus.publish(channel, h)) {
        this.#drop(ch, slot, CLOSE.storeBusy);
        return undefined;
      }
    }
    slot.live = true;
    this.#joined++;
    const joined = ch;
    return {
      publish: (frame, bytes) => {
        if (slot.left) return;
        const d: Delivery = { id: this.#newId(), frame, source: member, bytes };
        // Queued for storage first: a publisher the store cannot keep up
        // with is closed, and its frame goes nowhere (not half-delivered).
        if (!this.#bus.publish(channel, d)) return this.#drop(joined, slot, CLOSE.storeBusy);
        this.#fanout(joined, d, member);
      },
      leave: () => this.#remove(joined, slot),
    };
  }

  #now(): number {
    return this.#opts.now?.() ?? Date.now();
  }

  #newId(): string {
    return `${this.#origin}.${(this.#nextId++).toString(36)}`;
  }

  /** The newest frames of `all` whose total size stays within historyMaxBytes. */
  #boundBytes(all: Delivery[]): Delivery[] {
    const max = this.#opts.historyMaxBytes ?? 0;
    if (max <= 0) return all;
    let bytes = 0;
    let i = all.length;
    while (i > 0) {
      const f = all[i - 1].frame;
      bytes += f.kind === "binary" ? f.data.byteLength : utf8Length(f.data);
      if (bytes > max) break;
      i--;
    }
    return all.slice(i);
  }

  /** A frame could not be stored: its publisher, if still here, is closed with 1011. */
  #onPublishFailed(channel: string, d: Delivery): void {
    const ch = this.#channels.get(channel);
    const slot = ch?.slots.get(d.source as Member);
    if (ch && slot) this.#drop(ch, slot, CLOSE.storeFailed);
  }

  #onBusFrames(channel: string, deliveries: Delivery[]): void {
    const ch = this.#channels.get(channel);
    if (!ch) return;
    for (const d of deliveries) this.#fanout(ch, d, undefined);
  }

  /**
   * Sends `d` to every member but its sender. Who pays when a member passes
   * its bound: if most of the other recipients keep up (less than a quarter
   * of their bound waiting), that member is a slow reader and is dropped
   * (1013 `Too slow`); if they do not, the channel is being flooded and the
   * local publisher is held back ({@link Member.holdBack}) or, where it
   * cannot be, closed (1013 `Too fast`), not its subscribers. A
   * member with no other recipient to compare with, or behind a publisher on
   * another isolate, is dropped when it passes its bound.
   */
  #fanout(ch: Channel, d: Delivery, sender: Member | undefined): void {
    const max = this.#opts.maxBufferedBytes;
    const now = this.#now();
    const size = approxBytes(d.frame);
    let sent = 0;
    let recipients = 0;
    let keepingUp = 0;
    let over: Slot[] | undefined;
    let stalled: Slot[] | undefined;
    for (const slot of ch.slots.values()) {
      if (slot.member === sender) continue;
      recipients++;
      let waiting: number;
      if (slot.buffer) {
        slot.buffer.push(d);
        slot.held += size;
        waiting = slot.held + slot.member.bufferedAmount;
      } else {
        if (!this.#deliverLive(ch, slot, d, false)) continue;
        sent++;
        waiting = slot.member.bufferedAmount;
        // Drained anything since the last send? A reader that drains nothing
        // for STALL_MS while a backlog waits is gone, whoever floods.
        if (waiting < slot.lastWaiting + size) slot.progressAt = now;
        slot.lastWaiting = waiting;
        if (waiting > max / 2 && now - slot.progressAt > STALL_MS) {
          (stalled ??= []).push(slot);
          continue;
        }
      }
      if (waiting < max / 4) keepingUp++;
      if (waiting > max) (over ??= []).push(slot);
    }
    if (sent > 0) this.#opts.onSent?.(sent);
    for (const slot of stalled ?? []) {
      this.#drop(ch, slot, CLOSE.slowConsumer(slot.member.bufferedAmount));
    }
    if (!over) return;
    const others = recipients - 1;
    const flood = others >= 1 && keepingUp * 2 < others;
    const publisher = sender && ch.slots.get(sender);
    if (flood && publisher) {
      // Backpressure where the transport has it: the publisher is not read
      // until its channel has had time to drain (then checked again at its
      // next frame); else it is closed.
      if (!sender.holdBack) return this.#drop(ch, publisher, CLOSE.publisherTooFast);
      sender.holdBack(FLOOD_HOLD_MS);
      this.#opts.onHoldBack?.();
      return;
    }
    for (const slot of over) {
      this.#drop(ch, slot, CLOSE.slowConsumer(slot.held + slot.member.bufferedAmount));
    }
  }

  /** Replay pauses once this much waits to be sent to the newcomer. */
  #replayHighWater(): number {
    return Math.min(1024 * 1024, this.#opts.maxBufferedBytes / 2);
  }

  /**
   * Waits until the member has at most `low` bytes waiting to be sent. False
   * (and the member dropped as slow) if it makes no progress for 30 s, or
   * false if it left meanwhile.
   */
  async #drained(ch: Channel, slot: Slot, low: number): Promise<boolean> {
    let last = slot.member.bufferedAmount;
    let since = this.#now();
    while (!slot.left) {
      const waiting = slot.member.bufferedAmount;
      if (waiting <= low) return true;
      if (waiting < last) {
        last = waiting;
        since = this.#now();
      } else if (this.#now() - since > REPLAY_STALL_MS) {
        this.#drop(ch, slot, CLOSE.slowConsumer(waiting));
        return false;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    return false;
  }

  /**
   * Sends a live frame unless the member already has it: a stored frame at
   * or before the member's position came with its history (or earlier).
   * False if not sent (already had it, or the member was dropped).
   */
  #deliverLive(ch: Channel, slot: Slot, d: Delivery, checkBound = true): boolean {
    if (d.pos !== undefined) {
      if (d.pos <= slot.after) return false;
      slot.after = d.pos;
    }
    return this.#deliver(ch, slot, d.frame, checkBound);
  }

  /**
   * Sends to one member; on failure (or, with `checkBound`, overflow) drops
   * that member only. False if dropped.
   */
  #deliver(ch: Channel, slot: Slot, frame: Frame, checkBound = true): boolean {
    try {
      slot.member.send(frame);
    } catch {
      this.#drop(ch, slot, CLOSE.sendFailed);
      return false;
    }
    if (!checkBound) return true;
    const waiting = slot.member.bufferedAmount;
    if (waiting > this.#opts.maxBufferedBytes) {
      this.#drop(ch, slot, CLOSE.slowConsumer(waiting));
      return false;
    }
    return true;
  }

  #drop(ch: Channel, slot: Slot, close: Close): void {
    this.#remove(ch, slot);
    slot.member.close(close);
    this.#opts.onDrop?.(close);
  }

  #remove(ch: Channel, slot: Slot): void {
    if (slot.left) return;
    slot.left = true;
    slot.buffer = null;
    ch.slots.delete(slot.member);
    this.#members--;
    if (slot.live) this.#joined--;
    if (!slot.bridge && --ch.clients === 0) this.#opts.onChannelActive?.(ch.name, false);
    if (ch.slots.size === 0 && this.#channels.get(ch.name) === ch) {
      this.#channels.delete(ch.name);
      this.#bus.unsubscribe(ch.name);
    }
  }
}

/** A newcomer whose history does not drain for this long is dropped as slow. */
const REPLAY_STALL_MS = 30_000;

/** A flooding publisher that can be held back is not read for this long at a time. */
export const FLOOD_HOLD_MS = 200;

/** A member with half its bound waiting that drains nothing for this long is dropped as slow. */
const STALL_MS = 10_000;

/** Bytes of a frame for buffer accounting (text: UTF-16 units, at most 3x under UTF-8). */
function approxBytes(f: Frame): number {
  return f.kind === "binary" ? f.data.byteLength : f.data.length;
}
