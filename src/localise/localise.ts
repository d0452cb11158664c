/**
 * `localise`: signal localisation over a run, the library API behind `xfel-redu localise`.
 *
 * Flow: run reader -> frame batches (all modules aligned) -> backend stages 1, 3, 4 per module batch
 * (webgpu or cpu, same spec) -> per-frame results -> classifier (stage 5) -> ROIs (stage 6) -> module-file
 * selection (stage 7). Stage 2 (hot pixels) is a pre-pass over a sample of each module's frames
 * (`hotSample` frames spread evenly over the run; all frames when the run has fewer): a pixel lit in more
 * than `hotFraction` of them is hot.
 *
 * localise is an algorithm of the processing framework (src/framework/algorithm.ts): stages 1-4 run per
 * module group (a part: this thread, a worker thread, or a SLURM task), and `finalize` merges the parts,
 * aligned on (trainId, pulseId), and runs stages 5-7 over all modules.
 */
import { InputError } from "../errors.ts";
import { type Geometry, geometry } from "../detectors.ts";
import type { FrameBatch } from "../frames.ts";
import { bytesPerElement } from "../h5.ts";
import { gpuHardwarePresent } from "../gpu.ts";
import { Run } from "../run.ts";
import type { OptionSpec } from "../cli.ts";
import { type Algorithm, type PartStats, runAlgorithm, type RunInfo } from "../framework/algorithm.ts";
import { adaptiveThreshold, asicOfPeak, type ClassifierMode } from "./classify.ts";
import { loadLayout } from "../geometry.ts";
import { moduleRadii, positioner } from "./position.ts";
import { type Box, RoiSet } from "./rois.ts";
import * as fs from "node:fs";
import { Grow } from "../reductions.ts";
import { ownSpill, removeSpill, SpillReader, SpillWriter } from "../spill.ts";
import { annotateBeam, type BeamAnnotation, combineLit, type LitFrom, type Sase } from "../litframes.ts";
import {
  type BatchResult,
  createCpuBackend,
  DEFAULT_PARAMS,
  hotPixels,
  type LocaliseBackend,
  type LocaliseParams,
  type Peak,
} from "./stages.ts";

export type BackendChoice = "auto" | "webgpu" | "cpu";

/** Consecutive frames per block of the hot-pixel sample. */
const HOT_BLOCK = 16;

export interface LocaliseOptions extends LocaliseParams {
  /** Classifier (peaks mode): a frame is lit with at least this many peaks, all modules together ... */
  minPeaks: number;
  /** ... or with an ASIC of at least this many filtered lit pixels (0 = off). */
  minLit: number;
  mode: ClassifierMode;
  snr: number;
  margin: number;
  maxRois: number;
  /**
   * ROIs: pixels inside peak boxes in at least this fraction of the lit frames (and at least 2), padded by
   * margin; 0: the union of every peak box of the lit frames.
   */
  roiFraction: number;
  /** A module is selected when its lit-frame fraction is at least this (or it holds an ROI). */
  minLitFraction: number;
  /** Frames per module sampled for the hot-pixel pass. */
  hotSample: number;
  backend: BackendChoice;
  /** Where the lit-frame decision comes from: the beam (bunch pattern), the images, or both. */
  litFrom: LitFrom;
  /** Beam annotation: SASE (default from the instrument), repetition rate (MHz), reference frame. */
  sase?: Sase;
  repRate?: number;
  referenceFrame?: number;
  /** Bytes of image data per batch, all modules together. */
  batchBytes: number;
  /** A CrystFEL .geom file (peak positions); default: the built-in layout of the detector type. */
  geometry?: string;
  /** Worker threads (module groups); default: the cores for the cpu backend, 1 for webgpu. */
  workers?: number;
  detector?: string;
  modules?: number[];
  firstTrain?: number;
  lastTrain?: number;
}

export const DEFAULT_OPTIONS: LocaliseOptions = {
  ...DEFAULT_PARAMS,
  minPeaks: 3,
  minLit: 0,
  mode: "peaks",
  snr: 4,
  margin: 4,
  maxRois: 32,
  roiFraction: 0.1,
  minLitFraction: 0.01,
  hotSample: 128,
  backend: "auto",
  litFrom: "both",
  batchBytes: 128 * 2 ** 20,
};

export interface ModuleResult {
  module: number;
  /** Frames this module recorded. */
  frames: number;
  /** Frames in which this module has a lit ASIC. */
  litFrames: number;
  selected: boolean;
  files: string[];
  rois: Box[];
  hotPixels: [number, number][];
}

export interface FramePeak extends Peak {
  module: number;
  /** Position of the centroid (position.ts): x, y in metres, radius in pixels from the beam. */
  x?: number;
  y?: number;
  radius?: number;
}

