/**
 * The offline processing framework: an algorithm interface and the driver that runs an algorithm over a
 * run in one process, in worker threads, or as parts of a SLURM job array (src/framework/slurm.ts).
 *
 * Spec:
 * - An algorithm declares what it needs from the run (`initialize`: detector, modules, mask, train range,
 *   side data), gets batches of aligned frames with side data aligned on the frames' trains
 *   (`processBatch`), returns the partial result of the modules it saw (`finalizeChunk`), and merges the
 *   partial results of all parts into the result (`finalize`, given the parts in module order).
 * - Reading is double-buffered (PrefetchReader): a reader worker fills one shared buffer while the
 *   algorithm works on the other. Batch size in bytes, memory bounded whatever the run size.
 * - Parallelism: the selected modules are split into `workers` contiguous groups, one worker thread each
 *   (each with its own reader). A module is always processed whole by one worker, frames in run order, so
 *   results are the same for any number of workers.
 * - Fan-in (`readers` > 1, one worker): one algorithm instance in this thread (one GPU device) over all
 *   the modules, fed by `readers` reader workers that fill each batch together (FanInReader: a ring of
 *   three shared buffers, batches in run order), so results are the same as with one reader.
 * - An optional pre-pass (`prepass`) sees sampled frame ranges before the main pass (localise: hot pixels);
 *   one stream of reads serves both, so the main pass's first batches are read during the last pre-pass ones.
 */
import type { OptionSpec } from "./options.ts";
import type { FrameBatch } from "../exdf/frames.ts";
import { fromWire, InputError, type WireError } from "../errors.ts";
import { type Detector, Run } from "../exdf/run.ts";
import { FanInReader, PrefetchReader } from "./prefetch.ts";
import { alignSide, loadSide, type SideData, type SideKey } from "./side.ts";
import { loadableUrl, nextMessage, startWorker } from "./threads.ts";

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
  parts: number;
}

export function emptyStats(): PartStats {
  return { readWait: 0, prepass: 0, process: 0, frames: 0, parts: 0 };
}

