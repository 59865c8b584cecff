/**
 * @module
 * Serves the files of one folder over HTTP, like mles-rs's wwwroot: the
 * built-in browser client in `web/` by default, or `MLES_WWWROOT`. Content
 * types, `index.html` for directories, ETag / Last-Modified validation (304),
 * brotli and gzip for text types with a small LRU of compressed bytes, and
 * no way out of the root (dot segments, encoded and double-encoded
 * separators, backslashes, NUL and symlinks whose real path leaves the real
 * root are all refused). Uses only read-only file-system calls, so it runs
 * on Deno Deploy where the deployed code is read-only.
 * Imports: node:path, node:zlib.
 */
import { brotliCompressSync, constants as zlib, gzipSync } from "node:zlib";
import { join, sep } from "node:path";

/** Options for {@link createStaticHandler}. */
export interface StaticHandlerOptions {
  /** The folder to serve (a path, or a `file:` URL such as `new URL("../web/", import.meta.url)`). */
  readonly root: string | URL;
  /** Bytes of compressed bodies kept in memory (default 8 MiB; 0 disables the cache). */
  readonly cacheBytes?: number;
  /** Called each time a body is compressed (metrics, tests). */
  readonly onCompress?: (path: string, encoding: string, bytes: number) => void;
}

/** The handler: a Response for a file it serves, undefined for anything else. */
export type StaticHandler = (req: Request) => Promise<Response | undefined>;

const TEXT = "; charset=utf-8";

/** File extension -> content type. Anything else is application/octet-stream. */
const CONTENT_TYPES: Readonly<Record<string, string>> = {
  html: "text/html" + TEXT,
  htm: "text/html" + TEXT,
  js: "text/javascript" + TEXT,
  mjs: "text/javascript" + TEXT,
  css: "text/css" + TEXT,
  json: "application/json" + TEXT,
  map: "application/json" + TEXT,
  webmanifest: "application/manifest+json" + TEXT,
  txt: "text/plain" + TEXT,
  md: "text/markdown" + TEXT,
  csv: "text/csv" + TEXT,
  xml: "application/xml" + TEXT,
  svg: "image/svg+xml" + TEXT,
  wasm: "application/wasm",
  png: "image/png",
  jpg: "image/jpeg",
  jpeg: "image/jpeg",
  gif: "image/gif",
  webp: "image/webp",
  avif: "image/avif",
  ico: "image/x-icon",
  woff: "font/woff",
  woff2: "font/woff2",
  ttf: "font/ttf",
  otf: "font/otf",
  pdf: "application/pdf",
  mp3: "audio/mpeg",
  mp4: "video/mp4",
  webm: "video/webm",
};

/** Types worth compressing (already-compressed formats such as png or woff2 are not). */
function compressible(type: string): boolean {
  return type.startsWith("text/") || type.startsWith("application/json") ||
    type.startsWith("application/manifest+json") || type.startsWith("application/xml") ||
    type.startsWith("image/svg+xml") || type === "application/wasm" || type === "font/ttf" ||
    type === "font/otf";
}

/** Below this, compression saves less than its headers cost. */
const MIN_COMPRESS_BYTES = 256;
/**
 * Files up to this size are read whole (and compressed when their type is
 * text); bigger ones are streamed as they are, since compressing them in one
 * synchronous call would block the isolate for too long.
 */
const MAX_BUFFERED_BYTES = 8 << 20;
/** Longest URL path considered at all. */
const MAX_PATH = 4096;

type Encoding = "br" | "gzip";

/**
 * Picks the encoding for a response from `Accept-Encoding` (RFC 9110
 * 12.5.3): the acceptable one with the highest q, brotli on a tie; `*`
 * covers the codings not named; `q=0` refuses. Undefined means identity.
 */
function negotiate(header: string | null): Encoding | undefined {
  if (!header) return undefined;
  const q = new Map<string, number>();
  for (const part of header.split(",")) {
    const [name, ...params] = part.trim().toLowerCase().split(";");
    if (!name) continue;
    let weight = 1;
    for (const p of params) {
      const m = /^\s*q\s*=\s*([0-9.]+)\s*$/.exec(p);
      if (m) weight = Math.min(1, Number(m[1]) || 0);
    }
    q.set(name.trim(), weight);
  }
  const weight = (e: string) =>
    q.get(e) ?? (e === "gzip" ? q.get("x-gzip") : undefined) ??
      q.get("*") ?? 0;
  const br = weight("br"), gz = weight("gzip");
  if (br <= 0 && gz <= 0) return undefined;
  return br >= gz ? "br" : "gzip";
}