/** Everything localise found, per frame and per module. */
export interface LocaliseResult {
  run: string;
  /** File names of the run. */
  runFiles: string[];
  detector: { name: string; type: string; modules: number[] };
  backend: { name: string; adapter: string };
  notes: string[];
  params: LocaliseOptions;
  trains: number;
  frames: number;
  litFrames: number;
  modules: ModuleResult[];
  selectedFiles: string[];
  timing: { seconds: number; bytesRead: number; gbPerSecond: number; framesPerSecond: number };
  /** The frames (sorted by trainId, pulseId), their lit decision and score: in memory, 21 bytes a frame. */
  trainId: Float64Array;
  pulseId: Float64Array;
  frameLit: Uint8Array;
  score: Float32Array;
  /** Frame bounds of blocks of whole trains, bounded in size, for `frameBlocks`. */
  blockBounds(): number[];
  /**
   * The per-frame tables of frames [f0, f1) for consecutive ranges (bounds), read back from the parts'
   * spill files and classified: memory bounded by the range (the REDU writer uses blockBounds()).
   */
  frameBlocks(bounds: number[]): Generator<{ f0: number; f1: number; per: FrameTables }>;
  /** Remove the spill files (after writing); frameBlocks and a first perFrame fail after this. */
  dispose(): void;
  /** What stays in memory (bytes): per-frame scalars, fixed-size accumulators, the largest block. */
  memory: { frameBytes: number; accumulatorBytes: number; blockModuleFrames: number; spillFiles: string[] };
  /** Per frame (sorted by trainId, pulseId): all frames at once, materialised on first access (tests, small runs). */
  readonly perFrame: {
    trainId: Float64Array;
    pulseId: Float64Array;
    frameLit: Uint8Array;
    /** frames x modules x ASICs */
    litPixels: Uint32Array;
    litIntensity: Float32Array;
    unmaskedPixels: Uint32Array;
    filteredLit: Uint32Array;
    asicLit: Uint8Array;
    /** Lit fraction of the frame (adaptive classifier score). */
    score: Float32Array;
    nPeaks: Uint32Array;
    /** The brightest maxPeaks peaks of each frame over all modules. */
    peaks: FramePeak[][];
  };
  nAsics: number;
  geometry: Geometry;
  /** The detector layout of the peak positions: a .geom path, or `default AGIPD-1M` etc. */
  layout: string;
  /** The beam annotation (LITFRM) when the run has a bunch pattern and --lit-from is not images. */
  beam?: BeamAnnotation;
  /** Frames with signal in the images but no X-ray pulse (kept, never dropped). */
  anomalies: { trainId: number; pulseId: number }[];
}

export interface Progress {
  (done: number, total: number): void;
}

/**
 * The backend: `cpu`; `webgpu` (an error without an adapter); `auto`: webgpu on a hardware adapter, else
 * cpu. A software adapter (llvmpipe, lavapipe) runs the shaders several times slower than the cpu backend
 * runs the same spec, so auto does not take it; `--backend webgpu` does.
 */
async function makeBackend(
  choice: BackendChoice,
  params: LocaliseParams,
  g: Geometry,
  framesPerBatch: number,
  notes: string[],
): Promise<LocaliseBackend> {
  if (choice === "cpu") return createCpuBackend(params);
  if (choice === "auto" && !gpuHardwarePresent()) {
    notes.push("no GPU on this machine: using the cpu backend");
    return createCpuBackend(params);
  }
  const { createWebgpuBackend } = await import("./webgpu.ts");
  const gpu = await createWebgpuBackend(params, g, framesPerBatch).catch((e: unknown) => {
    notes.push(`webgpu failed: ${e instanceof Error ? e.message.split("\n")[0] : e}`);
    return undefined;
  });
  if (gpu && (choice === "webgpu" || !gpu.software)) return gpu;
  if (choice === "webgpu") throw new InputError(undefined, "--backend webgpu: no WebGPU adapter found");
  if (gpu) {
    notes.push(`software WebGPU adapter (${gpu.adapter}) is slower than the cpu backend: using cpu`);
    gpu.dispose();
  } else {
    notes.push("no WebGPU adapter found: using the cpu backend");
  }
  return createCpuBackend(params);
}

/** What one part (a module group) of localise hands to finalize: stages 1-4 of its modules. */
export interface LocalisePart {
  modules: number[];
  files: string[][];
  /** The part's frames (aligned over its modules), sorted by trainId then pulseId. */
  trainId: Float64Array;
  pulseId: Float64Array;
  /** Per module of the part: frames it recorded. */
  recorded: number[];
  /**
   * Spill file (src/spill.ts) of the per-frame records, in the part's frame order (`frameRecord`): per
   * module, the ASIC counters and the module's brightest maxPeaks peaks.
   */
  spill: string;
  hot: Uint8Array[];
  bytesRead: number;
  backend: { name: string; adapter: string };
  notes: string[];
}

/** Bytes of one peak in a spill record: box (4), area, intensity, ss, fs, max, snr as float64. */
const PEAK_BYTES = 80;

/** Bytes of a module frame's fixed header in a spill record: nPeaks, peaks stored, 4 x nAsics counters. */
function headerBytes(nA: number): number {
  return Math.ceil(((2 + 4 * nA) * 4) / 8) * 8;
}

