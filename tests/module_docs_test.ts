/**
 * @module
 * Every `src/*.ts` file (and client.ts) opens with a `@module` doc whose
 * `Imports:` line names exactly what the file imports, so the layering the
 * docs describe is the one the code has. The convention, checked here:
 *
 * - `Imports: a, b (type), node:util, npm:zod.` or `Imports nothing.`; the
 *   list ends at the first period outside parentheses.
 * - A local module is its path relative to the importing file, without
 *   `./` and `.ts` (`hub`; `src/auth` from client.ts). A package is its
 *   specifier as written in code: `node:<name>` for Node built-ins, and
 *   `npm:<name>` for an npm package (a bare name mapped in deno.json is
 *   written with `npm:` in the doc, e.g. `npm:zod` for `from "zod"`).
 * - An entry is marked `(type)` exactly when every import of that module is
 *   type-only (`import type`, or only `type` specifiers); the mark may carry
 *   a note after it (`(type; Frame only)`). Any other parenthesized text is
 *   a free note (`retry (errorText)`).
 */
import assert from "node:assert/strict";

const ROOT = new URL("..", import.meta.url);

/** What a doc says a file imports: module name -> type-only? */
export function documentedImports(source: string): Map<string, boolean> | null {
  const doc = source.match(/^\/\*\*([\s\S]*?)\*\//)?.[1];
  if (!doc || !doc.includes("@module")) return null;
  const text = doc.split("\n").map((l) => l.replace(/^\s*\*\s?/, "")).join(" ");
  if (/\bImports nothing\b/.test(text)) return new Map();
  const at = text.search(/\bImports:/);
  if (at < 0) return null;
  const out = new Map<string, boolean>();
  let depth = 0, item = "";
  const flush = () => {
    const m = item.trim().replace(/^and\s+/, "").match(/^([^\s(]+)\s*(?:\((.*)\))?$/s);
    if (m) out.set(m[1], /^type\b/.test(m[2]?.trim() ?? ""));
    else if (item.trim() !== "") out.set(item.trim(), false);
    item = "";
  };
  for (const ch of text.slice(at + "Imports:".length)) {
    if (depth === 0 && (ch === "," || ch === ".")) {
      // A period ends the list only outside parentheses; one inside a name (none today) would too.
      flush();
      if (ch === ".") return out;
      continue;
    }
    if (ch === "(") depth++;
    if (ch === ")") depth--;
    item += ch;
  }
  flush();
  return out;
}

/** What a file really imports (static `import ... from` and side-effect imports). */
export function realImports(source: string): Map<string, boolean> {
  const out = new Map<string, boolean>();
  const re = /^import\s+(type\s+)?([^;"]*?)\s*from\s*"([^"]+)";|^import\s+"([^"]+)";/gm;
  for (const m of source.matchAll(re)) {
    const spec = m[3] ?? m[4];
    const clause = m[2] ?? "";
    const named = clause.match(/\{([\s\S]*)\}/)?.[1];
    const defaultOrStar = clause.replace(/\{[\s\S]*\}/, "").replace(/,/g, "").trim();
    const typeOnly = m[1] !== undefined ||
      (named !== undefined && defaultOrStar === "" &&
        named.split(",").map((s) => s.trim()).filter(Boolean).every((s) => s.startsWith("type ")));
    const name = spec.startsWith(".")
      ? spec.replace(/^\.\//, "").replace(/\.ts$/, "")
      : spec.includes(":")
      ? spec
      : `npm:${spec}`;
    out.set(name, (out.get(name) ?? true) && typeOnly);
  }
  return out;
}

function describe(m: Map<string, boolean>): string {
  return [...m].map(([k, t]) => (t ? `${k} (type)` : k)).sort().join(", ") || "nothing";
}

/**
 * Files whose doc still drifts, each being reworked by another change of
 * issue 13 at the time this test was written (their owners fix the line).
 * A ratchet: a listed file whose doc has come to match fails the test until
 * it is removed from this list, so the list can only shrink.
 */
const DRIFT_BEING_FIXED = new Set([
  "src/node_server.ts",
]);

async function moduleFiles(): Promise<string[]> {
  const files = ["client.ts"];
  for await (const e of Deno.readDir(new URL("src/", ROOT))) {
    if (e.isFile && e.name.endsWith(".ts")) files.push(`src/${e.name}`);
  }
  return files.sort();
}

Deno.test("module docs: the Imports line parser reads names, type marks and notes", () => {
  const doc = documentedImports(
    "/**\n * @module\n * Role. Imports: hub (type), retry (errorText;\n * one helper), node:util, and npm:zod.\n * Later text, with commas.\n */",
  );
  assert.deepEqual(
    doc,
    new Map([["hub", true], ["retry", false], ["node:util", false], ["npm:zod", false]]),
  );
  assert.deepEqual(documentedImports("/**\n * @module\n * Imports nothing.\n */"), new Map());
  const real = realImports(
    'import type { A } from "./a.ts";\nimport { type B, type C } from "./b.ts";\n' +
      'import { type D, e } from "./d.ts";\nimport { z } from "zod";\nimport "./side.ts";\n' +
      'import { f } from "./a.ts";\n',
  );
  assert.deepEqual(
    real,
    new Map([["a", false], ["b", true], ["d", false], ["npm:zod", false], ["side", false]]),
  );
});

Deno.test("module docs: every src module's Imports line names exactly its imports", async () => {
  const wrong: string[] = [];
  for (const file of await moduleFiles()) {
    const source = await Deno.readTextFile(new URL(file, ROOT));
    const doc = documentedImports(source);
    const real = realImports(source);
    const problem = doc === null
      ? `${file}: no @module doc with an "Imports:" line (real: ${describe(real)})`
      : describe(doc) !== describe(real)
      ? `${file}: doc says ${describe(doc)}; code imports ${describe(real)}`
      : undefined;
    if (problem !== undefined && !DRIFT_BEING_FIXED.has(file)) wrong.push(problem);
    if (problem === undefined && DRIFT_BEING_FIXED.has(file)) {
      wrong.push(`${file}: its doc matches now: remove it from DRIFT_BEING_FIXED`);
    }
  }
  assert.deepEqual(wrong, [], "\n" + wrong.join("\n"));
});
