#!/usr/bin/env node
/**
 * Structure check of src/ (run by .ci/run): fails on
 * - an import cycle among src/ files (static, type-only and dynamic imports all count),
 * - a file outside src/cli/ that imports from src/cli/ (the command line is the top layer),
 * - a source file over 800 lines.
 * Usage: node scripts/check-structure.mjs [--report] [--root DIR]   (--report also prints the longest files;
 * --root checks DIR/src instead of this repository's)
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const rootArg = process.argv.indexOf("--root");
const root = rootArg > 0
  ? path.resolve(process.argv[rootArg + 1])
  : path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const srcDir = path.join(root, "src");
const MAX_LINES = 800;
if (!fs.existsSync(srcDir)) {
  console.error(`check-structure: ${srcDir}: no such directory`);
  process.exit(2);
}

function walk(d, out = []) {
  for (const e of fs.readdirSync(d, { withFileTypes: true })) {
    const p = path.join(d, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (e.name.endsWith(".ts")) out.push(p);
  }
  return out;
}

const files = walk(srcDir).sort();
const rel = (p) => path.relative(root, p);
const edges = new Map();
const problems = [];
const IMPORT = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)(["'])(\.{1,2}\/[^"']+)\1/g;
for (const f of files) {
  const text = fs.readFileSync(f, "utf8");
  const lines = text.split("\n").length;
  if (lines > MAX_LINES) problems.push(`${rel(f)}: ${lines} lines (at most ${MAX_LINES})`);
  const deps = new Set();
  for (const m of text.matchAll(IMPORT)) {
    const target = path.resolve(path.dirname(f), m[2]);
    if (!target.startsWith(srcDir) || !target.endsWith(".ts")) continue;
    deps.add(target);
    const inCli = (p) => p.startsWith(path.join(srcDir, "cli") + path.sep);
    if (inCli(target) && !inCli(f)) {
      problems.push(`${rel(f)} imports ${rel(target)}: nothing below cli/ imports it`);
    }
  }
  edges.set(f, [...deps]);
}

// Tarjan's strongly connected components: every component with more than one file is a cycle.
let index = 0;
const idx = new Map(), low = new Map(), stack = [], on = new Set(), cycles = [];
function connect(v) {
  idx.set(v, index);
  low.set(v, index++);
  stack.push(v);
  on.add(v);
  for (const w of edges.get(v) ?? []) {
    if (!idx.has(w)) {
      connect(w);
      low.set(v, Math.min(low.get(v), low.get(w)));
    } else if (on.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
  }
  if (low.get(v) === idx.get(v)) {
    const c = [];
    let w;
    do {
      w = stack.pop();
      on.delete(w);
      c.push(w);
    } while (w !== v);
    if (c.length > 1 || (edges.get(v) ?? []).includes(v)) cycles.push(c);
  }
}
for (const f of files) if (!idx.has(f)) connect(f);
for (const c of cycles) problems.push(`import cycle of ${c.length} files: ${c.map(rel).sort().join(", ")}`);

if (process.argv.includes("--report")) {
  const sizes = files.map((f) => [fs.readFileSync(f, "utf8").split("\n").length, rel(f)]).sort((a, b) =>
    b[0] - a[0]
  );
  console.log(`${files.length} files in src/, ${sizes.reduce((s, x) => s + x[0], 0)} lines; longest:`);
  for (const [n, f] of sizes.slice(0, 8)) console.log(`  ${n} ${f}`);
}
if (problems.length) {
  for (const p of problems) console.error(`check-structure: ${p}`);
  process.exit(1);
}
console.log(
  `check-structure: ${files.length} files in src/, no import cycle, no file over ${MAX_LINES} lines`,
);