/**
 * One frame's spill record for the part's modules: per module, a header (u32 nPeaks, u32 peaks stored,
 * u32 litPixels[nA], f32 litIntensity[nA], u32 unmaskedPixels[nA], u32 filteredLit[nA], padded to 8 bytes)
 * then the stored peaks (PEAK_BYTES each). Absent module frames are zeros.
 */
function frameRecords(
  n: number,
  nMod: number,
  nA: number,
  results: (BatchResult | undefined)[],
  present: ArrayLike<number>[],
): Uint8Array {
  const hb = headerBytes(nA);
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    for (let m = 0; m < nMod; m++) {
      bytes += hb + (present[m][i] ? results[m]!.peaks[i].length * PEAK_BYTES : 0);
    }
  }
  const buf = new ArrayBuffer(bytes);
  let o = 0;
  for (let i = 0; i < n; i++) {
    for (let m = 0; m < nMod; m++) {
      const r = results[m]!;
      const u = new Uint32Array(buf, o, 2 + 4 * nA);
      const peaks = present[m][i] ? r.peaks[i] : [];
      if (present[m][i]) {
        u[0] = r.nPeaks[i];
        u[1] = peaks.length;
        u.set(r.litPixels.subarray(i * nA, (i + 1) * nA), 2);
        new Float32Array(buf, o + (2 + nA) * 4, nA).set(r.litIntensity.subarray(i * nA, (i + 1) * nA));
        u.set(r.unmaskedPixels.subarray(i * nA, (i + 1) * nA), 2 + 2 * nA);
        u.set(r.filteredLit.subarray(i * nA, (i + 1) * nA), 2 + 3 * nA);
      }
      o += hb;
      for (const p of peaks) {
        const d = new Float64Array(buf, o, PEAK_BYTES / 8);
        d.set(p.box);
        d[4] = p.area;
        d[5] = p.intensity;
        d[6] = p.ss;
        d[7] = p.fs;
        d[8] = p.max;
        d[9] = p.snr;
        o += PEAK_BYTES;
      }
    }
  }
  return new Uint8Array(buf);
}

/** A spill file read as a byte stream (the records have variable length), through a bounded buffer. */
class SpillStream {
  private reader: SpillReader;
  private left: number;
  private buf: Uint8Array = new Uint8Array(0);
  private pos = 0;
  constructor(file: string) {
    this.reader = new SpillReader(file, 1);
    this.left = fs.statSync(file).size;
  }
  /** The next n bytes, in a fresh (8-byte aligned) buffer. */
  take(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      if (this.pos === this.buf.length) {
        const k = Math.min(this.left, Math.max(n - got, 1 << 20));
        if (k === 0) throw new Error(`${this.reader.path}: spill file ends early`);
        this.buf = this.reader.read(k);
        this.left -= k;
        this.pos = 0;
      }
      const k = Math.min(n - got, this.buf.length - this.pos);
      out.set(this.buf.subarray(this.pos, this.pos + k), got);
      this.pos += k;
      got += k;
    }
    return out;
  }
  close(): void {
    this.reader.close();
  }
}

export class LocaliseAlgorithm implements Algorithm<LocalisePart, LocaliseResult> {
  readonly id = "localise";
  readonly help = "signal localisation: lit pixels, hot pixels, peaks, lit frames, ROIs, module files";
  readonly options: OptionSpec[] = [];
  opt: LocaliseOptions = { ...DEFAULT_OPTIONS };
  private t0 = performance.now();
  private runPath = "";
  private g?: Geometry;
  private modules: number[] = [];
  private files: string[][] = [];
  private frameBytes = 0;
  private backend?: LocaliseBackend;
  private notes: string[] = [];
  private counts: Uint32Array[] = [];
  private recorded: Uint32Array = new Uint32Array(0);
  private hot?: Uint8Array[];
  /** Per module: each pixel's radius from the layout (stage 0 per radius bin), when bgBinWidth > 0. */
  private radius: (Float32Array | undefined)[] = [];
  private bytesRead = 0;
  /** The part's frames; the per-frame results go to the spill file as batches finish. */
  private trainId = new Grow((n) => new Float64Array(n));
  private pulseId = new Grow((n) => new Float64Array(n));
  private framesRecorded: number[] = [];
  private spill?: SpillWriter;

  configure(options: Record<string, unknown>): void {
    this.opt = { ...DEFAULT_OPTIONS, ...(options as Partial<LocaliseOptions>) };
    this.t0 = performance.now();
  }

