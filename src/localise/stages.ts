/**
 * Signal localisation stages: the backend interface, the parameters, and the plain-TypeScript CPU
 * reference. The WebGPU backend (webgpu.ts, shaders/*.wgsl) follows the same spec.
 *
 * ## Stage spec
 *
 * Input per call: one module's batch of frames (ModuleBatch): `data` is nFrames x ss x fs float32
 * (frame-major, then ss, then fs), `mask` the same shape (0 = good, absent = all good), `hot` one byte
 * per module pixel (1 = hot, absent = none hot). Pixel p = ss * moduleFs + fs; ASIC numbering as in
 * detectors.ts: asic = floor(ss / asicSs) * asicCols + floor(fs / asicFs).
 *
 * Stage 1 (lit pixels): valid = finite(value) && (no mask || mask == 0); lit = valid && value > threshold.
 *   Per frame x ASIC: litPixels (lit count), litIntensity (sum of the values of lit pixels, float32),
 *   unmaskedPixels (valid count). Hot pixels still count in stage 1 (it mirrors EuXFEL's lit-pixel
 *   counter).
 * Stage 2 (hot pixels, a pre-pass over all of a module's frames): counts[p] += 1 for every frame where p
 *   is lit by the stage-1 rule; hot = counts[p] > hotFraction * nFrames (hotPixels()).
 * Stage 3 (noise filter): L = lit && !hot. A pixel survives when L and (the number of its 8 neighbours
 *   with L is >= `neighbours`, or value >= `strong`). Neighbours are taken within the module image,
 *   across ASIC seams; out-of-image neighbours count as not lit. filteredLit = survivors per frame x ASIC.
 * Stage 4 (connected components): 8-connectivity over the survivors of each module frame (components
 *   span ASIC seams, never frames). Per component: area (pixel count), box [ss0, fs0, ss1, fs1)
 *   half-open, intensity = sum of values, centroid ss = sum(v * ss) / intensity (fs likewise), max value.
 *   Peaks = components with minArea <= area <= maxArea and intensity >= minIntensity (float32 compare;
 *   a few coincident background photons make a 3-pixel component of 3-5 photons, a Bragg spot tens or
 *   more). nPeaks[frame] counts all of them; peaks[frame]
 *   keeps at most maxPeaks, the brightest: sorted by intensity descending, ties by box ss0, then fs0,
 *   then (a refinement: unique) by the component's first pixel in raster order.
 *   Component labels (tests only): the label of a surviving pixel is the module-frame index
 *   (ss * moduleFs + fs) of its component's first pixel in raster order, i.e. the smallest index in the
 *   component; pixels that do not survive have NO_LABEL.
 *
 * Stage 0 (background mu, noise sigma, candidate threshold thr per frame x cell): cells are radius bins of
 * params.bgBinWidth pixels when the batch has `radius` (radialBackgroundFrameCpu), else 16 x 16 tiles
 * (backgroundFrameCpu); cellsOf gives each pixel's cell. Stages 1-4 read mu and thr of the pixel's cell.
 *
 * Comparisons are made in float32, as on the GPU: value > fround(threshold), value >= fround(strong).
 *
 * Floats: the CPU reference accumulates every float sum (litIntensity, intensity, sum(v*ss), sum(v*fs))
 * in float64 and rounds to float32 at the end (centroids: the float64 quotient, rounded). The GPU sums in
 * float32 in a scheduling-dependent order, so floats agree within ~1e-5 relative; integers are exact.
 */
import type { Geometry } from "../exdf/detectors.ts";

