/**
 * The model of the localise report (src/report/report.ts writes the page): what the page shows, built from a
 * localise result or output directory (see the spec there).
 */
import { Buffer } from "node:buffer";
import { type DetectorType, type Geometry, geometry } from "../exdf/detectors.ts";
import { FrameReader } from "../exdf/frames.ts";
import { firstLine } from "../exdf/h5.ts";
import * as fs from "node:fs";
import { adaptiveThresholdStreamed } from "../localise/classify.ts";
import { SpillReader, SpillWriter } from "../framework/spill.ts";
import type { FramePeak, LocaliseResult } from "../localise/result.ts";
import { summaryJson } from "../localise/output.ts";
import { Run } from "../exdf/run.ts";
import { type ColourScale, encodePng, moduleImage } from "./png.ts";
import { type Assembly, assembly, GAP, newCanvas, placeModule } from "./assembly.ts";
import { defaultLayout, loadLayout } from "../exdf/geometry.ts";

export type ReportSummary = ReturnType<typeof summaryJson>;

export interface ReportOptions {
  /** Lit sample frames shown (default 4). */
  litFrames?: number;
  /** Dark sample frames shown (default 4). */
  darkFrames?: number;
  /** Points of the per-train plot at most; longer runs are binned (default 500). */
  maxTrainPoints?: number;
  /** Image pixels of one sample frame, all modules together, at most (default 2^19). */
  framePixels?: number;
  /** File name in dir (default report.html). */
  fileName?: string;
  /** Told what the report could not show (run not found, frames missing, ...); also listed in the page. */
  onNote?: (note: string) => void;
}

export const DEFAULTS: Required<Omit<ReportOptions, "onNote">> = {
  litFrames: 4,
  darkFrames: 4,
  maxTrainPoints: 500,
  framePixels: 2 ** 19,
  fileName: "report.html",
};

/** What a report was made of (the report command prints it with --json). */
export interface ReportInfo {
  path: string;
  bytes: number;
  samples: { kind: "lit" | "dark"; trainId: number; pulseId: number; images: boolean }[];
  notes: string[];
}

// ---------------------------------------------------------------------------------------------------------
// The model the page is drawn from

/** Consecutive trains binned into one point of the per-train plot. */
export interface TrainPoints {
  firstTrain: number[];
  lastTrain: number[];
  trains: number[];
  frames: number[];
  lit: number[];
  /** Lowest and highest lit fraction of a train in the bin. */
  minFraction: number[];
  maxFraction: number[];
}

export interface Histogram {
  /** framePeaks: peaks per frame (peaks mode); asicFraction: lit fraction of each ASIC;
   * frameFraction: lit fraction of each frame, the adaptive classifier's score. */
  quantity: "framePeaks" | "asicFraction" | "frameFraction";
  /** What is counted: ASICs or frames. */
  unit: "ASICs" | "frames";
  /** Bin k holds values in [edges[k], edges[k+1]); values of 0 go to the zero bin. */
  edges: number[];
  zero: { lit: number; dark: number };
  lit: number[];
  dark: number[];
  /** Entries counted (ASICs with valid pixels; frames with valid pixels). */
  total: { lit: number; dark: number };
  /** The classifier's threshold on this quantity (minPeaks, or the adaptive threshold). */
  threshold: number;
  /** Entries at or above the threshold (peaks mode: >= minPeaks; adaptive frames: > threshold); NaN unknown. */
  above: { lit: number; dark: number };
}

export interface SampleFrame {
  kind: "lit" | "dark";
  /** L1, L2, ..., D1, ... */
  label: string;
  /** Index among the run's frames (sorted by trainId, pulseId). */
  frame: number;
  trainId: number;
  pulseId: number;
  nPeaks: number;
  /** The stored peak table of the frame (the brightest maxPeaks). */
  peaks: FramePeak[];
  /** modules x ASICs */
  asicLit: Uint8Array;
  /** Per module (summary.detector.modules order): "present", "absent" (not recorded), or null (no image). */
  images: ("present" | "absent" | null)[];
  /** The assembled detector image (report-geometry.ts) as a PNG data URI; null without images. */
  assembled: string | null;
}

