/**
 * The merge of localise's parts and stages 5-7 over all modules: parts' frames aligned on (trainId, pulseId),
 * their spill records streamed back block by block (bounded memory), the classifier (stage 5, spec in
 * classify.ts), ROIs (stage 6) and the module selection (stage 7).
 */
import * as fs from "node:fs";
import { InputError } from "../errors.ts";
import { type Geometry, geometry } from "../exdf/detectors.ts";
import { Run } from "../exdf/run.ts";
import { adaptiveThreshold, adaptiveThresholdStreamed, asicOfPeak } from "./classify.ts";
import { loadLayout } from "../exdf/geometry.ts";
import { positioner } from "./position.ts";
import { RoiSet } from "./rois.ts";
import {
  countMerged,
  mergedBlocks,
  ownSpill,
  removeSpill,
  SpillReader,
  SpillWriter,
} from "../framework/spill.ts";
import { boundHeap } from "../framework/threads.ts";
import { type BeamLookup, combineLit, streamBeam } from "../beam/annotate.ts";
import type { FramePeak } from "./result.ts";
import type { LocaliseOptions } from "./result.ts";
import type { LocalisePart } from "./result.ts";
import type { LocaliseResult } from "./result.ts";
import type { ModuleResult } from "./result.ts";
import { SpillStream } from "./records.ts";
import { headerBytes } from "./records.ts";
import { PEAK_BYTES } from "./records.ts";
import type { FrameTables } from "./result.ts";

/** summary.json lists the first this many anomalies (frames with signal but no X-ray pulse); counts all. */
export const MAX_LISTED_ANOMALIES = 1000;
/**
 * Module frames (frames x modules) per block of the streaming passes over the spill files. Small enough that a
 * block's peak objects mostly die young: with 4,096 the JS heap of the merge + REDU write grew by ~1 MB per block
 * over a long run (promoted garbage; 82 MB heap for 1,000 trains of 2 modules x 64 frames, 56 MB with 1,024).
 */
const BLOCK_MODULE_FRAMES = 1024;
/** At most this many trains per block (one REDU writer call each). */
const BLOCK_TRAINS = 512;

/**
 * Block bounds [f0, f1) over frames sorted by train, given one trainId at a time (`push`): whole trains, up to
 * BLOCK_TRAINS trains and about BLOCK_MODULE_FRAMES module frames (at least one train). Holds the bounds
 * only: a number per block.
 */
export class BlockBounder {
  readonly bounds = [0];
  private maxFrames: number;
  private f = 0;
  private f0 = 0;
  private trains = 0;
  private last = NaN;
  constructor(nMod: number) {
    this.maxFrames = Math.max(1, Math.floor(BLOCK_MODULE_FRAMES / Math.max(1, nMod)));
  }
  /** The next frame's trainId. */
  push(trainId: number): void {
    const f = this.f++;
    if (f > this.f0 && trainId !== this.last) {
      // A new train starts at f: close the block before it when it is full.
      if (this.trains >= BLOCK_TRAINS || f - this.f0 >= this.maxFrames) {
        this.bounds.push(f);
        this.f0 = f;
        this.trains = 0;
      }
      this.trains++;
    } else if (f === this.f0) this.trains = 1;
    this.last = trainId;
  }
  /** The bounds, the last frame's end included: [0, ..., frames]. */
  end(): number[] {
    if (this.f > this.f0) this.bounds.push(this.f);
    this.f0 = this.f;
    return this.bounds;
  }
}

/**
 * The largest block of bounds (frames). A loop, not Math.max(...): a long run has more blocks (one per ~1,024
 * module frames: ~200,000 for an hour of AGIPD-1M) than a call takes arguments.
 */
export function largestBlock(bounds: number[]): number {
  let m = 0;
  for (let i = 1; i < bounds.length; i++) m = Math.max(m, bounds[i] - bounds[i - 1]);
  return m;
}

