/**
 * Worker threads that run unchanged under Node (compiled dist/), Deno (TypeScript sources) and vitest
 * (Node running the TypeScript sources: workers then load the compiled twin under dist/, which `npm test`
 * builds first).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { getHeapStatistics, setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Worker } from "node:worker_threads";

const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";

/**
 * The young generation of every thread held at its initial size (a 1-2 MB semi-space) instead of growing:
 * V8 doubles a thread's new space, up to 16 MB a semi-space, each time the bytes that survived its scavenges
 * add up to its size, so the longer the run, the larger the new spaces at its end (localise on 1,000 trains
 * held ~50 MB more over its threads than on 125; docs/localise.md, Memory). The CLI asks for it
 * (bin/xfel-redu.js); a library user's process is left as it is. The V8 flag is process-wide and read when
 * a space would grow, but a starting worker sets the flags again (in its own thread, before it runs any
 * code): so it is set again when a worker started here is online (a thread may grow once or twice in
 * between: 2-8 MB). Deno's tasks do not set it: under Deno 2.9 (V8 15) the flag changed nothing steadily.
 */
const YOUNG_FLAG = "--semi-space-growth-factor=1";
let holdYoung = false;

export function holdYoungGeneration(): void {
  holdYoung = true;
  setFlagsFromString(YOUNG_FLAG);
  // For boundHeap (every thread, workers included: the flag is process-wide and read when a context is made).
  setFlagsFromString("--expose-gc");
}

/**
 * Garbage allowed to pile up in a thread's heap (objects and ArrayBuffers) between boundHeap's collections:
 * HEAP_SLACK, or a quarter of what the last one kept alive when that is more (a collection's cost grows with
 * the live heap: this keeps it to a small share of the work whatever the heap).
 */
export const HEAP_SLACK = 6 * 2 ** 20;
let collector: (() => void) | null | undefined;
let heapAfter = 0, slack = HEAP_SLACK;
const heapNow = () => {
  const s = getHeapStatistics();
  return s.used_heap_size + s.external_memory;
};
const collected = () => {
  const s = getHeapStatistics();
  heapAfter = s.used_heap_size + s.external_memory;
  slack = Math.max(HEAP_SLACK, s.used_heap_size / 4);
};

/**
 * Called at batch and block boundaries: a full collection when this thread's heap has grown by its slack
 * (above) since the last one. The objects of a batch outlive the held young generation, so V8 promotes them;
 * it collects the old generation only when that reaches a limit of its own, tens of MB higher, which a short
 * run never reaches and a long one does: without this, V8's pages ended a 125-train pass at 56 MB and
 * plateaued at 62 on 1,000 trains (docs/localise.md, Memory). Only where the CLI held the young generation
 * (the collector is then exposed, in every thread); elsewhere nothing.
 */
export function boundHeap(): void {
  if (collector === undefined) {
    collector = isDeno
      ? null
      : runInNewContext("typeof gc === 'function' ? gc : null") as (() => void) | null;
    collected();
  }
  if (!collector || heapNow() - heapAfter < slack) return;
  collector();
  collected();
}

/** The URL of a worker module `name` (without extension) beside the module at `base` (import.meta.url). */
export function workerUrl(name: string, base: string): URL {
  if (base.endsWith(".js") || !base.endsWith(".ts")) return new URL(`${name}.js`, base);
  return loadableUrl(new URL(`${name}.ts`, base).href);
}

/**
 * A URL of one of our modules (an import.meta.url) that this runtime can import in a worker: itself, except
 * under Node running the TypeScript sources (vitest), where it is the compiled twin under dist/.
 */
export function loadableUrl(module: string): URL {
  if (isDeno || !module.endsWith(".ts")) return new URL(module);
  const src = fileURLToPath(module);
  let root = path.dirname(src);
  while (!fs.existsSync(path.join(root, "package.json"))) {
    const up = path.dirname(root);
    if (up === root) throw new Error(`no package root above ${src}`);
    root = up;
  }
  const js = path.join(root, "dist", path.relative(root, src)).replace(/\.ts$/, ".js");
  if (!fs.existsSync(js)) throw new Error(`${js} is missing: run npm run build`);
  return pathToFileURL(js);
}

/** Start a worker thread on a module of ours. */
export function startWorker(name: string, base: string, workerData: unknown): Worker {
  const w = new Worker(workerUrl(name, base), { workerData });
  if (holdYoung) w.once("online", () => setFlagsFromString(YOUNG_FLAG));
  return keepMessages(w);
}

/**
 * A worker's messages, in order, from listeners attached once for its whole life: a message or the exit that
 * comes while nobody waits is kept for the next `nextMessage` (attaching and removing listeners per message
 * could drop one that arrives in between, and leave the caller waiting for ever).
 */
interface Inbox {
  messages: unknown[];
  waiter?: { resolve(m: unknown): void; reject(e: Error): void };
  end?: Error;
}

const inboxes = new WeakMap<Worker, Inbox>();

function inboxOf(w: Worker): Inbox {
  let box = inboxes.get(w);
  if (box) return box;
  const inbox: Inbox = { messages: [] };
  box = inbox;
  inboxes.set(w, inbox);
  const finish = (e: Error) => {
    inbox.end ??= e;
    const waiter = inbox.waiter;
    inbox.waiter = undefined;
    waiter?.reject(inbox.end);
  };
  w.on("message", (m: unknown) => {
    const waiter = inbox.waiter;
    if (waiter) {
      inbox.waiter = undefined;
      waiter.resolve(m);
    } else inbox.messages.push(m);
  });
  w.on("error", (e: Error) => finish(e));
  w.on("exit", (code: number) => finish(new Error(`worker exited with code ${code}`)));
  // A worker that exited before its inbox was made (its exit event already gone).
  if (w.threadId === -1) finish(new Error("worker exited"));
  return inbox;
}

/** Start keeping a worker's messages now (startWorker does): none is lost before the first nextMessage. */
export function keepMessages(w: Worker): Worker {
  inboxOf(w);
  return w;
}

/** Wait for the next message of a worker; a worker error or exit rejects (after its earlier messages). */
export function nextMessage<T>(w: Worker): Promise<T> {
  const inbox = inboxOf(w);
  if (inbox.messages.length) return Promise.resolve(inbox.messages.shift() as T);
  if (inbox.end) return Promise.reject(inbox.end);
  if (inbox.waiter) {
    return Promise.reject(new Error("nextMessage: a message of this worker is already awaited"));
  }
  return new Promise<T>((resolve, reject) => {
    inbox.waiter = { resolve: resolve as (m: unknown) => void, reject };
  });
}

/** Number of cores to use by default. */
export async function defaultWorkers(): Promise<number> {
  const os = await import("node:os");
  return Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
}