export interface ReportModel {
  summary: ReportSummary;
  geometry: Geometry;
  nAsics: number;
  trains: TrainPoints;
  /** Trains per point of the per-train plot (1: not binned). */
  trainsPerPoint: number;
  /** Per ASIC: the classifier's quantity. */
  hist: Histogram;
  /** Adaptive mode: the frames' lit fractions (the score the threshold applies to). */
  scoreHist?: Histogram;
  samples: SampleFrame[];
  scale: ColourScale;
  /** The assembled view: canvas size and transform of the layout (report-geometry.ts). */
  assembly: Assembly;
  /** Things the reader should know about the report itself (run not found, ...). */
  notes: string[];
  generated: string;
}

/** A block of consecutive frames [start, start + n) as the report reads them (arrays valid until the next). */
export interface ReportBlock {
  start: number;
  n: number;
  trainId: Float64Array;
  pulseId: Float64Array;
  frameLit: Uint8Array;
  nPeaks: Uint32Array;
  /** Per frame x module x ASIC (with `tables`; else possibly empty). */
  litPixels: Uint32Array;
  unmasked: Uint32Array;
}

/**
 * The per-frame tables the report needs, however stored, read in blocks of frames each time they are asked for:
 * nothing per frame in memory.
 */
export interface PerFrameSource {
  nFrames: number;
  /** The frames in order, in blocks; `tables` false: the ids, frameLit and nPeaks are enough. */
  blocks(tables: boolean): Iterable<ReportBlock>;
  /** Called with the frames whose peaks and ASIC flags will be asked for (one pass over a stream). */
  prepare?(frames: number[]): void;
  peaks(frame: number): FramePeak[];
  asicLit(frame: number): Uint8Array;
  close(): void;
}

/**
 * A localise result as a source, streamed from its spill files in blocks of whole trains (blockBounds):
 * nothing per frame in memory but the sample frames' peaks and ASIC flags (`prepare`).
 */
export function resultSource(r: LocaliseResult): PerFrameSource {
  const k = r.detector.modules.length * r.nAsics;
  const bounds = r.blockBounds();
  const kept = new Map<number, { peaks: FramePeak[]; asicLit: Uint8Array }>();
  const kept1 = (f: number) => {
    const x = kept.get(f);
    if (!x) throw new Error(`report: frame ${f} was not prepared`);
    return x;
  };
  return {
    nFrames: r.frames,
    *blocks() {
      for (const { f0, f1, per } of r.frameBlocks(bounds)) {
        yield {
          start: f0,
          n: f1 - f0,
          trainId: per.trainId,
          pulseId: per.pulseId,
          frameLit: per.frameLit,
          nPeaks: per.nPeaks,
          litPixels: per.litPixels,
          unmasked: per.unmaskedPixels,
        };
      }
    },
    prepare(frames) {
      const want = new Set(frames.filter((f) => !kept.has(f)));
      if (!want.size) return;
      for (const { f0, f1, per } of r.frameBlocks(bounds)) {
        for (let f = f0; f < f1; f++) {
          if (!want.has(f)) continue;
          kept.set(f, {
            peaks: per.peaks[f - f0],
            asicLit: per.asicLit.slice((f - f0) * k, (f - f0 + 1) * k),
          });
        }
      }
    },
    peaks: (f) => kept1(f).peaks,
    asicLit: (f) => kept1(f).asicLit,
    close() {},
  };
}

// ---------------------------------------------------------------------------------------------------------
// Statistics

