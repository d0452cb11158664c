/** Stages 1-4 of localise (spec in spec.ts): lit pixels, hot pixels, noise filter, connected components; the CPU reference and the cpu backend. */
import type { Geometry } from "../exdf/detectors.ts";
import type { Background } from "./spec.ts";
import type { BatchResult } from "./spec.ts";
import type { LocaliseBackend } from "./spec.ts";
import type { LocaliseParams } from "./spec.ts";
import type { ModuleBatch } from "./spec.ts";
import type { Peak } from "./spec.ts";
import type { AsicSums } from "./background.ts";
import { backgroundFrameCpu } from "./background.ts";
import { cellsOf } from "./background.ts";
import { newBackground } from "./background.ts";
import { candidateCut } from "./background.ts";
import type { Candidates } from "./background.ts";
import { cellIndex } from "./background.ts";
import { zeroMask } from "./background.ts";
import { checkBatch } from "./spec.ts";

export { candidateCut };

/** Label of a pixel that does not survive stage 3. */
export const NO_LABEL = 0xffffffff;

/** hot[p] = 1 where counts[p] > hotFraction * nFrames. */
export function hotPixels(counts: Uint32Array, nFrames: number, hotFraction: number): Uint8Array {
  const hot = new Uint8Array(counts.length);
  const limit = hotFraction * nFrames;
  for (let p = 0; p < counts.length; p++) hot[p] = counts[p] > limit ? 1 : 0;
  return hot;
}

/**
 * The brightest-first order of peaks: intensity descending, then box ss0, fs0 ascending, then the
 * component's first pixel (`first`, module-frame index) ascending.
 */
export function sortAndCut<T extends { peak: Peak; first: number }>(items: T[], maxPeaks: number): Peak[] {
  items.sort((a, b) =>
    b.peak.intensity - a.peak.intensity || a.peak.box[0] - b.peak.box[0] || a.peak.box[1] - b.peak.box[1] ||
    a.first - b.first
  );
  const n = Math.min(items.length, Math.max(0, Math.floor(maxPeaks)));
  const out: Peak[] = new Array(n);
  for (let k = 0; k < n; k++) out[k] = items[k].peak;
  return out;
}

/** Per-process scratch space of the CPU reference, reused between frames (sized per geometry). */
interface Scratch {
  pixels: number;
  nAsics: number;
  /** Stage 1's per-ASIC sums of the current frame, and its survivors per ASIC (stage 3). */
  asic: AsicSums;
  aFilt: Uint32Array;
  /** Stage 3 input: lit && !hot. */
  l: Uint8Array;
  /** Union-find parent (module-frame index), -1 for pixels that do not survive. */
  parent: Int32Array;
  /** Component index of a root pixel. */
  comp: Int32Array;
  area: Int32Array;
  ss0: Int32Array;
  fs0: Int32Array;
  ss1: Int32Array;
  fs1: Int32Array;
  first: Int32Array;
  sum: Float64Array;
  sumSs: Float64Array;
  sumFs: Float64Array;
  max: Float64Array;
  var2: Float64Array;
  /** Each cell's candidate cut (cutsOf). */
  cut: Float64Array;
  /** Stage 1's candidates as the stage-0 pass lists them. */
  cand: Candidates;
  /** Per module row + 1: the counting sort of the candidates by row. */
  row: Int32Array;
  /** Stage 0 of the current frame. */
  bg: Background;
  /** Pixels with L (stage-3 input) and the survivors, in raster order; the cell and value of litList[k]. */
  litList: Int32Array;
  litCell: Int32Array;
  litVal: Float32Array;
  /** Index in litList of survivors[k]. */
  survK: Int32Array;
  survivors: Int32Array;
  /** All zero: the mask and hot map of a batch without them. */
  zeros32: Uint32Array;
  zeros8: Uint8Array;
}

/**
 * Scratch arrays are kept between frames: `l` is all 0 and `parent` all -1 between frames (each frame
 * resets only the pixels it set), so the passes after stage 1 visit the lit pixels only.
 */
