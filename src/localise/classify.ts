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
  return quantileOf(sorted.length, q, (r) => sorted[r]);
}

/** Quantile q of n values given the value of each rank (0 = smallest), linear interpolation (numpy's default). */
function quantileOf(n: number, q: number, at: (rank: number) => number): number {
  if (n === 0) return NaN;
  const pos = (n - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(n - 1, lo + 1);
  return at(lo) + (at(hi) - at(lo)) * (pos - lo);
}

const QUARTILES = [0.25, 0.5, 0.75];

/** median + snr * IQR / 1.349 of n finite values given the value of each rank; Infinity without values. */
function thresholdOf(n: number, at: (rank: number) => number, snr: number): number {
  if (n === 0) return Infinity;
  const [q1, q2, q3] = QUARTILES.map((q) => quantileOf(n, q, at));
  return q2 + snr * (q3 - q1) / 1.349;
}

/** median + snr * IQR / 1.349 over the finite scores. */
export function adaptiveThreshold(scores: ArrayLike<number>, snr: number): number {
  const s = Float64Array.from(Array.prototype.filter.call(scores, Number.isFinite) as number[]).sort();
  return thresholdOf(s.length, (r) => s[r], snr);
}

const keyView = new DataView(new ArrayBuffer(4));
/** The float32 value's 32-bit key, in the values' order (-0 before +0, as the sort above puts them). */
function keyOf(v: number): number {
  keyView.setFloat32(0, v);
  const u = keyView.getUint32(0);
  return (u & 0x80000000 ? ~u : u | 0x80000000) >>> 0;
}
function valueOf(key: number): number {
  keyView.setUint32(0, key & 0x80000000 ? key & 0x7fffffff : ~key >>> 0);
  return keyView.getFloat32(0);
}

/**
 * adaptiveThreshold of float32 scores streamed in two passes (each call of `scores()` yields all of them
 * again, in blocks of any size) in memory independent of their number, and exactly the same value: a radix
 * selection on each score's order-preserving 32-bit key. Pass 1 counts the finite scores per high 16 bits
 * of the key, which puts each order statistic the quartiles need (at most 6) in a known bucket and rank
 * within it; pass 2 counts the low 16 bits of the scores in those buckets, which gives each statistic.
 * Memory: 256 kB, and 256 kB per distinct bucket asked for (at most 6).
 */
export function adaptiveThresholdStreamed(
  scores: () => Iterable<ArrayLike<number>>,
  snr: number,
): number {
  const high = new Uint32Array(1 << 16);
  let n = 0;
  for (const block of scores()) {
    for (let i = 0; i < block.length; i++) {
      const v = block[i];
      if (v - v !== 0) continue; // NaN, +-Infinity: not finite
      high[keyOf(v) >>> 16]++;
      n++;
    }
  }
  if (n === 0) return Infinity;
  // The ranks the quartiles read, each with its bucket and its rank within the bucket.
  const ranks = new Set<number>();
  for (const q of QUARTILES) quantileOf(n, q, (r) => (ranks.add(r), 0));
  const want = new Map<number, { bucket: number; within: number }>();
  for (const r of ranks) {
    let b = 0, before = 0;
    while (before + high[b] <= r) before += high[b++];
    want.set(r, { bucket: b, within: r - before });
  }
  const low = new Map<number, Uint32Array>();
  for (const { bucket } of want.values()) low.set(bucket, new Uint32Array(1 << 16));
  for (const block of scores()) {
    for (let i = 0; i < block.length; i++) {
      const v = block[i];
      if (v - v !== 0) continue;
      const k = keyOf(v), counts = low.get(k >>> 16);
      if (counts) counts[k & 0xffff]++;
    }
  }
  const at = (r: number): number => {
    const { bucket, within } = want.get(r)!;
    const counts = low.get(bucket)!;
    let lo = 0, before = 0;
    while (before + counts[lo] <= within) before += counts[lo++];
    return valueOf(((bucket << 16) | lo) >>> 0);
  };
  return thresholdOf(n, at, snr);
}
