/**
 * `localise`: signal localisation over a run, the library API behind `xfel-redu localise`.
 *
 * Flow: run reader -> frame batches (all modules aligned) -> backend stages 1, 3, 4 per module batch
 * (webgpu or cpu, same spec) -> per-frame results -> classifier (stage 5) -> ROIs (stage 6) -> module-file
 * selection (stage 7). Stage 2 (hot pixels) is a pre-pass over a sample of each module's frames
 * (`hotSample` frames spread evenly over the run; all frames when the run has fewer): a pixel lit in more
 * than `hotFraction` of them is hot.
 */
import { InputError } from "../errors.ts";
import { type Geometry, geometry } from "../detectors.ts";
import { FrameReader } from "../frames.ts";
import { bytesPerElement } from "../h5.ts";
import { Run } from "../run.ts";
import { adaptiveThreshold, asicOfPeak, type ClassifierMode } from "./classify.ts";
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
const HOT_BLOCK = 8;

export interface LocaliseOptions extends LocaliseParams {
  /** Classifier: an ASIC without a peak is lit with at least this many filtered lit pixels. */
  minLit: number;
  mode: ClassifierMode;
  snr: number;
  margin: number;
  maxRois: number;
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
  /** Bytes of image data per module per batch. */
  batchBytes: number;
  detector?: string;
  modules?: number[];
  firstTrain?: number;
  lastTrain?: number;
}