export interface LocaliseParams {
  /**
   * Stage 1: a valid pixel is lit when value > threshold (photons). Stages 2-4 (the ADC threshold): a
   * pixel is a candidate when value - mu > max(threshold, minSnr * sigma) (mu, sigma: the background of its
   * stage-0 cell, a radius bin or a 16 x 16 tile; see cellsOf).
   */
  threshold: number;
  /** Candidates need value - mu > minSnr * sigma; 0 = no background (mu = sigma = 0: value > threshold). */
  minSnr: number;
  /** Stage 0: clipping iterations and the clip (values >= mu + bgClip * sigma leave the next iteration). */
  bgIterations: number;
  bgClip: number;
  /**
   * Stage 0 per radius bin (peakfinder8's background) when the batch has `radius` (a layout gives each
   * pixel's radius): the width of the bins in pixels of radius; 0 = the 16 x 16 tiles (geometry-free).
   */
  bgBinWidth: number;
  /**
   * Smallest peak SNR: intensity / sqrt(sum over its pixels of (thr / minSnr)^2), i.e. of the noise
   * sigma floored at threshold / minSnr (a noise-free background still has a finite SNR); with a
   * background only (minSnr > 0).
   */
  minPeakSnr: number;
  /** A pixel lit in more than this fraction of the module's frames is hot. */
  hotFraction: number;
  /** A lit pixel survives the noise filter with >= this many of its 8 neighbours lit ... */
  neighbours: number;
  /** ... or with value >= strong (photons). */
  strong: number;
  /** Smallest peak area (pixels). */
  minArea: number;
  /** Largest peak area (pixels). */
  maxArea: number;
  /** Smallest background-subtracted integrated intensity of a peak (photons). */
  minIntensity: number;
  /** Peaks kept per frame (per module here; the caller merges modules). */
  maxPeaks: number;
}

export const DEFAULT_PARAMS: LocaliseParams = Object.freeze({
  threshold: 0.7,
  minSnr: 3.5,
  bgIterations: 4,
  bgClip: 5,
  bgBinWidth: 4,
  minPeakSnr: 9,
  hotFraction: 0.5,
  neighbours: 0,
  strong: 5,
  minArea: 1,
  maxArea: 10000,
  minIntensity: 9,
  maxPeaks: 256,
});

export interface ModuleBatch {
  geometry: Geometry;
  nFrames: number;
  /** nFrames * pixels, frame-major, then ss, then fs. */
  data: Float32Array;
  /** Same length as data; 0 = good; absent = all good. */
  mask?: Uint32Array;
  /** geometry.pixels; 1 = hot pixel, excluded from stages 3-4. */
  hot?: Uint8Array;
  /**
   * geometry.pixels: each pixel's distance from the beam in pixels (NaN: on no panel), from the detector
   * layout; with params.bgBinWidth > 0 stage 0 works per radius bin instead of per tile.
   */
  radius?: Float32Array;
}

export interface Peak {
  /** [ss0, fs0, ss1, fs1), half-open. */
  box: [number, number, number, number];
  area: number;
  /** Background-subtracted integrated intensity: sum of (value - mu) over the peak's pixels. */
  intensity: number;
  /** Centroid weighted by value - mu. */
  ss: number;
  fs: number;
  /** Largest value (not subtracted). */
  max: number;
  /** intensity / sqrt(sum of (thr / minSnr)^2 over the peak's pixels); 0 without a background (minSnr = 0). */
  snr: number;
}

export interface BatchResult {
  /** nFrames * nAsics (stage 1). */
  litPixels: Uint32Array;
  /** nFrames * nAsics (stage 1: sum of lit values). */
  litIntensity: Float32Array;
  /** nFrames * nAsics (stage 1: valid pixels). */
  unmaskedPixels: Uint32Array;
  /** nFrames * nAsics (stage 3 survivors). */
  filteredLit: Uint32Array;
  /** nFrames: components with minArea <= area <= maxArea (all of them, before the capacity cut). */
  nPeaks: Uint32Array;
  /** Per frame, at most maxPeaks, brightest first (see the spec above). */
  peaks: Peak[][];
}

export interface LocaliseBackend {
  readonly name: "cpu" | "webgpu";
  /** e.g. "cpu (1 thread)" or the GPU adapter description. */
  readonly adapter: string;
  /** Stage 2 pre-pass: add 1 to counts[pixel] for every frame where the pixel is lit by the stage-1 rule. */
  accumulateLitCounts(batch: ModuleBatch, counts: Uint32Array): Promise<void>;
  /**
   * Stages 1, 3, 4 on one module batch. At least two calls may be in flight at once (the caller starts
   * the next module's upload before awaiting the previous result).
   */
  process(batch: ModuleBatch): Promise<BatchResult>;
  dispose(): void;
}

