/**
 * What the experiment-specific reductions (`roi`, `azint`, `xpcs`) share: the backend choice, per-frame
 * result tables that grow in chunks and merge across parts, the frames grouped by train for the writer,
 * bytes in / bytes out, and summary.json.
 *
 * Backend (as localise): `cpu`; `webgpu` (an error without an adapter); `auto`: webgpu on a hardware
 * adapter, else cpu (a software adapter runs the shaders slower than the cpu reference runs the spec); on a
 * machine that shows no GPU (gpuHardwarePresent) auto takes cpu without loading WebGPU (Dawn) at all.
 */
import { type BackendChoice, cpuWithoutGpu, gpuHardwarePresent } from "../gpu/device.ts";
import * as fs from "node:fs";
import * as path from "node:path";
import { InputError } from "../errors.ts";
import { buildDir } from "../app/outdir.ts";
import { writeReductionReport } from "./report.ts";
import { type Detector, Run, runNaming } from "../exdf/run.ts";
import { type FileWriter, openWriter, type WriterSchema } from "../exdf/writer/writer.ts";
import type { RunInfo } from "../framework/algorithm.ts";
import type { OptionSpec } from "../framework/options.ts";
import type { FrameBatch } from "../exdf/frames.ts";
import {
  countMerged,
  type IdSpill,
  IdWriter,
  mergedBlocks,
  mergeIds,
  ownSpill,
  removeSpill,
  SpillReader,
  SpillWriter,
  type TrainFrames,
} from "../framework/spill.ts";

export type { BackendChoice };

export function checkBackend(v: unknown): BackendChoice {
  const b = (v ?? "auto") as string;
  if (!["auto", "webgpu", "cpu"].includes(b)) {
    throw new InputError(undefined, `--backend: ${b}? (auto, webgpu, cpu)`);
  }
  return b as BackendChoice;
}

/** The WebGPU device a backend choice uses, or undefined for the cpu reference. */
export async function pickDevice(choice: BackendChoice, notes: string[]): Promise<GPUDevice | undefined> {
  if (choice === "cpu") return undefined;
  if (choice === "auto" && !gpuHardwarePresent()) {
    notes.push("no GPU on this machine: using the cpu backend");
    return undefined;
  }
  const { getGpuDevice } = await import("../gpu/device.ts");
  const gpu = await getGpuDevice().catch(() => undefined);
  if (!gpu) {
    if (choice === "webgpu") throw new InputError(undefined, "--backend webgpu: no WebGPU adapter found");
    notes.push("no WebGPU adapter found: using the cpu backend");
    return undefined;
  }
  if (gpu.software && choice === "auto") {
    notes.push(`software WebGPU adapter (${gpu.adapterName}) is slower than the cpu backend: using cpu`);
    return undefined;
  }
  return gpu.device;
}

/**
 * Worker threads for a backend: one drives a GPU; the cpu backend uses the cores. `pipelined`: one worker on
 * two cores, where its reader thread reads while it computes (both cores busy); for azint that measured
 * faster than two module groups that each read and compute (bench/RESULTS-reductions.md).
 */
export async function workersFor(choice: BackendChoice, asked?: number, pipelined = false): Promise<number> {
  if (asked) return asked;
  if (!cpuWithoutGpu(choice)) {
    const { getGpuDevice } = await import("../gpu/device.ts");
    const gpu = await getGpuDevice().catch(() => undefined);
    if (gpu && (choice === "webgpu" || !gpu.software)) return 1;
  }
  const { defaultWorkers } = await import("../framework/threads.ts");
  const n = await defaultWorkers();
  return pipelined && n === 2 ? 1 : n;
}

/**
 * A part's per-frame records (roi, azint): the kept frames' train and pulse IDs appended to an id spill file,
 * one record per frame to a spill file (src/framework/spill.ts) named after `label`; nothing per frame in memory.
 */
export class FrameRecords {
  private ids: IdWriter;
  private spill?: SpillWriter;
  constructor(private label: string) {
    this.ids = new IdWriter(`${label}-ids`);
  }

