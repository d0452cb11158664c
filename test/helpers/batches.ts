/** Hand-made module batches for the stage tests (CPU reference and GPU). */
import type { Geometry } from "../../src/detectors.ts";
import { DEFAULT_PARAMS, type ModuleBatch } from "../../src/localise/stages.ts";

/** Hand-made scenes use photon-level values: the intensity cut has tests of its own. */
export const P = { ...DEFAULT_PARAMS, minIntensity: 0 };

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