/** Side of the square background tiles of stage 0 (pixels); every ASIC side is a multiple of it. */
export const TILE = 16;
const TILE_SHIFT = Math.log2(TILE);

/** Background tiles per module image: (moduleSs / TILE) x (moduleFs / TILE), row-major. */
export function tilesOf(g: Geometry): number {
  return (g.moduleSs / TILE) * (g.moduleFs / TILE);
}

/** Stage-0 output for frames x tiles: background mu, noise sigma, candidate threshold t (float32). */
export interface Background {
  mu: Float32Array;
  sigma: Float32Array;
  thr: Float32Array;
}

/** Stage-0 output for nFrames x `cells` (tiles by default). */
export function newBackground(g: Geometry, nFrames: number, cells = tilesOf(g)): Background {
  const n = nFrames * cells;
  return { mu: new Float32Array(n), sigma: new Float32Array(n), thr: new Float32Array(n) };
}

/**
 * The cells of stage 0: each pixel's cell, and the number of cells. Tiles: cell = tile of the pixel
 * ((ss / 16) * (moduleFs / 16) + fs / 16). Radius bins (batch.radius given and params.bgBinWidth > 0):
 * cell = floor(radius / bgBinWidth) - floor(rmin / bgBinWidth), rmin the smallest finite radius of the
 * module; pixels with a non-finite radius share one extra last cell.
 */
export interface Cells {
  cell: Uint32Array;
  n: number;
  radial: boolean;
}

const tileCellCache = new Map<string, Cells>();
const radialCellCache = new WeakMap<Float32Array, Map<number, Cells>>();

export function cellsOf(batch: ModuleBatch, params: LocaliseParams): Cells {
  const g = batch.geometry;
  const w = params.bgBinWidth;
  if (batch.radius && w > 0) {
    let m = radialCellCache.get(batch.radius);
    if (!m) radialCellCache.set(batch.radius, m = new Map());
    let c = m.get(w);
    if (!c) m.set(w, c = radialCells(batch.radius, w, g.pixels));
    return c;
  }
  const key = `${g.moduleSs}x${g.moduleFs}`;
  let c = tileCellCache.get(key);
  if (!c) {
    const cell = new Uint32Array(g.pixels);
    const tFs = g.moduleFs / TILE;
    for (let p = 0; p < g.pixels; p++) {
      const ss = Math.floor(p / g.moduleFs), fs = p - ss * g.moduleFs;
      cell[p] = (ss >> TILE_SHIFT) * tFs + (fs >> TILE_SHIFT);
    }
    tileCellCache.set(key, c = { cell, n: tilesOf(g), radial: false });
  }
  return c;
}

/**
 * The pixels of each cell as one array (the GPU's segmented reduction over radius bins): n + 1 starts,
 * then the pixels of cell 0, 1, ... in raster order (cell c: entries n + 1 + start[c] .. n + 1 +
 * start[c + 1]).
 */
export function cellList(cells: Cells): Uint32Array {
  const cached = cellListCache.get(cells);
  if (cached) return cached;
  const N = cells.n, P = cells.cell.length;
  const out = new Uint32Array(N + 1 + P);
  for (let p = 0; p < P; p++) out[cells.cell[p] + 1]++;
  for (let c = 0; c < N; c++) out[c + 1] += out[c];
  const fill = out.slice(0, N);
  for (let p = 0; p < P; p++) out[N + 1 + fill[cells.cell[p]]++] = p;
  cellListCache.set(cells, out);
  return out;
}
const cellListCache = new WeakMap<Cells, Uint32Array>();

/**
 * The raster order of a module cut into runs of pixels of one cell within one ASIC row segment (the
 * loops of the CPU reference keep a run's mu and thr in locals): run r ends before pixel end[r] (it
 * starts where run r - 1 ends, or at 0) and has cell cell[r]; the runs of ASIC row segment i
 * (ss * asicCols + col) are seg[i] .. seg[i + 1].
 */
