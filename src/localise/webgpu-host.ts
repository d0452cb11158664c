/**
 * Host-side pieces of the localise WebGPU backend (src/localise/webgpu.ts): the layouts it shares with
 * shaders/common.wgsl (Params, counters, the peak table), how a call is cut into submissions under the
 * device limits, and the parsing of a submission's counters and peak table into results.
 */
import type { Geometry } from "../exdf/detectors.ts";
import type { BatchResult, LocaliseParams, ModuleBatch, Peak } from "./spec.ts";
import { sortAndCut } from "./stages.ts";

/** Words per peak-table entry (shaders/common.wgsl ENTRY). */
export const ENTRY = 11;
/** Pixels per row segment of the run passes (shaders/common.wgsl SEG). */
export const SEG = 16;

/** Per-frame counter words: litPixels, litIntensity, unmaskedPixels, filteredLit per ASIC, + peak count. */
export function counterStride(g: Geometry): number {
  return 4 * g.nAsics + 1;
}

export function defaultPeakCapacity(params: LocaliseParams): number {
  return Math.max(1024, 4 * params.maxPeaks);
}

/**
 * How many module frames (modules x frames) of this geometry fit one GPU submission under the device
 * limits (the largest storage binding is a frame-major f32 array of the submission, or the peak table).
 */
export function framesPerBatch(
  geometry: Geometry,
  limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupsPerDimension?: number;
  },
  peakCapacity = 1024,
): number {
  const binding = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  return Math.max(
    0,
    Math.min(
      Math.floor(binding / (4 * geometry.pixels)),
      Math.floor(binding / (4 * ENTRY * Math.max(1, peakCapacity))),
      limits.maxComputeWorkgroupsPerDimension ?? 65535,
    ),
  );
}

/** One submission: frames [f0, f0 + m) of some modules of a call (`mods`, at `index` in the call). */
export interface Part {
  mods: ModuleBatch[];
  /** Each module's index in the call. */
  index: number[];
  f0: number;
  m: number;
}

/** The uniform struct Params of shaders/common.wgsl. */
export const PARAMS = {
  pixels: "u32",
  moduleSs: "u32",
  moduleFs: "u32",
  asicSs: "u32",
  asicFs: "u32",
  asicCols: "u32",
  nAsics: "u32",
  nFrames: "u32",
  hasMask: "u32",
  hasHot: "u32",
  neighbours: "u32",
  minArea: "u32",
  maxArea: "u32",
  capacity: "u32",
  stride: "u32",
  segments: "u32",
  threshold: "f32",
  strong: "f32",
  bgIterations: "u32",
  tilesFs: "u32",
  minSnr: "f32",
  bgClip: "f32",
  cellsN: "u32",
  radial: "u32",
} as const;

/** Bytes of Params (24 scalars, no padding). */
export const PARAMS_BYTES = 16 * Math.ceil(Object.keys(PARAMS).length / 4);

const keyView = new DataView(new ArrayBuffer(4));

function fromOrderedKey(k: number, scratch = keyView): number {
  scratch.setUint32(0, k & 0x80000000 ? k & 0x7fffffff : ~k >>> 0, true);
  return scratch.getFloat32(0, true);
}

/**
 * The submissions of a call: modules of one stage-0 kind (tiles or radius bins) together, in groups of
 * at most `perModules` modules with all their frames when one module's frames fit `perJ` module-frames
 * (groups as even as possible), else one module at a time in chunks of `perJ` frames.
 */
export function planParts(
  mods: readonly ModuleBatch[],
  nFrames: number,
  perJ: number,
  perModules: number,
  radial: (b: ModuleBatch) => boolean,
): Part[] {
  const out: Part[] = [];
  if (nFrames < 1) return out;
  for (const kind of [false, true]) {
    const index = mods.map((_, i) => i).filter((i) => radial(mods[i]) === kind);
    if (!index.length) continue;
    if (nFrames <= perJ) {
      const G = Math.max(1, Math.min(perModules, Math.floor(perJ / Math.max(1, nFrames))));
      const nGroups = Math.ceil(index.length / G);
      const size = Math.ceil(index.length / nGroups);
      for (let k = 0; k < index.length; k += size) {
        const idx = index.slice(k, k + size);
        out.push({ mods: idx.map((i) => mods[i]), index: idx, f0: 0, m: nFrames });
      }
    } else {
      for (const i of index) {
        for (let f0 = 0; f0 < nFrames; f0 += perJ) {
          out.push({ mods: [mods[i]], index: [i], f0, m: Math.min(perJ, nFrames - f0) });
        }
      }
    }
  }
  return out;
}

/**
 * Module-frames [j0, j0 + m) of a submission's counters and peak table (as read back) into frames
 * [f0, f0 + m) of a module's result (A ASICs, W counter words and C table entries per module frame);
 * gives the frames whose peaks overflowed the table (the caller recomputes them).
 */
export function parseResults(
  counterBytes: ArrayBuffer,
  tableBytes: ArrayBuffer,
  j0: number,
  f0: number,
  m: number,
  res: BatchResult,
  { A, W, C }: { A: number; W: number; C: number },
  p: LocaliseParams,
): number[] {
  const cu32 = new Uint32Array(counterBytes);
  const cf32 = new Float32Array(counterBytes);
  const u32 = new Uint32Array(tableBytes);
  const f32 = new Float32Array(tableBytes);
  const minIntensity = Math.fround(p.minIntensity);
  const overflow: number[] = [];
  for (let f = 0; f < m; f++) {
    const j = j0 + f;
    const o = j * W;
    const r = (f0 + f) * A;
    for (let a = 0; a < A; a++) {
      res.litPixels[r + a] = cu32[o + a];
      res.litIntensity[r + a] = cf32[o + A + a];
      res.unmaskedPixels[r + a] = cu32[o + 2 * A + a];
      res.filteredLit[r + a] = cu32[o + 3 * A + a];
    }
    const count = cu32[o + 4 * A];
    if (count > C) {
      // The GPU table holds only C of this frame's peaks: its peak list is recomputed on the CPU.
      overflow.push(f0 + f);
      continue;
    }
    // The table holds every component in the area range; the intensity cut is made here, on the
    // complete table, so nPeaks stays exact.
    const items: { peak: Peak; first: number }[] = [];
    for (let s = 0; s < count; s++) {
      const t = (j * C + s) * ENTRY;
      const intensity = f32[t + 5];
      if (!(intensity >= minIntensity)) continue;
      const var2 = f32[t + 10];
      const snr = var2 > 0 ? Math.fround(intensity / Math.sqrt(var2)) : 0;
      if (p.minSnr > 0 && !(snr >= p.minPeakSnr)) continue;
      const box: Peak["box"] = [u32[t + 1], u32[t + 2], u32[t + 3], u32[t + 4]];
      items.push({
        peak: {
          box,
          area: u32[t],
          intensity,
          ss: Math.fround((box[0] + box[2] - 1) / 2 + f32[t + 6] / intensity),
          fs: Math.fround((box[1] + box[3] - 1) / 2 + f32[t + 7] / intensity),
          max: fromOrderedKey(u32[t + 8]),
          snr,
        },
        first: u32[t + 9],
      });
    }
    res.nPeaks[f0 + f] = items.length;
    res.peaks[f0 + f] = sortAndCut(items, p.maxPeaks);
  }
  return overflow;
}

export function clampU32(x: number): number {
  if (!(x > 0)) return 0;
  return Math.min(x, 0xffffffff);
}