/** Per train (in order) its ID, frames and lit frames, binned to at most maxPoints points. */
function trainPoints(
  { ids, frames, lit }: { ids: number[]; frames: number[]; lit: number[] },
  maxPoints: number,
): { points: TrainPoints; perPoint: number } {
  const perPoint = Math.max(1, Math.ceil(ids.length / Math.max(1, maxPoints)));
  const pts: TrainPoints = {
    firstTrain: [],
    lastTrain: [],
    trains: [],
    frames: [],
    lit: [],
    minFraction: [],
    maxFraction: [],
  };
  for (let i = 0; i < ids.length; i += perPoint) {
    const j = Math.min(ids.length, i + perPoint);
    let n = 0, l = 0, lo = Infinity, hi = -Infinity;
    for (let k = i; k < j; k++) {
      n += frames[k];
      l += lit[k];
      const x = lit[k] / frames[k];
      lo = Math.min(lo, x);
      hi = Math.max(hi, x);
    }
    pts.firstTrain.push(ids[i]);
    pts.lastTrain.push(ids[j - 1]);
    pts.trains.push(j - i);
    pts.frames.push(n);
    pts.lit.push(l);
    pts.minFraction.push(lo);
    pts.maxFraction.push(hi);
  }
  return { points: pts, perPoint };
}

/** Log bin edges, 4 per octave: counts 1..max (integer edges), or fractions 1/max..1. */
function histEdges(kind: "count" | "fraction", max: number): number[] {
  const edges: number[] = [];
  for (let k = 0; k <= Math.ceil(Math.log2(max) * 4) + 1; k++) {
    const x = 2 ** (k / 4);
    if (kind === "count") {
      const e = Math.ceil(x - 1e-9);
      if (edges[edges.length - 1] !== e) edges.push(e);
      if (e > max) break;
    } else {
      edges.push(x / max);
      if (x > max) break;
    }
  }
  return edges;
}

function binOf(edges: number[], v: number): number {
  let lo = 0, hi = edges.length - 1; // edges[lo] <= v < edges[hi]
  if (v < edges[0]) return 0;
  if (v >= edges[hi]) return hi - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (edges[mid] <= v) lo = mid;
    else hi = mid;
  }
  return lo;
}

function emptyHist(quantity: Histogram["quantity"], edges: number[], threshold: number): Histogram {
  return {
    quantity,
    unit: quantity === "asicFraction" ? "ASICs" : "frames",
    edges,
    zero: { lit: 0, dark: 0 },
    lit: new Array(edges.length - 1).fill(0),
    dark: new Array(edges.length - 1).fill(0),
    total: { lit: 0, dark: 0 },
    threshold,
    above: { lit: 0, dark: 0 },
  };
}

function addTo(h: Histogram, lit: "lit" | "dark", v: number): void {
  h.total[lit]++;
  if (v === 0) h.zero[lit]++;
  else h[lit][binOf(h.edges, v)]++;
}

/** The first pass (ids, frameLit, nPeaks): per train its frames and lit frames, the most peaks, lit and dark. */
function scan(src: PerFrameSource): {
  trains: { ids: number[]; frames: number[]; lit: number[] };
  maxPeaks: number;
  lit: number;
  dark: number;
} {
  const ids: number[] = [], frames: number[] = [], lit: number[] = [];
  let maxPeaks = 1, nLit = 0, nDark = 0;
  for (const b of src.blocks(false)) {
    for (let i = 0; i < b.n; i++) {
      const t = b.trainId[i];
      if (ids.length === 0 || ids[ids.length - 1] !== t) {
        ids.push(t);
        frames.push(0);
        lit.push(0);
      }
      frames[frames.length - 1]++;
      lit[lit.length - 1] += b.frameLit[i] ? 1 : 0;
      maxPeaks = Math.max(maxPeaks, b.nPeaks[i]);
      if (b.frameLit[i] === 1) nLit++;
      else nDark++;
    }
  }
  return { trains: { ids, frames, lit }, maxPeaks, lit: nLit, dark: nDark };
}

/** Ranks of up to n picks spread evenly over `count` items: all of them, or item floor((k + 0.5) count / n). */
function spreadRanks(count: number, n: number): number[] {
  if (count <= n) return Array.from({ length: count }, (_, k) => k);
  return Array.from({ length: n }, (_, k) => Math.floor(((k + 0.5) * count) / n));
}