function compress(data: Uint8Array, encoding: Encoding): Uint8Array {
  if (encoding === "gzip") return gzipSync(data, { level: 9 });
  return brotliCompressSync(data, {
    params: {
      [zlib.BROTLI_PARAM_MODE]: zlib.BROTLI_MODE_TEXT,
      // Quality 11 is best but slow: keep it for the small files a page is made of.
      [zlib.BROTLI_PARAM_QUALITY]: data.byteLength <= 256 << 10 ? 11 : 5,
      [zlib.BROTLI_PARAM_SIZE_HINT]: data.byteLength,
    },
  });
}

/** A least-recently-used map bounded by the total bytes of its values. */
class ByteLru {
  readonly #max: number;
  readonly #map = new Map<string, Uint8Array>();
  #bytes = 0;

  constructor(maxBytes: number) {
    this.#max = maxBytes;
  }

  get(key: string): Uint8Array | undefined {
    const v = this.#map.get(key);
    if (v) {
      this.#map.delete(key);
      this.#map.set(key, v);
    }
    return v;
  }

  /** True when a value of `bytes` would be kept (one big file must not flush the rest). */
  fits(bytes: number): boolean {
    return bytes <= this.#max / 4;
  }

  set(key: string, value: Uint8Array): void {
    if (!this.fits(value.byteLength)) return;
    const old = this.#map.get(key);
    if (old) {
      this.#bytes -= old.byteLength;
      this.#map.delete(key);
    }
    this.#map.set(key, value);
    this.#bytes += value.byteLength;
    for (const [k, v] of this.#map) {
      if (this.#bytes <= this.#max) break;
      this.#map.delete(k);
      this.#bytes -= v.byteLength;
    }
  }
}

/**
 * Turns a URL path into decoded segments, or undefined when the path could
 * reach outside the root or is not a plain file name: a `.` or `..` segment
 * (also percent-encoded), an encoded `/` or `\`, a backslash, NUL or other
 * control character, something still percent-encoded after one decoding
 * (double encoding such as `%252e%252e`), malformed percent-encoding, or a
 * hidden segment (`.git`, `.env`; `.well-known` is allowed).
 */
function segmentsOf(pathname: string): string[] | undefined {
  if (pathname.length > MAX_PATH || !pathname.startsWith("/")) return undefined;
  const out: string[] = [];
  const raw = pathname.slice(1).split("/");
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === "") {
      if (i === raw.length - 1) break; // trailing slash: a directory
      return undefined; // "//": not a path this handler makes
    }
    let s: string;
    try {
      s = decodeURIComponent(raw[i]);
    } catch {
      return undefined;
    }
    // deno-lint-ignore no-control-regex
    if (/[/\\\x00-\x1f\x7f]/.test(s) || /%[0-9a-f]{2}/i.test(s)) return undefined;
    if (s.startsWith(".") && s !== ".well-known") return undefined; // also "." and ".."
    out.push(s);
  }
  return out;
}

function extensionOf(path: string): string {
  const name = path.slice(path.lastIndexOf(sep) + 1);
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(dot + 1).toLowerCase() : "";
}