  /** The frames of a batch kept (all, or those `lit` says are lit), their IDs recorded. */
  keep(b: FrameBatch, lit?: (t: number, p: number) => boolean): number[] {
    const kept: number[] = [];
    for (let i = 0; i < b.nFrames; i++) {
      if (lit && !lit(b.trainId[i], b.pulseId[i])) continue;
      kept.push(i);
    }
    this.ids.append(kept.map((i) => b.trainId[i]), kept.map((i) => b.pulseId[i]));
    return kept;
  }

  /** Append the records of the kept frames (recordBytes each). */
  append(recordBytes: number, bytes: Uint8Array): void {
    this.spill ??= new SpillWriter(recordBytes, this.label);
    this.spill.append(bytes);
  }

  /** The part's frames (their id spill file) and its closed spill file (empty ones where no frame came). */
  close(recordBytes: number): SpillPart {
    this.spill ??= new SpillWriter(recordBytes, this.label);
    return { ...this.ids.close(), spill: this.spill.close() };
  }
}

/** A part with per-frame records in a spill file, its frames' ids in an id spill file (IdSpill). */
export interface SpillPart extends IdSpill {
  spill: string;
}

/** The merged frames' ids of a block (`mergeSpills`). */
export interface BlockIds {
  trainId: Float64Array;
  pulseId: Float64Array;
}

/**
 * The parts' spill files merged: the frames of all parts (`MergedIds`, streamed from their id spill files in
 * every pass: nothing per frame in memory), blocks of merged frames [f0, f1) for consecutive ranges `bounds`
 * (starting at 0 each time), read from the files in order (each part's frames in a range are the next
 * records of its file, the next ids of its id file: memory bounded by the range), each block with its
 * frames' ids; `dispose` removes the files (after writing). Per block, `open(f0, f1)` gives what takes the
 * records: `add(pi, buffer, at, f)`, the record of part pi at byte `at` of `buffer` is merged frame f0 + f;
 * then `done()`. `trains`: per train (in order) its trainId and merged frames. `trainId`, `pulseId`: every
 * frame's, made on first access (16 bytes a frame: tests).
 */
export function mergeSpills<P extends SpillPart, B extends object>(
  parts: P[],
  recordBytes: (part: P, pi: number) => number,
  open: (f0: number, f1: number) => {
    add(pi: number, buffer: ArrayBufferLike, at: number, f: number): void;
    done(): B;
  },
): {
  frames: number;
  trains: TrainFrames;
  readonly trainId: Float64Array;
  readonly pulseId: Float64Array;
  blocks(bounds: number[]): Generator<B & BlockIds>;
  dispose(): void;
} {
  const { frames, trains } = countMerged(parts);
  for (const p of parts) for (const f of [p.spill, p.ids]) ownSpill(f);
  const rbs = parts.map(recordBytes);
  const blocks = function* (bounds: number[]): Generator<B & BlockIds> {
    const readers = parts.map((p, pi) => new SpillReader(p.spill, rbs[pi]));
    try {
      for (const { f0, f1, ids, within } of mergedBlocks(parts, bounds)) {
        const blk = open(f0, f1);
        parts.forEach((_p, pi) => {
          // The merged frame (f - f0) of each of the part's records in the block.
          const at = within(pi);
          if (at.length === 0) return;
          const bytes = readers[pi].read(at.length);
          for (let r = 0; r < at.length; r++) {
            blk.add(pi, bytes.buffer, bytes.byteOffset + r * rbs[pi], at[r]);
          }
        });
        yield Object.assign(blk.done(), ids);
      }
    } finally {
      for (const r of readers) r.close();
    }
  };
  let all: BlockIds | undefined;
  const ids = () => (all ??= mergeIds(parts));
  return {
    frames,
    trains,
    get trainId() {
      return ids().trainId;
    },
    get pulseId() {
      return ids().pulseId;
    },
    blocks,
    dispose: () => {
      for (const p of parts) for (const f of [p.spill, p.ids]) removeSpill(f);
    },
  };
}

/**
 * The merged frames in blocks of `perBlock` whole trains (`trains`: mergeSpills's), read through
 * `blocks(bounds)`, each with its trains [t0, t1): their trainIds and frames.
 */
