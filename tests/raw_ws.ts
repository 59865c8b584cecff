/**
 * @module
 * A raw WebSocket client over `Deno.connect` (TCP, or TLS for `wss:`), for
 * tests that need what the browser-style `WebSocket` class cannot do: send
 * any frame (any opcode, FIN off, fragments, invalid UTF-8 in TEXT, masking
 * off, forced 7/16/64-bit lengths, raw bytes), decide whether pings get a
 * pong (default: no, so idle drops can be tested), see every frame the
 * server sends (pings, close code and reason), offer a chosen
 * `Sec-WebSocket-Protocol` or none, and read the HTTP status and headers of
 * a refused upgrade. Test-only; imports nothing.
 *
 * Frames are returned as they arrive on the wire: fragments are not
 * reassembled and nothing is validated, so a test sees exactly what the
 * server sent.
 */

/** RFC 6455 opcodes. */
export const Opcode = {
  continuation: 0x0,
  text: 0x1,
  binary: 0x2,
  close: 0x8,
  ping: 0x9,
  pong: 0xa,
} as const;

/** A frame to send. Defaults make a valid, final, masked frame. */
export interface FrameSpec {
  /** 0..15; see {@link Opcode}. Reserved values are sent as given. */
  opcode: number;
  /** Payload; a string is sent as its UTF-8 bytes. Default empty. */
  payload?: Uint8Array | string;
  /** FIN bit (default true). */
  fin?: boolean;
  /** Mask the payload, as a client must (default true). */
  mask?: boolean;
  /** The 4-byte masking key (default random). */
  maskKey?: Uint8Array;
  /** RSV1..RSV3 as a 3-bit number (default 0). */
  rsv?: number;
  /**
   * Length encoding: 7 (payload <= 125), 16 (<= 65535) or 64 bits. Default:
   * the shortest, as RFC 6455 requires; a longer one tests a lenient peer.
   */
  lengthBits?: 7 | 16 | 64;
}

/** A frame as received, exactly as it was on the wire (unmasked). */
export interface ReceivedFrame {
  fin: boolean;
  rsv: number;
  opcode: number;
  masked: boolean;
  payload: Uint8Array;
  /** For TEXT (and continuation) frames whose payload is valid UTF-8: the text. */
  text?: string;
  /** For CLOSE frames with a payload: the status code. */
  closeCode?: number;
  /** For CLOSE frames with a payload: the reason (UTF-8, possibly empty). */
  closeReason?: string;
}

/** Options for {@link RawWs.connect}. */
export interface RawWsOptions {
  /** `Sec-WebSocket-Protocol` to offer (an array is joined with ", "); default none. */
  protocol?: string | string[] | null;
  /** Extra or replacement request headers (replacing e.g. `Sec-WebSocket-Version`). */
  headers?: Record<string, string>;
  /** Answer pings with pongs (default false). Changeable later via `answerPings`. */
  answerPings?: boolean;
  /** Echo a received CLOSE once, as RFC 6455 asks (default true). */
  answerClose?: boolean;
  /** Bound on connecting and reading the response head (default 5000 ms). */
  timeoutMs?: number;
}

const encoder = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEAD_BYTES = 64 * 1024;

/**
 * The bytes of one frame. Throws a RangeError when `lengthBits` cannot hold
 * the payload length or `maskKey` is not 4 bytes; nothing else is checked,
 * so invalid frames (reserved opcodes, fragmented control frames) can be built.
 */