export const DEFAULT_OPTIONS: LocaliseOptions = {
  ...DEFAULT_PARAMS,
  minLit: 25,
  mode: "peaks",
  snr: 4,
  margin: 4,
  maxRois: 32,
  minLitFraction: 0.01,
  hotSample: 128,
  backend: "auto",
  litFrom: "both",
  batchBytes: 32 * 2 ** 20,
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

/** Run localisation on a run (directory or file). */
export async function localise(
  runPath: string,
  options: Partial<LocaliseOptions> = {},
  progress?: Progress,
): Promise<LocaliseResult> {
  const opt: LocaliseOptions = { ...DEFAULT_OPTIONS, ...options };
  const t0 = performance.now();
  const run = await Run.open(runPath);
  try {
    const det = run.detector(opt.detector);
    const g = geometry(det.type);
    const reader = new FrameReader(det, {
      modules: opt.modules,
      firstTrain: opt.firstTrain,
      lastTrain: opt.lastTrain,
      batchBytes: opt.batchBytes,
      mask: true,
    });
    const notes: string[] = [];
    if (det.raw) {
      notes.push("RAW data: thresholds apply to ADU values (localise is meant for CORR data in photons)");
    }
    const backend = await makeBackend(opt.backend, opt, g, reader.framesPerBatch, notes);
    try {
      return await runStages(run, reader, backend, opt, g, notes, t0, progress);
    } finally {
      backend.dispose();
    }
  } finally {
    run.close();
  }
}

async function runStages(
  run: Run,
  reader: FrameReader,
  backend: LocaliseBackend,
  opt: LocaliseOptions,
  g: Geometry,
  notes: string[],
  t0: number,
  progress?: Progress,
): Promise<LocaliseResult> {
  const det = reader.detector;
  const nMod = reader.modules.length;
  const nA = g.nAsics;
  const nF = reader.nFrames;
  const px = g.pixels;
  let bytesRead = 0;
  // Bytes of one module frame as stored: image data plus the mask where the data has one.
  const hasMask = reader.modules.some((m) =>
    m.files.some((f) => f.file.h5.get(`${f.groupPath}/mask`) !== null)
  );
  const frameBytes = px * (bytesPerElement(det.dtype) + (hasMask ? 4 : 0));

  // Stage 2: hot pixels from an even sample of frames: blocks of consecutive frames (one read and one
  // backend call per module per block), spread evenly over the run.
  const sampleN = Math.min(nF, opt.hotSample);
  const counts = reader.modules.map(() => new Uint32Array(px));
  const recorded = new Uint32Array(nMod);
  const block = Math.min(HOT_BLOCK, reader.framesPerBatch);
  const nBlocks = Math.ceil(sampleN / block);
  for (let k = 0; k < nBlocks; k++) {
    const start = Math.min(nF - block, Math.floor((k * nF) / nBlocks));
    const b = reader.read(Math.max(0, start), Math.min(block, sampleN - k * block));
    bytesRead += b.nFrames * nMod * frameBytes;
    for (let m = 0; m < nMod; m++) {
      const mf = b.modules[m];
      recorded[m] += mf.present.reduce((a, x) => a + x, 0); // absent frames are NaN: never lit
      await backend.accumulateLitCounts(
        { geometry: g, nFrames: b.nFrames, data: mf.data, mask: mf.mask },
        counts[m],
      );
    }
  }
  const hot = counts.map((c, m) => hotPixels(c, recorded[m], opt.hotFraction));

  // Stages 1, 3, 4 over all frames.
  const per = {
    trainId: reader.frameIds.trainId,
    pulseId: reader.frameIds.pulseId,
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
  const present = reader.presence();
  const allPeaks: FramePeak[][] = Array.from({ length: nF }, () => []);
  for (let start = 0; start < nF; start += reader.framesPerBatch) {
    const b = reader.read(start, reader.framesPerBatch);
    bytesRead += b.nFrames * nMod * frameBytes;
    // Two module batches in flight: the next module's upload overlaps the current one's compute.
    const start0 = start;
    const consume = (m: number, r: BatchResult) => {
      for (let i = 0; i < b.nFrames; i++) {
        const f = start0 + i;
        if (!present[m][f]) continue;
        const dst = (f * nMod + m) * nA;
        per.litPixels.set(r.litPixels.subarray(i * nA, (i + 1) * nA), dst);
        per.litIntensity.set(r.litIntensity.subarray(i * nA, (i + 1) * nA), dst);
        per.unmaskedPixels.set(r.unmaskedPixels.subarray(i * nA, (i + 1) * nA), dst);
        per.filteredLit.set(r.filteredLit.subarray(i * nA, (i + 1) * nA), dst);
        per.nPeaks[f] += r.nPeaks[i];
        for (const p of r.peaks[i]) allPeaks[f].push({ ...p, module: reader.modules[m].module });
      }
    };
    let inFlight: Promise<BatchResult> | undefined;
    for (let m = 0; m <= nMod; m++) {
      const next = m < nMod
        ? backend.process({
          geometry: g,
          nFrames: b.nFrames,
          data: b.modules[m].data,
          mask: b.modules[m].mask,
          hot: hot[m],
        })
        : undefined;
      if (inFlight) consume(m - 1, await inFlight);
      inFlight = next;
    }
    progress?.(Math.min(nF, start + reader.framesPerBatch), nF);
  }

  // Stage 5: classifier.
  for (let f = 0; f < nF; f++) {
    let lit = 0, valid = 0;
    for (let k = f * nMod * nA; k < (f + 1) * nMod * nA; k++) {
      lit += per.litPixels[k];
      valid += per.unmaskedPixels[k];
    }
    per.score[f] = valid > 0 ? lit / valid : NaN;
  }
  const threshold = opt.mode === "adaptive" ? adaptiveThreshold(per.score, opt.snr) : NaN;
  const moduleIndex = new Map(reader.modules.map((m, i) => [m.module, i]));
  for (let f = 0; f < nF; f++) {
    for (const p of allPeaks[f]) {
      per.asicLit[(f * nMod + moduleIndex.get(p.module)!) * nA + asicOfPeak(g, p)] = 1;
    }
    for (let k = f * nMod * nA; k < (f + 1) * nMod * nA; k++) {
      if (opt.mode === "peaks") {
        if (per.filteredLit[k] >= opt.minLit) per.asicLit[k] = 1;
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

  // Stage 6: ROIs from the peaks of lit frames; stage 7: module selection.
  const rois = reader.modules.map(() => new RoiSet(g.moduleSs, g.moduleFs, opt.margin, opt.maxRois));
  const moduleLit = new Uint32Array(nMod);
  for (let f = 0; f < nF; f++) {
    if (!per.frameLit[f]) continue;
    for (const p of allPeaks[f]) rois[moduleIndex.get(p.module)!].add(p.box);
    for (let m = 0; m < nMod; m++) {
      const base = (f * nMod + m) * nA;
      if (per.asicLit.subarray(base, base + nA).some((x) => x)) moduleLit[m]++;
    }
  }
  const modules: ModuleResult[] = reader.modules.map((m, i) => {
    const frames = present[i].reduce((a, x) => a + x, 0);
    const boxes = rois[i].result();
    const hotList: [number, number][] = [];
    hot[i].forEach((h, p) => {
      if (h) hotList.push([Math.floor(p / g.moduleFs), p % g.moduleFs]);
    });
    return {
      module: m.module,
      frames,
      litFrames: moduleLit[i],
      selected: (frames > 0 && moduleLit[i] / frames >= opt.minLitFraction) || boxes.length > 0,
      files: m.files.map((f) => f.file.name),
      rois: boxes,
      hotPixels: hotList,
    };
  });
  const seconds = (performance.now() - t0) / 1000;
  const litFrames = per.frameLit.reduce((a, x) => a + x, 0);
  return {
    run: run.path,
    runFiles: run.files.map((f) => f.name),
    detector: { name: det.name, type: det.type, modules: reader.modules.map((m) => m.module) },
    backend: { name: backend.name, adapter: backend.adapter },
    notes,
    params: opt,
    trains: new Set(per.trainId).size,
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
    beam,
    anomalies,
  };
}