  initialize(info: RunInfo) {
    this.runPath = info.runPath;
    const det = info.detector;
    // A bad --geometry fails before the run is read (finalize uses it for the peak positions).
    const layout = loadLayout(this.opt.geometry, det.type);
    if (info.modules.length) {
      if (this.opt.bgBinWidth > 0) this.radius = info.modules.map((n) => moduleRadii(layout, det.type, n));
      this.g = geometry(det.type);
      this.modules = info.modules;
      const mods = info.modules.map((n) => det.modules.find((m) => m.module === n)!);
      this.files = mods.map((m) => m.files.map((f) => f.file.name));
      const hasMask = mods.some((m) => m.files.some((f) => f.file.h5.get(`${f.groupPath}/mask`) !== null));
      this.frameBytes = this.g.pixels * (bytesPerElement(det.dtype) + (hasMask ? 4 : 0));
      this.counts = mods.map(() => new Uint32Array(this.g!.pixels));
      this.recorded = new Uint32Array(mods.length);
      this.framesRecorded = mods.map(() => 0);
      if (det.raw) {
        this.notes.push(
          "RAW data: thresholds apply to ADU values (localise is meant for CORR data in photons)",
        );
      }
    }
    return {
      detector: this.opt.detector,
      modules: this.opt.modules,
      mask: true,
      firstTrain: this.opt.firstTrain,
      lastTrain: this.opt.lastTrain,
      batchBytes: this.opt.batchBytes,
    };
  }

  private async ensureBackend(framesPerBatch: number): Promise<LocaliseBackend> {
    this.backend ??= await makeBackend(this.opt.backend, this.opt, this.g!, framesPerBatch, this.notes);
    return this.backend;
  }

  /** Stage 2 sample: blocks of consecutive frames spread evenly over the run. */
  prepassRanges(nFrames: number, framesPerBatch: number): [number, number][] {
    const sampleN = Math.min(nFrames, this.opt.hotSample);
    const block = Math.min(HOT_BLOCK, framesPerBatch);
    const nBlocks = Math.ceil(sampleN / block);
    const out: [number, number][] = [];
    for (let k = 0; k < nBlocks; k++) {
      const start = Math.max(0, Math.min(nFrames - block, Math.floor((k * nFrames) / nBlocks)));
      out.push([start, Math.min(block, sampleN - k * block, nFrames - start)]);
    }
    return out;
  }

  async prepassBatch(b: FrameBatch): Promise<void> {
    const backend = await this.ensureBackend(b.nFrames);
    const g = this.g!;
    this.bytesRead += b.nFrames * b.modules.length * this.frameBytes;
    for (let m = 0; m < b.modules.length; m++) {
      const mf = b.modules[m];
      this.recorded[m] += mf.present.reduce((a, x) => a + x, 0); // absent frames are NaN: never lit
      await backend.accumulateLitCounts(
        { geometry: g, nFrames: b.nFrames, data: mf.data, mask: mf.mask, radius: this.radius[m] },
        this.counts[m],
      );
    }
  }

  async processBatch(b: FrameBatch): Promise<void> {
    const g = this.g!;
    const nA = g.nAsics;
    const nMod = b.modules.length;
    const backend = await this.ensureBackend(b.nFrames);
    this.hot ??= this.counts.map((c, m) => hotPixels(c, this.recorded[m], this.opt.hotFraction));
    this.bytesRead += b.nFrames * nMod * this.frameBytes;
    const n = b.nFrames;
    const results: (BatchResult | undefined)[] = new Array(nMod);
    // Two module batches in flight: the next module's upload overlaps the current one's compute.
    let inFlight: Promise<BatchResult> | undefined;
    for (let m = 0; m <= nMod; m++) {
      const next = m < nMod
        ? backend.process({
          geometry: g,
          nFrames: n,
          data: b.modules[m].data,
          mask: b.modules[m].mask,
          hot: this.hot[m],
          radius: this.radius[m],
        })
        : undefined;
      if (inFlight) results[m - 1] = await inFlight;
      inFlight = next;
    }
    this.trainId.push(b.trainId);
    this.pulseId.push(b.pulseId);
    b.modules.forEach((mf, m) => (this.framesRecorded[m] += mf.present.reduce((a, x) => a + x, 0)));
    this.spill ??= new SpillWriter(1, "localise");
    this.spill.append(frameRecords(n, nMod, nA, results, b.modules.map((mf) => mf.present)));
  }

  finalizeChunk(): LocalisePart {
    this.spill ??= new SpillWriter(1, "localise");
    return {
      modules: this.modules,
      files: this.files,
      trainId: this.trainId.toArray(),
      pulseId: this.pulseId.toArray(),
      recorded: this.framesRecorded,
      spill: this.spill.close(),
      hot: this.hot ?? this.counts.map((c, m) => hotPixels(c, this.recorded[m], this.opt.hotFraction)),
      bytesRead: this.bytesRead,
      backend: this.backend
        ? { name: this.backend.name, adapter: this.backend.adapter }
        : { name: "none", adapter: "no frames" },
      notes: this.notes,
    };
  }

  async finalize(parts: LocalisePart[]): Promise<LocaliseResult> {
    const run = await Run.open(this.runPath);
    try {
      return combine(run, parts, this.opt, this.t0);
    } finally {
      run.close();
    }
  }

  dispose(): void {
    this.backend?.dispose();
    this.backend = undefined;
  }
}

