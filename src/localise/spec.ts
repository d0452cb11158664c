/**
 * Signal localisation stages: the written spec, the parameters and the backend interface. The CPU reference
 * is background.ts (stage 0) and stages.ts (stages 1-4); the WebGPU backend (webgpu.ts, shaders/*.wgsl)
 * follows the same spec.
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
 * params.bgBinWidth pixels when the batch has `radius`, else 16 x 16 tiles (background.ts
 * backgroundFrameCpu); cellsOf gives each pixel's cell. Stages 1-4 read mu and thr of the pixel's cell.
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
  /**
   * Per frame of the batch: stage 0 of that frame (one frame's cells), or undefined. The cpu backend's
   * pre-pass fills the undefined entries with the stage 0 it computes; its `process` uses the defined
   * ones instead of computing stage 0 again (same values: stage 0 depends on the frame only); an entry may
   * also carry stage 1's per-ASIC sums of the frame (stages.ts KeptBackground). Other backends may ignore it.
   */
  backgrounds?: (Background | undefined)[];
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
  /**
   * Optional (webgpu): stages 1, 3, 4 on several modules' batches of the same frames at once (each stage
   * dispatched once over modules x frames). `uploaded` resolves when the batches' data and mask are no
   * longer read (hot and radius may be, until `results`); `results` gives one result per batch.
   */
  processModules?(batches: ModuleBatch[]): { uploaded: Promise<void>; results: Promise<BatchResult[]> };
  /** Optional (webgpu): the stage-2 pre-pass on several modules' batches at once (counts per batch). */
  accumulateModules?(batches: ModuleBatch[], counts: Uint32Array[]): Promise<void>;
  dispose(): void;
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

/** Stage-0 output for frames x tiles: background mu, noise sigma, candidate threshold t (float32). */
export interface Background {
  mu: Float32Array;
  sigma: Float32Array;
  thr: Float32Array;
}