interface Runs {
  end: Int32Array;
  cell: Int32Array;
  seg: Int32Array;
}

export function runsOf(cells: Cells, g: Geometry): Runs {
  const cached = runsCache.get(cells);
  if (cached) return cached;
  const { moduleSs: nss, moduleFs: nfs, asicFs } = g;
  const cols = nfs / asicFs;
  const end: number[] = [], cell: number[] = [];
  const seg = new Int32Array(nss * cols + 1);
  for (let ss = 0; ss < nss; ss++) {
    for (let col = 0; col < cols; col++) {
      seg[ss * cols + col] = end.length;
      const p0 = ss * nfs + col * asicFs, p1 = p0 + asicFs;
      for (let p = p0; p < p1; p++) {
        if (p === p0 || cells.cell[p] !== cell[cell.length - 1]) {
          if (p !== p0) end.push(p);
          cell.push(cells.cell[p]);
        }
      }
      end.push(p1);
    }
  }
  seg[nss * cols] = end.length;
  const r = { end: Int32Array.from(end), cell: Int32Array.from(cell), seg };
  runsCache.set(cells, r);
  return r;
}
const runsCache = new WeakMap<Cells, Runs>();

let radialScratch = new Float64Array(0);
let radialFill = new Int32Array(0);
let zeros = new Uint32Array(0);
let radialSum = new Float64Array(0), radialSq = new Float64Array(0), radialMax = new Float64Array(0);

/** An all-zero mask of at least n pixels (the stand-in for an absent mask: no per-pixel presence test). */
function zeroMask(n: number): Uint32Array {
  if (zeros.length < n) zeros = new Uint32Array(n);
  return zeros;
}

function radialCells(radius: Float32Array, w: number, pixels: number): Cells {
  if (radius.length !== pixels) throw new RangeError(`radius has ${radius.length} values, need ${pixels}`);
  let lo = Infinity, hi = -Infinity, anyNaN = false;
  for (let p = 0; p < pixels; p++) {
    const r = radius[p];
    if (Number.isFinite(r)) {
      const b = Math.floor(r / w);
      if (b < lo) lo = b;
      if (b > hi) hi = b;
    } else anyNaN = true;
  }
  const nBins = hi >= lo ? hi - lo + 1 : 0;
  const cell = new Uint32Array(pixels);
  for (let p = 0; p < pixels; p++) {
    const r = radius[p];
    cell[p] = Number.isFinite(r) ? Math.floor(r / w) - lo : nBins;
  }
  return { cell, n: nBins + (anyNaN ? 1 : 0), radial: true };
}

/**
 * Stage 0 per radius bin on frame f (peakfinder8's background; cells from cellsOf, radial): the same
 * one-sided iterative clip as a tile's (backgroundFrameCpu), over the valid pixels of each bin of the
 * module, every bin iterating independently (a bin stops when it has no value left or the same count as
 * its previous iteration). Then thr = max(fround(threshold), fround(minSnr * s)), s the lower median of
 * the sigmas of the bin and its neighbours c - 1, c + 1 (those that exist; k = 2 or 3).
 */