export function addStats(into: PartStats, s: PartStats): void {
  into.readWait += s.readWait;
  into.prepass += s.prepass;
  into.process += s.process;
  into.frames += s.frames;
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

/** Open the run and ask the algorithm what it needs (for a part's modules, or all). */
type Prepared = Awaited<ReturnType<typeof prepare>>;

async function prepare(algo: Algorithm, runPath: string, modules?: number[]) {
  const run = await Run.open(runPath);
  try {
    const probe = await algo.initialize({ runPath, run, detector: run.detector(), modules: [] });
    const det = run.detector(probe.detector);
    const all = probe.modules ?? det.modules.map((m) => m.module);
    const mine = modules ?? all;
    checkModules(run.path, det, [...all, ...mine]);
    const needs = await algo.initialize({ runPath, run, detector: det, modules: mine });
    return { run, det, all, mine, needs };
  } catch (e) {
    run.close();
    throw e;
  }
}

/** Run an algorithm instance over its modules in this thread: pre-pass, main pass, partial result. */
export async function runPart<P>(
  algo: Algorithm<P>,
  runPath: string,
  modules: number[] | undefined,
  progress?: (done: number, total: number) => void,
  stats?: PartStats,
  preparedRun?: Prepared,
  sharedBy?: number,
  readers = 1,
): Promise<P> {
  const boot = PrefetchReader.boot(); // the reader worker starts while the algorithm prepares
  let prepared;
  try {
    // The caller's prepared run (opened and initialised for these modules) saves opening it again.
    prepared = preparedRun ?? await prepare(algo, runPath, modules);
  } catch (e) {
    await boot.terminate();
    throw e;
  }
  const { run, det, mine, needs } = prepared;
  let reader: PrefetchReader | FanInReader | undefined;
  try {
    // The batch budget is the process's: worker threads share it (sharedBy: the modules of all of them).
    const perModule = Math.max(
      1,
      Math.floor((needs.batchBytes ?? 256 * 2 ** 20) / Math.max(1, mine.length, sharedBy ?? 0)),
    );
    const init = {
      runPath,
      detector: det.name,
      options: {
        modules: mine,
        mask: needs.mask,
        firstTrain: needs.firstTrain,
        lastTrain: needs.lastTrain,
        batchBytes: Math.min(perModule, 96 * 2 ** 20),
      },
    };
    if (readers > 1) {
      await boot.terminate();
      reader = await FanInReader.open(init, readers);
    } else reader = await PrefetchReader.open(init, boot);
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
    const ranges: [number, number][] = [...pre];
    for (let s = 0; s < reader.nFrames; s += reader.framesPerBatch) {
      ranges.push([s, Math.min(reader.framesPerBatch, reader.nFrames - s)]);
    }
    let k = 0;
    for await (const b of reader.batches(ranges)) {
      if (k++ < pre.length) {
        await algo.prepassBatch!(b);
        if (k === pre.length) {
          st.prepass = (now() - t) / 1000;
          t = now();
        }
        continue;
      }
      const t1 = now();
      st.readWait += (t1 - t) / 1000;
      await algo.processBatch(b, side ? alignSide(side, b.trainId) : {});
      t = now();
      st.process += (t - t1) / 1000;
      st.frames += b.nFrames;
      progress?.(b.start + b.nFrames, reader.nFrames);
    }
    if (stats) addStats(stats, st);
    return await algo.finalizeChunk();
  } finally {
    if (reader) await reader.close();
    else await boot.terminate().catch(() => undefined);
    run.close();
  }
}

/** Run an algorithm over a run: in this thread, or over worker threads; returns the merged result. */
export async function runAlgorithm<P, R>(
  algo: Algorithm<P, R>,
  runPath: string,
  options: Record<string, unknown>,
  driver: DriverOptions = {},
): Promise<R> {
  algo.configure(options);
  try {
    const prepared = await prepare(algo as Algorithm, runPath, driver.modules);
    const { run, mine } = prepared;
    const readers = driver.readers ?? 1;
    const groups = moduleGroups(mine, readers > 1 ? 1 : driver.workers ?? 1);
    let parts: P[];
    if (groups.length <= 1) {
      // This thread runs the only part: the run stays open and initialised for it (runPart closes it).
      parts = [
        await runPart(algo, runPath, mine, driver.progress, driver.stats, prepared, undefined, readers),
      ];
    } else {
      run.close();
      const done = new Array(groups.length).fill(0);
      const total = new Array(groups.length).fill(0);
      parts = await Promise.all(groups.map(async (g, i) => {
        const w = startWorker("part-worker", import.meta.url, {
          source: algo.source,
          runPath,
          options,
          modules: g,
          sharedBy: mine.length,
        });
        try {
          for (;;) {
            const m = await nextMessage<PartMessage<P>>(w);
            if (m.type === "progress") {
              done[i] = m.done;
              total[i] = m.total;
              // In frames of the run: the groups' summed fraction times the largest group's frame count.
              const all = total.reduce((a, b) => a + b, 0);
              const frames = Math.max(...total);
              const fraction = all > 0 ? done.reduce((a, b) => a + b, 0) / all : 0;
              driver.progress?.(Math.round(fraction * frames), frames);
            } else if (m.type === "part") {
              if (driver.stats) addStats(driver.stats, m.stats);
              return m.part;
            } else throw fromWire(m);
          }
        } finally {
          await w.terminate();
        }
      }));
    }
    return await algo.finalize(parts);
  } finally {
    algo.dispose?.();
  }
}

export type PartMessage<P> =
  | { type: "progress"; done: number; total: number }
  | { type: "part"; part: P; stats: PartStats }
  | ({ type: "error" } & WireError);