/** A sample frame as the second pass finds it. */
interface Pick {
  f: number;
  trainId: number;
  pulseId: number;
  nPeaks: number;
}

/**
 * The second pass (and, in adaptive mode, passes over the frames' scores in a spill file): the histogram of the
 * classifier's per-ASIC quantity for lit and dark frames; in adaptive mode also the frames' scores (float32,
 * as localise computes them) with their threshold (adaptiveThresholdStreamed: localise's exact value); the
 * sample frames, spread evenly over the lit and over the dark frames.
 */
function histogramsAndSamples(
  src: PerFrameSource,
  summary: ReportSummary,
  g: Geometry,
  nMod: number,
  counts: { maxPeaks: number; lit: number; dark: number },
  picks: { lit: number; dark: number },
): { hist: Histogram; scoreHist?: Histogram; lit: Pick[]; dark: Pick[] } {
  const adaptive = summary.params.mode === "adaptive";
  const nA = g.nAsics;
  const asicPx = g.asicSs * g.asicFs;
  const h = adaptive
    ? emptyHist("asicFraction", histEdges("fraction", asicPx), NaN)
    : emptyHist("framePeaks", histEdges("count", Math.max(2, counts.maxPeaks)), summary.params.minPeaks);
  const want = { lit: spreadRanks(counts.lit, picks.lit), dark: spreadRanks(counts.dark, picks.dark) };
  const out = { lit: [] as Pick[], dark: [] as Pick[] };
  const seen = { lit: 0, dark: 0 };
  // Adaptive: per frame its score and lit flag, (score, lit) as float32 pairs.
  const spill = adaptive ? new SpillWriter(8, "report-scores") : undefined;
  let spillPath: string | undefined;
  try {
    let pairs = new Float32Array(0);
    for (const b of src.blocks(true)) {
      if (spill && pairs.length < 2 * b.n) pairs = new Float32Array(2 * b.n);
      for (let i = 0; i < b.n; i++) {
        const f = b.start + i;
        const lit = b.frameLit[i] ? "lit" : "dark";
        const kind = b.frameLit[i] === 1 ? "lit" : "dark";
        if (want[kind][out[kind].length] === seen[kind]++) {
          out[kind].push({ f, trainId: b.trainId[i], pulseId: b.pulseId[i], nPeaks: b.nPeaks[i] });
        }
        let sumLit = 0, sumValid = 0;
        for (let k = i * nMod * nA; k < (i + 1) * nMod * nA; k++) {
          const valid = b.unmasked[k];
          sumLit += b.litPixels[k];
          sumValid += valid;
          if (valid === 0 || !adaptive) continue;
          addTo(h, lit, b.litPixels[k] / valid);
        }
        if (spill) {
          pairs[2 * i] = sumValid > 0 ? sumLit / sumValid : NaN;
          pairs[2 * i + 1] = b.frameLit[i] ? 1 : 0;
        } else if (sumValid > 0) {
          const v = b.nPeaks[i];
          if (v >= h.threshold) h.above[lit]++;
          addTo(h, lit, v);
        }
      }
      spill?.append(new Uint8Array(pairs.buffer, 0, 8 * b.n));
    }
    if (!spill) return { hist: h, ...out };
    spillPath = spill.close();
    const frames = spill.records;
    // The frames' scores and lit flags from the spill file, a block at a time.
    const read = function* (): Generator<Float32Array> {
      const r = new SpillReader(spillPath!, 8);
      try {
        const buf = new Float32Array(2 * SCORE_BLOCK);
        for (let at = 0; at < frames; at += SCORE_BLOCK) {
          const n = Math.min(SCORE_BLOCK, frames - at);
          r.readInto(new Uint8Array(buf.buffer, 0, 8 * n));
          yield buf.subarray(0, 2 * n);
        }
      } finally {
        r.close();
      }
    };
    const threshold = adaptiveThresholdStreamed(function* () {
      for (const p of read()) yield p.filter((_, j) => j % 2 === 0);
    }, summary.params.snr);
    h.threshold = threshold;
    h.above = { lit: NaN, dark: NaN };
    const sh = emptyHist("frameFraction", histEdges("fraction", 2 ** 20), threshold);
    for (const p of read()) {
      for (let j = 0; j < p.length; j += 2) {
        const score = p[j];
        if (!Number.isFinite(score)) continue;
        const lit = p[j + 1] ? "lit" : "dark";
        if (score > threshold) sh.above[lit]++;
        addTo(sh, lit, score);
      }
    }
    return { hist: h, scoreHist: sh, ...out };
  } finally {
    if (spill && !spillPath) spillPath = spill.close();
    if (spillPath) fs.rmSync(spillPath, { force: true });
  }
}