export function radialBackgroundFrameCpu(
  batch: ModuleBatch,
  f: number,
  params: LocaliseParams,
  cells: Cells,
  out: Background,
  o: number,
): void {
  const g = batch.geometry;
  const N = cells.n;
  if (!(params.minSnr > 0)) {
    out.mu.fill(0, o, o + N);
    out.sigma.fill(0, o, o + N);
    out.thr.fill(Math.fround(params.threshold), o, o + N);
    return;
  }
  const { data, mask } = batch;
  const P = g.pixels;
  const base = f * P;
  // The valid values of each bin, contiguous and in raster order within the bin: one raster pass that
  // appends each value to its bin's segment (bins start at the cellList offsets), then the clip per bin.
  const list = cellList(cells);
  if (radialScratch.length < P) radialScratch = new Float64Array(P);
  if (radialFill.length < N) radialFill = new Int32Array(N);
  const vals = radialScratch, fill = radialFill;
  for (let c = 0; c < N; c++) fill[c] = list[c];
  // The same pass makes the clip's first iteration (limit +Infinity: every value, in the same order) and
  // each bin's largest value. Neighbouring pixels mostly share a bin: the current bin's write position,
  // sums and maximum stay in locals and go to the bin's slots when the pass enters another bin.
  if (radialSum.length < N) {
    radialSum = new Float64Array(N);
    radialSq = new Float64Array(N);
    radialMax = new Float64Array(N);
  }
  const S1 = radialSum, Q1 = radialSq, M1 = radialMax;
  S1.fill(0, 0, N);
  Q1.fill(0, 0, N);
  M1.fill(-Infinity, 0, N);
  const m = mask ?? zeroMask(P), mb = mask ? base : 0;
  const runs = runsOf(cells, g), runEnd = runs.end, runCell = runs.cell, nRuns = runEnd.length;
  let p = 0;
  for (let r = 0; r < nRuns; r++) {
    const c = runCell[r], pe = runEnd[r];
    let k = fill[c], S = S1[c], Q = Q1[c], mx = M1[c];
    for (; p < pe; p++) {
      const v = data[base + p];
      if (v - v === 0 && m[mb + p] === 0) {
        vals[k++] = v;
        S += v;
        Q += v * v;
        if (v > mx) mx = v;
      }
    }
    fill[c] = k;
    S1[c] = S;
    Q1[c] = Q;
    M1[c] = mx;
  }
  const mu = out.mu, sigma = out.sigma;
  for (let c = 0; c < N; c++) {
    clipStatsAfterFirst(vals, list[c], fill[c], S1[c], Q1[c], M1[c], params, clipped);
    mu[o + c] = clipped[0];
    sigma[o + c] = clipped[1];
  }
  const threshold = Math.fround(params.threshold), minSnr = Math.fround(params.minSnr);
  for (let c = 0; c < N; c++) {
    const a = out.sigma[o + c];
    let s = a;
    if (c > 0 && c + 1 < N) {
      const x = out.sigma[o + c - 1], y = out.sigma[o + c + 1];
      s = Math.max(Math.min(a, x), Math.min(Math.max(a, x), y)); // the median of three
    } else if (N > 1) {
      s = Math.min(a, out.sigma[o + (c > 0 ? c - 1 : c + 1)]); // the lower of two
    }
    out.thr[o + c] = Math.max(threshold, Math.fround(minSnr * s));
  }
}

/** The state of clipStats before its first iteration. */
const CLIP_START: ClipState = Object.freeze({ it: 0, mu: 0, sigma: 0, limit: Infinity, prevN: -1 });

/** clipStats resumed at iteration `it` after an iteration that gave mu, sigma, limit from prevN values. */
interface ClipState {
  it: number;
  mu: number;
  sigma: number;
  limit: number;
  prevN: number;
}

/** mu and sigma of clipStats, reused (stage 0 runs on one thread per worker). */
const clipped = new Float64Array(2);

/**
 * The one-sided iterative clip of stage 0, the same for a tile and a radius bin, over vals[k0, k1): limit =
 * +Infinity; bgIterations times, over the values v < limit: n = their count; stop when n = 0 or n is the
 * previous iteration's (the same values: nothing would change); mu = sum(v) / n, sigma = sqrt(sum(v^2) / n
 * - mu^2) (one pass in float64: exact enough at these magnitudes), limit = mu + bgClip * sigma. Writes
 * [mu, sigma] into out (0, 0 without values).
 */
function clipStats(
  vals: Float64Array,
  k0: number,
  k1: number,
  params: LocaliseParams,
  out: Float64Array,
  from: ClipState = CLIP_START,
): void {
  let mu = from.mu, sigma = from.sigma, limit = from.limit, prevN = from.prevN;
  const iterations = params.bgIterations, clip = params.bgClip;
  for (let it = from.it; it < iterations; it++) {
    let n = 0, S = 0, Q = 0;
    for (let k = k0; k < k1; k++) {
      const v = vals[k];
      if (v < limit) {
        n++;
        S += v;
        Q += v * v;
      }
    }
    if (n === 0 || n === prevN) break;
    prevN = n;
    mu = S / n;
    sigma = Math.sqrt(Math.max(0, Q / n - mu * mu));
    limit = mu + clip * sigma;
  }
  out[0] = mu;
  out[1] = sigma;
}