/** Weak comparison of an `If-None-Match` list against one ETag (RFC 9110 13.1.2). */
function etagMatches(header: string, etag: string): boolean {
  const bare = (t: string) => t.trim().replace(/^W\//, "");
  const ours = bare(etag);
  return header.split(",").some((t) => t.trim() === "*" || bare(t) === ours);
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data as BufferSource));
  return Array.from(digest.subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Creates a handler serving the files under `options.root`.
 *
 * Guarantees:
 * - Resolves to a Response only for a GET or HEAD of a regular file whose
 *   real path (all symlinks resolved with `Deno.realPath`) is inside the
 *   real root; `/` and directories serve their `index.html` (a directory
 *   asked for without its final `/` is redirected, 301, to it). For every
 *   other request — another method, a missing file, a directory without
 *   `index.html`, a refused path (see below), an unreadable or missing
 *   root — it resolves to `undefined`, never to a 404: the caller answers
 *   404 (or tries something else).
 * - Refused paths: `.`/`..` segments in any spelling (`%2e%2e`), encoded
 *   separators (`%2f`, `%5c`), double encoding (`%252e%252e`: anything still
 *   percent-encoded after one decoding), backslashes, NUL and control
 *   characters, malformed percent-encoding, and hidden names (`.env`,
 *   `.git`) except `.well-known`.
 * - Every 200 has `Content-Type` (from the extension; default
 *   `application/octet-stream`), `Content-Length` (except a GET of a file
 *   over 8 MiB, which is streamed rather than held in memory, so its length
 *   is left to the transfer encoding), a weak `ETag` (from size
 *   and mtime, or a SHA-256 of the content when the file system has no
 *   mtime), `Last-Modified` when the mtime is known, `Cache-Control`
 *   (`no-cache` for HTML, `public, max-age=300` otherwise) and
 *   `X-Content-Type-Options: nosniff`. `If-None-Match`, or else
 *   `If-Modified-Since`, that still holds gives a 304 without a body.
 * - Text types of 256 B to 8 MiB are sent with brotli or gzip when
 *   `Accept-Encoding` allows (highest q, brotli on a tie, `q=0` refuses),
 *   with `Content-Encoding` and `Vary: Accept-Encoding`; compressed bytes
 *   are kept in an LRU bounded by `cacheBytes`, keyed by path, ETag and
 *   encoding, so a changed file is never served stale. Each version of a
 *   file is compressed at most once per encoding (concurrent requests wait
 *   for the same compression); when the result is bigger than a quarter of
 *   `cacheBytes` it is not kept and that version is served uncompressed
 *   from then on, never recompressed per request.
 * - HEAD answers the same headers as GET, without a body (for a file over
 *   8 MiB it also gives the `Content-Length` that the streamed GET omits).
 * - Only reads the file system (`realPath`, `stat`, `open`/`readFile`).
 *
 * Needs read permission for the root. Never throws; an I/O error on a
 * file resolves to `undefined` like a missing file.
 */
export function createStaticHandler(options: StaticHandlerOptions): StaticHandler {
  const packer = new Packer(options.cacheBytes ?? 8 << 20, options.onCompress);
  let realRoot: string | undefined;
  /** The real path of the root, retried on each request until it exists. */
  const rootPath = async (): Promise<string | undefined> => {
    if (realRoot !== undefined) return realRoot;
    try {
      const p = await Deno.realPath(options.root);
      if (!(await Deno.stat(p)).isDirectory) return undefined;
      return realRoot = p;
    } catch {
      return undefined;
    }
  };
  return async (req: Request): Promise<Response | undefined> => {
    if (req.method !== "GET" && req.method !== "HEAD") return undefined;
    const root = await rootPath();
    if (!root) return undefined;
    const found = await locate(req, root);
    if (found === undefined || found instanceof Response) return found;
    return await serveFile(req, found.real, found.info, packer);
  };
}

/**
 * Compressed bodies, at most one compression per file version and
 * encoding: from the cache, from a compression already under way, or
 * compressed now.
 */
class Packer {
  readonly #cache: ByteLru;
  readonly #onCompress: StaticHandlerOptions["onCompress"];
  /** Compressions under way, shared by the requests that wait for them. */
  readonly #packing = new Map<string, Promise<Uint8Array | undefined>>();
  /** Versions whose compressed form is too big to cache: served as they are (bounded). */
  readonly #identityOnly = new Set<string>();

  constructor(cacheBytes: number, onCompress: StaticHandlerOptions["onCompress"]) {
    this.#cache = new ByteLru(cacheBytes);
    this.#onCompress = onCompress;
  }

  /**
   * The compressed bytes for `key` (path, ETag and encoding, NUL-separated).
   * Undefined when the result is too big to keep: that version is then
   * sent uncompressed, never recompressed per request.
   */
  packed(
    key: string,
    read: () => Promise<Uint8Array>,
    encoding: Encoding,
  ): Promise<Uint8Array | undefined> {
    if (this.#identityOnly.has(key)) return Promise.resolve(undefined);
    const hit = this.#cache.get(key);
    if (hit) return Promise.resolve(hit);
    let p = this.#packing.get(key);
    if (!p) {
      p = this.#pack(key, read, encoding).finally(() => this.#packing.delete(key));
      this.#packing.set(key, p);
    }
    return p;
  }

  async #pack(
    key: string,
    read: () => Promise<Uint8Array>,
    encoding: Encoding,
  ): Promise<Uint8Array | undefined> {
    const body = await read();
    const out = compress(body, encoding);
    this.#onCompress?.(key.slice(0, key.indexOf("\0")), encoding, body.byteLength);
    if (this.#cache.fits(out.byteLength)) {
      this.#cache.set(key, out);
      return out;
    }
    if (this.#identityOnly.size >= 4096) this.#identityOnly.clear();
    this.#identityOnly.add(key);
    return undefined;
  }
}

/** The real path of `path` if it exists inside `root`, else undefined. */
async function inside(root: string, path: string): Promise<string | undefined> {
  let real: string;
  try {
    real = await Deno.realPath(path);
  } catch {
    return undefined;
  }
  const prefix = root.endsWith(sep) ? root : root + sep;
  return real === root || real.startsWith(prefix) ? real : undefined;
}

/**
 * The file a request names inside `root` (a directory's `index.html`), a
 * 301 to add a directory's trailing slash, or undefined (refused path,
 * missing, not a file).
 */
async function locate(
  req: Request,
  root: string,
): Promise<{ real: string; info: Deno.FileInfo } | Response | undefined> {
  let url: URL;
  try {
    url = new URL(req.url);
  } catch {
    return undefined;
  }
  const segments = segmentsOf(url.pathname);
  if (!segments) return undefined;

  let real = await inside(root, join(root, ...segments));
  if (!real) return undefined;
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(real);
    if (info.isDirectory) {
      const index = await inside(root, join(real, "index.html"));
      if (!index) return undefined;
      if (!url.pathname.endsWith("/")) {
        // Never an open redirect: segmentsOf refused "//", so this stays a path on this host.
        return new Response(null, {
          status: 301,
          headers: { location: url.pathname + "/" + url.search },
        });
      }
      real = index;
      info = await Deno.stat(real);
    }
  } catch {
    return undefined;
  }
  if (!info.isFile) return undefined;
  return { real, info };
}

/** A 200 (or 304) for the file at `real`; undefined on an I/O error (like a missing file). */
async function serveFile(
  req: Request,
  real: string,
  info: Deno.FileInfo,
  packer: Packer,
): Promise<Response | undefined> {
  const type = CONTENT_TYPES[extensionOf(real)] ?? "application/octet-stream";
  const mtime = info.mtime && info.mtime.getTime() > 0 ? info.mtime : undefined;
  const headers = new Headers({
    "content-type": type,
    "cache-control": type.startsWith("text/html") ? "no-cache" : "public, max-age=300",
    "x-content-type-options": "nosniff",
  });
  const canCompress = compressible(type) && info.size >= MIN_COMPRESS_BYTES &&
    info.size <= MAX_BUFFERED_BYTES;
  if (canCompress) headers.set("vary", "Accept-Encoding");
  if (mtime) headers.set("last-modified", mtime.toUTCString());

  let body: Uint8Array | undefined;
  const read = async () => body ??= await Deno.readFile(real);
  try {
    const etag = mtime
      ? `W/"${info.size.toString(36)}-${mtime.getTime().toString(36)}"`
      : `W/"${await sha256Hex(await read())}"`;
    headers.set("etag", etag);

    const inm = req.headers.get("if-none-match");
    const ims = req.headers.get("if-modified-since");
    // If-None-Match wins over If-Modified-Since when both are sent (RFC 9110 13.2.2).
    const fresh = inm !== null
      ? etagMatches(inm, etag)
      : ims !== null && mtime !== undefined && !Number.isNaN(Date.parse(ims)) &&
        Math.floor(mtime.getTime() / 1000) * 1000 <= Date.parse(ims);
    if (fresh) {
      headers.delete("content-type");
      return new Response(null, { status: 304, headers });
    }

    const encoding = canCompress ? negotiate(req.headers.get("accept-encoding")) : undefined;
    const bytes = encoding
      ? await packer.packed(`${real}\0${etag}\0${encoding}`, read, encoding)
      : undefined;
    if (encoding && bytes) {
      headers.set("content-encoding", encoding);
      headers.set("content-length", String(bytes.byteLength));
      return new Response(req.method === "HEAD" ? null : bytes as BodyInit, { headers });
    }

    if (req.method === "HEAD") {
      headers.set("content-length", String(body?.byteLength ?? info.size));
      return new Response(null, { headers });
    }
    if (body || info.size <= MAX_BUFFERED_BYTES) {
      const bytes = await read();
      headers.set("content-length", String(bytes.byteLength));
      return new Response(bytes as BodyInit, { headers });
    }
    // A big file is streamed rather than held in memory (its length is left to the stream).
    const file = await Deno.open(real, { read: true });
    return new Response(file.readable, { headers });
  } catch {
    return undefined;
  }
}
