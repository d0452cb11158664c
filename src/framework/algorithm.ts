/**
 * The offline processing framework: an algorithm interface and the driver that runs an algorithm over a
 * run in one process, in worker threads, or as parts of a SLURM job array (src/framework/slurm.ts).
 *
 * Spec:
 * - An algorithm declares what it needs from the run (`initialize`: detector, modules, mask, train range,
 *   side data), gets batches of aligned frames with side data aligned on the frames' trains
 *   (`processBatch`), returns the partial result of the modules it saw (`finalizeChunk`), and merges the
 *   partial results of all parts into the result (`finalize`, given the parts in module order).
 * - Reading: one module group is double-buffered (PrefetchReader: a reader worker fills one shared buffer
 *   while the algorithm works on the other); each of several groups reads in its own thread (LocalReader).
 *   Batch size in bytes, memory bounded whatever the run size.
 * - Parallelism: the selected modules are split into `workers` contiguous groups, one thread each (group 0
 *   in the calling thread, the others in part workers; see runAlgorithm). A module is always processed whole
 *   by one group, frames in run order, so results are the same for any number of workers.
 * - Fan-in (`readers` > 1, one worker): one algorithm instance in this thread (one GPU device) over all
 *   the modules, fed by `readers` reader workers that fill each batch together (FanInReader: a ring of
 *   three shared buffers, batches in run order), so results are the same as with one reader.
 * - An optional pre-pass (`prepass`) sees sampled frame ranges before the main pass (localise: hot pixels);
 *   one stream of reads serves both, so the main pass's first batches are read during the last pre-pass ones.
 *   `mainRanges` may leave the pre-pass's frames out of the main pass (localise's cpu backend keeps what it
 *   needs of them, so they are read once).
 */
import type { OptionSpec } from "./options.ts";
import type { FrameBatch } from "../exdf/frames.ts";
import { fromWire, InputError, type WireError } from "../errors.ts";
import { type Detector, Run, type RunIndex } from "../exdf/run.ts";
import { consecutiveRanges, FanInReader, PrefetchReader } from "./prefetch.ts";
import { LocalReader } from "./local-reader.ts";
import type { Worker } from "node:worker_threads";
import { alignSide, loadSide, type SideData, type SideKey } from "./side.ts";
import { boundHeap, loadableUrl, nextMessage, startWorker } from "./threads.ts";
import { removeSpillsIfStopped } from "./spill.ts";

export interface RunInfo {
  runPath: string;
  run: Run;
  detector: Detector;
  /** Modules this instance will see (a part's group, or all). */
  modules: number[];
}

export interface Needs {
  detector?: string;
  modules?: number[];
  mask?: boolean;
  firstTrain?: number;
  lastTrain?: number;
  /** Per-train side data, aligned on each frame's train (NaN where the source lacks the train). */
  side?: SideKey[];
  /** Bytes of image data per batch, all modules together (worker threads of one process share it). */
  batchBytes?: number;
}

/** Where a worker thread finds an algorithm: its module (import.meta.url) and the exported class. */
export interface AlgorithmSource {
  module: string;
  name: string;
}

export interface Algorithm<Part = unknown, Result = unknown> {
  readonly id: string;
  /** The module and class that build this algorithm in a worker thread (`new (import(module))[name]()`). */
  readonly source: AlgorithmSource;
  readonly help: string;
  readonly options: OptionSpec[];
  configure(options: Record<string, unknown>): void;
  initialize(info: RunInfo): Needs | Promise<Needs>;
  /** Frame ranges [start, count] for a pre-pass, given the frame count and the batch size. */
  prepassRanges?(nFrames: number, framesPerBatch: number): [number, number][];
  prepassBatch?(batch: FrameBatch): void | Promise<void>;
  /**
   * Frame ranges [start, count] of the main pass (count <= framesPerBatch, in order), given the pre-pass's;
   * all frames in consecutive batches when absent. An algorithm that keeps what it needs of the pre-pass's
   * frames leaves them out (localise's cpu backend) and handles them itself in processBatch/finalizeChunk.
   */
  mainRanges?(nFrames: number, framesPerBatch: number, prepass: [number, number][]): [number, number][];
  processBatch(batch: FrameBatch, side: SideData): void | Promise<void>;
  finalizeChunk(): Part | Promise<Part>;
  finalize(parts: Part[]): Result | Promise<Result>;
  /** Release resources (GPU devices); called once per instance. */
  dispose?(): void;
  /** Write the result's outputs (EuXFEL files, summary.json) into the new directory `dir`. */
  writeOutput(result: Result, dir: string): Promise<void>;
}

