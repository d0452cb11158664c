/** What the CPU reference of `azint` (azint.ts, which holds the spec) and its CSR kernel (azint-webgpu.ts) share. */
import type { FrameBatch } from "../exdf/frames.ts";

/** Marks a pixel outside every bin. */
export const NO_BIN = 0xffffffff;

/** Pixel table of a part: per module slot, bin per pixel and correction (float32, as the GPU gets it). */
export interface PixelTable {
  modules: number[];
  pixels: number;
  bin: Uint32Array[];
  corr: Float32Array[];
}

/** Per frame and bin: S, C, n of one batch. */
export interface AzintSums {
  sum: Float64Array;
  norm: Float64Array;
  count: Uint32Array;
}

export interface AzintBackend {
  name: string;
  frames(b: FrameBatch): AzintSums | Promise<AzintSums>;
  dispose(): void;
}