export function* blocksOfTrains<B>(
  blocks: (bounds: number[]) => Iterable<B>,
  trains: TrainFrames,
  perBlock: number,
): Generator<{ blk: B; t0: number; t1: number; trainIds: number[]; frames: number[] }> {
  const counts = trains.frames;
  const bounds = [0], starts = [0];
  for (let t0 = 0; t0 < counts.length; t0 += perBlock) {
    const t1 = Math.min(counts.length, t0 + perBlock);
    bounds.push(bounds[bounds.length - 1] + counts.slice(t0, t1).reduce((a, b) => a + b, 0));
    starts.push(t1);
  }
  let b = 0;
  for (const blk of blocks(bounds)) {
    const t0 = starts[b], t1 = starts[++b];
    yield { blk, t0, t1, trainIds: trains.trainId.slice(t0, t1), frames: counts.slice(t0, t1) };
  }
}

/**
 * What the algorithm classes of roi, azint and xpcs share: no options of their own (the commands' options
 * are configured), the run initialize was given (its metadata only: finalize does not reopen it) and the
 * notes for summary.json.
 */
export abstract class ReductionAlgorithm {
  readonly options: OptionSpec[] = [];
  protected runPath = "";
  /** The run and detector initialize was given (the run closed by finalize: its metadata only). */
  protected run?: Run;
  protected det?: Detector;
  protected notes: string[] = [];

  /** Keep initialize's run and detector. */
  protected takeRun(info: RunInfo): void {
    this.runPath = info.runPath;
    this.run = info.run;
    this.det = info.detector;
  }

  /**
   * `f` with the run and detector initialize was given, or where finalize comes without initialize, the
   * run opened (and closed after).
   */
  protected async withRun<T>(f: (run: Run, det: Detector) => T | Promise<T>): Promise<T> {
    const run = this.run ?? await Run.open(this.runPath);
    try {
      return await f(run, this.det ?? run.detector());
    } finally {
      if (run !== this.run) run.close();
    }
  }
}

/** What a result takes from its parts and the run: the backends used, the modules read, the run's files. */
export function partsSummary(
  parts: { backend: string; modules: number[] }[],
  run: Run,
  detector: string,
): { backend: string; modulesRead: number[]; input: RunInput } {
  return {
    backend: [...new Set(parts.map((p) => p.backend))].join(", "),
    modulesRead: parts.flatMap((p) => p.modules),
    input: runInput(run, detector),
  };
}

/**
 * What the output directory needs of the run: its file names (the output's naming) and, per module of the
 * detector, the files holding it (the bytes in). From the run's metadata, which stays after `close()`: an
 * algorithm takes it at initialize and its finalize and the writer need not open the run again.
 */
export interface RunInput {
  names: string[];
  moduleFiles: { module: number; files: string[] }[];
}

export function runInput(run: Run, detector: string): RunInput {
  return {
    names: run.files.map((f) => f.name),
    moduleFiles: run.detector(detector).modules.map((m) => ({
      module: m.module,
      files: m.files.map((f) => f.file.path),
    })),
  };
}

/** Bytes of the input files that hold the given modules (what the command had to read). */
export function inputBytesOf(input: RunInput, modules: number[]): number {
  const files = new Set<string>();
  for (const m of input.moduleFiles) {
    if (modules.includes(m.module)) {
      for (const f of m.files) files.add(f);
    }
  }
  let n = 0;
  for (const f of files) n += fs.statSync(f).size;
  return n;
}

/** Bytes of the files in a directory (the output). */
export function dirBytes(dir: string): number {
  let n = 0;
  for (const f of fs.readdirSync(dir)) {
    const st = fs.statSync(path.join(dir, f));
    if (st.isFile()) n += st.size;
  }
  return n;
}

/** JSON with non-finite numbers as null. */
export function writeJson(file: string, value: unknown): void {
  fs.writeFileSync(
    file,
    JSON.stringify(
      value,
      (_k, v) => {
        if (typeof v === "number" && !Number.isFinite(v)) return null;
        if (ArrayBuffer.isView(v) && !(v instanceof DataView)) {
          return Array.from(v as unknown as ArrayLike<number>);
        }
        return v;
      },
      2,
    ) + "\n",
  );
}