/** A new instance of the algorithm at `source`. */
export async function createAlgorithm(source: AlgorithmSource): Promise<Algorithm> {
  // The module itself where this runtime imports it (Node on dist/, Deno, vitest's main thread: one module
  // instance with the caller's), else its compiled twin (a worker thread under Node given a .ts module).
  let m;
  try {
    m = await import(source.module);
  } catch (e) {
    if ((e as { code?: string }).code !== "ERR_UNKNOWN_FILE_EXTENSION") throw e;
    m = await import(loadableUrl(source.module).href);
  }
  const Class = m[source.name];
  if (typeof Class !== "function") throw new Error(`${source.module} exports no algorithm ${source.name}`);
  return new Class() as Algorithm;
}

/** Where the time of the parts went (seconds, summed over parts) and what they read. */
export interface PartStats {
  /** Waiting for the reader (the read time not hidden behind compute). */
  readWait: number;
  /** The pre-pass (localise: hot-pixel sample), reading included. */
  prepass: number;
  /** processBatch: the algorithm's compute (GPU upload, dispatch and readback included). */
  process: number;
  frames: number;
  /** Frames the pre-pass read (per part; summed). */
  prepassFrames?: number;
  parts: number;
}

export function emptyStats(): PartStats {
  return { readWait: 0, prepass: 0, process: 0, frames: 0, prepassFrames: 0, parts: 0 };
}

export function addStats(into: PartStats, s: PartStats): void {
  into.readWait += s.readWait;
  into.prepass += s.prepass;
  into.process += s.process;
  into.frames += s.frames;
  into.prepassFrames = (into.prepassFrames ?? 0) + (s.prepassFrames ?? 0);
  into.parts += s.parts;
}

export interface DriverOptions {
  /** Worker threads (module groups); 1 runs in this thread (with its reader worker). */
  workers?: number;
  /** Modules of this part only (SLURM tasks); default: what the algorithm needs. */
  modules?: number[];
  progress?: (done: number, total: number) => void;
  /** Filled with the parts' timing. */
  stats?: PartStats;
  /** Reader workers feeding the one instance (workers = 1 only; default 1: PrefetchReader). */
  readers?: number;
}

/** Split modules into n contiguous groups of near-equal size (empty groups dropped). */
export function moduleGroups(modules: number[], n: number): number[][] {
  const k = Math.max(1, Math.min(n, modules.length));
  const out: number[][] = [];
  for (let i = 0; i < k; i++) {
    const g = modules.slice(Math.floor((i * modules.length) / k), Math.floor(((i + 1) * modules.length) / k));
    if (g.length) out.push(g);
  }
  return out;
}

/** Module numbers as ranges: 0-3,8. */
export function formatModules(modules: readonly number[]): string {
  const s = [...new Set(modules)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < s.length;) {
    let j = i;
    while (j + 1 < s.length && s[j + 1] === s[j] + 1) j++;
    parts.push(j > i ? `${s[i]}-${s[j]}` : `${s[i]}`);
    i = j + 1;
  }
  return parts.join(",");
}

/** Refuse modules the detector of the run does not have: one line naming the modules present. */
export function checkModules(runPath: string, det: Detector, wanted: readonly number[] | undefined): void {
  if (!wanted) return;
  const present = new Set(det.modules.map((m) => m.module));
  const missing = wanted.filter((m) => !present.has(m));
  if (missing.length) {
    throw new InputError(
      runPath,
      `${det.name} has no module ${formatModules(missing)} (modules in this run: ${
        formatModules([...present])
      })`,
    );
  }
}

/** The run opened for an instance, and what the algorithm needs for its modules (`mine`). */
export interface Prepared {
  run: Run;
  det: Detector;
  all: number[];
  mine: number[];
  needs: Needs;
}

/**
 * Open the run (or take the one opened) and ask the algorithm what it needs for a part's modules (or all).
 * `probeOnly`: the probe only (initialize with no modules, as for the merge of SLURM parts).
 */
async function prepare(
  algo: Algorithm,
  runPath: string,
  modules?: number[],
  probeOnly = false,
  opened?: Promise<Run>,
): Promise<Prepared> {
  const run = await (opened ?? Run.open(runPath));
  try {
    const probe = await algo.initialize({ runPath, run, detector: run.detector(), modules: [] });
    const det = run.detector(probe.detector);
    const all = probe.modules ?? det.modules.map((m) => m.module);
    const mine = modules ?? all;
    checkModules(run.path, det, [...all, ...mine]);
    const needs = probeOnly ? probe : await algo.initialize({ runPath, run, detector: det, modules: mine });
    return { run, det, all, mine, needs };
  } catch (e) {
    run.close();
    throw e;
  }
}