/** Run localisation on a run (directory or file). */
export async function localise(
  runPath: string,
  options: Partial<LocaliseOptions> = {},
  progress?: Progress,
  stats?: PartStats,
): Promise<LocaliseResult> {
  const opt: LocaliseOptions = { ...DEFAULT_OPTIONS, ...options };
  // A GPU: one device in this thread, fed by `workers` reader workers (default cores - 1: FanInReader).
  // The cpu backend (also auto's fallback without a hardware adapter): module groups on the cores.
  const gpu = await usesGpu(opt.backend);
  const workers = gpu ? 1 : opt.workers ?? await cpuCount();
  const readers = gpu ? opt.workers ?? Math.max(1, (await cpuCount()) - 1) : 1;
  return await runAlgorithm<LocalisePart, LocaliseResult>(
    "localise",
    runPath,
    opt as unknown as Record<string, unknown>,
    { workers, readers, progress, stats },
  );
}

/** Whether a backend choice will run on a GPU: webgpu, or auto with a hardware adapter. */
async function usesGpu(choice: BackendChoice): Promise<boolean> {
  if (choice === "cpu") return false;
  if (choice === "webgpu") return true;
  if (!gpuHardwarePresent()) return false;
  const { getGpuDevice } = await import("../gpu.ts");
  const gpu = await getGpuDevice().catch(() => undefined);
  return !!gpu && !gpu.software;
}

async function cpuCount(): Promise<number> {
  const os = await import("node:os");
  return Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
}

/** Module frames (frames x modules) per block of the streaming passes over the spill files. */
const BLOCK_MODULE_FRAMES = 4096;
/** At most this many trains per block (one REDU writer call each). */
const BLOCK_TRAINS = 512;

/**
 * Block bounds [f0, f1) over frames sorted by train: whole trains, up to BLOCK_TRAINS trains and about
 * BLOCK_MODULE_FRAMES module frames (at least one train).
 */
export function blockBounds(trainId: ArrayLike<number>, nMod: number): number[] {
  const maxFrames = Math.max(1, Math.floor(BLOCK_MODULE_FRAMES / Math.max(1, nMod)));
  const bounds = [0];
  let f0 = 0, trains = 0;
  for (let f = 0; f < trainId.length; f++) {
    if (f > f0 && trainId[f] !== trainId[f - 1]) {
      // A new train starts at f: close the block before it when it is full.
      if (trains >= BLOCK_TRAINS || f - f0 >= maxFrames) {
        bounds.push(f);
        f0 = f;
        trains = 0;
      }
      trains++;
    } else if (f === f0) trains = 1;
  }
  if (trainId.length > f0) bounds.push(trainId.length);
  return bounds;
}

/** The union of the parts' frames (each sorted by trainId, pulseId), and each part row's merged index. */
function mergeParts(
  parts: LocalisePart[],
): { trainId: Float64Array; pulseId: Float64Array; index: Uint32Array[] } {
  const index = parts.map((p) => new Uint32Array(p.trainId.length));
  const at = parts.map(() => 0);
  const t = new Grow((n) => new Float64Array(n));
  const pu = new Grow((n) => new Float64Array(n));
  for (let n = 0;; n++) {
    let bt = Infinity, bp = Infinity;
    parts.forEach((p, i) => {
      const k = at[i];
      if (k < p.trainId.length && (p.trainId[k] < bt || (p.trainId[k] === bt && p.pulseId[k] < bp))) {
        bt = p.trainId[k];
        bp = p.pulseId[k];
      }
    });
    if (bt === Infinity) break;
    t.push([bt]);
    pu.push([bp]);
    parts.forEach((p, i) => {
      while (at[i] < p.trainId.length && p.trainId[at[i]] === bt && p.pulseId[at[i]] === bp) {
        index[i][at[i]++] = n;
      }
    });
  }
  return { trainId: t.toArray(), pulseId: pu.toArray(), index };
}

/** Per-frame tables of frames [f0, f1) and every peak of each frame (all modules). */
interface FrameBlock {
  f0: number;
  f1: number;
  per: FrameTables;
  allPeaks: FramePeak[][];
  anomalies: { trainId: number; pulseId: number }[];
}

/** Stage 5 (and the beam) over the merged per-frame records, read block by block from the parts' spill files. */
class FrameStream {
  readonly nMod: number;
  threshold = NaN;
  beam?: BeamAnnotation;
  constructor(
    readonly parts: LocalisePart[],
    readonly merged: { trainId: Float64Array; pulseId: Float64Array; index: Uint32Array[] },
    readonly moduleList: number[],
    readonly g: Geometry,
    readonly opt: LocaliseOptions,
    readonly where: ReturnType<typeof positioner>,
  ) {
    this.nMod = moduleList.length;
  }