export function encodeFrame(spec: FrameSpec): Uint8Array {
  const payload = typeof spec.payload === "string"
    ? encoder.encode(spec.payload)
    : (spec.payload ?? new Uint8Array(0));
  const n = payload.length;
  const bits = spec.lengthBits ?? (n <= 125 ? 7 : n <= 0xffff ? 16 : 64);
  if ((bits === 7 && n > 125) || (bits === 16 && n > 0xffff)) {
    throw new RangeError(`A ${n}-byte payload does not fit a ${bits}-bit length`);
  }
  const mask = spec.mask ?? true;
  const key = spec.maskKey ?? crypto.getRandomValues(new Uint8Array(4));
  if (mask && key.length !== 4) throw new RangeError(`Mask key must be 4 bytes: got ${key.length}`);
  const head = 2 + (bits === 16 ? 2 : bits === 64 ? 8 : 0) + (mask ? 4 : 0);
  const out = new Uint8Array(head + n);
  out[0] = ((spec.fin ?? true) ? 0x80 : 0) | ((spec.rsv ?? 0) & 7) << 4 | (spec.opcode & 0xf);
  out[1] = (mask ? 0x80 : 0) | (bits === 7 ? n : bits === 16 ? 126 : 127);
  const dv = new DataView(out.buffer);
  if (bits === 16) dv.setUint16(2, n);
  if (bits === 64) dv.setBigUint64(2, BigInt(n));
  if (mask) {
    out.set(key, head - 4);
    for (let i = 0; i < n; i++) out[head + i] = payload[i] ^ key[i & 3];
  } else out.set(payload, head);
  return out;
}

/** Incremental frame parser: accepts any split of the byte stream. */
class FrameParser {
  #buf = new Uint8Array(4096);
  #start = 0;
  #end = 0;

  /** Appends bytes (copied) and returns every frame now complete, in order. */
  push(chunk: Uint8Array): ReceivedFrame[] {
    this.#append(chunk);
    const frames: ReceivedFrame[] = [];
    for (;;) {
      const f = this.#take();
      if (!f) break;
      frames.push(f);
    }
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return frames;
  }

  #append(chunk: Uint8Array): void {
    if (this.#end + chunk.length > this.#buf.length) {
      const live = this.#end - this.#start;
      const fits = live + chunk.length <= this.#buf.length;
      const next = fits ? this.#buf : new Uint8Array((live + chunk.length) * 2);
      next.set(this.#buf.subarray(this.#start, this.#end), 0); // `set` handles the overlap
      this.#buf = next;
      this.#start = 0;
      this.#end = live;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  #take(): ReceivedFrame | undefined {
    const b = this.#buf, s = this.#start, avail = this.#end - s;
    if (avail < 2) return;
    const masked = (b[s + 1] & 0x80) !== 0;
    let len = b[s + 1] & 0x7f;
    let off = 2;
    const dv = new DataView(b.buffer, b.byteOffset + s, avail);
    if (len === 126) {
      if (avail < 4) return;
      len = dv.getUint16(2);
      off = 4;
    } else if (len === 127) {
      if (avail < 10) return;
      const big = dv.getBigUint64(2);
      if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`Frame length ${big}`);
      len = Number(big);
      off = 10;
    }
    const keyAt = off;
    if (masked) off += 4;
    if (avail < off + len) return;
    const payload = b.slice(s + off, s + off + len);
    if (masked) { for (let i = 0; i < len; i++) payload[i] ^= b[s + keyAt + (i & 3)]; }
    this.#start += off + len;
    const f: ReceivedFrame = {
      fin: (b[s] & 0x80) !== 0,
      rsv: (b[s] >> 4) & 7,
      opcode: b[s] & 0xf,
      masked,
      payload,
    };
    if (f.opcode === Opcode.text || f.opcode === Opcode.continuation) {
      try {
        f.text = strictUtf8.decode(payload);
      } catch { /* not UTF-8: text stays undefined */ }
    }
    if (f.opcode === Opcode.close && len >= 2) {
      f.closeCode = (payload[0] << 8) | payload[1];
      f.closeReason = new TextDecoder().decode(payload.subarray(2));
    }
    return f;
  }
}

function indexOfHeadEnd(b: Uint8Array, len: number): number {
  for (let i = 3; i < len; i++) {
    if (b[i - 3] === 13 && b[i - 2] === 10 && b[i - 1] === 13 && b[i] === 10) return i + 1;
  }
  return -1;
}

