/**
 * Quality of a compressed result against its original, on a sample of frames (docs/compression.md):
 *
 * - Valid pixels: finite originals not flagged by a `valid` map (reduce passes image.mask == 0 when the
 *   module has a mask: CORR stores garbage or extreme values in masked pixels).
 * - maxAbsError = max |x - x'| over the valid pixels, maxAbsErrorAll over every finite original (float64).
 *   A non-finite original must come back bit for bit (`nonFiniteChanged` counts those that did not).
 * - MSE = mean (x - x')^2 over the valid pixels of the sample (float64).
 * - Data range L = max - min of the valid original values of the sample.
 * - PSNR = 10 log10(L^2 / MSE) dB (Infinity when MSE = 0; null when L = 0 and MSE > 0).
 * - SSIM: per frame (2-D), on every 7 x 7 window lying inside the frame (uniform weights, sample variances
 *   and covariance with N - 1 = 48, C1 = (0.01 Lf)^2, C2 = (0.03 Lf)^2 with Lf the data range of the
 *   frame's valid original values: scikit-image's structural_similarity(x, x', win_size=7,
 *   data_range=Lf) on a frame without invalid pixels), the mean over the windows; windows holding a
 *   non-finite or invalid original pixel are left out. The sample's SSIM is the mean over its frames (frames smaller
 *   than 7 x 7, without a window or with Lf = 0 are left out; null if none is left).
 */

export interface QualityStats {
  frames: number;
  pixels: number;
  /** Valid pixels (finite, not masked). */
  validPixels: number;
  maxAbsError: number;
  maxAbsErrorAll: number;
  mse: number;
  dataRange: number;
  /** dB; Infinity for an exact result. */
  psnr: number | null;
  ssim: number | null;
  /** Non-finite originals that did not come back bit for bit. */
  nonFiniteChanged: number;
}

export const SSIM_WINDOW = 7;
const K1 = 0.01;
const K2 = 0.03;

/** Accumulates quality over frames; `result()` gives the stats of everything added. */
export class QualityAccumulator {
  private frames = 0;
  private pixels = 0;
  private finite = 0;
  private maxErr = 0;
  private maxErrAll = 0;
  private sse = 0;
  private min = Infinity;
  private max = -Infinity;
  private nonFiniteChanged = 0;
  private ssimSum = 0;
  private exactPixels = 0;
  private ssimFrames = 0;

  /** Add one frame (h x w) of originals `a` and results `b`; `valid[i] = 0` leaves pixel i out (see above). */
  add(a: Float32Array, b: Float32Array, h: number, w: number, valid?: Uint8Array): void {
    const P = h * w;
    if (a.length < P || b.length < P) throw new RangeError("quality: frame arrays too short");
    const ab = new Uint32Array(a.buffer, a.byteOffset, P);
    const bb = new Uint32Array(b.buffer, b.byteOffset, P);
    this.frames++;
    this.pixels += P;
    let fmin = Infinity, fmax = -Infinity;
    for (let i = 0; i < P; i++) {
      const x = a[i];
      if (Number.isFinite(x)) {
        let e = Math.abs(x - b[i]);
        if (Number.isNaN(e)) e = Infinity;
        if (e > this.maxErrAll) this.maxErrAll = e;
        if (valid && !valid[i]) continue;
        if (e > this.maxErr) this.maxErr = e;
        this.finite++;
        this.sse += e * e;
        if (x < fmin) fmin = x;
        if (x > fmax) fmax = x;
      } else if (ab[i] !== bb[i]) this.nonFiniteChanged++;
    }
    this.min = Math.min(this.min, fmin);
    this.max = Math.max(this.max, fmax);
    if (fmax > fmin) {
      const s = ssimFrame(a, b, h, w, fmax - fmin, valid);
      if (s !== null) {
        this.ssimSum += s;
        this.ssimFrames++;
      }
    }
  }

  /** Add a frame of `pixels` values known to be identical (integer data compared bit for bit). */
  addExact(pixels: number): void {
    this.frames++;
    this.pixels += pixels;
    this.exactPixels += pixels;
  }