  /** The records of frames in the bounds' blocks, as stages 1-4 left them. */
  *raw(bounds: number[]): Generator<FrameBlock> {
    const { parts, merged, nMod, moduleList } = this;
    const nA = this.g.nAsics;
    const hb = headerBytes(nA);
    const streams = parts.map((p) => new SpillStream(p.spill));
    const cursor = parts.map(() => 0);
    try {
      for (let b = 0; b + 1 < bounds.length; b++) {
        const f0 = bounds[b], f1 = bounds[b + 1], n = f1 - f0;
        const per: FrameTables = {
          trainId: merged.trainId.slice(f0, f1),
          pulseId: merged.pulseId.slice(f0, f1),
          frameLit: new Uint8Array(n),
          litPixels: new Uint32Array(n * nMod * nA),
          litIntensity: new Float32Array(n * nMod * nA),
          unmaskedPixels: new Uint32Array(n * nMod * nA),
          filteredLit: new Uint32Array(n * nMod * nA),
          asicLit: new Uint8Array(n * nMod * nA),
          score: new Float32Array(n),
          nPeaks: new Uint32Array(n),
          peaks: Array.from({ length: n }, () => [] as FramePeak[]),
        };
        const allPeaks: FramePeak[][] = Array.from({ length: n }, () => []);
        let m0 = 0;
        parts.forEach((p, pi) => {
          const ix = merged.index[pi], pm = p.modules.length;
          for (; cursor[pi] < ix.length && ix[cursor[pi]] < f1; cursor[pi]++) {
            const f = ix[cursor[pi]] - f0;
            for (let j = 0; j < pm; j++) {
              const h = streams[pi].take(hb);
              const u = new Uint32Array(h.buffer, 0, 2 + 4 * nA);
              const dst = (f * nMod + m0 + j) * nA;
              per.litPixels.set(u.subarray(2, 2 + nA), dst);
              per.litIntensity.set(new Float32Array(h.buffer, (2 + nA) * 4, nA), dst);
              per.unmaskedPixels.set(u.subarray(2 + 2 * nA, 2 + 3 * nA), dst);
              per.filteredLit.set(u.subarray(2 + 3 * nA, 2 + 4 * nA), dst);
              per.nPeaks[f] += u[0];
              if (u[1] === 0) continue;
              const d = new Float64Array(streams[pi].take(u[1] * PEAK_BYTES).buffer);
              for (let k = 0; k < u[1]; k++) {
                const o = k * (PEAK_BYTES / 8);
                allPeaks[f].push({
                  box: [d[o], d[o + 1], d[o + 2], d[o + 3]],
                  area: d[o + 4],
                  intensity: d[o + 5],
                  ss: d[o + 6],
                  fs: d[o + 7],
                  max: d[o + 8],
                  snr: d[o + 9],
                  module: moduleList[m0 + j],
                });
              }
            }
          }
          m0 += pm;
        });
        yield { f0, f1, per, allPeaks, anomalies: [] };
      }
    } finally {
      for (const s of streams) s.close();
    }
  }

  /** Classified blocks: scores, ASIC and frame lit flags, peak tables with positions, the beam decision. */
  *classified(bounds: number[]): Generator<FrameBlock> {
    for (const blk of this.raw(bounds)) {
      const per = blk.per;
      frameScores(per, this.nMod, this.g.nAsics);
      classifyFrames(per, blk.allPeaks, this.moduleList, this.g, this.opt, this.threshold);
      for (const list of per.peaks) {
        for (const p of list) Object.assign(p, this.where(p.module, p.ss, p.fs));
      }
      if (this.beam) {
        const c = combineLit(this.beam, per, this.opt.litFrom);
        per.frameLit.set(c.frameLit);
        blk.anomalies = c.anomalies.map((a) => ({ trainId: a.trainId, pulseId: a.pulseId }));
      }
      yield blk;
    }
  }
}

/**
 * Stages 5-7 over the merged parts, streaming: the parts' spill files are read block by block (bounded by
 * BLOCK_MODULE_FRAMES), once for the adaptive classifier's scores (adaptive mode only), once for stages 6-7;
 * the REDU writer reads them once more (`frameBlocks`). In memory per frame: trainId, pulseId, score,
 * frameLit (21 bytes); per module: the ROI persistence counts (4 bytes per pixel) and hot pixels.
 */
