/**
 * Peak positions on the detector: each peak's centroid (ss, fs, pixel-centre convention: pixel (i, j) has
 * its centre at ss = i, fs = j) through the detector layout (src/exdf/geometry.ts: a CrystFEL `.geom` file given
 * with `--geometry`, else the built-in layout of the detector type, beam centre at the origin):
 * x, y (metres, the layout's frame: the beam at the origin) and the radius from the beam in pixels of the
 * panel (sqrt(x^2 + y^2) * res). The panel is the one holding the pixel nearest the centroid; a peak on
 * no panel, or a module the layout does not have, gets NaN. Layout modules are numbered from 0; JUNGFRAU
 * modules (JNGFR01, ...) map to layout module number - 1.
 */
import type { DetectorType } from "../exdf/detectors.ts";
import type { DetectorLayout, Panel } from "../exdf/geometry.ts";

export interface PeakPosition {
  /** Metres. */
  x: number;
  y: number;
  /** Pixels (of the peak's panel) from the beam. */
  radius: number;
}

/** A function giving the position of a centroid of a module. */
export function positioner(
  layout: DetectorLayout,
  type: DetectorType,
): (module: number, ss: number, fs: number) => PeakPosition {
  const byModule = new Map<number, Panel[]>();
  for (const p of layout.panels) {
    if (!byModule.has(p.module)) byModule.set(p.module, []);
    byModule.get(p.module)!.push(p);
  }
  const none = { x: NaN, y: NaN, radius: NaN };
  return (module, ss, fs) => {
    const panels = byModule.get(type === "JUNGFRAU" ? module - 1 : module);
    if (!panels) return none;
    const is = Math.round(ss), jf = Math.round(fs);
    const p = panels.find((q) => is >= q.minSs && is <= q.maxSs && jf >= q.minFs && jf <= q.maxFs);
    if (!p) return none;
    const a = ss - p.minSs + 0.5, b = fs - p.minFs + 0.5;
    const x = (p.cornerX + a * p.ss[0] + b * p.fs[0]) / p.res;
    const y = (p.cornerY + a * p.ss[1] + b * p.fs[1]) / p.res;
    return { x, y, radius: Math.hypot(x, y) * p.res };
  };
}

/**
 * Each pixel's radius from the beam (pixels of its panel; NaN on no panel) of one module, row-major
 * (ss * moduleFs + fs): the radius bins of stage 0 (stages.ts cellsOf).
 */
export function moduleRadii(layout: DetectorLayout, type: DetectorType, module: number): Float32Array {
  const { moduleSs, moduleFs } = layout;
  const out = new Float32Array(moduleSs * moduleFs).fill(NaN);
  const m = type === "JUNGFRAU" ? module - 1 : module;
  const panels = layout.panels.filter((q) => q.module === m);
  // positioner's values, panel by panel instead of a panel search per pixel: the first panel holding a
  // pixel gives its radius, so the panels go in reverse order, each overwriting the ones after it.
  for (let k = panels.length - 1; k >= 0; k--) {
    const p = panels[k];
    const ss1 = Math.min(moduleSs - 1, Math.floor(p.maxSs)),
      fs1 = Math.min(moduleFs - 1, Math.floor(p.maxFs));
    for (let ss = Math.max(0, Math.ceil(p.minSs)); ss <= ss1; ss++) {
      for (let fs = Math.max(0, Math.ceil(p.minFs)); fs <= fs1; fs++) {
        const a = ss - p.minSs + 0.5, b = fs - p.minFs + 0.5;
        const x = (p.cornerX + a * p.ss[0] + b * p.fs[0]) / p.res;
        const y = (p.cornerY + a * p.ss[1] + b * p.fs[1]) / p.res;
        out[ss * moduleFs + fs] = Math.hypot(x, y) * p.res;
      }
    }
  }
  return out;
}

/** hc in eV x Angstrom (CODATA 2018): the wavelength in Angstrom is HC_EV_ANGSTROM / photon energy (eV). */
export const HC_EV_ANGSTROM = 12398.419843320026;

/**
 * The resolution (Angstrom) of a point at distance `rMetres` from the beam on a flat detector `clen` metres
 * from the sample, for photons of `photonEnergy` eV: d = lambda / (2 sin(theta)), 2 theta = atan(r / clen).
 * NaN when the energy, clen or r is not known (not a finite positive number; r may be 0: d = Infinity).
 */
export function resolutionAngstrom(rMetres: number, photonEnergy?: number, clen?: number): number {
  if (!(photonEnergy! > 0) || !(clen! > 0) || !(rMetres >= 0) || !Number.isFinite(rMetres)) return NaN;
  const lambda = HC_EV_ANGSTROM / photonEnergy!;
  const theta = Math.atan(rMetres / clen!) / 2;
  return lambda / (2 * Math.sin(theta));
}