/**
 * clipStats over vals[k0, k1) given its first iteration (S, Q: the float64 sums of v and v^2 over all the
 * values in order; mx: the largest value): the same result. When mx < the first limit the second
 * iteration would keep every value (n = the previous n: stop), so it is skipped.
 */
function clipStatsAfterFirst(
  vals: Float64Array,
  k0: number,
  k1: number,
  S: number,
  Q: number,
  mx: number,
  params: LocaliseParams,
  out: Float64Array,
): void {
  const n = k1 - k0;
  if (!(params.bgIterations >= 1) || n === 0) {
    out[0] = 0;
    out[1] = 0;
    return;
  }
  const mu = S / n;
  const sigma = Math.sqrt(Math.max(0, Q / n - mu * mu));
  const limit = mu + params.bgClip * sigma;
  if (params.bgIterations < 2 || mx < limit) {
    out[0] = mu;
    out[1] = sigma;
    return;
  }
  clipStats(vals, k0, k1, params, out, { it: 1, mu, sigma, limit, prevN: n });
}

/**
 * Stage 0 on frame f of a batch: each tile's mu, sigma, thr (written at `o` + tile). The valid pixels of
 * the tile (finite, mask 0; hot pixels included: the clipping drops them like spots) enter a one-sided
 * iterative clip: limit = +Infinity; bgIterations times, over the valid values v < limit: n = their
 * count; if n = 0 stop; mu = sum(v) / n, sigma = sqrt(sum((v - mu)^2) / n) (float64 here, float32 in two
 * passes on the GPU), limit = mu + bgClip * sigma. (An iteration over the same values as the previous
 * one changes nothing: both stop there.) A tile without valid pixels has mu = sigma = 0.
 * Then (float32) mu = fround(mu), sigma = fround(sigma), and thr = max(fround(threshold),
 * fround(minSnr * s)) with s the lower median (element floor((k - 1) / 2) in ascending order) of the k
 * sigmas of the tile and its neighbours within the module (k = 4, 6 or 9): a spot spread over many
 * pixels raises the sigma of its own tile, not the median of its neighbourhood, while the noise of the
 * background varies smoothly.
 * With minSnr <= 0 there is no background: mu = sigma = 0, thr = fround(threshold).
 */
export function backgroundFrameCpu(
  batch: ModuleBatch,
  f: number,
  params: LocaliseParams,
  out: Background,
  o: number,
  scratch: Float64Array = new Float64Array(TILE * TILE),
): void {
  const g = batch.geometry;
  const nT = tilesOf(g), tFs = g.moduleFs / TILE, nfs = g.moduleFs;
  const threshold = Math.fround(params.threshold);
  if (!(params.minSnr > 0)) {
    out.mu.fill(0, o, o + nT);
    out.sigma.fill(0, o, o + nT);
    out.thr.fill(threshold, o, o + nT);
    return;
  }
  const { data, mask } = batch;
  const base = f * g.pixels;
  const vals = scratch;
  for (let t = 0; t < nT; t++) {
    const ss0 = Math.floor(t / tFs) * TILE, fs0 = (t % tFs) * TILE;
    let n0 = 0;
    for (let ss = ss0; ss < ss0 + TILE; ss++) {
      const row = base + ss * nfs;
      for (let fs = fs0; fs < fs0 + TILE; fs++) {
        const v = data[row + fs];
        if (v - v === 0 && (!mask || mask[row + fs] === 0)) vals[n0++] = v;
      }
    }
    clipStats(vals, 0, n0, params, clipped);
    out.mu[o + t] = clipped[0];
    out.sigma[o + t] = clipped[1];
  }
  // thr from the lower median of the sigmas of the tile and its (up to 8) neighbours in the module.
  const tSs = g.moduleSs / TILE;
  const nb = new Float32Array(9);
  const minSnr = Math.fround(params.minSnr);
  for (let t = 0; t < nT; t++) {
    const ts = Math.floor(t / tFs), tf = t % tFs;
    let k = 0;
    for (let y = Math.max(0, ts - 1); y <= Math.min(tSs - 1, ts + 1); y++) {
      for (let x = Math.max(0, tf - 1); x <= Math.min(tFs - 1, tf + 1); x++) {
        // Insertion into the sorted prefix.
        const v = out.sigma[o + y * tFs + x];
        let j = k++;
        while (j > 0 && nb[j - 1] > v) {
          nb[j] = nb[j - 1];
          j--;
        }
        nb[j] = v;
      }
    }
    out.thr[o + t] = Math.max(threshold, Math.fround(minSnr * nb[(k - 1) >> 1]));
  }
}

