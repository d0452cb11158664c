/**
 * Stage 5: the lit/dark classifier (CPU: it works on per-ASIC counters and peak tables).
 *
 * Spec:
 * - peaks mode: an ASIC is lit when it holds a peak (the ASIC of the pixel holding the peak's
 *   intensity-weighted centroid) or when its filtered lit count (stage 3 survivors) reaches `minLit`;
 *   a frame is lit when any ASIC of any module is lit; a module is lit in a frame when any of its ASICs is.
 * - adaptive mode, for diffuse signal (SPI, SAXS): score = lit fraction of the frame (stage-1 lit pixels over
 *   valid pixels, all modules); a frame is lit when score > median + snr * IQR / 1.349 over the run
 *   (quantiles with linear interpolation, as numpy's default). The ASICs of a lit frame are lit when their own
 *   lit fraction exceeds the same threshold, or when they hold a peak.
 */
import { asicOf, type Geometry } from "../exdf/detectors.ts";
import type { Peak } from "./spec.ts";

export type ClassifierMode = "peaks" | "adaptive";

/** ASIC holding a peak: the one of the pixel at its centroid. */
export function asicOfPeak(g: Geometry, p: Peak): number {
  const ss = Math.min(g.moduleSs - 1, Math.max(0, Math.floor(p.ss)));
  const fs = Math.min(g.moduleFs - 1, Math.max(0, Math.floor(p.fs)));
  return asicOf(g, ss, fs);
}

/** Quantile q in [0, 1] of sorted values, linear interpolation. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const pos = (n - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(n - 1, lo + 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** median + snr * IQR / 1.349 over the finite scores. */
export function adaptiveThreshold(scores: ArrayLike<number>, snr: number): number {
  const s = Float64Array.from(Array.prototype.filter.call(scores, Number.isFinite) as number[]).sort();
  if (s.length === 0) return Infinity;
  const iqr = quantile(s, 0.75) - quantile(s, 0.25);
  return quantile(s, 0.5) + snr * iqr / 1.349;
}