/** Frames' scores read from the spill file at a time (512 kB). */
const SCORE_BLOCK = 1 << 16;

// ---------------------------------------------------------------------------------------------------------
// Sample frames' images

/** Max-pooling factor: a module's long side at most 256 image pixels, one frame at most framePixels. */
export function poolFor(g: Geometry, nModules: number, framePixels: number): number {
  let p = 1;
  while (Math.max(g.moduleSs, g.moduleFs) / p > 256) p *= 2;
  while (nModules * Math.ceil(g.moduleSs / p) * Math.ceil(g.moduleFs / p) > framePixels && p < 64) p *= 2;
  return p;
}

/** Index of (trainId, pulseId) among frames sorted by trainId then pulseId; -1 when absent. */
function findFrame(t: Float64Array, p: Float64Array, trainId: number, pulseId: number): number {
  let lo = 0, hi = t.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (t[mid] < trainId || (t[mid] === trainId && p[mid] < pulseId)) lo = mid + 1;
    else hi = mid;
  }
  return lo < t.length && t[lo] === trainId && p[lo] === pulseId ? lo : -1;
}

/** Read the sample frames from the run, fix the colour scale over them, and render each module image. */
async function sampleImages(
  runPath: string | undefined,
  summary: ReportSummary,
  g: Geometry,
  samples: SampleFrame[],
  asm: Assembly,
  notes: string[],
): Promise<ColourScale> {
  const threshold = summary.params.threshold;
  const scale: ColourScale = { lo: threshold > 0 ? threshold : 0.5, hi: 0 };
  scale.hi = scale.lo * 10;
  if (samples.length === 0) return scale;
  if (!runPath) {
    notes.push("no run given: sample frames shown without images");
    return scale;
  }
  let run: Run;
  try {
    run = await Run.open(runPath);
  } catch (e) {
    notes.push(`cannot open the run (${firstLine(e)}): sample frames shown without images`);
    return scale;
  }
  try {
    const det = run.detector(summary.detector.name);
    const mods = summary.detector.modules;
    const reader = new FrameReader(det, {
      modules: mods,
      firstTrain: summary.params.firstTrain,
      lastTrain: summary.params.lastTrain,
      mask: true,
      batchBytes: g.pixels * 8,
    });
    const hot = summary.modules.map((m) => {
      const h = new Uint8Array(g.pixels);
      for (const [ss, fs] of m.hotPixels) h[ss * g.moduleFs + fs] = 1;
      return h;
    });
    const ids = reader.frameIds;
    const at = samples.map((s) => findFrame(ids.trainId, ids.pulseId, s.trainId, s.pulseId));
    samples.forEach((s, i) => {
      if (at[i] < 0) notes.push(`frame train ${s.trainId} pulse ${s.pulseId} is not in the run: no image`);
    });
    // Pass 1: the colour scale's top: the 99.9th percentile of the lit values of the lit sample frames
    // (log-binned), at least ten times the threshold.
    const logBins = new Float64Array(1200); // 100 bins per decade over 12 decades above lo
    let nAbove = 0;
    for (let i = 0; i < samples.length; i++) {
      if (at[i] < 0 || samples[i].kind !== "lit") continue;
      const b = reader.read(at[i], 1);
      b.modules.forEach((m, mi) => {
        for (let p = 0; p < g.pixels; p++) {
          const v = m.data[p];
          if (!(v > scale.lo) || (m.mask && m.mask[p] !== 0) || hot[mi][p]) continue;
          logBins[Math.min(logBins.length - 1, Math.floor(100 * Math.log10(v / scale.lo)))]++;
          nAbove++;
        }
      });
    }
    if (nAbove > 0) {
      let acc = 0, k = 0;
      for (; k < logBins.length; k++) {
        acc += logBins[k];
        if (acc >= 0.999 * nAbove) break;
      }
      scale.hi = Math.max(scale.hi, scale.lo * 10 ** ((k + 1) / 100));
    }
    // Pass 2: the images.
    for (let i = 0; i < samples.length; i++) {
      if (at[i] < 0) continue;
      const b = reader.read(at[i], 1);
      const canvas = newCanvas(asm);
      samples[i].images = b.modules.map((m, mi) => {
        if (!m.present[0]) return "absent";
        const img = moduleImage(m.data, g.moduleSs, g.moduleFs, scale, 1, m.mask, hot[mi]);
        placeModule(asm, canvas, mods[mi], img);
        return "present";
      });
      samples[i].assembled = `data:image/png;base64,${
        Buffer.from(encodePng(canvas, GAP)).toString("base64")
      }`;
    }
  } catch (e) {
    notes.push(`cannot read the sample frames from the run (${firstLine(e)})`);
  } finally {
    run.close();
  }
  return scale;
}

