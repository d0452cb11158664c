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

export interface XpcsGpu {
  name: string;
  batch(b: FrameBatch): Promise<TrainSums[]>;
  dispose(): void;
}