function scratchFor(g: Geometry, old?: Scratch): Scratch {
  const pixels = g.pixels, nAsics = g.nAsics;
  if (old && old.pixels === pixels && old.nAsics === nAsics) return old;
  return {
    pixels,
    nAsics,
    asic: newAsicSums(nAsics),
    aFilt: new Uint32Array(nAsics),
    bg: newBackground(g, 1),
    cut: new Float64Array(0),
    cand: { list: new Int32Array(pixels), cell: new Int32Array(pixels), val: new Float32Array(pixels), n: 0 },
    litCell: new Int32Array(pixels),
    litVal: new Float32Array(pixels),
    survK: new Int32Array(pixels),
    var2: new Float64Array(pixels),
    l: new Uint8Array(pixels),
    row: new Int32Array(g.moduleSs + 1),
    litList: new Int32Array(pixels),
    zeros32: new Uint32Array(pixels),
    zeros8: new Uint8Array(pixels),
    survivors: new Int32Array(pixels),
    parent: new Int32Array(pixels).fill(-1),
    comp: new Int32Array(pixels),
    area: new Int32Array(pixels),
    ss0: new Int32Array(pixels),
    fs0: new Int32Array(pixels),
    ss1: new Int32Array(pixels),
    fs1: new Int32Array(pixels),
    first: new Int32Array(pixels),
    sum: new Float64Array(pixels),
    sumSs: new Float64Array(pixels),
    sumFs: new Float64Array(pixels),
    max: new Float64Array(pixels),
  };
}

function newAsicSums(nAsics: number): AsicSums {
  return { valid: new Uint32Array(nAsics), lit: new Uint32Array(nAsics), sum: new Float64Array(nAsics) };
}

/**
 * An entry of ModuleBatch.backgrounds as the cpu backend's pre-pass keeps it: stage 0 of the frame and,
 * when its stage-0 pass made them (minSnr > 0), stage 1's per-ASIC sums and candidates of the frame: all
 * that stages 1, 3 and 4 need (processKeptCpu: the main pass does not read the frame again).
 */
export type KeptBackground = Background & { asic?: AsicSums; cand?: Candidates };

/** candidateCut of cells o .. o + n - 1 of bg (mu, thr), at 0 .. n - 1 of the scratch's `cut`. */
function cutsOf(s: Scratch, mu: Float32Array, thr: Float32Array, o: number, n: number): Float64Array {
  if (s.cut.length < n) s.cut = new Float64Array(n);
  const cut = s.cut;
  for (let c = 0; c < n; c++) cut[c] = candidateCut(mu[o + c], thr[o + c]);
  return cut;
}

function find(parent: Int32Array, x: number): number {
  // Path halving.
  while (parent[x] !== x) {
    const gp = parent[parent[x]];
    parent[x] = gp;
    x = gp;
  }
  return x;
}

/** Link the roots of a and b, the larger index under the smaller: every root is its component's minimum. */
function union(parent: Int32Array, a: number, b: number): void {
  const ra = find(parent, a);
  const rb = find(parent, b);
  if (ra < rb) parent[rb] = ra;
  else if (rb < ra) parent[ra] = rb;
}

/** Output arrays of one frame, written by cpuFrame. */
interface FrameOut {
  litPixels?: Uint32Array;
  litIntensity?: Float32Array;
  unmaskedPixels?: Uint32Array;
  filteredLit?: Uint32Array;
  /** Offset of this frame's ASICs in the arrays above. */
  asicOffset: number;
  /** Component labels of this frame (NO_LABEL where not surviving). */
  labels?: Uint32Array;
  /** Stage 0 given (e.g. the GPU's): this frame's cells start at bgOffset; absent: computed here. */
  bg?: Background;
  bgOffset?: number;
}

/**
 * The CPU reference for stages 1, 3 and 4 on frame `f` of a batch; returns the frame's peak count and
 * peaks. Stage 1 outputs are written only when `out.litPixels` is given.
 */