/** How a part runs (runPart); every field optional. */
export interface PartOptions {
  /** The part's modules (default: what the algorithm needs). */
  modules?: number[];
  progress?: (done: number, total: number) => void;
  /** Filled with the part's timing. */
  stats?: PartStats;
  /** The run this thread already opened and initialised for the part's modules (closed by runPart). */
  prepared?: Prepared;
  /** The run, being opened by this thread (a worker thread opens it while it waits for its modules). */
  opened?: Promise<Run>;
  /** Modules of all the parts of this process, which share the batch budget (default: the part's). */
  sharedBy?: number;
  /** Reader workers feeding the instance (FanInReader when > 1). */
  readers?: number;
  /** Read in this thread (LocalReader) instead of a reader worker. */
  local?: boolean;
  /** A reader worker booted earlier (PrefetchReader.boot): used, or terminated. */
  boot?: Worker;
  /** Set when another part failed: this one stops at its next batch. */
  abort?: { aborted: boolean };
}

/** Run an algorithm instance over its modules in this thread: pre-pass, main pass, partial result. */
export async function runPart<P>(algo: Algorithm<P>, runPath: string, o: PartOptions = {}): Promise<P> {
  const readers = o.readers ?? 1;
  // A reader worker starts (loads h5wasm) while the algorithm prepares.
  let boot = o.boot;
  if (boot && (o.local || readers > 1)) {
    await boot.terminate();
    boot = undefined;
  }
  if (!boot && !o.local && readers <= 1) boot = PrefetchReader.boot();
  let prepared;
  try {
    prepared = o.prepared ?? await prepare(algo, runPath, o.modules, false, o.opened);
  } catch (e) {
    await boot?.terminate();
    throw e;
  }
  const { run, det, mine, needs } = prepared;
  let reader: PrefetchReader | FanInReader | LocalReader | undefined;
  try {
    // The batch budget is the process's: the parts of one process share it (sharedBy: all their modules).
    const perModule = Math.max(
      1,
      Math.floor((needs.batchBytes ?? 256 * 2 ** 20) / Math.max(1, mine.length, o.sharedBy ?? 0)),
    );
    const init = {
      runPath,
      // A reader worker reopens the files of this index instead of reading the run's INDEX again.
      index: o.local ? undefined : run.index(),
      detector: det.name,
      options: {
        modules: mine,
        mask: needs.mask,
        firstTrain: needs.firstTrain,
        lastTrain: needs.lastTrain,
        batchBytes: Math.min(perModule, 96 * 2 ** 20),
      },
    };
    if (o.local) reader = LocalReader.open(det, init.options);
    else if (readers > 1) reader = await FanInReader.open(init, readers);
    else reader = await PrefetchReader.open(init, boot);
    const side = needs.side?.length ? loadSide(run, needs.side) : undefined;
    const st = emptyStats();
    st.parts = 1;
    const now = () => performance.now();
    let t = now();
    // The pre-pass ranges and the main pass in one stream of reads: the first main-pass batches are read
    // while the algorithm works on the last pre-pass ones.
    const pre = algo.prepassRanges && algo.prepassBatch
      ? algo.prepassRanges(reader.nFrames, reader.framesPerBatch)
      : [];
    const main = algo.mainRanges?.(reader.nFrames, reader.framesPerBatch, pre) ??
      consecutiveRanges(reader.nFrames, reader.framesPerBatch);
    const ranges = [...pre, ...main];
    let k = 0, reported = 0;
    for await (const b of reader.batches(ranges)) {
      if (o.abort?.aborted) throw new Error("stopped: another part failed");
      if (k++ < pre.length) {
        await algo.prepassBatch!(b);
        boundHeap();
        st.prepassFrames! += b.nFrames;
        if (k === pre.length) {
          st.prepass = (now() - t) / 1000;
          t = now();
        }
        continue;
      }
      const t1 = now();
      st.readWait += (t1 - t) / 1000;
      await algo.processBatch(b, side ? alignSide(side, b.trainId) : {});
      boundHeap();
      t = now();
      st.process += (t - t1) / 1000;
      st.frames += b.nFrames;
      o.progress?.(reported = b.start + b.nFrames, reader.nFrames);
    }
    if (o.stats) addStats(o.stats, st);
    const result = await algo.finalizeChunk();
    // Every frame is done: said once more when the last batches were the pre-pass's frames (kept by the
    // algorithm) and the main pass's last report fell short.
    if (reported < reader.nFrames) o.progress?.(reader.nFrames, reader.nFrames);
    return result;
  } finally {
    if (reader) await reader.close();
    else await boot?.terminate().catch(() => undefined);
    run.close();
  }
}

/** What a part worker gets once this thread knows the module groups (its workerData: the rest). */
export interface PartTask {
  modules: number[];
  sharedBy: number;
  /** The run as this thread opened it: the worker reopens its files only (Run.fromIndex). */
  index?: RunIndex;
}

