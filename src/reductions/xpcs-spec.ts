/** What the CPU reference of `xpcs` (xpcs.ts, which holds the spec) and its kernels (xpcs-webgpu.ts) share. */
import type { FrameBatch } from "../exdf/frames.ts";

/** Per train: A, L, R, P per (q bin, delay) (delay index d = tau - 1). */
export interface TrainSums {
  trainId: number;
  a: Float64Array;
  l: Float64Array;
  r: Float64Array;
  p: Float64Array;
}

/**
 * Two-time sums of one train: frames kept (invalid pixels NaN) per module, then per q bin and frame pair
 * (t1, t2) over the pixels valid in both: A, L, R, P; C = A P / (L R). Memory: one train's frames.
 */
export interface TwoTimeSums {
  trainId: number;
  pulseIds: number[];
  /** (bins, T, T) each. */
  a: Float64Array;
  l: Float64Array;
  r: Float64Array;
  p: Float64Array;
}

/** A, L, R, P of n entries, all 0. */
export function zeroSums(n: number): Pick<TrainSums, "a" | "l" | "r" | "p"> {
  return { a: new Float64Array(n), l: new Float64Array(n), r: new Float64Array(n), p: new Float64Array(n) };
}

/** Add the sums of s into `into` (the same train, or the same bins and delays). */
export function addSums(
  into: Pick<TrainSums, "a" | "l" | "r" | "p">,
  s: Pick<TrainSums, "a" | "l" | "r" | "p">,
): void {
  for (let j = 0; j < s.a.length; j++) {
    into.a[j] += s.a[j];
    into.l[j] += s.l[j];
    into.r[j] += s.r[j];
    into.p[j] += s.p[j];
  }
}

export interface XpcsGpu {
  name: string;
  batch(b: FrameBatch): Promise<TrainSums[]>;
  dispose(): void;
}