function cpuFrame(
  batch: ModuleBatch,
  f: number,
  params: LocaliseParams,
  s: Scratch,
  out: FrameOut,
): { nPeaks: number; peaks: Peak[] } {
  const g = batch.geometry;
  const { moduleSs: nss, moduleFs: nfs, asicSs, asicFs, asicCols, nAsics, pixels } = g;
  const base = f * pixels;
  const data = batch.data;
  const mask = batch.mask;
  const hot = batch.hot;
  const threshold = Math.fround(params.threshold);
  const l = s.l;
  let bg: KeptBackground | undefined = out.bg, bo = out.bgOffset ?? 0;
  const cells = cellsOf(batch, params);
  const cell = cellIndex(cells);
  // Stage 1's per-ASIC sums: made by the stage-0 pass (radius bins), kept from the pre-pass's, or below.
  const A = s.asic;
  A.valid.fill(0);
  A.lit.fill(0);
  A.sum.fill(0);
  let counted = false, listed = false;
  if (!bg) {
    bo = 0;
    if (s.bg.mu.length < cells.n) s.bg = newBackground(g, 1, cells.n);
    bg = s.bg;
    listed = counted = backgroundFrameCpu(batch, f, params, cells, bg, 0, A, s.cand);
  } else if (bg.asic) {
    A.valid.set(bg.asic.valid);
    A.lit.set(bg.asic.lit);
    A.sum.set(bg.asic.sum);
    counted = true;
    listed = !!bg.cand;
  }
  const C = listed && bg.cand ? bg.cand : s.cand;
  const bgMu = bg.mu, bgThr = bg.thr;
  const minSnr = params.minSnr > 0 ? params.minSnr : Infinity; // no background: var2 = 0, snr = 0

  // Stage 1, and the stage-3 input L (listed in raster order).
  const aLit = A.lit, aValid = A.valid, aSum = A.sum;
  const litList = s.litList, litCell = s.litCell, litVal = s.litVal;
  let nLit = 0;
  // Absent mask / hot: all-zero stand-ins, so the loop has no per-pixel presence test.
  const m = mask ?? s.zeros32, mb = mask ? base : 0;
  const h = hot ?? s.zeros8;
  // Each pixel's cell, and each cell's candidate cut (candidateCut): most pixels fail the first compare
  // (v > cut; NaN fails it too), so most skip the rest. One lookup per pixel: no runs of one cell, whose
  // ends (~4 pixels apart with radius bins) the branch predictor misses.
  const ci = cell;
  const cut = listed ? s.cut : cutsOf(s, bgMu, bgThr, bo, cells.n);
  if (listed) {
    // The candidates listed by stage 0's pass (bin by bin): L = not hot, marked in l, and listed in raster
    // order (a counting sort by row, then each row's few by insertion).
    if (s.row.length < nss + 1) s.row = new Int32Array(nss + 1);
    const cl = C.list, cc = C.cell, cv = C.val, row = s.row;
    row.fill(0);
    for (let k = 0; k < C.n; k++) {
      const p = cl[k];
      if (h[p] === 0) {
        l[p] = 1;
        row[((p / nfs) | 0) + 1]++;
      }
    }
    for (let r = 0; r < nss; r++) row[r + 1] += row[r];
    nLit = row[nss];
    for (let k = 0; k < C.n; k++) {
      const p = cl[k];
      if (h[p] === 0) {
        const j = row[(p / nfs) | 0]++;
        litList[j] = p;
        litCell[j] = cc[k];
        litVal[j] = cv[k];
      }
    }
    // row[r] is now the end of row r: sort each row (a few pixels) by insertion.
    for (let r = 0, k0 = 0; r < nss; k0 = row[r++]) {
      for (let k = k0 + 1; k < row[r]; k++) {
        const p = litList[k], c = litCell[k], v = litVal[k];
        let j = k;
        for (; j > k0 && litList[j - 1] > p; j--) {
          litList[j] = litList[j - 1];
          litCell[j] = litCell[j - 1];
          litVal[j] = litVal[j - 1];
        }
        litList[j] = p;
        litCell[j] = c;
        litVal[j] = v;
      }
    }
  } else if (counted) {
    // Only L.
    for (let p = 0; p < pixels; p++) {
      const v = data[base + p], t = ci[p];
      if (
        v > cut[t] && Math.fround(v - bgMu[bo + t]) > bgThr[bo + t] && v - v === 0 && m[mb + p] === 0 &&
        h[p] === 0
      ) {
        l[p] = 1;
        litList[nLit] = p;
        litCell[nLit] = t;
        litVal[nLit++] = v;
      }
    }
  } else {
    for (let ss = 0; ss < nss; ss++) {
      const rowAsic = Math.floor(ss / asicSs) * asicCols;
      // One ASIC's segment of the row at a time: the counters stay in locals.
      for (let col = 0; col < asicCols; col++) {
        const a = rowAsic + col;
        let valid = 0, lit = 0, sumA = 0;
        const p0 = ss * nfs + col * asicFs, p1 = p0 + asicFs;
        for (let p = p0; p < p1; p++) {
          const v = data[base + p];
          // v === v && |v| < Infinity: finite (NaN fails the first, ±Infinity the second).
          if (v - v === 0 && m[mb + p] === 0) {
            valid++;
            // Branch-free (lit or not is noise-driven): adding +0 leaves the float64 sum unchanged.
            const isLit = v > threshold;
            lit += isLit ? 1 : 0;
            sumA += isLit ? v : 0;
            const t = ci[p];
            if (v > cut[t] && Math.fround(v - bgMu[bo + t]) > bgThr[bo + t] && h[p] === 0) {
              l[p] = 1;
              litList[nLit] = p;
              litCell[nLit] = t;
              litVal[nLit++] = v;
            }
          }
        }
        aValid[a] += valid;
        aLit[a] += lit;
        aSum[a] += sumA;
      }
    }
  }
  const o = out.asicOffset;
  if (out.litPixels) {
    for (let a = 0; a < nAsics; a++) {
      out.litPixels[o + a] = aLit[a];
      out.unmaskedPixels![o + a] = aValid[a];
      out.litIntensity![o + a] = aSum[a];
    }
  }

  // Stage 3: survivors get parent = self (the others stay -1).
  const parent = s.parent;
  const survivors = s.survivors, survK = s.survK;
  let nSurv = 0;
  const need = params.neighbours;
  const everyL = need <= 0; // n >= need for every pixel: no neighbours to count
  const strong = Math.fround(params.strong);
  const aFilt = s.aFilt;
  aFilt.fill(0);
  for (let k = 0; k < nLit; k++) {
    const p = litList[k];
    const ss = Math.floor(p / nfs);
    const fs = p - ss * nfs;
    if (everyL) {
      parent[p] = p;
      survK[nSurv] = k;
      survivors[nSurv++] = p;
      aFilt[Math.floor(ss / asicSs) * asicCols + Math.floor(fs / asicFs)]++;
      continue;
    }
    let n = 0;
    for (let dy = -1; dy <= 1; dy++) {
      const y = ss + dy;
      if (y < 0 || y >= nss) continue;
      for (let dx = -1; dx <= 1; dx++) {
        const x = fs + dx;
        if ((dx === 0 && dy === 0) || x < 0 || x >= nfs) continue;
        n += l[y * nfs + x];
      }
    }
    if (n >= need || Math.fround(litVal[k] - bgMu[bo + litCell[k]]) >= strong) {
      parent[p] = p;
      survK[nSurv] = k;
      survivors[nSurv++] = p;
      aFilt[Math.floor(ss / asicSs) * asicCols + Math.floor(fs / asicFs)]++;
    }
  }
  for (let k = 0; k < nLit; k++) l[litList[k]] = 0;
  if (out.filteredLit) { for (let a = 0; a < nAsics; a++) out.filteredLit[o + a] = aFilt[a]; }

  // Stage 4: sequential union-find over the earlier neighbours (left, up-left, up, up-right).
  for (let k = 0; k < nSurv; k++) {
    const p = survivors[k];
    const ss = Math.floor(p / nfs);
    const fs = p - ss * nfs;
    if (fs > 0 && parent[p - 1] >= 0) union(parent, p, p - 1);
    if (ss > 0) {
      const up = p - nfs;
      if (fs > 0 && parent[up - 1] >= 0) union(parent, p, up - 1);
      if (parent[up] >= 0) union(parent, p, up);
      if (fs + 1 < nfs && parent[up + 1] >= 0) union(parent, p, up + 1);
    }
  }

  // Per-component statistics in float64; a root is its component's first pixel in raster order.
  const { comp, area, ss0, fs0, ss1, fs1, first, sum, sumSs, sumFs, max, var2 } = s;
  let nComp = 0;
  const labels = out.labels;
  if (labels) labels.fill(NO_LABEL);
  for (let k = 0; k < nSurv; k++) {
    const p = survivors[k];
    const ss = Math.floor(p / nfs);
    const fs = p - ss * nfs;
    const r = find(parent, p);
    if (labels) labels[p] = r;
    const v = litVal[survK[k]];
    const t = bo + litCell[survK[k]];
    const d = Math.fround(v - bgMu[t]);
    let c: number;
    if (r === p) {
      c = nComp++;
      comp[p] = c;
      area[c] = 0;
      ss0[c] = ss;
      fs0[c] = fs;
      ss1[c] = ss + 1;
      fs1[c] = fs + 1;
      first[c] = p;
      sum[c] = 0;
      sumSs[c] = 0;
      sumFs[c] = 0;
      var2[c] = 0;
      max[c] = v;
    } else {
      c = comp[r];
    }
    area[c]++;
    if (fs < fs0[c]) fs0[c] = fs;
    if (fs + 1 > fs1[c]) fs1[c] = fs + 1;
    ss1[c] = ss + 1; // rows come in order
    sum[c] += d;
    sumSs[c] += d * ss;
    sumFs[c] += d * fs;
    const se = bgThr[t] / minSnr;
    var2[c] += se * se;
    if (v > max[c]) max[c] = v;
  }
  for (let k = 0; k < nSurv; k++) parent[survivors[k]] = -1;

  const found: { peak: Peak; first: number }[] = [];
  for (let c = 0; c < nComp; c++) {
    if (area[c] < params.minArea || area[c] > params.maxArea) continue;
    const intensity = Math.fround(sum[c]);
    if (!(intensity >= Math.fround(params.minIntensity))) continue;
    const snr = var2[c] > 0 ? Math.fround(sum[c] / Math.sqrt(var2[c])) : 0;
    if (params.minSnr > 0 && !(snr >= params.minPeakSnr)) continue;
    found.push({
      peak: {
        box: [ss0[c], fs0[c], ss1[c], fs1[c]],
        area: area[c],
        intensity,
        ss: Math.fround(sumSs[c] / sum[c]),
        fs: Math.fround(sumFs[c] / sum[c]),
        max: Math.fround(max[c]),
        snr,
      },
      first: first[c],
    });
  }
  return { nPeaks: found.length, peaks: sortAndCut(found, params.maxPeaks) };
}

