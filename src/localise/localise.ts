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
  /** Per frame (sorted by trainId, pulseId). */
  perFrame: {
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
  /** Per module of the part: 1 where it recorded the frame. */
  present: Uint8Array[];
  /** frames x part modules x ASICs */
  litPixels: Uint32Array;
  litIntensity: Float32Array;
  unmaskedPixels: Uint32Array;
  filteredLit: Uint32Array;
  /** frames x part modules */
  nPeaks: Uint32Array;
  /** Per frame: each module's brightest maxPeaks peaks. */
  peaks: FramePeak[][];
  hot: Uint8Array[];
  bytesRead: number;
  backend: { name: string; adapter: string };
  notes: string[];
}

/** Growing per-frame storage of a part (batches arrive in frame order). */
class Chunks<T extends Uint32Array | Float32Array | Float64Array | Uint8Array> {
  private parts: T[] = [];
  push(a: T): void {
    this.parts.push(a);
  }
  join(make: (n: number) => T): T {
    const out = make(this.parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of this.parts) {
      out.set(p as never, o);
      o += p.length;
    }
    return out;
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
  private acc = {
    trainId: new Chunks<Float64Array>(),
    pulseId: new Chunks<Float64Array>(),
    present: [] as Chunks<Uint8Array>[],
    litPixels: new Chunks<Uint32Array>(),
    litIntensity: new Chunks<Float32Array>(),
    unmaskedPixels: new Chunks<Uint32Array>(),
    filteredLit: new Chunks<Uint32Array>(),
    nPeaks: new Chunks<Uint32Array>(),
    peaks: [] as FramePeak[][],
  };

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
      this.acc.present = mods.map(() => new Chunks<Uint8Array>());
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
    const litPixels = new Uint32Array(n * nMod * nA);
    const litIntensity = new Float32Array(n * nMod * nA);
    const unmaskedPixels = new Uint32Array(n * nMod * nA);
    const filteredLit = new Uint32Array(n * nMod * nA);
    const nPeaks = new Uint32Array(n * nMod);
    const peaks: FramePeak[][] = Array.from({ length: n }, () => []);
    const consume = (m: number, r: BatchResult) => {
      const present = b.modules[m].present;
      for (let i = 0; i < n; i++) {
        if (!present[i]) continue;
        const dst = (i * nMod + m) * nA;
        litPixels.set(r.litPixels.subarray(i * nA, (i + 1) * nA), dst);
        litIntensity.set(r.litIntensity.subarray(i * nA, (i + 1) * nA), dst);
        unmaskedPixels.set(r.unmaskedPixels.subarray(i * nA, (i + 1) * nA), dst);
        filteredLit.set(r.filteredLit.subarray(i * nA, (i + 1) * nA), dst);
        nPeaks[i * nMod + m] = r.nPeaks[i];
        for (const p of r.peaks[i]) peaks[i].push({ ...p, module: this.modules[m] });
      }
    };
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
      if (inFlight) consume(m - 1, await inFlight);
      inFlight = next;
    }
    this.acc.trainId.push(Float64Array.from(b.trainId));
    this.acc.pulseId.push(Float64Array.from(b.pulseId));
    b.modules.forEach((mf, m) => this.acc.present[m].push(Uint8Array.from(mf.present)));
    this.acc.litPixels.push(litPixels);
    this.acc.litIntensity.push(litIntensity);
    this.acc.unmaskedPixels.push(unmaskedPixels);
    this.acc.filteredLit.push(filteredLit);
    this.acc.nPeaks.push(nPeaks);
    for (const p of peaks) this.acc.peaks.push(p);
  }

  finalizeChunk(): LocalisePart {
    const a = this.acc;
    return {
      modules: this.modules,
      files: this.files,
      trainId: a.trainId.join((n) => new Float64Array(n)),
      pulseId: a.pulseId.join((n) => new Float64Array(n)),
      present: a.present.map((c) => c.join((n) => new Uint8Array(n))),
      litPixels: a.litPixels.join((n) => new Uint32Array(n)),
      litIntensity: a.litIntensity.join((n) => new Float32Array(n)),
      unmaskedPixels: a.unmaskedPixels.join((n) => new Uint32Array(n)),
      filteredLit: a.filteredLit.join((n) => new Uint32Array(n)),
      nPeaks: a.nPeaks.join((n) => new Uint32Array(n)),
      peaks: a.peaks,
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
  // One worker drives a GPU; the cpu backend (also auto's fallback without a hardware adapter) uses the cores.
  const workers = opt.workers ?? (await usesGpu(opt.backend) ? 1 : await cpuCount());
  return await runAlgorithm<LocalisePart, LocaliseResult>(
    "localise",
    runPath,
    opt as unknown as Record<string, unknown>,
    { workers, progress, stats },
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

/** Stages 5-7 over the merged parts. */
function combine(run: Run, parts: LocalisePart[], opt: LocaliseOptions, t0: number): LocaliseResult {
  const det = run.detector(opt.detector);
  const g = geometry(det.type);
  const nA = g.nAsics;
  const moduleList = parts.flatMap((p) => p.modules);
  const nMod = moduleList.length;
  const notes = [...run.warnings().map((w) => `warning: ${w}`), ...new Set(parts.flatMap((p) => p.notes))];
  // The union of the parts' frames, sorted by trainId then pulseId.
  const key = (t: number, p: number) => `${t}:${p}`;
  const union = new Map<string, [number, number]>();
  for (const part of parts) {
    for (let i = 0; i < part.trainId.length; i++) {
      union.set(key(part.trainId[i], part.pulseId[i]), [part.trainId[i], part.pulseId[i]]);
    }
  }
  const frames = [...union.values()].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const nF = frames.length;
  const index = new Map(frames.map(([t, p], i) => [key(t, p), i]));
  const per = {
    trainId: Float64Array.from(frames, (f) => f[0]),
    pulseId: Float64Array.from(frames, (f) => f[1]),
    frameLit: new Uint8Array(nF),
    litPixels: new Uint32Array(nF * nMod * nA),
    litIntensity: new Float32Array(nF * nMod * nA),
    unmaskedPixels: new Uint32Array(nF * nMod * nA),
    filteredLit: new Uint32Array(nF * nMod * nA),
    asicLit: new Uint8Array(nF * nMod * nA),
    score: new Float32Array(nF),
    nPeaks: new Uint32Array(nF),
    peaks: Array.from({ length: nF }, () => [] as FramePeak[]),
  };
  const present: Uint8Array[] = [];
  const hot: Uint8Array[] = [];
  const files: string[][] = [];
  const allPeaks: FramePeak[][] = Array.from({ length: nF }, () => []);
  let m0 = 0;
  for (const part of parts) {
    const pm = part.modules.length;
    const rows = Array.from(part.trainId, (t, i) => index.get(key(t, part.pulseId[i]))!);
    part.modules.forEach((_, j) => {
      const pr = new Uint8Array(nF);
      rows.forEach((f, i) => (pr[f] = part.present[j][i]));
      present.push(pr);
      hot.push(part.hot[j]);
      files.push(part.files[j]);
    });
    rows.forEach((f, i) => {
      for (let j = 0; j < pm; j++) {
        const src = (i * pm + j) * nA, dst = (f * nMod + m0 + j) * nA;
        per.litPixels.set(part.litPixels.subarray(src, src + nA), dst);
        per.litIntensity.set(part.litIntensity.subarray(src, src + nA), dst);
        per.unmaskedPixels.set(part.unmaskedPixels.subarray(src, src + nA), dst);
        per.filteredLit.set(part.filteredLit.subarray(src, src + nA), dst);
        per.nPeaks[f] += part.nPeaks[i * pm + j];
      }
      for (const p of part.peaks[i]) allPeaks[f].push(p);
    });
    m0 += pm;
  }
  const bytesRead = parts.reduce((a, p) => a + p.bytesRead, 0);
  const backend = parts.find((p) => p.backend.name !== "none")?.backend ?? parts[0].backend;
  // Stage 5: classifier.
  classifyFrames(per, allPeaks, moduleList, g, opt);

  // Peak positions on the detector.
  const layout = loadLayout(opt.geometry, det.type);
  const where = positioner(layout, det.type);
  for (const list of per.peaks) {
    for (const p of list) Object.assign(p, where(p.module, p.ss, p.fs));
  }

  // The beam: frames that saw an X-ray pulse (the lit-frame finder); combined with the images.
  let beam: BeamAnnotation | undefined;
  let anomalies: { trainId: number; pulseId: number }[] = [];
  if (opt.litFrom !== "images") {
    const ann = annotateBeam(run, {
      detector: det.name,
      sase: opt.sase,
      repRate: opt.repRate,
      referenceFrame: opt.referenceFrame,
    });
    if (ann.trains.some((t) => t.hasBunchPattern)) {
      beam = ann;
      const c = combineLit(ann, per, opt.litFrom);
      per.frameLit.set(c.frameLit);
      anomalies = c.anomalies.map((a) => ({ trainId: a.trainId, pulseId: a.pulseId }));
      if (anomalies.length) {
        notes.push(
          `${anomalies.length} frames with signal in the images but no X-ray pulse: kept (anomalies)`,
        );
      }
      for (const w of ann.warnings) notes.push(`beam: ${w}`);
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
  let litCount = 0;
  for (let f = 0; f < nF; f++) {
    if (!per.frameLit[f]) continue;
    litCount++;
    for (const p of allPeaks[f]) {
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
    const frames = present[i].reduce((a, x) => a + x, 0);
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
    let valid = 0;
    for (let f = 0; f < nF && !valid; f++) {
      const base = (f * nMod + i) * nA;
      for (let a = 0; a < nA; a++) valid += per.unmaskedPixels[base + a];
    }
    if (m.frames > 0 && valid === 0) {
      notes.push(
        `warning: module ${m.module}: no valid pixel in any of its ${m.frames} frames (all NaN or masked)`,
      );
    }
  });
  const seconds = (performance.now() - t0) / 1000;
  const litFrames = per.frameLit.reduce((a, x) => a + x, 0);
  // Trains as inspect counts them: every train of the run's index in the range, empty ones included.
  const trains = run.trainIds.filter((t) =>
    (opt.firstTrain === undefined || t >= opt.firstTrain) &&
    (opt.lastTrain === undefined || t <= opt.lastTrain)
  ).length;
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
    perFrame: per,
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
export function classifyFrames(
  per: FrameTables,
  allPeaks: FramePeak[][],
  moduleList: number[],
  g: Geometry,
  opt: LocaliseOptions,
): void {
  const nF = per.frameLit.length;
  const nMod = moduleList.length;
  const nA = g.nAsics;
  for (let f = 0; f < nF; f++) {
    let lit = 0, valid = 0;
    for (let k = f * nMod * nA; k < (f + 1) * nMod * nA; k++) {
      lit += per.litPixels[k];
      valid += per.unmaskedPixels[k];
    }
    per.score[f] = valid > 0 ? lit / valid : NaN;
  }
  const threshold = opt.mode === "adaptive" ? adaptiveThreshold(per.score, opt.snr) : NaN;
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
