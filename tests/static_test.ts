/**
 * @module
 * Tests for src/static.ts: the handler is called directly with
 * `new Request(...)` on a temporary folder made by each test (std
 * `serveDir(req)` style), plus one request over a real socket to show that
 * what arrives on the wire cannot climb out either. Imports: src/static.ts,
 * node:assert, node:zlib.
 */
import assert from "node:assert/strict";
import { brotliDecompressSync, gunzipSync } from "node:zlib";
import { createStaticHandler, type StaticHandler } from "../src/static.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** Text long enough to be compressed (the handler skips files under 256 bytes). */
const BIG_JS = "export const greeting = 'hello';\n".repeat(200);

interface Tree {
  /** The temporary folder; `root` is its subfolder `www`. */
  dir: string;
  root: string;
  serve: StaticHandler;
  get(path: string, headers?: HeadersInit, method?: string): Promise<Response | undefined>;
}

/**
 * Makes `dir/www` holding `files` (path -> content), with `dir/secret.txt`
 * outside the root, runs `fn`, and removes the folder whatever happens.
 */
async function withTree(
  files: Record<string, string | Uint8Array>,
  fn: (t: Tree) => Promise<void>,
): Promise<void> {
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "mles_static_" }));
  try {
    const root = `${dir}/www`;
    await Deno.mkdir(root);
    await Deno.writeTextFile(`${dir}/secret.txt`, "TOP SECRET");
    for (const [path, content] of Object.entries(files)) {
      const full = `${root}/${path}`;
      await Deno.mkdir(full.slice(0, full.lastIndexOf("/")), { recursive: true });
      await Deno.writeFile(full, typeof content === "string" ? encoder.encode(content) : content);
    }
    const serve = createStaticHandler({ root });
    const get = (path: string, headers?: HeadersInit, method = "GET") =>
      serve(new Request(`http://localhost${path}`, { headers, method }));
    await fn({ dir, root, serve, get });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The response, asserting that there is one. */
function some(res: Response | undefined, what: string): Response {
  assert.ok(res, `expected a response for ${what}`);
  return res;
}

async function bytes(res: Response): Promise<Uint8Array> {
  return new Uint8Array(await res.arrayBuffer());
}

Deno.test("static: content types come from the extension, octet-stream otherwise", async () => {
  const cases: Record<string, string> = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "mod.mjs": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "data.json": "application/json; charset=utf-8",
    "app.js.map": "application/json; charset=utf-8",
    "logo.svg": "image/svg+xml; charset=utf-8",
    "a.png": "image/png",
    "a.jpg": "image/jpeg",
    "a.gif": "image/gif",
    "a.webp": "image/webp",
    "favicon.ico": "image/x-icon",
    "notes.txt": "text/plain; charset=utf-8",
    "mod.wasm": "application/wasm",
    "font.woff2": "font/woff2",
    "UPPER.PNG": "image/png",
    "archive.bin": "application/octet-stream",
    "README": "application/octet-stream",
  };
  const files = Object.fromEntries(Object.keys(cases).map((p) => [p, "x"]));
  await withTree(files, async ({ get }) => {
    for (const [path, type] of Object.entries(cases)) {
      const res = some(await get(`/${path}`), path);
      assert.equal(res.status, 200, path);
      assert.equal(res.headers.get("content-type"), type, path);
      assert.equal(res.headers.get("x-content-type-options"), "nosniff", path);
      assert.equal(decoder.decode(await bytes(res)), "x", path);
    }
  });
});

Deno.test("static: / and directories serve index.html; a directory without its / is redirected", async () => {
  await withTree(
    { "index.html": "<h1>home</h1>", "docs/index.html": "<h1>docs</h1>", "empty/a.txt": "a" },
    async ({ get }) => {
      const home = some(await get("/"), "/");
      assert.equal(home.status, 200);
      assert.equal(await home.text(), "<h1>home</h1>");
      assert.equal(home.headers.get("cache-control"), "no-cache");

      const docs = some(await get("/docs/"), "/docs/");
      assert.equal(await docs.text(), "<h1>docs</h1>");

      const redirect = some(await get("/docs?x=1"), "/docs");
      assert.equal(redirect.status, 301);
      assert.equal(redirect.headers.get("location"), "/docs/?x=1");

      assert.equal(await get("/empty/"), undefined, "a directory without index.html");
      assert.equal(await get("/empty"), undefined, "a directory without index.html, no slash");
      assert.equal(some(await get("/index.html"), "/index.html").status, 200);
    },
  );
});

