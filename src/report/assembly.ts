/**
 * The assembled detector of the localise report: module pixels placed by the detector layout (src/exdf/geometry.ts:
 * the `--geometry` file localise used, else the built-in layout of the type).
 *
 * Spec:
 * - View: looking along the beam (from the sample), x to the left and y up, as EXtra-geom draws it: canvas
 *   column = floor((maxX - x) / cell), row = floor((maxY - y) / cell), (x, y) a pixel centre in metres,
 *   maxX / maxY the largest pixel-centre coordinates of the layout (every module of it, recorded or not).
 * - Cell: k pixels of the layout's first panel (k >= 1 an integer, the smallest for which the canvas holds at
 *   most `maxPixels` pixels).
 * - Pixels: nearest-pixel rendering; each canvas pixel shows, of the module pixels landing in it, the
 *   highest-ranked palette index: a colour above the bottom of the scale, then a hot pixel, then a valid value
 *   at the bottom of the scale, then masked / NaN (INVALID; report-png.ts moduleImage's rule with pool 1). Canvas
 *   pixels no module pixel lands in are transparent (palette index GAP).
 * - Overlays (peaks, ROIs, lit ASICs, the module map) are in canvas units, through the same transform:
 *   points through `positioner` (position.ts, pixel-centre convention), boxes as the polygon of their four
 *   corner pixels' outer corners.
 */
import type { DetectorType } from "../exdf/detectors.ts";
import { type DetectorLayout, pixelCentres } from "../exdf/geometry.ts";
import { positioner } from "../localise/position.ts";
import { HOT, type ModuleImage } from "./png.ts";

/** Transparent palette index of the assembled image (the top colour of the scale maps to 254). */
export const GAP = 255;

export interface Assembly {
  layout: DetectorLayout;
  type: DetectorType;
  width: number;
  height: number;
  /** Metres per canvas pixel. */
  cell: number;
  maxX: number;
  maxY: number;
}

/** The layout module of a data module (JUNGFRAU modules are numbered from 1, layouts from 0). */
export function layoutModule(type: DetectorType, module: number): number {
  return type === "JUNGFRAU" ? module - 1 : module;
}

export function assembly(layout: DetectorLayout, maxPixels: number): Assembly {
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (let m = 0; m < layout.nModules; m++) {
    const c = pixelCentres(layout, m);
    for (let i = 0; i < c.length; i += 3) {
      if (!Number.isFinite(c[i])) continue;
      minX = Math.min(minX, c[i]);
      maxX = Math.max(maxX, c[i]);
      minY = Math.min(minY, c[i + 1]);
      maxY = Math.max(maxY, c[i + 1]);
    }
  }
  const px = 1 / layout.panels[0].res;
  let k = 1, width = 0, height = 0;
  for (;; k++) {
    width = Math.floor((maxX - minX) / (k * px) + 0.5) + 1;
    height = Math.floor((maxY - minY) / (k * px) + 0.5) + 1;
    if (width * height <= maxPixels || k >= 64) break;
  }
  return { layout, type: layout.type, width, height, cell: k * px, maxX, maxY };
}

/** Canvas coordinates (pixels, fractional) of a point (metres). */
export function toCanvas(a: Assembly, x: number, y: number): [number, number] {
  return [(a.maxX - x) / a.cell + 0.5, (a.maxY - y) / a.cell + 0.5];
}

/** Rank of a palette index in the canvas: colours above the bottom > HOT > the bottom colour > INVALID. */
function rank(i: number): number {
  return i === 2 ? 0.5 : i === HOT ? 1 : i;
}

/** An empty canvas (all GAP). */
export function newCanvas(a: Assembly): ModuleImage {
  return { width: a.width, height: a.height, pixels: new Uint8Array(a.width * a.height).fill(GAP) };
}

/** Place a module's image (pool 1, palette indices, ss rows x fs columns) into the canvas. */
export function placeModule(a: Assembly, canvas: ModuleImage, module: number, img: ModuleImage): void {
  const lm = layoutModule(a.type, module);
  if (lm < 0 || lm >= a.layout.nModules) return;
  const c = pixelCentres(a.layout, lm);
  const out = canvas.pixels;
  for (let p = 0; p < img.pixels.length; p++) {
    const x = c[3 * p];
    if (!Number.isFinite(x)) continue;
    const col = Math.floor((a.maxX - x) / a.cell + 0.5),
      row = Math.floor((a.maxY - c[3 * p + 1]) / a.cell + 0.5);
    if (col < 0 || col >= a.width || row < 0 || row >= a.height) continue;
    const o = row * a.width + col;
    const v = Math.min(img.pixels[p], 254);
    if (out[o] === GAP || rank(v) > rank(out[o])) out[o] = v;
  }
}

/** Polygon (canvas units, "x,y x,y ...") of a box [ss0, fs0, ss1, fs1) of a data module; null off the layout. */
export function boxPolygon(a: Assembly, module: number, box: readonly number[]): string | null {
  const at = positioner(a.layout, a.type);
  const [s0, f0, s1, f1] = box;
  const corners: [number, number][] = [];
  // Outer corners: from the corner pixels' centres half a pixel outwards.
  for (
    const [ss, fs, ds, df] of [[s0, f0, -1, -1], [s0, f1 - 1, -1, 1], [s1 - 1, f1 - 1, 1, 1], [
      s1 - 1,
      f0,
      1,
      -1,
    ]]
  ) {
    const c = at(module, ss, fs);
    const e = at(module, ss + 0.49 * ds, fs + 0.49 * df);
    if (!Number.isFinite(c.x) || !Number.isFinite(e.x)) return null;
    const x = c.x + (e.x - c.x) / 0.49 * 0.5, y = c.y + (e.y - c.y) / 0.49 * 0.5;
    corners.push(toCanvas(a, x, y));
  }
  return corners.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
}

/** Canvas position of a point (ss, fs) of a data module; null off the layout. */
export function pointAt(a: Assembly, module: number, ss: number, fs: number): [number, number] | null {
  const p = positioner(a.layout, a.type)(module, ss, fs);
  return Number.isFinite(p.x) ? toCanvas(a, p.x, p.y) : null;
}

/** Outline polygons of a layout module's panels (canvas units). */
export function modulePanels(a: Assembly, module: number): string[] {
  const lm = layoutModule(a.type, module);
  return a.layout.panels.filter((p) => p.module === lm).map((p) => {
    const nS = p.maxSs - p.minSs + 1, nF = p.maxFs - p.minFs + 1;
    return [[0, 0], [0, nF], [nS, nF], [nS, 0]].map(([u, v]) => {
      const x = (p.cornerX + u * p.ss[0] + v * p.fs[0]) / p.res,
        y = (p.cornerY + u * p.ss[1] + v * p.fs[1]) / p.res;
      const [cx, cy] = toCanvas(a, x, y);
      return `${cx.toFixed(1)},${cy.toFixed(1)}`;
    }).join(" ");
  });
}
