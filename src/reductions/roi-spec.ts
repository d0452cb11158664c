/** What the CPU reference of `roi` (roi.ts, which holds the spec) and its WGSL kernel (roi-webgpu.ts) share. */
import type { FrameBatch } from "../exdf/frames.ts";

export interface RoiSpec {
  name: string;
  module: number;
  ss0: number;
  ss1: number;
  fs0: number;
  fs1: number;
}

/** Column sums and counts of one batch: per frame, region and column (regions' columns concatenated). */
export interface RoiColumns {
  /** Per frame: all regions' columns, region by region (offsets `colOffset`). */
  colSum: Float32Array;
  colCount: Uint32Array;
  /** 1 where the region's module recorded the frame, per frame and region. */
  present: Uint8Array;
}

/** Column offsets of the regions (and the total). */
export function columnLayout(rois: RoiSpec[]): { offsets: number[]; total: number } {
  const offsets: number[] = [];
  let total = 0;
  for (const r of rois) {
    offsets.push(total);
    total += r.fs1 - r.fs0;
  }
  return { offsets, total };
}

/** A backend computing `RoiColumns` of a batch. */
export interface RoiBackend {
  name: string;
  columns(b: FrameBatch): RoiColumns | Promise<RoiColumns>;
  dispose(): void;
}