Deno.test("static: If-None-Match with the ETag gives 304, a different or stale ETag gives 200", async () => {
  await withTree({ "app.js": BIG_JS }, async ({ root, get }) => {
    const first = some(await get("/app.js"), "first");
    const etag = first.headers.get("etag");
    assert.match(etag ?? "", /^W\/"[^"]+"$/);
    assert.equal(first.headers.get("cache-control"), "public, max-age=300");
    await first.body?.cancel();

    const same = some(await get("/app.js", { "if-none-match": etag! }), "same etag");
    assert.equal(same.status, 304);
    assert.equal(same.body, null);
    assert.equal(same.headers.get("etag"), etag);
    assert.equal(same.headers.get("vary"), "Accept-Encoding");

    const listed = some(await get("/app.js", { "if-none-match": `"nope", ${etag}` }), "list");
    assert.equal(listed.status, 304, "a match anywhere in the list");
    const star = some(await get("/app.js", { "if-none-match": "*" }), "star");
    assert.equal(star.status, 304);
    const strong = some(
      await get("/app.js", { "if-none-match": etag!.replace(/^W\//, "") }),
      "strong spelling",
    );
    assert.equal(strong.status, 304, "If-None-Match uses the weak comparison");

    const other = some(await get("/app.js", { "if-none-match": `W/"other"` }), "other");
    assert.equal(other.status, 200);
    assert.equal(await other.text(), BIG_JS);

    // The file changes (new size and mtime): the old ETag no longer matches.
    await Deno.writeTextFile(`${root}/app.js`, BIG_JS + "// v2\n");
    await Deno.utime(`${root}/app.js`, new Date(), new Date(Date.now() + 5000));
    const changed = some(await get("/app.js", { "if-none-match": etag! }), "changed");
    assert.equal(changed.status, 200);
    assert.notEqual(changed.headers.get("etag"), etag);
    assert.equal(await changed.text(), BIG_JS + "// v2\n");
  });
});

Deno.test("static: Last-Modified and If-Modified-Since, with If-None-Match taking precedence", async () => {
  await withTree({ "a.txt": "hello" }, async ({ root, get }) => {
    const mtime = new Date("2024-05-06T07:08:09Z");
    await Deno.utime(`${root}/a.txt`, mtime, mtime);
    const res = some(await get("/a.txt"), "a.txt");
    assert.equal(res.headers.get("last-modified"), mtime.toUTCString());
    await res.body?.cancel();

    const at = some(await get("/a.txt", { "if-modified-since": mtime.toUTCString() }), "at");
    assert.equal(at.status, 304);
    const later = new Date(mtime.getTime() + 60_000).toUTCString();
    assert.equal(some(await get("/a.txt", { "if-modified-since": later }), "later").status, 304);
    const earlier = new Date(mtime.getTime() - 1000).toUTCString();
    const old = some(await get("/a.txt", { "if-modified-since": earlier }), "earlier");
    assert.equal(old.status, 200);
    assert.equal(await old.text(), "hello");
    const junk = some(await get("/a.txt", { "if-modified-since": "yesterday" }), "junk");
    assert.equal(junk.status, 200, "an unparsable date is ignored");
    await junk.body?.cancel();

    // RFC 9110 13.2.2: when If-None-Match is present, If-Modified-Since is ignored.
    const both = some(
      await get("/a.txt", { "if-none-match": `W/"other"`, "if-modified-since": later }),
      "both",
    );
    assert.equal(both.status, 200);
    await both.body?.cancel();
  });
});

Deno.test("static: brotli and gzip follow Accept-Encoding and decompress to the file's bytes", async () => {
  const png = new Uint8Array(4096).fill(7);
  await withTree(
    { "app.js": BIG_JS, "small.js": "let a = 1;\n", "big.png": png },
    async ({ get }) => {
      const original = encoder.encode(BIG_JS);

      const br = some(await get("/app.js", { "accept-encoding": "gzip, deflate, br" }), "br");
      assert.equal(br.headers.get("content-encoding"), "br", "brotli wins a tie");
      assert.equal(br.headers.get("vary"), "Accept-Encoding");
      const brBody = await bytes(br);
      assert.equal(Number(br.headers.get("content-length")), brBody.byteLength);
      assert.ok(brBody.byteLength < original.byteLength / 4, "brotli actually compresses");
      assert.deepEqual(new Uint8Array(brotliDecompressSync(brBody)), original);

      const gz = some(await get("/app.js", { "accept-encoding": "gzip" }), "gzip");
      assert.equal(gz.headers.get("content-encoding"), "gzip");
      const gzBody = await bytes(gz);
      assert.equal(Number(gz.headers.get("content-length")), gzBody.byteLength);
      assert.deepEqual(new Uint8Array(gunzipSync(gzBody)), original);

      // q-values decide; q=0 refuses a coding.
      const cases: [string | null, string | null][] = [
        ["gzip;q=1, br;q=0.5", "gzip"],
        ["br;q=0, gzip", "gzip"],
        ["gzip;q=0, br", "br"],
        ["br;q=0, gzip;q=0", null],
        ["*;q=0", null],
        ["*", "br"],
        ["*, br;q=0", "gzip"],
        ["identity", null],
        ["deflate", null],
        ["", null],
        [null, null],
      ];
      for (const [accept, expected] of cases) {
        const res = some(
          await get("/app.js", accept === null ? {} : { "accept-encoding": accept }),
          `${accept}`,
        );
        assert.equal(res.headers.get("content-encoding"), expected, `Accept-Encoding: ${accept}`);
        assert.equal(res.headers.get("vary"), "Accept-Encoding", `${accept}`);
        if (expected === null) assert.equal(await res.text(), BIG_JS, `${accept}`);
        else await res.body?.cancel();
      }

      // Tiny files and already-compressed types go as they are.
      const small = some(await get("/small.js", { "accept-encoding": "br, gzip" }), "small");
      assert.equal(small.headers.get("content-encoding"), null);
      assert.equal(await small.text(), "let a = 1;\n");
      const image = some(await get("/big.png", { "accept-encoding": "br, gzip" }), "png");
      assert.equal(image.headers.get("content-encoding"), null);
      assert.equal(image.headers.get("vary"), null);
      assert.deepEqual(await bytes(image), png);
    },
  );
});

Deno.test("static: compressed bytes are cached per ETag, so a changed file is never served stale", async () => {
  await withTree({ "app.js": BIG_JS }, async ({ root, get }) => {
    const ae = { "accept-encoding": "br" };
    const one = some(await get("/app.js", ae), "one");
    assert.equal(decoder.decode(brotliDecompressSync(await bytes(one))), BIG_JS);
    const two = some(await get("/app.js", ae), "two (from the cache)");
    assert.equal(decoder.decode(brotliDecompressSync(await bytes(two))), BIG_JS);

    const v2 = BIG_JS.replaceAll("hello", "howdy");
    await Deno.writeTextFile(`${root}/app.js`, v2); // same size: only the mtime tells
    await Deno.utime(`${root}/app.js`, new Date(), new Date(Date.now() + 5000));
    const three = some(await get("/app.js", ae), "three");
    assert.equal(decoder.decode(brotliDecompressSync(await bytes(three))), v2);
  });
});

Deno.test("static: HEAD answers GET's headers without a body", async () => {
  await withTree({ "app.js": BIG_JS, "a.txt": "hello" }, async ({ get }) => {
    for (const accept of ["", "br", "gzip"]) {
      const headers = accept ? { "accept-encoding": accept } : undefined;
      const g = some(await get("/app.js", headers), `GET ${accept}`);
      const h = some(await get("/app.js", headers, "HEAD"), `HEAD ${accept}`);
      const body = await bytes(g);
      assert.equal(h.status, 200);
      assert.equal(h.body, null);
      for (const name of ["content-type", "content-length", "content-encoding", "etag", "vary"]) {
        assert.equal(h.headers.get(name), g.headers.get(name), `${name} with "${accept}"`);
      }
      assert.equal(Number(h.headers.get("content-length")), body.byteLength);
    }
    const h = some(await get("/a.txt", undefined, "HEAD"), "HEAD a.txt");
    assert.equal(h.headers.get("content-length"), "5");
    assert.equal(h.body, null);
  });
});

/** Paths that try to leave the root (or reach hidden files); none may be served. */
const ESCAPES = [
  "/../secret.txt",
  "/sub/../../secret.txt",
  "/%2e%2e/secret.txt",
  "/%2E%2E/secret.txt",
  "/..%2fsecret.txt",
  "/%2e%2e%2fsecret.txt",
  "/sub/..%2f..%2fsecret.txt",
  "/sub%2f..%2f..%2fsecret.txt",
  "/%252e%252e/secret.txt",
  "/%252e%252e%252fsecret.txt",
  "/sub/%252e%252e%252f%252e%252e%252fsecret.txt",
  "/%25%32%65%25%32%65/secret.txt",
  "/..\\secret.txt",
  "/sub\\..\\..\\secret.txt",
  "/..%5csecret.txt",
  "/sub%5c..%5c..%5csecret.txt",
  "/%255c..%255csecret.txt",
  "/a.txt%00.png",
  "/a.txt%00",
  "/%00",
  "/.hidden",
  "/sub/.env",
  "/%2ehidden",
  "/%e0%a4%a.txt",
  "//etc/passwd",
  "/%2fetc%2fpasswd",
];

Deno.test("static: traversal attempts are refused (plain, percent-encoded, double-encoded, backslash, NUL)", async () => {
  await withTree(
    { "a.txt": "a", "sub/b.txt": "b", ".hidden": "h", "sub/.env": "E", "etc/passwd": "p" },
    async ({ get }) => {
      for (const path of ESCAPES) {
        const res = await get(path);
        if (res === undefined) continue;
        // The URL parser itself resolves "/../x" to "/x": that may only ever serve a file inside.
        const text = await res.text();
        assert.notEqual(text, "TOP SECRET", `${path} leaked the file outside the root`);
        assert.ok(!["h", "E"].includes(text), `${path} served a hidden file`);
        assert.fail(`${path} was served (${res.status}): ${JSON.stringify(text)}`);
      }
      // The same files by their honest names are served.
      assert.equal(await some(await get("/sub/b.txt"), "b").text(), "b");
      assert.equal(await some(await get("/etc/passwd"), "etc").text(), "p");
    },
  );
});

Deno.test("static: .well-known is the one hidden folder served", async () => {
  await withTree({ ".well-known/security.txt": "Contact: x" }, async ({ get }) => {
    const res = some(await get("/.well-known/security.txt"), "security.txt");
    assert.equal(await res.text(), "Contact: x");
  });
});

Deno.test("static: symlinks whose real path leaves the root are refused, inside ones work", async () => {
  await withTree({ "a.txt": "inside", "sub/b.txt": "b" }, async ({ dir, root, get }) => {
    await Deno.mkdir(`${dir}/outside`);
    await Deno.writeTextFile(`${dir}/outside/index.html`, "OUTSIDE INDEX");
    await Deno.writeTextFile(`${dir}/outside/c.txt`, "OUTSIDE C");
    await Deno.symlink(`${dir}/secret.txt`, `${root}/leak.txt`);
    await Deno.symlink("../secret.txt", `${root}/relative-leak.txt`);
    await Deno.symlink(`${dir}/outside`, `${root}/outdir`);
    await Deno.symlink(`${dir}/outside/index.html`, `${root}/sub/index.html`);
    await Deno.symlink(`${root}/a.txt`, `${root}/alias.txt`);
    await Deno.symlink("sub", `${root}/subalias`);

    for (
      const path of [
        "/leak.txt",
        "/relative-leak.txt",
        "/outdir/c.txt",
        "/outdir/",
        "/outdir",
        "/sub/",
        "/sub/index.html",
      ]
    ) {
      assert.equal(await get(path), undefined, `${path} must not be served`);
    }
    assert.equal(await some(await get("/alias.txt"), "alias").text(), "inside");
    assert.equal(await some(await get("/subalias/b.txt"), "subalias").text(), "b");
  });
});

Deno.test("static: the root itself may be a symlink", async () => {
  await withTree({ "a.txt": "via link" }, async ({ dir, root }) => {
    await Deno.symlink(root, `${dir}/link`);
    const serve = createStaticHandler({ root: `${dir}/link` });
    const res = some(await serve(new Request("http://localhost/a.txt")), "a.txt");
    assert.equal(await res.text(), "via link");
  });
});

Deno.test("static: missing files, other methods and a missing root resolve to undefined", async () => {
  await withTree({ "a.txt": "a" }, async ({ dir, get }) => {
    assert.equal(await get("/missing.txt"), undefined);
    assert.equal(await get("/missing/"), undefined);
    assert.equal(await get("/a.txt/more"), undefined);
    for (const method of ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"]) {
      assert.equal(await get("/a.txt", undefined, method), undefined, method);
    }
    const none = createStaticHandler({ root: `${dir}/no-such-folder` });
    assert.equal(await none(new Request("http://localhost/")), undefined);
    const file = createStaticHandler({ root: `${dir}/secret.txt` });
    assert.equal(await file(new Request("http://localhost/")), undefined, "root is a file");
  });
});

Deno.test("static: requests over a real socket cannot climb out of the root either", async () => {
  await withTree({ "a.txt": "a" }, async ({ serve }) => {
    await using http = Deno.serve(
      { port: 0, hostname: "127.0.0.1", onListen() {} },
      async (req) => (await serve(req)) ?? new Response("Not found\n", { status: 404 }),
    );
    const raw = async (target: string) => {
      using conn = await Deno.connect({ port: http.addr.port, hostname: "127.0.0.1" });
      await conn.write(
        encoder.encode(`GET ${target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n`),
      );
      let text = "";
      for await (const chunk of conn.readable) text += decoder.decode(chunk);
      return text;
    };
    assert.match(await raw("/a.txt"), /^HTTP\/1\.1 200/);
    for (const path of ESCAPES.filter((p) => !p.includes("\\"))) {
      const res = await raw(path);
      assert.ok(!res.includes("TOP SECRET"), `${path} leaked: ${res}`);
      assert.match(res, /^HTTP\/1\.1 (404|400)/, path);
    }
  });
});

Deno.test("static: the built-in web/ folder serves the chat page and its modules", async () => {
  const serve = createStaticHandler({ root: new URL("../web/", import.meta.url) });
  const get = (path: string) => serve(new Request(`http://localhost${path}`));
  const page = some(await get("/"), "/");
  assert.equal(page.headers.get("content-type"), "text/html; charset=utf-8");
  const html = await page.text();
  assert.match(html, /<title>Mles chat<\/title>/);
  for (
    const [path, type] of [
      ["/app.js", "text/javascript; charset=utf-8"],
      ["/siphash.js", "text/javascript; charset=utf-8"],
      ["/style.css", "text/css; charset=utf-8"],
      ["/favicon.svg", "image/svg+xml; charset=utf-8"],
    ]
  ) {
    const res = some(await get(path), path);
    assert.equal(res.status, 200, path);
    assert.equal(res.headers.get("content-type"), type, path);
    await res.body?.cancel();
  }
});

/** About 3.4 MB of text that compresses but not to nothing (like a bundled app). */
function bigText(): string {
  const words = ["mles", "channel", "frame", "history", "deno", "kv", "socket", "header"];
  let seed = 7;
  const out: string[] = [];
  for (let n = 0; n < 3_400_000;) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    const w = words[seed % words.length] + (seed % 1000);
    out.push(w);
    n += w.length + 1;
  }
  return out.join(" ");
}

Deno.test("row 12: a 3.4 MB file asked for 30 times with br is compressed once and served from the cache", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles_static_big_" });
  try {
    const text = bigText();
    await Deno.writeTextFile(`${dir}/app.js`, text);
    const compressions: number[] = [];
    const serve = createStaticHandler({
      root: dir,
      onCompress: (_p, _e, n) => compressions.push(n),
    });
    const ask = () =>
      serve(new Request("http://localhost/app.js", { headers: { "accept-encoding": "br" } }));
    // Ten at once (they share one compression), then twenty one after another.
    const first = await Promise.all(Array.from({ length: 10 }, ask));
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) first.push(await ask());
    const perRequest = (performance.now() - t0) / 20;
    assert.equal(compressions.length, 1, `compressed ${compressions.length} times`);
    for (const res of first) {
      const r = some(res, "app.js");
      assert.equal(r.headers.get("content-encoding"), "br");
      assert.ok(Number(r.headers.get("content-length")) < text.length / 2);
    }
    assert.equal(decoder.decode(brotliDecompressSync(await bytes(first[29]!))), text);
    console.log(`${perRequest.toFixed(2)} ms per cached request`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("row 12: a file whose compressed form is over the cache share is served uncompressed, compressed only once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mles_static_big_" });
  try {
    const text = bigText();
    await Deno.writeTextFile(`${dir}/app.js`, text);
    let compressions = 0;
    const serve = createStaticHandler({
      root: dir,
      cacheBytes: 4096,
      onCompress: () => compressions++,
    });
    for (let i = 0; i < 10; i++) {
      const r = some(
        await serve(
          new Request("http://localhost/app.js", { headers: { "accept-encoding": "br, gzip" } }),
        ),
        "app.js",
      );
      assert.equal(r.headers.get("content-encoding"), null);
      assert.equal(Number(r.headers.get("content-length")), encoder.encode(text).length);
      await r.body?.cancel();
    }
    assert.equal(compressions, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