/** An empty BatchResult for a batch of nFrames. */
export function emptyResult(g: Geometry, nFrames: number): BatchResult {
  const n = nFrames * g.nAsics;
  return {
    litPixels: new Uint32Array(n),
    litIntensity: new Float32Array(n),
    unmaskedPixels: new Uint32Array(n),
    filteredLit: new Uint32Array(n),
    nPeaks: new Uint32Array(nFrames),
    peaks: Array.from({ length: nFrames }, () => []),
  };
}

let sharedScratch: Scratch | undefined;

/** Where cpuFrame adds frame f's counters: the batch result's arrays at the frame's ASICs. */
function counters(res: BatchResult, f: number, g: Geometry) {
  const { litPixels, litIntensity, unmaskedPixels, filteredLit } = res;
  return { litPixels, litIntensity, unmaskedPixels, filteredLit, asicOffset: f * g.nAsics };
}

/** The CPU reference, synchronous: stages 1, 3, 4 on a batch; `labels` (nFrames * pixels) if asked for. */
export function processBatchCpu(
  batch: ModuleBatch,
  params: LocaliseParams,
  opts: { labels?: Uint32Array; background?: Background } = {},
): BatchResult {
  checkBatch(batch);
  const g = batch.geometry;
  const res = emptyResult(g, batch.nFrames);
  const s = (sharedScratch = scratchFor(g, sharedScratch));
  for (let f = 0; f < batch.nFrames; f++) {
    const r = cpuFrame(batch, f, params, s, {
      ...counters(res, f, g),
      labels: opts.labels?.subarray(f * g.pixels, (f + 1) * g.pixels),
      ...(opts.background
        ? { bg: opts.background, bgOffset: f * cellsOf(batch, params).n }
        : { bg: batch.backgrounds?.[f], bgOffset: 0 }),
    });
    res.nPeaks[f] = r.nPeaks;
    res.peaks[f] = r.peaks;
  }
  return res;
}

