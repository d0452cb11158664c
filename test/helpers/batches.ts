/** Hand-made module batches for the stage tests (CPU reference and GPU). */
import type { Geometry } from "../../src/exdf/detectors.ts";
import { DEFAULT_PARAMS, type ModuleBatch } from "../../src/localise/spec.ts";

/**
 * Hand-made scenes use photon-level values on a zero background: the fixed-threshold mode (minSnr 0: no
 * stage-0 background, candidates are value > threshold) with the noise filter and area cut of that mode;
 * the intensity cut and the background mode have tests of their own.
 */
export const P = { ...DEFAULT_PARAMS, minIntensity: 0, minSnr: 0, neighbours: 1, minArea: 3 };

/** nFrames of zeros (and an all-good mask when asked). */
export function batchOf(g: Geometry, nFrames = 1, withMask = false): ModuleBatch {
  return {
    geometry: g,
    nFrames,
    data: new Float32Array(nFrames * g.pixels),
    mask: withMask ? new Uint32Array(nFrames * g.pixels) : undefined,
  };
}

/** Set pixel (ss, fs) of frame f. */
export function put(b: ModuleBatch, f: number, ss: number, fs: number, v: number): void {
  b.data[f * b.geometry.pixels + ss * b.geometry.moduleFs + fs] = v;
}