function combine(run: Run, parts: LocalisePart[], opt: LocaliseOptions, t0: number): LocaliseResult {
  const det = run.detector(opt.detector);
  const g = geometry(det.type);
  const nA = g.nAsics;
  const moduleList = parts.flatMap((p) => p.modules);
  const nMod = moduleList.length;
  const notes = [...run.warnings().map((w) => `warning: ${w}`), ...new Set(parts.flatMap((p) => p.notes))];
  for (const p of parts) ownSpill(p.spill);
  const merged = mergeParts(parts);
  const nF = merged.trainId.length;
  const recorded = parts.flatMap((p) => p.recorded);
  const hot = parts.flatMap((p) => p.hot);
  const files = parts.flatMap((p) => p.files);
  const bytesRead = parts.reduce((a, p) => a + p.bytesRead, 0);
  const backend = parts.find((p) => p.backend.name !== "none")?.backend ?? parts[0].backend;
  const layout = loadLayout(opt.geometry, det.type);
  const stream = new FrameStream(parts, merged, moduleList, g, opt, positioner(layout, det.type));
  const bounds = blockBounds(merged.trainId, nMod);

  // Stage 5, adaptive mode: the threshold from every frame's score (a first pass over the records).
  const score = new Float32Array(nF);
  if (opt.mode === "adaptive") {
    for (const blk of stream.raw(bounds)) {
      frameScores(blk.per, nMod, nA);
      score.set(blk.per.score, blk.f0);
    }
    stream.threshold = adaptiveThreshold(score, opt.snr);
  }

  // The beam: frames that saw an X-ray pulse (the lit-frame finder); combined with the images.
  let beam: BeamAnnotation | undefined;
  if (opt.litFrom !== "images") {
    const ann = annotateBeam(run, {
      detector: det.name,
      sase: opt.sase,
      repRate: opt.repRate,
      referenceFrame: opt.referenceFrame,
    });
    if (ann.trains.some((t) => t.hasBunchPattern)) {
      beam = ann;
      stream.beam = ann;
    } else if (opt.litFrom === "beam") {
      throw new InputError(run.path, "--lit-from beam: the run has no bunch pattern");
    } else {
      notes.push("no bunch pattern in the run: lit frames from the images alone");
    }
  }

  // Stage 6: ROIs from signal persistence (or, with roiFraction 0, the union of the peak boxes of lit
  // frames); stage 7: module selection.
  const moduleIndex = new Map(moduleList.map((m, i) => [m, i]));
  const rois = moduleList.map(() => new RoiSet(g.moduleSs, g.moduleFs, opt.margin, opt.maxRois));
  const persist = opt.roiFraction > 0 ? moduleList.map(() => new Uint32Array(g.pixels)) : undefined;
  const moduleLit = new Uint32Array(nMod);
  const valid = new Uint8Array(nMod);
  const frameLit = new Uint8Array(nF);
  const anomalies: { trainId: number; pulseId: number }[] = [];
  let litCount = 0;
  for (const blk of stream.classified(bounds)) {
    const per = blk.per;
    frameLit.set(per.frameLit, blk.f0);
    score.set(per.score, blk.f0);
    for (const a of blk.anomalies) anomalies.push(a);
    for (let f = 0; f < blk.f1 - blk.f0; f++) {
      for (let m = 0; m < nMod; m++) {
        const base = (f * nMod + m) * nA;
        for (let a = 0; a < nA && !valid[m]; a++) if (per.unmaskedPixels[base + a]) valid[m] = 1;
      }
      if (!per.frameLit[f]) continue;
      litCount++;
      for (const p of blk.allPeaks[f]) {
        const m = moduleIndex.get(p.module)!;
        if (!persist) {
          rois[m].add(p.box);
          continue;
        }
        const c = persist[m];
        for (let ss = p.box[0]; ss < p.box[2]; ss++) {
          for (let fs = p.box[1]; fs < p.box[3]; fs++) c[ss * g.moduleFs + fs]++;
        }
      }
      for (let m = 0; m < nMod; m++) {
        const base = (f * nMod + m) * nA;
        if (per.asicLit.subarray(base, base + nA).some((x) => x)) moduleLit[m]++;
      }
    }
  }
  if (anomalies.length) {
    notes.push(`${anomalies.length} frames with signal in the images but no X-ray pulse: kept (anomalies)`);
  }
  for (const w of beam?.warnings ?? []) notes.push(`beam: ${w}`);
  if (persist) {
    const need = Math.max(2, Math.ceil(opt.roiFraction * litCount));
    persist.forEach((c, m) => {
      for (let p = 0; p < c.length; p++) {
        if (c[p] >= need) {
          const ss = Math.floor(p / g.moduleFs), fs = p % g.moduleFs;
          rois[m].add([ss, fs, ss + 1, fs + 1]);
        }
      }
    });
  }
  const modules: ModuleResult[] = moduleList.map((m, i) => {
    const frames = recorded[i];
    const boxes = rois[i].result();
    const hotList: [number, number][] = [];
    hot[i].forEach((h, p) => {
      if (h) hotList.push([Math.floor(p / g.moduleFs), p % g.moduleFs]);
    });
    return {
      module: m,
      frames,
      litFrames: moduleLit[i],
      selected: (frames > 0 && moduleLit[i] / frames >= opt.minLitFraction) || boxes.length > 0,
      files: files[i],
      rois: boxes,
      hotPixels: hotList,
    };
  });
  modules.forEach((m, i) => {
    if (m.frames > 0 && !valid[i]) {
      notes.push(
        `warning: module ${m.module}: no valid pixel in any of its ${m.frames} frames (all NaN or masked)`,
      );
    }
  });
  const seconds = (performance.now() - t0) / 1000;
  const litFrames = frameLit.reduce((a, x) => a + x, 0);
  // Trains as inspect counts them: every train of the run's index in the range, empty ones included.
  const trains = run.trainIds.filter((t) =>
    (opt.firstTrain === undefined || t >= opt.firstTrain) &&
    (opt.lastTrain === undefined || t <= opt.lastTrain)
  ).length;
  let all: FrameTables | undefined;
  let disposed = false;
  const frameBlocks = function* (b: number[]): Generator<FrameBlock> {
    if (disposed) throw new Error("localise result: per-frame records already removed (dispose)");
    yield* stream.classified(b);
  };
  return {
    run: run.path,
    runFiles: run.files.map((f) => f.name),
    detector: { name: det.name, type: det.type, modules: moduleList },
    backend: { name: backend.name, adapter: backend.adapter },
    notes,
    params: opt,
    trains,
    frames: nF,
    litFrames,
    modules,
    selectedFiles: modules.filter((m) => m.selected).flatMap((m) => m.files),
    timing: {
      seconds,
      bytesRead,
      gbPerSecond: bytesRead / seconds / 1e9,
      framesPerSecond: nF / seconds,
    },
    trainId: merged.trainId,
    pulseId: merged.pulseId,
    frameLit,
    score,
    blockBounds: () => bounds,
    frameBlocks,
    get perFrame() {
      if (!all) { for (const blk of frameBlocks([0, nF])) all = blk.per; }
      return all!;
    },
    dispose() {
      disposed = true;
      for (const p of parts) removeSpill(p.spill);
    },
    memory: {
      frameBytes: nF * (8 + 8 + 4 + 1) + merged.index.reduce((a, ix) => a + ix.byteLength, 0),
      accumulatorBytes: (persist?.reduce((a, c) => a + c.byteLength, 0) ?? 0) +
        hot.reduce((a, h) => a + h.byteLength, 0),
      blockModuleFrames: Math.max(...bounds.slice(1).map((b, i) => (b - bounds[i]) * nMod), 0),
      spillFiles: parts.map((p) => p.spill),
    },
    nAsics: nA,
    geometry: g,
    layout: layout.source,
    beam,
    anomalies,
  };
}