async function expectedAccept(key: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-1", encoder.encode(key + WS_GUID));
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

/** Decodes a complete chunked body; null if it is not complete yet. */
function dechunk(raw: Uint8Array): Uint8Array | null {
  const parts: Uint8Array[] = [];
  let i = 0;
  for (;;) {
    let eol = -1;
    for (let j = i; j + 1 < raw.length; j++) {
      if (raw[j] === 13 && raw[j + 1] === 10) {
        eol = j;
        break;
      }
    }
    if (eol < 0) return null;
    const size = parseInt(new TextDecoder().decode(raw.subarray(i, eol)).split(";")[0], 16);
    if (!Number.isFinite(size)) return null;
    const start = eol + 2;
    if (size === 0) break;
    if (raw.length < start + size + 2) return null;
    parts.push(raw.subarray(start, start + size));
    i = start + size + 2;
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * One raw connection. After {@link RawWs.connect}, `upgraded` says whether
 * the server switched protocols (101); if not, the TCP connection is already
 * closed and `status`, `headers` and `body` describe the refusal. Frames are
 * read in the background into a queue that {@link RawWs.next} drains. Always
 * `close()` (or `await using`), so Deno's sanitizers see no leaked resource.
 */
export class RawWs implements AsyncDisposable {
  /** HTTP status of the upgrade response (101 when upgraded). */
  readonly status: number;
  /** The full status line, e.g. "HTTP/1.1 400 Bad Request". */
  readonly statusLine: string;
  /** Response headers. */
  readonly headers: Headers;
  /** Response body of a refused upgrade (as far as it arrived with its head); "" if upgraded. */
  readonly body: string;
  /** True if the server answered 101 Switching Protocols. */
  readonly upgraded: boolean;
  /** True if `Sec-WebSocket-Accept` matches the key this client sent. */
  readonly acceptValid: boolean;
  /** Reply to each PING with a PONG carrying its payload (pings are still queued). */
  answerPings: boolean;
  /** Echo the first CLOSE received with the same code (the close is still queued). */
  answerClose: boolean;
  /** Resolves when the server's side of the TCP stream has ended (EOF or reset). */
  readonly ended: Promise<void>;

  readonly #conn: Deno.Conn;
  readonly #endedResolve: () => void;
  readonly #parser = new FrameParser();
  readonly #queue: ReceivedFrame[] = [];
  #waiter: { wake: () => void } | undefined;
  #writes: Promise<void> = Promise.resolve();
  #sentClose = false;
  #isEnded = false;
  #closed = false;
  #reader: Promise<void> = Promise.resolve();
  #readError: unknown;

  private constructor(
    conn: Deno.Conn,
    head: { status: number; statusLine: string; headers: Headers; body: string },
    acceptValid: boolean,
    options: RawWsOptions,
  ) {
    this.#conn = conn;
    this.status = head.status;
    this.statusLine = head.statusLine;
    this.headers = head.headers;
    this.body = head.body;
    this.upgraded = head.status === 101;
    this.acceptValid = acceptValid;
    this.answerPings = options.answerPings ?? false;
    this.answerClose = options.answerClose ?? true;
    const ended = Promise.withResolvers<void>();
    this.ended = ended.promise;
    this.#endedResolve = ended.resolve;
  }

  /**
   * Opens a TCP (or TLS for `wss:`) connection to `url` and sends an upgrade
   * request offering `options.protocol` (none by default). Resolves once the
   * response head is read, whatever the status; rejects if the connection
   * fails or no complete head arrives within `timeoutMs`. Bytes that arrive
   * with the head after a 101 are parsed as frames.
   */
  static async connect(url: string | URL, options: RawWsOptions = {}): Promise<RawWs> {
    const u = new URL(url);
    const tls = u.protocol === "wss:" || u.protocol === "https:";
    const port = Number(u.port || (tls ? 443 : 80));
    const hostname = u.hostname.replace(/^\[|\]$/g, "");
    const conn = tls
      ? await Deno.connectTls({ hostname, port })
      : await Deno.connect({ hostname, port });
    const timeoutMs = options.timeoutMs ?? 5000;
    const timer = setTimeout(() => {
      try {
        conn.close();
      } catch { /* already closed */ }
    }, timeoutMs);
    try {
      const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
      const headers = new Map<string, string>([
        ["Host", u.host],
        ["Upgrade", "websocket"],
        ["Connection", "Upgrade"],
        ["Sec-WebSocket-Key", key],
        ["Sec-WebSocket-Version", "13"],
      ]);
      const p = options.protocol;
      if (p !== undefined && p !== null) {
        headers.set("Sec-WebSocket-Protocol", Array.isArray(p) ? p.join(", ") : p);
      }
      for (const [k, v] of Object.entries(options.headers ?? {})) {
        for (const existing of headers.keys()) {
          if (existing.toLowerCase() === k.toLowerCase()) headers.delete(existing);
        }
        headers.set(k, v);
      }
      const request = [`GET ${u.pathname}${u.search} HTTP/1.1`];
      for (const [k, v] of headers) request.push(`${k}: ${v}`);
      await writeAll(conn, encoder.encode(request.join("\r\n") + "\r\n\r\n"));

      // Read the response head; keep whatever follows it.
      let buf = new Uint8Array(4096);
      let len = 0;
      let headEnd = -1;
      while (headEnd < 0) {
        if (len === buf.length) {
          if (buf.length >= MAX_HEAD_BYTES) throw new Error("Response head over 64 KiB");
          const bigger = new Uint8Array(buf.length * 2);
          bigger.set(buf);
          buf = bigger;
        }
        const n = await conn.read(buf.subarray(len)); // the timer closes conn: read throws
        if (n === null) {
          throw new Error(`Connection ended before a complete response head (${len} bytes)`);
        }
        len += n;
        headEnd = indexOfHeadEnd(buf, len);
      }
      const lines = new TextDecoder().decode(buf.subarray(0, headEnd - 4)).split("\r\n");
      const statusLine = lines[0];
      const status = Number(statusLine.split(" ")[1]);
      const resHeaders = new Headers();
      for (const line of lines.slice(1)) {
        const i = line.indexOf(":");
        if (i > 0) resHeaders.append(line.slice(0, i).trim(), line.slice(i + 1).trim());
      }
      const rest = buf.slice(headEnd, len);
      if (status !== 101) {
        const body = await readBody(conn, rest, resHeaders, timeoutMs);
        conn.close();
        return new RawWs(conn, { status, statusLine, headers: resHeaders, body }, false, options)
          .#markClosed();
      }
      const acceptValid = resHeaders.get("sec-websocket-accept") === await expectedAccept(key);
      const ws = new RawWs(
        conn,
        { status, statusLine, headers: resHeaders, body: "" },
        acceptValid,
        options,
      );
      clearTimeout(timer);
      if (rest.length > 0) ws.#ingest(rest);
      ws.#reader = ws.#readLoop();
      return ws;
    } catch (err) {
      try {
        conn.close();
      } catch { /* closed by the timer */ }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  #markClosed(): this {
    this.#closed = true;
    this.#isEnded = true;
    this.#endedResolve();
    return this;
  }

  async #readLoop(): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await this.#conn.read(buf);
        if (n === null) break;
        this.#ingest(buf.subarray(0, n));
      }
    } catch (err) {
      if (!this.#closed) this.#readError = err; // after close(), the read fails by design
    }
    this.#isEnded = true;
    this.#endedResolve();
    this.#wake();
  }

  #ingest(bytes: Uint8Array): void {
    for (const f of this.#parser.push(bytes)) {
      if (f.opcode === Opcode.ping && this.answerPings) {
        this.#sendInBackground({ opcode: Opcode.pong, payload: f.payload });
      }
      if (f.opcode === Opcode.close && this.answerClose && !this.#sentClose) {
        this.#sentClose = true;
        const payload = f.payload.length >= 2 ? f.payload.subarray(0, 2) : new Uint8Array(0);
        this.#sendInBackground({ opcode: Opcode.close, payload });
      }
      this.#queue.push(f);
    }
    this.#wake();
  }

  #sendInBackground(spec: FrameSpec): void {
    this.sendFrame(spec).catch(() => {/* the connection is going away: nothing to answer */});
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.wake();
  }

  /**
   * Writes bytes as they are (after earlier writes, never interleaved with
   * them). Rejects if the connection is closed.
   */
  sendRaw(bytes: Uint8Array): Promise<void> {
    const write = this.#writes.then(() => writeAll(this.#conn, bytes));
    this.#writes = write.catch(() => {});
    return write;
  }

  /** Encodes (see {@link encodeFrame}) and writes one frame. */
  sendFrame(spec: FrameSpec): Promise<void> {
    if (spec.opcode === Opcode.close) this.#sentClose = true;
    return this.sendRaw(encodeFrame(spec));
  }

  /** A final, masked TEXT frame. */
  sendText(text: string): Promise<void> {
    return this.sendFrame({ opcode: Opcode.text, payload: text });
  }

  /** A final, masked BINARY frame. */
  sendBinary(bytes: Uint8Array): Promise<void> {
    return this.sendFrame({ opcode: Opcode.binary, payload: bytes });
  }

  /** A masked PING. */
  sendPing(payload: Uint8Array | string = new Uint8Array(0)): Promise<void> {
    return this.sendFrame({ opcode: Opcode.ping, payload });
  }

  /** A masked CLOSE with an optional code and reason (no code: empty payload). */
  sendClose(code?: number, reason = ""): Promise<void> {
    if (code === undefined) return this.sendFrame({ opcode: Opcode.close });
    const r = encoder.encode(reason);
    const payload = new Uint8Array(2 + r.length);
    payload[0] = code >> 8;
    payload[1] = code & 0xff;
    payload.set(r, 2);
    return this.sendFrame({ opcode: Opcode.close, payload });
  }

  /**
   * The next received frame (in arrival order), waiting at most `timeoutMs`.
   * With `skipPings`, PING and PONG frames are dropped from the queue.
   * Rejects on timeout, or once the stream has ended and the queue is empty.
   * One `next()` at a time.
   */
  async next(timeoutMs = 5000, options: { skipPings?: boolean } = {}): Promise<ReceivedFrame> {
    if (this.#waiter) throw new Error("next() is already waiting");
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const f = this.#queue.shift();
      if (f) {
        if (options.skipPings && (f.opcode === Opcode.ping || f.opcode === Opcode.pong)) continue;
        return f;
      }
      if (this.#isEnded) {
        const why = this.#readError ? `: ${this.#readError}` : "";
        throw new Error(`Connection ended, no frame to read${why}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`No frame within ${timeoutMs} ms`);
      const woke = Promise.withResolvers<boolean>();
      this.#waiter = { wake: () => woke.resolve(true) };
      const t = setTimeout(() => woke.resolve(false), left);
      const gotSomething = await woke.promise;
      clearTimeout(t);
      this.#waiter = undefined;
      if (!gotSomething && this.#queue.length === 0 && !this.#isEnded) {
        throw new Error(`No frame within ${timeoutMs} ms`);
      }
    }
  }

  /** Frames received and not yet taken by `next()`. */
  get pending(): number {
    return this.#queue.length;
  }

  /**
   * Closes the TCP connection at once (no closing handshake: send one with
   * `sendClose` first if the test wants it) and waits for the background
   * reader to finish. Safe to call twice.
   */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      await this.#writes;
      try {
        this.#conn.close();
      } catch { /* the peer closed it already */ }
    }
    await this.#reader;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

/** Reads a refused response's body: by Content-Length, chunked, or just what arrived. */
async function readBody(
  conn: Deno.Conn,
  first: Uint8Array,
  headers: Headers,
  timeoutMs: number,
): Promise<string> {
  let raw = first;
  const length = headers.get("content-length");
  const chunked = /chunked/i.test(headers.get("transfer-encoding") ?? "");
  const complete = () =>
    length !== null ? raw.length >= Number(length) : chunked ? dechunk(raw) !== null : true;
  const deadline = Date.now() + timeoutMs;
  const buf = new Uint8Array(16 * 1024);
  while (!complete() && Date.now() < deadline && raw.length < MAX_HEAD_BYTES) {
    let n: number | null = null;
    try {
      n = await conn.read(buf);
    } catch { /* closed by connect's timer: keep what arrived */ }
    if (n === null) break;
    const more = new Uint8Array(raw.length + n);
    more.set(raw);
    more.set(buf.subarray(0, n), raw.length);
    raw = more;
  }
  const body = chunked
    ? dechunk(raw) ?? raw
    : length !== null
    ? raw.subarray(0, Number(length))
    : raw;
  return new TextDecoder().decode(body);
}