/** Stage 0 on every frame of a batch: frames x cells (cellsOf: tiles, or radius bins). */
export function backgroundCpu(batch: ModuleBatch, params: LocaliseParams): Background {
  checkBatch(batch);
  const cells = cellsOf(batch, params);
  const nT = cells.n;
  const out = newBackground(batch.geometry, batch.nFrames, nT);
  const scratch = new Float64Array(TILE * TILE);
  for (let f = 0; f < batch.nFrames; f++) {
    if (cells.radial) radialBackgroundFrameCpu(batch, f, params, cells, out, f * nT);
    else backgroundFrameCpu(batch, f, params, out, f * nT, scratch);
  }
  return out;
}

/** Label of a pixel that does not survive stage 3. */
export const NO_LABEL = 0xffffffff;

/** hot[p] = 1 where counts[p] > hotFraction * nFrames. */
export function hotPixels(counts: Uint32Array, nFrames: number, hotFraction: number): Uint8Array {
  const hot = new Uint8Array(counts.length);
  const limit = hotFraction * nFrames;
  for (let p = 0; p < counts.length; p++) hot[p] = counts[p] > limit ? 1 : 0;
  return hot;
}

/** Throws on a batch whose arrays do not match its geometry and frame count. */
export function checkBatch(batch: ModuleBatch): void {
  const g = batch.geometry;
  const n = batch.nFrames * g.pixels;
  if (!Number.isInteger(batch.nFrames) || batch.nFrames < 0) {
    throw new RangeError(`bad frame count ${batch.nFrames}`);
  }
  if (batch.data.length < n) throw new RangeError(`data has ${batch.data.length} values, need ${n}`);
  if (batch.mask && batch.mask.length < n) {
    throw new RangeError(`mask has ${batch.mask.length} values, need ${n}`);
  }
  if (batch.hot && batch.hot.length !== g.pixels) {
    throw new RangeError(`hot has ${batch.hot.length} values, need ${g.pixels}`);
  }
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
  /** Stage 0 of the current frame, and the clip's value list. */
  bg: Background;
  vals: Float64Array;
  /** Pixels with L (stage-3 input) and the survivors, in raster order. */
  litList: Int32Array;
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
  const pixels = g.pixels;
  if (old && old.pixels === pixels) return old;
  return {
    pixels,
    bg: newBackground(g, 1),
    vals: new Float64Array(TILE * TILE),
    var2: new Float64Array(pixels),
    l: new Uint8Array(pixels),
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
  let bg = out.bg, bo = out.bgOffset ?? 0;
  const cells = cellsOf(batch, params);
  const cell = cells.cell;
  if (!bg) {
    bo = 0;
    if (s.bg.mu.length < cells.n) s.bg = newBackground(g, 1, cells.n);
    bg = s.bg;
    if (cells.radial) radialBackgroundFrameCpu(batch, f, params, cells, bg, 0);
    else backgroundFrameCpu(batch, f, params, bg, 0, s.vals);
  }
  const bgMu = bg.mu, bgThr = bg.thr;
  const minSnr = params.minSnr > 0 ? params.minSnr : Infinity; // no background: var2 = 0, snr = 0

  // Stage 1, and the stage-3 input L (listed in raster order).
  const aLit = new Uint32Array(nAsics);
  const aValid = new Uint32Array(nAsics);
  const aSum = new Float64Array(nAsics);
  const litList = s.litList;
  let nLit = 0;
  // Absent mask / hot: all-zero stand-ins, so the loop has no per-pixel presence test.
  const m = mask ?? s.zeros32, mb = mask ? base : 0;
  const h = hot ?? s.zeros8;
  const runs = runsOf(cells, g), runEnd = runs.end, runCell = runs.cell, seg = runs.seg;
  const segCols = nfs / asicFs;
  for (let ss = 0; ss < nss; ss++) {
    const rowAsic = Math.floor(ss / asicSs) * asicCols;
    // One ASIC's segment of the row at a time: the counters stay in locals; within it, one run of
    // pixels of the same cell at a time: its mu and thr too.
    for (let col = 0; col < asicCols; col++) {
      const a = rowAsic + col;
      let valid = 0, lit = 0, sumA = 0;
      let p = ss * nfs + col * asicFs;
      const si = ss * segCols + col;
      for (let r = seg[si]; r < seg[si + 1]; r++) {
        const pe = runEnd[r], t = bo + runCell[r];
        const mu = bgMu[t], thr = bgThr[t];
        for (; p < pe; p++) {
          const v = data[base + p];
          // v === v && |v| < Infinity: finite (NaN fails the first, ±Infinity the second).
          if (v - v === 0 && m[mb + p] === 0) {
            valid++;
            // Branch-free (lit or not is noise-driven): adding +0 leaves the float64 sum unchanged.
            const isLit = v > threshold;
            lit += isLit ? 1 : 0;
            sumA += isLit ? v : 0;
            if (Math.fround(v - mu) > thr && h[p] === 0) {
              l[p] = 1;
              litList[nLit++] = p;
            }
          }
        }
      }
      aValid[a] += valid;
      aLit[a] += lit;
      aSum[a] += sumA;
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
  const survivors = s.survivors;
  let nSurv = 0;
  const need = params.neighbours;
  const strong = Math.fround(params.strong);
  const aFilt = new Uint32Array(nAsics);
  for (let k = 0; k < nLit; k++) {
    const p = litList[k];
    const ss = Math.floor(p / nfs);
    const fs = p - ss * nfs;
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
    const t = bo + cell[p];
    if (n >= need || Math.fround(data[base + p] - bgMu[t]) >= strong) {
      parent[p] = p;
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
    const v = data[base + p];
    const t = bo + cell[p];
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
      litPixels: res.litPixels,
      litIntensity: res.litIntensity,
      unmaskedPixels: res.unmaskedPixels,
      filteredLit: res.filteredLit,
      asicOffset: f * g.nAsics,
      labels: opts.labels?.subarray(f * g.pixels, (f + 1) * g.pixels),
      bg: opts.background,
      bgOffset: f * cellsOf(batch, params).n,
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
  const { cell, n: nT } = cells;
  // Stage 0 frame by frame into scratch (no frames x cells allocation) unless `background` is given.
  const sc = (sharedScratch = scratchFor(g, sharedScratch));
  if (!background && sc.bg.mu.length < nT) sc.bg = newBackground(g, 1, nT);
  const m = mask ?? zeroMask(P);
  for (let f = 0; f < batch.nFrames; f++) {
    const base = f * P, mb = mask ? base : 0;
    let bg: Background, o: number;
    if (background) {
      bg = background;
      o = f * nT;
    } else {
      bg = sc.bg;
      o = 0;
      if (cells.radial) radialBackgroundFrameCpu(batch, f, params, cells, bg, 0);
      else backgroundFrameCpu(batch, f, params, bg, 0, sc.vals);
    }
    const mu = bg.mu, thr = bg.thr;
    for (let p = 0; p < P; p++) {
      const v = data[base + p];
      const t = o + cell[p];
      // A NaN v fails the compare; an infinite one is not finite (v - v is NaN).
      if (v - v === 0 && Math.fround(v - mu[t]) > thr[t] && m[mb + p] === 0) counts[p]++;
    }
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