/** The per-frame arrays stage 5 reads and writes (see LocaliseResult.perFrame). */
export type FrameTables = LocaliseResult["perFrame"];

/**
 * Stage 5 (classify.ts has the spec): per-frame score, ASIC and frame lit flags, and each frame's peak table
 * (`per.peaks`, brightest first over all modules, at most maxPeaks) from `allPeaks` (sorted in place).
 */
/** Stage 5 score of each frame: its lit fraction (stage-1 lit pixels over valid pixels, all modules). */
export function frameScores(per: FrameTables, nMod: number, nA: number): void {
  const nF = per.frameLit.length;
  for (let f = 0; f < nF; f++) {
    let lit = 0, valid = 0;
    for (let k = f * nMod * nA; k < (f + 1) * nMod * nA; k++) {
      lit += per.litPixels[k];
      valid += per.unmaskedPixels[k];
    }
    per.score[f] = valid > 0 ? lit / valid : NaN;
  }
}

/**
 * Stage 5 (classify.ts has the spec): ASIC and frame lit flags, and each frame's peak table (`per.peaks`,
 * brightest first over all modules, at most maxPeaks) from `allPeaks` (sorted in place), given the scores
 * (frameScores) and the adaptive mode's threshold over the run (adaptiveThreshold; unused in peaks mode);
 * without a threshold, per holds every frame of the run and both are computed here.
 */
export function classifyFrames(
  per: FrameTables,
  allPeaks: FramePeak[][],
  moduleList: number[],
  g: Geometry,
  opt: LocaliseOptions,
  threshold?: number,
): void {
  const nF = per.frameLit.length;
  const nMod = moduleList.length;
  const nA = g.nAsics;
  if (threshold === undefined) {
    // All the run's frames in per: the scores and the threshold from them.
    frameScores(per, nMod, nA);
    threshold = opt.mode === "adaptive" ? adaptiveThreshold(per.score, opt.snr) : NaN;
  }
  const moduleIndex = new Map(moduleList.map((m, i) => [m, i]));
  for (let f = 0; f < nF; f++) {
    // Peaks mode: peaks light their ASICs when the frame holds at least minPeaks of them.
    if (opt.mode !== "peaks" || per.nPeaks[f] >= Math.max(1, opt.minPeaks)) {
      for (const p of allPeaks[f]) {
        per.asicLit[(f * nMod + moduleIndex.get(p.module)!) * nA + asicOfPeak(g, p)] = 1;
      }
    }
    for (let k = f * nMod * nA; k < (f + 1) * nMod * nA; k++) {
      if (opt.mode === "peaks") {
        if (opt.minLit > 0 && per.filteredLit[k] >= opt.minLit) per.asicLit[k] = 1;
      } else if (per.score[f] > threshold) {
        const frac = per.unmaskedPixels[k] > 0 ? per.litPixels[k] / per.unmaskedPixels[k] : 0;
        if (frac > threshold) per.asicLit[k] = 1;
      }
      if (per.asicLit[k]) per.frameLit[f] = 1;
    }
    if (opt.mode === "adaptive") per.frameLit[f] = per.score[f] > threshold ? 1 : 0;
    // The per-frame peak table: brightest first, ties by module then box.
    allPeaks[f].sort((a, b) =>
      b.intensity - a.intensity || a.module - b.module || a.box[0] - b.box[0] || a.box[1] - b.box[1]
    );
    per.peaks[f] = allPeaks[f].slice(0, opt.maxPeaks);
  }
}