// ---------------------------------------------------------------------------------------------------------
// Building and writing

/**
 * The layout of the report: the `.geom` file localise used (summary.json params.geometry), else the built-in
 * layout of the detector type; a file that cannot be read now falls back to the built-in one, with a note.
 */
function reportLayout(summary: ReportSummary, notes: string[]) {
  const type = summary.detector.type as DetectorType;
  const file = (summary.params as { geometry?: string }).geometry;
  if (file) {
    try {
      return loadLayout(file, type);
    } catch (e) {
      notes.push(`geometry ${file} not readable (${firstLine(e)}): the built-in layout drawn instead`);
    }
  }
  return defaultLayout(type);
}

export async function buildModel(
  src: PerFrameSource,
  summary: ReportSummary,
  runPath: string | undefined,
  o: typeof DEFAULTS,
  notes: string[],
): Promise<ReportModel> {
  const g = geometry(summary.detector.type as DetectorType);
  const nMod = summary.detector.modules.length;
  const counts = scan(src);
  const { points, perPoint } = trainPoints(counts.trains, o.maxTrainPoints);
  const { hist, scoreHist, lit, dark } = histogramsAndSamples(src, summary, g, nMod, counts, {
    lit: o.litFrames,
    dark: o.darkFrames,
  });
  src.prepare?.([...lit, ...dark].map((p) => p.f));
  const samples: SampleFrame[] = [
    ...lit.map((p, i) => ({ p, kind: "lit" as const, label: `L${i + 1}` })),
    ...dark.map((p, i) => ({ p, kind: "dark" as const, label: `D${i + 1}` })),
  ].map(({ p, kind, label }) => ({
    kind,
    label,
    frame: p.f,
    trainId: p.trainId,
    pulseId: p.pulseId,
    nPeaks: p.nPeaks,
    peaks: src.peaks(p.f),
    asicLit: src.asicLit(p.f),
    images: summary.detector.modules.map(() => null),
    assembled: null,
  }));
  const asm = assembly(reportLayout(summary, notes), o.framePixels);
  const scale = await sampleImages(runPath, summary, g, samples, asm, notes);
  return {
    summary,
    geometry: g,
    nAsics: g.nAsics,
    trains: points,
    trainsPerPoint: perPoint,
    hist,
    scoreHist,
    samples,
    scale,
    assembly: asm,
    notes,
    generated: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
  };
}