/**
 * Stages 1, 3, 4 of frames whose pre-pass kept stage 1's sums and candidates (KeptBackground with asic and
 * cand): the BatchResult of processBatchCpu on those frames, without their data.
 */
export function processKeptCpu(
  frames: KeptBackground[],
  geometry: Geometry,
  hot: Uint8Array | undefined,
  radius: Float32Array | undefined,
  params: LocaliseParams,
): BatchResult {
  const n = frames.length;
  const batch: ModuleBatch = { geometry, nFrames: n, data: new Float32Array(0), hot, radius };
  const res = emptyResult(geometry, n);
  const s = (sharedScratch = scratchFor(geometry, sharedScratch));
  for (let f = 0; f < n; f++) {
    if (!frames[f]?.asic || !frames[f].cand) {
      throw new Error("processKeptCpu: a frame without its candidates");
    }
    const r = cpuFrame(batch, f, params, s, {
      ...counters(res, f, geometry),
      bg: frames[f],
      bgOffset: 0,
    });
    res.nPeaks[f] = r.nPeaks;
    res.peaks[f] = r.peaks;
  }
  return res;
}

/** Stages 3-4 of one frame on the CPU (the GPU backend's fallback when a frame overflows its peak table). */
export function framePeaksCpu(
  batch: ModuleBatch,
  f: number,
  params: LocaliseParams,
  bg?: Background,
): { nPeaks: number; peaks: Peak[] } {
  const s = (sharedScratch = scratchFor(batch.geometry, sharedScratch));
  return cpuFrame(batch, f, params, s, { asicOffset: 0, bg, bgOffset: f * cellsOf(batch, params).n });
}