/** blockBounds of frames sorted by train, all at once. */
export function blockBounds(trainId: ArrayLike<number>, nMod: number): number[] {
  const b = new BlockBounder(nMod);
  for (let f = 0; f < trainId.length; f++) b.push(trainId[f]);
  return b.end();
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
  beam?: BeamLookup;
  constructor(
    readonly parts: LocalisePart[],
    readonly moduleList: number[],
    readonly g: Geometry,
    readonly opt: LocaliseOptions,
    readonly where: ReturnType<typeof positioner>,
  ) {
    this.nMod = moduleList.length;
  }

  /**
   * The records of frames in the bounds' blocks, as stages 1-4 left them: bounds from frame 0, increasing.
   * The merged frames' ids come from the parts' id spill files (`mergedBlocks`), a block at a time.
   */
  *raw(bounds: number[]): Generator<FrameBlock> {
    const { parts, nMod, moduleList } = this;
    const nA = this.g.nAsics;
    const hb = headerBytes(nA);
    const streams = parts.map((p) => new SpillStream(p.spill));
    // The typed tables are allocated once for the largest block and reused (zeroed) for every block: a
    // block's tables are valid until the next block is taken. Fresh ones per block (~0.5 kB per frame)
    // were garbage the GC let pile up for tens of MB over a long run.
    const cap = largestBlock(bounds);
    const k = nMod * nA;
    const tables = {
      trainId: new Float64Array(cap),
      pulseId: new Float64Array(cap),
      frameLit: new Uint8Array(cap),
      litPixels: new Uint32Array(cap * k),
      litIntensity: new Float32Array(cap * k),
      unmaskedPixels: new Uint32Array(cap * k),
      filteredLit: new Uint32Array(cap * k),
      asicLit: new Uint8Array(cap * k),
      score: new Float32Array(cap),
      nPeaks: new Uint32Array(cap),
    };
    try {
      // A part's next record belongs to the next merged frame of the block it holds (`within`).
      for (const { f0, f1, ids, within } of mergedBlocks(parts, bounds, tables)) {
        boundHeap();
        const n = f1 - f0;
        const per: FrameTables = {
          ...ids,
          frameLit: tables.frameLit.subarray(0, n).fill(0),
          litPixels: tables.litPixels.subarray(0, n * k).fill(0),
          litIntensity: tables.litIntensity.subarray(0, n * k).fill(0),
          unmaskedPixels: tables.unmaskedPixels.subarray(0, n * k).fill(0),
          filteredLit: tables.filteredLit.subarray(0, n * k).fill(0),
          asicLit: tables.asicLit.subarray(0, n * k).fill(0),
          score: tables.score.subarray(0, n).fill(0),
          nPeaks: tables.nPeaks.subarray(0, n).fill(0),
          peaks: Array.from({ length: n }, () => [] as FramePeak[]),
        };
        const allPeaks: FramePeak[][] = Array.from({ length: n }, () => []);
        let m0 = 0;
        parts.forEach((p, pi) => {
          const pm = p.modules.length;
          for (const f of within(pi)) {
            for (let j = 0; j < pm; j++) {
              const h = streams[pi].take(hb);
              const u = new Uint32Array(h.buffer, h.byteOffset, 2 + 4 * nA);
              const dst = (f * nMod + m0 + j) * nA;
              per.litPixels.set(u.subarray(2, 2 + nA), dst);
              per.litIntensity.set(new Float32Array(h.buffer, h.byteOffset + (2 + nA) * 4, nA), dst);
              per.unmaskedPixels.set(u.subarray(2 + 2 * nA, 2 + 3 * nA), dst);
              per.filteredLit.set(u.subarray(2 + 3 * nA, 2 + 4 * nA), dst);
              per.nPeaks[f] += u[0];
              // The header's view is valid until the next take.
              const stored = u[1];
              if (stored === 0) continue;
              const pk = streams[pi].take(stored * PEAK_BYTES);
              const d = new Float64Array(pk.buffer, pk.byteOffset, (stored * PEAK_BYTES) / 8);
              for (let k = 0; k < stored; k++) {
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
 * the REDU writer reads them once more (`frameBlocks`). In memory: nothing per frame (the merged frames'
 * ids are streamed from the parts' id files in every pass, `MergedIds`); per train its frame and lit-frame
 * counts (summary.json), per block its bound; per module the ROI persistence counts (4 bytes per pixel) and
 * hot pixels.
 */
export function combine(run: Run, parts: LocalisePart[], opt: LocaliseOptions, t0: number): LocaliseResult {
  const det = run.detector(opt.detector);
  const g = geometry(det.type);
  const nA = g.nAsics;
  const moduleList = parts.flatMap((p) => p.modules);
  const nMod = moduleList.length;
  const notes = [...run.warnings().map((w) => `warning: ${w}`), ...new Set(parts.flatMap((p) => p.notes))];
  for (const p of parts) for (const f of [p.spill, p.ids]) ownSpill(f);
  // The merged frames counted per train and cut into blocks in one pass over the parts' id files: nothing
  // per frame.
  const bounder = new BlockBounder(nMod);
  const { frames: nF, trains: trainFrames } = countMerged(parts, (t) => bounder.push(t));
  const bounds = bounder.end();
  const recorded = parts.flatMap((p) => p.recorded);
  const hot = parts.flatMap((p) => p.hot);
  const files = parts.flatMap((p) => p.files);
  const bytesRead = parts.reduce((a, p) => a + p.bytesRead, 0);
  const backend = parts.find((p) => p.backend.name !== "none")?.backend ?? parts[0].backend;
  const layout = loadLayout(opt.geometry, det.type);
  const stream = new FrameStream(parts, moduleList, g, opt, positioner(layout, det.type));

  // Stage 5, adaptive mode: the threshold from every frame's score (a first pass over the records), exact
  // and in bounded memory: the scores go to a spill file of their own (4 bytes a frame), read twice.
  if (opt.mode === "adaptive") stream.threshold = streamedThreshold(stream, bounds, opt.snr);

  // The beam: frames that saw an X-ray pulse (the lit-frame finder); combined with the images.
  let beam: BeamLookup | undefined;
  if (opt.litFrom !== "images") {
    // Streamed: the trains of a block annotated as the block is read (memory independent of the run).
    const ann = streamBeam(run, {
      detector: det.name,
      sase: opt.sase,
      repRate: opt.repRate,
      referenceFrame: opt.referenceFrame,
    });
    if (ann.trainsWithBunchPattern > 0) {
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
  // Frames with signal but no pulse: the first MAX_LISTED_ANOMALIES listed, all counted (a misread bunch
  // pattern makes every hit one).
  const anomalies: { trainId: number; pulseId: number }[] = [];
  let anomalyCount = 0;
  // Per train (summary.json): its frames (the counting pass's) and lit frames; t: the train of frame f.
  const perTrain = { ...trainFrames, litFrames: trainFrames.frames.map(() => 0) };
  let litCount = 0, t = 0;
  for (const blk of stream.classified(bounds)) {
    const per = blk.per;
    for (const a of blk.anomalies) if (anomalyCount++ < MAX_LISTED_ANOMALIES) anomalies.push(a);
    for (let f = 0; f < blk.f1 - blk.f0; f++) {
      while (t + 1 < perTrain.trainId.length && perTrain.trainId[t] !== per.trainId[f]) t++;
      perTrain.litFrames[t] += per.frameLit[f];
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
  if (anomalyCount) {
    const listed = anomalyCount > anomalies.length ? ` (the first ${anomalies.length} listed)` : "";
    notes.push(
      `${anomalyCount} frames with signal in the images but no X-ray pulse: kept (anomalies)${listed}`,
    );
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
  // Trains as inspect counts them: every train of the run's index in the range, empty ones included.
  const trains = run.trainIds.filter((t) =>
    (opt.firstTrain === undefined || t >= opt.firstTrain) &&
    (opt.lastTrain === undefined || t <= opt.lastTrain)
  ).length;
  let all: FrameTables | undefined;
  let columns: Pick<FrameTables, "trainId" | "pulseId" | "frameLit" | "score"> | undefined;
  let disposed = false;
  const frameBlocks = function* (b: number[]): Generator<FrameBlock> {
    if (disposed) throw new Error("localise result: per-frame records already removed (dispose)");
    yield* stream.classified(b);
  };
  /** trainId, pulseId, frameLit and score of every frame, made on first access (21 bytes a frame). */
  const frameColumns = () => {
    if (columns) return columns;
    const c = {
      trainId: new Float64Array(nF),
      pulseId: new Float64Array(nF),
      frameLit: new Uint8Array(nF),
      score: new Float32Array(nF),
    };
    for (const { f0, per } of frameBlocks(bounds)) {
      for (const key of ["trainId", "pulseId", "frameLit", "score"] as const) c[key].set(per[key], f0);
    }
    return (columns = c);
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
    litFrames: litCount,
    modules,
    selectedFiles: modules.filter((m) => m.selected).flatMap((m) => m.files),
    timing: {
      seconds,
      bytesRead,
      gbPerSecond: bytesRead / seconds / 1e9,
      framesPerSecond: nF / seconds,
    },
    get trainId() {
      return frameColumns().trainId;
    },
    get pulseId() {
      return frameColumns().pulseId;
    },
    get frameLit() {
      return frameColumns().frameLit;
    },
    get score() {
      return frameColumns().score;
    },
    perTrain,
    blockBounds: () => bounds,
    frameBlocks,
    get perFrame() {
      if (!all) { for (const blk of frameBlocks([0, nF])) all = blk.per; }
      return all!;
    },
    dispose() {
      disposed = true;
      for (const p of parts) for (const f of [p.spill, p.ids]) removeSpill(f);
    },
    memory: {
      get frameBytes() {
        return columns ? nF * (8 + 8 + 1 + 4) : 0;
      },
      trainBytes: 3 * 8 * perTrain.trainId.length + 8 * bounds.length,
      accumulatorBytes: (persist?.reduce((a, c) => a + c.byteLength, 0) ?? 0) +
        hot.reduce((a, h) => a + h.byteLength, 0),
      blockModuleFrames: largestBlock(bounds) * nMod,
      spillFiles: parts.flatMap((p) => [p.spill, p.ids]),
    },
    nAsics: nA,
    geometry: g,
    layout: layout.source,
    beam,
    anomalies,
    anomalyCount,
  };
}

/**
 * The adaptive classifier's threshold over every frame's score (adaptiveThresholdStreamed): one pass over the
 * records writes the scores to a spill file, read back twice in blocks; the file is removed after.
 */
function streamedThreshold(stream: FrameStream, bounds: number[], snr: number): number {
  const out = new SpillWriter(4, "scores");
  let file: string | undefined;
  try {
    for (const blk of stream.raw(bounds)) {
      frameScores(blk.per, stream.nMod, stream.g.nAsics);
      out.append(new Uint8Array(blk.per.score.buffer, blk.per.score.byteOffset, blk.per.score.byteLength));
    }
    file = out.close();
    const frames = bounds[bounds.length - 1];
    const buf = new Float32Array(SCORE_BLOCK);
    return adaptiveThresholdStreamed(function* () {
      const r = new SpillReader(file!, 4);
      try {
        for (let f = 0; f < frames; f += SCORE_BLOCK) {
          const n = Math.min(SCORE_BLOCK, frames - f);
          r.readInto(new Uint8Array(buf.buffer, 0, 4 * n));
          yield buf.subarray(0, n);
        }
      } finally {
        r.close();
      }
    }, snr);
  } finally {
    if (file === undefined) file = out.close();
    fs.rmSync(file, { force: true });
  }
}

/** Scores read at a time from their spill file (64 kB). */
const SCORE_BLOCK = 16384;

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
