/**
 * Worker messages (src/framework/threads.ts): messages and the exit that arrive while nobody waits are kept,
 * in order, for the next nextMessage; nothing is lost between two waits (before, listeners attached per
 * message could miss one, and the caller waited for ever: a hang under load).
 */
import { describe, expect, test } from "vitest";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Worker } from "node:worker_threads";
import { HEAP_SLACK, keepMessages, loadableUrl, nextMessage } from "../src/framework/threads.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("nextMessage", () => {
  test("messages posted back to back, then the exit, while nobody waits: all kept, in order", async () => {
    const w = keepMessages(
      new Worker(
        "const { parentPort } = require('node:worker_threads'); for (let i = 0; i < 5; i++) parentPort.postMessage(i);",
        { eval: true },
      ),
    );
    await sleep(500); // the worker has posted everything and exited
    const got = [];
    for (let i = 0; i < 5; i++) got.push(await nextMessage<number>(w));
    expect(got).toEqual([0, 1, 2, 3, 4]);
    await expect(nextMessage(w)).rejects.toThrow(/worker exited/);
  });

  test("a worker error rejects the waiter", async () => {
    const w = keepMessages(new Worker("throw new Error('boom')", { eval: true }));
    await expect(nextMessage(w)).rejects.toThrow(/boom/);
  });
});

/** A compiled module of src/framework a process outside vitest can import (loadableUrl: the dist/ twin). */
const url = (f: string) =>
  JSON.stringify(loadableUrl(new URL(`../src/framework/${f}`, import.meta.url).href).href);

/** `script` run as an ES module by a fresh Node process with argv[2] = mode: its stdout. */
function runScript(script: string, mode: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-threads-"));
  try {
    const file = path.join(dir, "script.mjs");
    fs.writeFileSync(file, script);
    const r = spawnSync(process.execPath, [file, mode], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    return r.stdout.trim();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe("holdYoungGeneration (what bin/xfel-redu.js asks for)", () => {
  // A process that starts a worker through startWorker, then allocates in its main thread with survivors
  // (as a batch loop does); prints its new space's size. Node sets V8's flags again when a worker starts.
  const script = `import v8 from "node:v8";
    const { holdYoungGeneration, startWorker } = await import(${url("threads.ts")});
    if (process.argv[2] === "hold") holdYoungGeneration();
    const w = startWorker("read-worker", ${url("prefetch.ts")}, undefined);
    await new Promise((r) => w.once("online", r));
    const keep = [];
    for (let i = 0; i < 3e6; i++) {
      keep.push({ i, a: [i] });
      if (keep.length > 100000) keep.length = 0;
    }
    console.log(v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space").space_size);
    await w.terminate();`;
  const newSpace = (mode: string) => Number(runScript(script, mode));

  test("holds the main thread's new space at its initial size after a worker started (V8 grows it)", () => {
    expect(newSpace("hold")).toBeLessThanOrEqual(4 * 2 ** 20);
    expect(newSpace("plain")).toBeGreaterThanOrEqual(16 * 2 ** 20);
  }, 60_000);
});

describe("boundHeap (the CLI's threads, at batch and block boundaries)", () => {
  // Batches of objects that live for 8 batches (so the held young generation promotes them), boundHeap after
  // each; prints how far the main thread's heap (objects + ArrayBuffers) rose above its size at batch 50, and
  // whether a worker started afterwards has the collector boundHeap uses.
  const script = `import v8 from "node:v8";
    import { Worker } from "node:worker_threads";
    const { holdYoungGeneration, boundHeap } = await import(${url("threads.ts")});
    holdYoungGeneration();
    const bound = process.argv[2] === "bound" ? boundHeap : () => {};
    const used = () => { const s = v8.getHeapStatistics(); return s.used_heap_size + s.external_memory; };
    const ring = [];
    let base = 0, rise = 0;
    for (let b = 0; b < 1000; b++) {
      const batch = [];
      for (let i = 0; i < 2000; i++) batch.push({ i, box: [i, i + 1, i + 2, i + 3], v: new Float64Array(4) });
      ring.push(batch);
      if (ring.length > 8) ring.shift();
      bound();
      if (b === 50) base = used();
      if (b > 50) rise = Math.max(rise, used() - base);
    }
    const w = new Worker(
      "require('node:worker_threads').parentPort.postMessage(require('node:vm').runInNewContext('typeof gc'))",
      { eval: true },
    );
    const inWorker = await new Promise((r) => w.once("message", r));
    console.log(JSON.stringify({ rise, inWorker }));`;
  const run = (mode: string) => JSON.parse(runScript(script, mode)) as { rise: number; inWorker: string };

  test(
    "the heap stays within HEAP_SLACK (+ one batch) of its size after a collection; V8 alone lets it grow",
    () => {
      const bound = run("bound"), plain = run("plain");
      expect(bound.rise).toBeLessThanOrEqual(HEAP_SLACK + 2 * 2 ** 20);
      expect(plain.rise).toBeGreaterThanOrEqual(2 * HEAP_SLACK); // 18.8-30 MB seen, under load too
      // Workers started after holdYoungGeneration have the collector too.
      expect(bound.inWorker).toBe("function");
    },
    120_000,
  );
});