/**
 * Run an algorithm over a run: in this thread, or over worker threads; returns the merged result.
 *
 * One module group: this thread runs it, with a reader worker reading beside the compute (PrefetchReader),
 * or `readers` of them (FanInReader). Several groups: group 0 runs in this thread, groups 1.. in part
 * workers, each group reading in its own thread (LocalReader): the groups' threads keep the cores busy, and
 * a reader worker per group would cost a thread, an h5wasm instance and an open of the run each. The part
 * workers start first (loading the algorithm and h5wasm while this thread opens the run and prepares; the
 * run's index comes with their task); the instance of this thread is initialised once, for group 0, and merges.
 */
export async function runAlgorithm<P, R>(
  algo: Algorithm<P, R>,
  runPath: string,
  options: Record<string, unknown>,
  driver: DriverOptions = {},
): Promise<R> {
  algo.configure(options);
  const readers = driver.readers ?? 1;
  const nGroups = readers > 1 ? 1 : Math.max(1, driver.workers ?? 1);
  // Stopped by a signal meanwhile, or failed: the parts' spill files (worker threads' included) are removed
  // when the process ends; once the parts are complete, the merge owns them.
  const unwatch = removeSpillsIfStopped();
  const workers = Array.from(
    { length: nGroups - 1 },
    () => startWorker("part-worker", import.meta.url, { source: algo.source, runPath, options }),
  );
  const boot = nGroups === 1 && readers <= 1 ? PrefetchReader.boot() : undefined;
  const stopAll = () => Promise.all([...workers, ...(boot ? [boot] : [])].map((w) => w.terminate()));
  try {
    let probed: Prepared;
    try {
      probed = await prepare(algo as Algorithm, runPath, driver.modules, true);
    } catch (e) {
      await stopAll();
      throw e;
    }
    const { run, det, all, mine } = probed;
    const groups = moduleGroups(mine, nGroups);
    // Workers beyond the groups (fewer modules than workers) are not needed.
    for (const w of workers.splice(Math.max(0, groups.length - 1))) await w.terminate();
    // The workers' tasks before this thread's initialize: they open their files meanwhile (their part
    // started ~0.5 s after this thread's when they waited for it).
    if (workers.length) {
      const index = run.index();
      workers.forEach((w, j) =>
        w.postMessage({ modules: groups[j + 1], sharedBy: mine.length, index } satisfies PartTask)
      );
    }
    let prepared: Prepared;
    try {
      const needs = await algo.initialize({ runPath, run, detector: det, modules: groups[0] ?? [] });
      prepared = { run, det, all, mine: groups[0] ?? [], needs };
    } catch (e) {
      run.close();
      await stopAll();
      throw e;
    }
    let parts: P[];
    if (groups.length <= 1) {
      parts = [
        await runPart(algo, runPath, {
          progress: driver.progress,
          stats: driver.stats,
          prepared,
          boot,
          readers,
        }),
      ];
    } else {
      const done = new Array(groups.length).fill(0);
      const total = new Array(groups.length).fill(0);
      const report = (i: number, d: number, t: number) => {
        done[i] = d;
        total[i] = t;
        // In frames of the run: the groups' summed fraction times the largest group's frame count.
        const sum = total.reduce((a, b) => a + b, 0);
        const frames = Math.max(...total);
        const fraction = sum > 0 ? done.reduce((a, b) => a + b, 0) / sum : 0;
        driver.progress?.(Math.round(fraction * frames), frames);
      };
      const abort = { aborted: false };
      const here = runPart(algo, runPath, {
        progress: (d, t) => report(0, d, t),
        stats: driver.stats,
        prepared,
        sharedBy: mine.length,
        local: true,
        abort,
      });
      try {
        parts = await Promise.all([
          here,
          ...workers.map(async (w, j) => {
            try {
              for (;;) {
                const m = await nextMessage<PartMessage<P>>(w);
                if (m.type === "progress") report(j + 1, m.done, m.total);
                else if (m.type === "part") {
                  if (driver.stats) addStats(driver.stats, m.stats);
                  return m.part;
                } else throw fromWire(m);
              }
            } catch (e) {
              abort.aborted = true;
              throw e;
            }
          }),
        ]);
      } catch (e) {
        await stopAll();
        await here.catch(() => undefined);
        throw e;
      }
      await stopAll();
    }
    unwatch();
    return await algo.finalize(parts);
  } finally {
    algo.dispose?.();
  }
}

export type PartMessage<P> =
  | { type: "progress"; done: number; total: number }
  | { type: "part"; part: P; stats: PartStats }
  | ({ type: "error" } & WireError);