  result(): QualityStats {
    const L = this.finite ? this.max - this.min : 0;
    const mse = this.finite ? this.sse / this.finite : 0;
    let psnr: number | null;
    if (mse === 0) psnr = Infinity;
    else if (L > 0) psnr = 10 * Math.log10((L * L) / mse);
    else psnr = null;
    const exactOnly = this.finite === 0 && this.exactPixels > 0;
    return {
      frames: this.frames,
      pixels: this.pixels,
      validPixels: this.finite,
      maxAbsError: this.maxErr,
      maxAbsErrorAll: this.maxErrAll,
      mse,
      dataRange: L,
      psnr,
      ssim: this.ssimFrames ? this.ssimSum / this.ssimFrames : exactOnly ? 1 : null,
      nonFiniteChanged: this.nonFiniteChanged,
    };
  }
}

/** Quality of one set of frames (nFrames of h x w). */
export function quality(
  a: Float32Array,
  b: Float32Array,
  nFrames: number,
  h: number,
  w: number,
): QualityStats {
  const q = new QualityAccumulator();
  const P = h * w;
  for (let f = 0; f < nFrames; f++) {
    q.add(a.subarray(f * P, (f + 1) * P), b.subarray(f * P, (f + 1) * P), h, w);
  }
  return q.result();
}

/**
 * Mean SSIM of one frame over the 7 x 7 windows inside it (see the header); null without a window. L: the
 * data range.
 */
export function ssimFrame(
  a: Float32Array,
  b: Float32Array,
  h: number,
  w: number,
  L: number,
  valid?: Uint8Array,
): number | null {
  const K = SSIM_WINDOW;
  if (h < K || w < K) return null;
  const W1 = w + 1;
  const n = (h + 1) * W1;
  const sa = new Float64Array(n), sb = new Float64Array(n), saa = new Float64Array(n);
  const sbb = new Float64Array(n), sab = new Float64Array(n), bad = new Int32Array(n);
  // Sums of values shifted by the frame's mean c (variances do not change; means get c back): keeps the
  // sums of squares small, so the differences of the tables stay exact enough.
  let c = 0, nc = 0;
  for (let i = 0; i < h * w; i++) {
    if (Number.isFinite(a[i]) && (!valid || valid[i])) {
      c += a[i];
      nc++;
    }
  }
  c = nc ? c / nc : 0;
  for (let y = 0; y < h; y++) {
    let ra = 0, rb = 0, raa = 0, rbb = 0, rab = 0, rbad = 0;
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      let va = a[i] - c, vb = b[i] - c;
      if (!Number.isFinite(va) || (valid && !valid[i])) {
        rbad++;
        va = 0;
        vb = 0;
      }
      ra += va;
      rb += vb;
      raa += va * va;
      rbb += vb * vb;
      rab += va * vb;
      const o = (y + 1) * W1 + x + 1, u = y * W1 + x + 1;
      sa[o] = sa[u] + ra;
      sb[o] = sb[u] + rb;
      saa[o] = saa[u] + raa;
      sbb[o] = sbb[u] + rbb;
      sab[o] = sab[u] + rab;
      bad[o] = bad[u] + rbad;
    }
  }
  const N = K * K;
  const c1 = (K1 * L) ** 2, c2 = (K2 * L) ** 2;
  const box = (s: Float64Array | Int32Array, y: number, x: number) =>
    s[(y + K) * W1 + x + K] - s[y * W1 + x + K] - s[(y + K) * W1 + x] + s[y * W1 + x];
  let sum = 0, count = 0;
  for (let y = 0; y + K <= h; y++) {
    for (let x = 0; x + K <= w; x++) {
      if (box(bad, y, x) !== 0) continue;
      const da = box(sa, y, x) / N, db = box(sb, y, x) / N;
      // Sample (co)variances, N - 1 normalisation; clamped at 0 against rounding in the sums.
      const va = Math.max(0, (box(saa, y, x) - N * da * da) / (N - 1));
      const vb = Math.max(0, (box(sbb, y, x) - N * db * db) / (N - 1));
      const cov = (box(sab, y, x) - N * da * db) / (N - 1);
      const ma = da + c, mb = db + c;
      const num = (2 * ma * mb + c1) * (2 * cov + c2);
      const den = (ma * ma + mb * mb + c1) * (va + vb + c2);
      sum += den > 0 ? num / den : 1;
      count++;
    }
  }
  return count ? sum / count : null;
}
