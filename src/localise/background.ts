/** Stage 0 of localise (spec in spec.ts): background mu, noise sigma and candidate threshold per frame and cell (radius bin or tile), CPU reference. */
import type { Geometry } from "../exdf/detectors.ts";
import type { LocaliseParams } from "./spec.ts";
import type { ModuleBatch } from "./spec.ts";
import { checkBatch } from "./spec.ts";
import type { Background } from "./spec.ts";

/** Side of the square background tiles of stage 0 (pixels); every ASIC side is a multiple of it. */
export const TILE = 16;
const TILE_SHIFT = Math.log2(TILE);

/** Background tiles per module image: (moduleSs / TILE) x (moduleFs / TILE), row-major. */
export function tilesOf(g: Geometry): number {
  return (g.moduleSs / TILE) * (g.moduleFs / TILE);
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

/** cells.cell as an Int32Array (V8 indexes with an int32 faster than with a uint32 that might not fit one). */
export function cellIndex(cells: Cells): Int32Array {
  let c = cellIndexCache.get(cells);
  if (!c) cellIndexCache.set(cells, c = Int32Array.from(cells.cell));
  return c;
}
const cellIndexCache = new WeakMap<Cells, Int32Array>();

/**
 * The cellList order as int32 arrays: start[c] .. start[c + 1] are the places of cell c's pixels, place[p]
 * the place of pixel p, pix[k] the pixel at place k (cell c's pixels in raster order).
 */
export function cellPlaces(cells: Cells): Places {
  let r = cellPlacesCache.get(cells);
  if (!r) {
    const list = cellList(cells), N = cells.n, P = cells.cell.length;
    // 16-bit places where they fit (every module of AGIPD, LPD, DSSC): half the memory traffic.
    const place = P <= 65536 ? new Uint16Array(P) : new Int32Array(P);
    for (let k = 0; k < P; k++) place[list[N + 1 + k]] = k;
    const pix = Int32Array.from(list.subarray(N + 1));
    cellPlacesCache.set(cells, r = { start: Int32Array.from(list.subarray(0, N + 1)), place, pix });
  }
  return r;
}
const cellPlacesCache = new WeakMap<Cells, Places>();
interface Places {
  start: Int32Array;
  place: Uint16Array | Int32Array;
  pix: Int32Array;
}

let radialScratch = new Float32Array(0);
let zeros = new Uint32Array(0);

/**
 * Stage 1's per-ASIC sums of one module frame (the loop of backgroundFrameCpu adds them): valid and
 * lit pixel counts, and the float64 sum of the lit values (each ASIC row segment summed in raster order,
 * then added to the ASIC's total: the order of stages.ts).
 */
export interface AsicSums {
  valid: Uint32Array;
  lit: Uint32Array;
  sum: Float64Array;
}

/** An all-zero mask of at least n pixels (the stand-in for an absent mask: no per-pixel presence test). */
export function zeroMask(n: number): Uint32Array {
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
 * Stage 0 on frame f of a batch: each cell's mu, sigma, thr (written at `o` + cell; cells from cellsOf:
 * radius bins, peakfinder8's background, or 16 x 16 tiles). The valid pixels of the cell (finite, mask 0;
 * hot pixels included: the clipping drops them like spots) enter a one-sided iterative clip: limit =
 * +Infinity; bgIterations times, over the valid values v < limit: n = their count; if n = 0 stop; mu =
 * sum(v) / n, sigma = sqrt(sum((v - mu)^2) / n) (float64 here, float32 on the GPU), limit = mu + bgClip *
 * sigma. (An iteration over the same values as the previous one changes nothing: both stop there.) A cell
 * without valid pixels has mu = sigma = 0. Every cell iterates on its own.
 * Then (float32) mu = fround(mu), sigma = fround(sigma), and thr = max(fround(threshold), fround(minSnr *
 * s)) with s the lower median (element floor((k - 1) / 2) in ascending order) of the k sigmas of the cell
 * and its neighbours: radius bins c - 1, c + 1 (those that exist; k = 2 or 3); a tile's neighbours within
 * the module (k = 4, 6 or 9): a spot spread over many pixels raises the sigma of its own tile, not the
 * median of its neighbourhood, while the noise of the background varies smoothly.
 * With minSnr <= 0 there is no background: mu = sigma = 0, thr = fround(threshold).
 * The same pass over the frame adds stage 1's per-ASIC sums of the frame to `asic` when given (it tests
 * every pixel's validity anyway), and with `cand` lists stage 1's candidates of the frame (cand.list:
 * pixels, cell by cell; cand.n); returns whether it did (false with minSnr <= 0: no pass).
 */
export function backgroundFrameCpu(
  batch: ModuleBatch,
  f: number,
  params: LocaliseParams,
  cells: Cells,
  out: Background,
  o: number,
  asic?: AsicSums,
  cand?: Candidates,
): boolean {
  const g = batch.geometry;
  const N = cells.n;
  if (!(params.minSnr > 0)) {
    out.mu.fill(0, o, o + N);
    out.sigma.fill(0, o, o + N);
    out.thr.fill(Math.fround(params.threshold), o, o + N);
    return false;
  }
  const { data, mask } = batch;
  const P = g.pixels;
  const base = f * P;
  // The values of each bin, contiguous and in raster order within the bin (bins start at the cellList
  // offsets): one raster pass writes each pixel's value to its place there (cellPlaces; an invalid pixel's
  // as NaN), then one pass per bin over its values makes the clip's first iteration (every valid value, in
  // that order) and the bin's largest value, then the clip's further iterations. The values are float32
  // (exactly: they are the data's), the sums float64. (A raster pass straight into each bin's sums would
  // keep a bin's sums in locals only over a run of pixels of one bin, ~4 pixels with 4-px rings: the
  // branch predictor misses each run's end.)
  const { start, place } = cellPlaces(cells);
  if (radialScratch.length < P) radialScratch = new Float32Array(P);
  const vals = radialScratch;
  const m = mask ?? zeroMask(P), mb = mask ? base : 0;
  // Stage 1 as in stages.ts: per ASIC row segment, local counters added to the ASIC's at its end.
  const threshold = Math.fround(params.threshold);
  const { moduleSs: nss, moduleFs: nfs, asicSs, asicFs } = g, cols = nfs / asicFs;
  const aValid = asic?.valid, aLit = asic?.lit, aSum = asic?.sum;
  for (let ss = 0; ss < nss; ss++) {
    const rowAsic = Math.floor(ss / asicSs) * cols;
    for (let col = 0; col < cols; col++) {
      let valid = 0, lit = 0, sumA = 0;
      const p0 = ss * nfs + col * asicFs, p1 = p0 + asicFs;
      for (let p = p0; p < p1; p++) {
        const v = data[base + p];
        if (v - v === 0 && m[mb + p] === 0) {
          vals[place[p]] = v;
          valid++;
          // Branch-free (lit or not is noise-driven): v * 0 is +-0 (v is finite), and adding +-0 leaves
          // the float64 sum unchanged (it starts at +0, never -0).
          const isLit = +(v > threshold);
          lit += isLit;
          sumA += v * isLit;
        } else vals[place[p]] = NaN;
      }
      if (aValid) {
        aValid[rowAsic + col] += valid;
        aLit![rowAsic + col] += lit;
        aSum![rowAsic + col] += sumA;
      }
    }
  }
  const mu = out.mu, sigma = out.sigma;
  if (frameTailV.length < P) {
    frameTailV = new Float32Array(P);
    frameTailK = new Int32Array(P);
  }
  if (binTail.length < N + 1) {
    binTail = new Int32Array(N + 1);
    binBound = new Float64Array(N);
  }
  const tailV = frameTailV, tailK = frameTailK;
  // The bound of the clip's split (clipStatsAfterFirst) made in the bin's first pass: the previous bin's
  // mu + TAIL_SIGMAS * sigma (neighbouring rings have nearly the same background; a bound above the
  // bin's limit costs the clip one more pass, nothing else). None for the first bin (+Infinity: no tail).
  // The tails (values and places) of all bins stay for the candidates below: bin c's are binTail[c] ..
  // binTail[c + 1], its bound binBound[c].
  let bound = Infinity, t = 0;
  for (let c = 0; c < N; c++) {
    // The bin's valid values (the NaN of an invalid pixel fails both compares): the split at the bound,
    // the sums of all and their maximum.
    const k0 = start[c], k1 = start[c + 1], t0 = t;
    // mx: the largest tail value, else the bound (above every value; clipStatsAfterFirst only compares it
    // with the first limit to skip an iteration that would keep every value).
    let S = 0, Q = 0, mx = bound, nB = 0, SB = 0, QB = 0;
    for (let k = k0; k < k1; k++) {
      const v = vals[k];
      if (v < bound) {
        nB++;
        SB += v;
        QB += v * v;
      } else if (v >= bound) {
        tailV[t] = v;
        tailK[t] = k;
        S += v;
        Q += v * v;
        if (v > mx || t === t0) mx = v;
        t++;
      }
    }
    S += SB;
    Q += QB;
    binTail[c] = t0;
    binBound[c] = bound;
    clipped[0] = S;
    clipped[1] = Q;
    clipped[2] = mx;
    clipped[3] = bound;
    clipped[4] = SB;
    clipped[5] = QB;
    clipStatsAfterFirst(vals, k0, k1, nB + t - t0, nB, tailV, t0, t, params, clipped);
    mu[o + c] = clipped[0];
    sigma[o + c] = clipped[1];
    bound = clipped[0] + TAIL_SIGMAS * clipped[1];
  }
  binTail[N] = t;
  if (cells.radial) radialThr(out, o, N, params);
  else tileThr(out, o, g, params);
  if (cand) {
    // Stage 1's candidates (valid, fround(v - mu) > thr), bin by bin from the values in place: first the
    // bin's cut (stages.ts candidateCut; NaN fails it), then the exact rule.
    // With cut >= the bin's split bound every candidate is in its tail (the values >= the bound): only the
    // tail is scanned.
    const pix = cellPlaces(cells).pix, list = cand.list, cCell = cand.cell, cVal = cand.val;
    let nc = 0;
    for (let c = 0; c < N; c++) {
      const muC = mu[o + c], thrC = out.thr[o + c];
      const cut = candidateCut(muC, thrC);
      if (cut >= binBound[c]) {
        for (let j = binTail[c], j1 = binTail[c + 1]; j < j1; j++) {
          const v = tailV[j];
          if (v > cut && Math.fround(v - muC) > thrC) {
            list[nc] = pix[tailK[j]];
            cCell[nc] = c;
            cVal[nc++] = v;
          }
        }
      } else {
        for (let k = start[c], k1 = start[c + 1]; k < k1; k++) {
          const v = vals[k];
          if (v > cut && Math.fround(v - muC) > thrC && v - v === 0) {
            list[nc] = pix[k];
            cCell[nc] = c;
            cVal[nc++] = v;
          }
        }
      }
    }
    cand.n = nc;
  }
  return true;
}

/** thr of radius bins: from the lower median of the sigmas of the bin and its neighbours c - 1, c + 1. */
function radialThr(out: Background, o: number, N: number, params: LocaliseParams): void {
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

const nb = new Float32Array(9);

/** thr of tiles: from the lower median of the sigmas of the tile and its (up to 8) neighbours in the module. */
function tileThr(out: Background, o: number, g: Geometry, params: LocaliseParams): void {
  const threshold = Math.fround(params.threshold), minSnr = Math.fround(params.minSnr);
  const nT = tilesOf(g), tFs = g.moduleFs / TILE, tSs = g.moduleSs / TILE;
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

/**
 * A value at or below candidateCut(mu, thr) is no candidate: fround(v - mu) > thr implies v > the cut (for
 * finite mu, thr: cut <= mu + thr - slack, the slack far above the rounding of v - mu, of the cut and of
 * fround; otherwise -Infinity, no cut). The loops test v > cut first (one compare for most pixels), then
 * the exact rule.
 */
export function candidateCut(mu: number, thr: number): number {
  const cut = mu + thr - ((Math.abs(mu) + Math.abs(thr)) * 1e-5 + 1e-30);
  return cut - cut === 0 ? cut : -Infinity;
}

/**
 * Stage 1's candidates of a frame as backgroundFrameCpu lists them, cell by cell: list[0 .. n) the pixels,
 * cell[k] and val[k] the cell and value of pixel list[k].
 */
export interface Candidates {
  list: Int32Array;
  cell: Int32Array;
  val: Float32Array;
  n: number;
}

/**
 * The float64 arguments and results of clipStatsAfterFirst, reused (stage 0 runs on one thread per worker):
 * passed as arguments, each bin's six doubles were boxed (~14 kB of garbage a module frame: 137 MB of the
 * main thread's sampled allocations over 8,000 module frames, 221 MB in all now against 336).
 */
const clipped = new Float64Array(6);

/**
 * Tail bound of the clip's later iterations, in sigmas above mu (of the iteration before the pass): about
 * 2 % of a bin's values lie above it, and the limits of the following iterations (mu + bgClip * sigma of
 * values mostly below it) rarely fall under it.
 */
const TAIL_SIGMAS = 2;
let tailScratch = new Float32Array(0);
let frameTailV = new Float32Array(0), frameTailK = new Int32Array(0);
let binTail = new Int32Array(0), binBound = new Float64Array(0);

/**
 * The clip of stage 0 (backgroundFrameCpu) over the n valid values of vals[k0, k1) (the others NaN), given
 * its first iteration (io[0] = S, io[1] = Q: the float64 sums of v and v^2 over all the valid values; io[2]
 * = mx: the largest value, or any bound above it) and a split of the values (below). When mx < the first
 * limit the second iteration would keep every value (n = the previous n: stop), so it is skipped. Writes
 * mu and sigma into io[0], io[1] (0, 0 without values).
 * The later iterations do not pass over every value each: a pass splits the values at a bound <= the
 * current limit (bound = min(limit, mu + TAIL_SIGMAS * sigma)) into base sums (count, sum, sum of squares
 * of the values < bound, in order) and a tail list (the values >= bound, in order); while limit >= bound,
 * an iteration's sums over the values v < limit are the base sums plus the tail's values < limit (the
 * same values: the float64 sums only reassociated). A limit below the bound makes a new pass. The caller
 * gives the first split, made in its pass: io[3] = bound, the base sums nB, io[4] = SB, io[5] = QB, and the
 * tail tail[t0, t1). The tail passes are branch-free (whether a value is below the limit is noise-driven): a value
 * left out adds +-0 to a sum (v * 0, v finite), which leaves it unchanged (sums start at +0, never -0).
 */
function clipStatsAfterFirst(
  vals: Float32Array,
  k0: number,
  k1: number,
  n: number,
  nB: number,
  tail: Float32Array,
  t0: number,
  t1: number,
  params: LocaliseParams,
  io: Float64Array,
): void {
  const iterations = params.bgIterations, clip = params.bgClip;
  if (!(iterations >= 1) || n === 0) {
    io[0] = 0;
    io[1] = 0;
    return;
  }
  const S = io[0], Q = io[1], mx = io[2];
  let bound = io[3], SB = io[4], QB = io[5];
  let mu = S / n;
  let sigma = Math.sqrt(Math.max(0, Q / n - mu * mu));
  let limit = mu + clip * sigma;
  if (iterations < 2 || mx < limit) {
    io[0] = mu;
    io[1] = sigma;
    return;
  }
  let prevN = n;
  for (let it = 1; it < iterations; it++) {
    if (!(limit >= bound)) {
      bound = Math.min(limit, mu + TAIL_SIGMAS * sigma);
      if (tailScratch.length < n) tailScratch = new Float32Array(Math.max(n, 2 * tailScratch.length));
      tail = tailScratch;
      nB = 0;
      SB = 0;
      QB = 0;
      let nT = 0;
      for (let k = k0; k < k1; k++) {
        const v = vals[k];
        if (v < bound) {
          nB++;
          SB += v;
          QB += v * v;
        } else if (v >= bound) tail[nT++] = v; // not NaN
      }
      t0 = 0;
      t1 = nT;
    }
    let m = nB, s = SB, q = QB;
    for (let j = t0; j < t1; j++) {
      const v = tail[j];
      const w = +(v < limit);
      const x = v * w;
      m += w;
      s += x;
      q += x * x;
    }
    if (m === 0 || m === prevN) break;
    prevN = m;
    mu = s / m;
    sigma = Math.sqrt(Math.max(0, q / m - mu * mu));
    limit = mu + clip * sigma;
  }
  io[0] = mu;
  io[1] = sigma;
}

/** Stage 0 on every frame of a batch: frames x cells (cellsOf: tiles, or radius bins). */
export function backgroundCpu(batch: ModuleBatch, params: LocaliseParams): Background {
  checkBatch(batch);
  const cells = cellsOf(batch, params);
  const nT = cells.n;
  const out = newBackground(batch.geometry, batch.nFrames, nT);
  for (let f = 0; f < batch.nFrames; f++) backgroundFrameCpu(batch, f, params, cells, out, f * nT);
  return out;
}