/**
 * A typed array Dawn's `writeBuffer` accepts: the first n elements of `a`, copied into a reused scratch
 * array when `a` lies on a SharedArrayBuffer (the prefetch reader's buffers; Dawn rejects those).
 */
export class Unshared {
  private f = new Float32Array(0);
  private u = new Uint32Array(0);
  f32(a: Float32Array, n: number): Float32Array<ArrayBuffer> {
    if (!(a.buffer instanceof SharedArrayBuffer)) return a.subarray(0, n) as Float32Array<ArrayBuffer>;
    if (this.f.length < n) this.f = new Float32Array(n);
    this.f.set(a.subarray(0, n));
    return this.f.subarray(0, n);
  }
  u32(a: Uint32Array, n: number): Uint32Array<ArrayBuffer> {
    if (!(a.buffer instanceof SharedArrayBuffer)) return a.subarray(0, n) as Uint32Array<ArrayBuffer>;
    if (this.u.length < n) this.u = new Uint32Array(n);
    this.u.set(a.subarray(0, n));
    return this.u.subarray(0, n);
  }
}

/** What roi, azint and xpcs results share for their output directory. */
export interface ReductionOutput {
  run: string;
  detector: string;
  backend: unknown;
  notes: string[];
  modulesRead: number[];
  /** The run's file names and module files (`runInput`); without it, the run is opened for them. */
  input?: RunInput;
}

/** What roi, azint and xpcs results share: the run, detector, backends used, notes, modules read. */
export interface ReductionResult extends ReductionOutput {
  backend: string;
}

/**
 * The output directory of a reduction (roi, azint, xpcs), built under a temporary name: the REDU file(s)
 * that `write` puts into it (given the run's file names, for the output's naming), summary.json and the
 * report page. summary.json: command, run, detector, backend, notes, then `head`, then modulesRead, the
 * bytes in (the files holding the modules read) and out and their ratio, then `result`.
 */
export async function writeReductionDir(
  command: string,
  r: ReductionOutput,
  dir: string,
  write: (tmp: string, runFiles: string[]) => Promise<unknown>,
  head: Record<string, unknown>,
  result: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  let input = r.input;
  if (!input) {
    const run = await Run.open(r.run);
    try {
      input = runInput(run, r.detector);
    } finally {
      run.close();
    }
  }
  const names = input.names, bytesIn = inputBytesOf(input, r.modulesRead);
  return await buildDir(dir, async (tmp) => {
    await write(tmp, names);
    const bytesOut = dirBytes(tmp);
    const summary = {
      command,
      run: r.run,
      detector: r.detector,
      backend: r.backend,
      notes: r.notes,
      ...head,
      modulesRead: r.modulesRead,
      bytesIn,
      bytesOut,
      ratio: bytesOut ? bytesIn / bytesOut : NaN,
      ...result,
    };
    writeJson(path.join(tmp, "summary.json"), summary);
    writeReductionReport(tmp);
    return summary;
  });
}

/**
 * A reduction's REDU file in `dir`, `<PREFIX>-R<run>-<aggregator>-S<seq>.h5` (prefix and run number from the
 * run's file names): opened with the schema and its parameters, filled by `fill`, closed, or aborted on
 * error; returns the file paths.
 */
export async function writeReduFile(
  dir: string,
  runFiles: string[],
  aggregator: string,
  schema: WriterSchema,
  params: Record<string, string | number>,
  fill: (w: FileWriter) => void,
): Promise<string[]> {
  const { prefix, run } = runNaming(runFiles);
  const w = await openWriter(path.join(dir, "{prefix}-R{run:04d}-{aggregator}-S{seq:05d}.h5"), schema, {
    params,
    prefix,
    run,
    aggregator,
  });
  try {
    fill(w);
    return w.close();
  } catch (e) {
    w.abort(String(e));
    throw e;
  }
}

/** `--range A,B` of azint and xpcs. */
export function parseRange(s: string | undefined): [number, number] | undefined {
  if (s === undefined) return undefined;
  const p = s.split(",").map(Number);
  if (p.length !== 2 || !p.every(Number.isFinite)) throw new InputError(undefined, `--range: ${s}? (A,B)`);
  return [p[0], p[1]];
}
