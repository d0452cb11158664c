/**
 * Stage 6: ROI boxes per module for the run (CPU: it works on peak boxes, a few numbers per frame).
 *
 * Spec: the union of the peak boxes of the module's lit frames, each padded by `margin` pixels and clipped
 * to the module; boxes that overlap (share at least one pixel) are merged into their bounding box, until no
 * two overlap; while there are more than `maxRois` boxes, the closest pair is merged (closest: the smallest
 * gap between the boxes, Chebyshev distance, ties broken by the smaller area of the merged box, then by
 * order), and overlaps are merged again. Boxes are half-open [ss0, fs0, ss1, fs1), sorted by (ss0, fs0).
 *
 * Bounded work for any run size: when more than `4 * maxRois + 1024` disjoint boxes accumulate during the
 * run, the closest pairs are merged down to that bound at once (the result then depends on the order of the
 * frames, which is fixed: sorted by train and pulse).
 */
import type { Box } from "../exdf/detectors.ts";

export type { Box };

export function overlaps(a: Box, b: Box): boolean {
  return a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
}

export function contains(a: Box, b: Box): boolean {
  return a[0] <= b[0] && a[1] <= b[1] && a[2] >= b[2] && a[3] >= b[3];
}

function union(a: Box, b: Box): Box {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[2], b[2]), Math.max(a[3], b[3])];
}

function gap(a: Box, b: Box): number {
  const dss = Math.max(0, a[0] - b[2], b[0] - a[2]);
  const dfs = Math.max(0, a[1] - b[3], b[1] - a[3]);
  return Math.max(dss, dfs);
}

function area(b: Box): number {
  return (b[2] - b[0]) * (b[3] - b[1]);
}

export class RoiSet {
  private boxes: Box[] = [];
  private readonly bound: number;

  constructor(
    readonly moduleSs: number,
    readonly moduleFs: number,
    readonly margin: number,
    readonly maxRois: number,
  ) {
    this.bound = 4 * maxRois + 1024;
  }

  /** Add one peak box (unpadded). */
  add(peak: Box): void {
    let b: Box = [
      Math.max(0, peak[0] - this.margin),
      Math.max(0, peak[1] - this.margin),
      Math.min(this.moduleSs, peak[2] + this.margin),
      Math.min(this.moduleFs, peak[3] + this.margin),
    ];
    for (const r of this.boxes) if (contains(r, b)) return;
    b = this.absorb(b);
    this.boxes.push(b);
    if (this.boxes.length > this.bound) this.reduceTo(this.bound >> 1);
  }

  /** Remove every box overlapping b, growing b by them, until none overlaps. */
  private absorb(b: Box): Box {
    for (let changed = true; changed;) {
      changed = false;
      const keep: Box[] = [];
      for (const r of this.boxes) {
        if (overlaps(r, b)) {
          b = union(r, b);
          changed = true;
        } else keep.push(r);
      }
      this.boxes = keep;
    }
    return b;
  }

  private reduceTo(n: number): void {
    while (this.boxes.length > n) {
      let bi = 0, bj = 1, best = Infinity, bestArea = Infinity;
      for (let i = 0; i < this.boxes.length; i++) {
        for (let j = i + 1; j < this.boxes.length; j++) {
          const g = gap(this.boxes[i], this.boxes[j]);
          if (g > best) continue;
          const a = area(union(this.boxes[i], this.boxes[j]));
          if (g < best || a < bestArea) {
            best = g;
            bestArea = a;
            bi = i;
            bj = j;
          }
        }
      }
      const merged = union(this.boxes[bi], this.boxes[bj]);
      this.boxes = this.boxes.filter((_, k) => k !== bi && k !== bj);
      const grown = this.absorb(merged); // absorb() replaces this.boxes: push after it
      this.boxes.push(grown);
    }
  }

  /** The final ROIs: at most maxRois, sorted by (ss0, fs0). */
  result(): Box[] {
    this.reduceTo(this.maxRois);
    return [...this.boxes].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  }
}