/** Component labels of every frame of a batch (the spec's label convention), for tests. */
export function labelsCpu(batch: ModuleBatch, params: LocaliseParams): Uint32Array {
  const labels = new Uint32Array(batch.nFrames * batch.geometry.pixels);
  processBatchCpu(batch, params, { labels });
  return labels;
}

/**
 * Stage-2 pre-pass on the CPU: counts[p] += 1 for every frame where p is a candidate (valid and
 * value - mu > thr of its tile, stage 0 of that frame: `background` if given, else computed here).
 */
export function accumulateLitCountsCpu(
  batch: ModuleBatch,
  counts: Uint32Array,
  params: LocaliseParams,
  background?: Background,
): void {
  checkBatch(batch);
  const g = batch.geometry;
  const P = g.pixels;
  if (counts.length !== P) throw new RangeError(`counts has ${counts.length} values, need ${P}`);
  const { data, mask } = batch;
  const cells = cellsOf(batch, params);
  const nT = cells.n;
  // Stage 0 frame by frame into scratch (no frames x cells allocation) unless `background` is given.
  const sc = (sharedScratch = scratchFor(g, sharedScratch));
  if (!background && sc.bg.mu.length < nT) sc.bg = newBackground(g, 1, nT);
  const m = mask ?? zeroMask(P);
  const ci = cellIndex(cells);
  for (let f = 0; f < batch.nFrames; f++) {
    const base = f * P, mb = mask ? base : 0;
    let bg: Background, o: number;
    const keep = batch.backgrounds;
    if (background) {
      bg = background;
      o = f * nT;
    } else if (keep?.[f]) {
      bg = keep[f]!;
      o = 0;
    } else {
      // Keep this frame's stage 0 for the main pass (batch.backgrounds): written there directly; the
      // stage-0 pass makes stage 1's per-ASIC sums too, kept with it.
      const kept: KeptBackground | undefined = keep ? newBackground(g, 1, nT) : undefined;
      bg = kept ?? sc.bg;
      o = 0;
      const asic = kept ? newAsicSums(g.nAsics) : undefined;
      const counted = backgroundFrameCpu(batch, f, params, cells, bg, 0, asic, sc.cand);
      if (kept) {
        if (counted) {
          kept.asic = asic;
          const c = sc.cand, n = c.n;
          kept.cand = { list: c.list.slice(0, n), cell: c.cell.slice(0, n), val: c.val.slice(0, n), n };
        }
        keep![f] = kept;
      }
      if (counted) {
        // The stage-0 pass listed the frame's candidates.
        const cl = sc.cand.list;
        for (let k = 0; k < sc.cand.n; k++) counts[cl[k]]++;
        continue;
      }
    }
    const mu = bg.mu, thr = bg.thr;
    // Each pixel's cell by lookup (as cpuFrame). A NaN v fails the first compare; an infinite one is not
    // finite (v - v is NaN).
    countCandidates(data, base, m, mb, ci, cutsOf(sc, mu, thr, o, nT), mu, thr, o, counts);
  }
}

/** counts[p]++ for each candidate p of the frame at `base` (its own function: V8 compiles it better). */
function countCandidates(
  data: Float32Array,
  base: number,
  m: Uint32Array,
  mb: number,
  ci: Int32Array,
  cut: Float64Array,
  mu: Float32Array,
  thr: Float32Array,
  o: number,
  counts: Uint32Array,
): void {
  for (let p = 0; p < ci.length; p++) {
    const v = data[base + p], t = ci[p];
    if (v > cut[t] && Math.fround(v - mu[o + t]) > thr[o + t] && v - v === 0 && m[mb + p] === 0) counts[p]++;
  }
}

/** The CPU backend: the reference above, one thread. */
export function createCpuBackend(params: LocaliseParams): LocaliseBackend {
  const p = { ...params };
  return {
    name: "cpu",
    adapter: "cpu (1 thread)",
    accumulateLitCounts(batch, counts) {
      accumulateLitCountsCpu(batch, counts, p);
      return Promise.resolve();
    },
    process(batch) {
      try {
        return Promise.resolve(processBatchCpu(batch, p));
      } catch (e) {
        return Promise.reject(e);
      }
    },
    dispose() {},
  };
}
