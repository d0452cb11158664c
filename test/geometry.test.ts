/** The `.geom` reader and writer, built-in layouts and pixel positions (src/exdf/geometry.ts). */
import { describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  defaultLayout,
  parseGeom,
  parseVector,
  pixelCentres,
  pixelCorners,
  readGeom,
  writeGeom,
} from "../src/exdf/geometry.ts";
import { InputError } from "../src/errors.ts";
import { DETECTOR_TYPES } from "../src/exdf/detectors.ts";

/**
 * Hand-written in the form EXtra-geom's `write_crystfel_geom` produces for AGIPD_1MGeometry.example()
 * (module 0, tiles 0 and 7 only): numpy positional floats (`+1.x +0.y`), rigid groups, a bad region.
 */
const EXTRA_GEOM_AGIPD = `; AGIPD-1M geometry file written by EXtra-geom 1.12.0
; You may need to edit this file to add:
; - data and mask locations in the file
;
; See: http://www.desy.de/~twhite/crystfel/manual-crystfel_geometry.html


data = /entry_1/instrument_1/detector_1/data ;
dim0 = %
res = 5000.0 ; pixels per metre

; Beam energy in eV
photon_energy = 9300

; Camera length, aka detector distance
clen = 0.125

; Analogue Digital Units per eV
; adu_per_eV = SET ME
bad_gap/min_x = -10
bad_gap/max_x = 10
bad_gap/min_y = -5
bad_gap/max_y = 5

rigid_group_p0 = p0a0,p0a7
rigid_group_collection_modules = p0

p0a0/dim1 = 0
p0a0/dim2 = ss
p0a0/dim3 = fs
p0a0/min_fs = 0
p0a0/min_ss = 0
p0a0/max_fs = 127
p0a0/max_ss = 63
p0a0/fs = +0.x -1.y
p0a0/ss = +1.x +0.y
p0a0/corner_x = -525.0
p0a0/corner_y = 625.0
p0a0/coffset = 0.0

p0a7/dim1 = 0
p0a7/dim2 = ss
p0a7/dim3 = fs
p0a7/min_fs = 0
p0a7/min_ss = 448
p0a7/max_fs = 127
p0a7/max_ss = 511
p0a7/fs = +0.x -1.y
p0a7/ss = +1.x +0.y
p0a7/corner_x = -63.0
p0a7/corner_y = 625.0
p0a7/coffset = 0.001
`;

function errorOf(f: () => unknown): InputError {
  try {
    f();
  } catch (e) {
    if (e instanceof InputError) return e;
    throw e;
  }
  throw new Error("no error");
}

describe("parseGeom", () => {
  test("reads an EXtra-geom-written AGIPD file: panels, globals, pixel centres", () => {
    const g = parseGeom(EXTRA_GEOM_AGIPD, "agipd.geom");
    expect(g.type).toBe("AGIPD");
    expect(g.nModules).toBe(1);
    expect(g.clen).toBe(0.125);
    expect(g.photonEnergy).toBe(9300);
    expect(g.aduPerEv).toBeUndefined();
    expect(g.panels.map((p) => p.name)).toEqual(["p0a0", "p0a7"]);
    const a7 = g.panels[1];
    expect(a7).toMatchObject({ module: 0, minSs: 448, maxSs: 511, minFs: 0, maxFs: 127, res: 5000 });
    expect(a7.fs).toEqual([0, -1, 0]);
    expect(a7.ss).toEqual([1, 0, 0]);
    const c = pixelCentres(g, 0);
    // Pixel (0, 0): corner (-525, 625) px + half a pixel along ss (+x) and fs (-y).
    expect(c[0]).toBeCloseTo(-524.5 * 200e-6, 12);
    expect(c[1]).toBeCloseTo(624.5 * 200e-6, 12);
    expect(c[2]).toBe(0);
    // Pixel (450, 10) on tile 7: (-63 + 2.5, 625 - 10.5) px, z = coffset.
    const k = (450 * 128 + 10) * 3;
    expect(c[k]).toBeCloseTo(-60.5 * 200e-6, 12);
    expect(c[k + 1]).toBeCloseTo(614.5 * 200e-6, 12);
    expect(c[k + 2]).toBeCloseTo(0.001, 12);
    // Pixels of no panel are NaN.
    expect(c[(100 * 128) * 3]).toBeNaN();
  });

  test("the 2D layout (modules stacked along ss) puts panels in their modules", () => {
    const text = EXTRA_GEOM_AGIPD.replace(/p0a(\d)\/dim1 = 0\n/g, "")
      .replace(/dim2 = ss/g, "dim1 = ss").replace(/dim3 = fs/g, "dim2 = fs")
      .replace("p0a7/min_ss = 448", "p0a7/min_ss = 2496").replace("p0a7/max_ss = 511", "p0a7/max_ss = 2559");
    const g = parseGeom(text, "2d.geom");
    expect(g.panels[1]).toMatchObject({ module: 4, minSs: 448, maxSs: 511 });
    expect(g.nModules).toBe(5);
  });

  test("clen given per panel (the same for all) is the detector distance", () => {
    const text = EXTRA_GEOM_AGIPD.replace("clen = 0.125", "; no global clen")
      .replace("p0a0/coffset = 0.0", "p0a0/coffset = 0.0\np0a0/clen = 0.7")
      .replace("p0a7/coffset = 0.001", "p0a7/coffset = 0.001\np0a7/clen = 0.7");
    expect(parseGeom(text, "c.geom").clen).toBe(0.7);
    expect(parseGeom(text.replace("p0a7/clen = 0.7", "p0a7/clen = 0.8"), "c.geom").clen).toBeUndefined();
  });

  test("directions: signs, implicit 1, exponents, z", () => {
    expect(parseVector("f", 1, "fs", "-y")).toEqual([0, -1, 0]);
    expect(parseVector("f", 1, "fs", "x")).toEqual([1, 0, 0]);
    expect(parseVector("f", 1, "fs", "+0.0001x -1.0000y")).toEqual([0.0001, -1, 0]);
    expect(parseVector("f", 1, "fs", "+1e-3x +0.866y -0.5z")).toEqual([0.001, 0.866, -0.5]);
  });

  test("bad input: one line naming the file and the line", () => {
    const lineOf = (text: string) =>
      EXTRA_GEOM_AGIPD.slice(0, EXTRA_GEOM_AGIPD.indexOf(text)).split("\n").length;
    expect(lineOf("p0a0/dim1")).toBe(28);
    const bad = (from: string, to: string) =>
      errorOf(() => parseGeom(EXTRA_GEOM_AGIPD.replace(from, to), "x.geom")).message;
    expect(bad("p0a0/fs = +0.x -1.y", "p0a0/fs = sideways")).toMatch(
      /^x\.geom: line 35: p0a0\/fs = "sideways"/,
    );
    expect(bad("p0a0/corner_x = -525.0", "p0a0/corner_x = left")).toMatch(
      /^x\.geom: line 37: .*not a number/,
    );
    expect(bad("p0a0/max_ss = 63\n", "")).toMatch(/^x\.geom: line 28: panel p0a0 has no max_ss/);
    expect(bad("p0a7/min_ss = 448", "p0a7/min_ss = 40")).toMatch(/^x\.geom: panels p0a0 and p0a7 overlap/);
    expect(bad("p0a0/max_fs = 127", "p0a0/max_fs = 300")).toMatch(/module shape 512 x 301/);
    expect(bad("clen = 0.125", "clen 0.125")).toMatch(/^x\.geom: line 16: expected "key = value"/);
    expect(bad("p0a0/dim1 = 0", "p0a0/dim1 = q")).toMatch(/^x\.geom: line 28: p0a0\/dim1 = q/);
    expect(errorOf(() => parseGeom("res = 5000\n", "e.geom")).message).toMatch(/^e\.geom: no panels/);
    expect(errorOf(() => readGeom("/nonexistent/a.geom")).message).toMatch(
      /^\/nonexistent\/a\.geom: cannot read/,
    );
    expect(bad("p0a0/min_ss = 0", "p0a0/min_ss = 1.5")).toMatch(
      /line 32: p0a0\/min_ss = 1.5 is not a pixel index/,
    );
  });
});

describe("built-in layouts", () => {
  const pixel = { AGIPD: 200e-6, LPD: 500e-6, DSSC: 236e-6, JUNGFRAU: 75e-6 } as const;
  const modules = { AGIPD: 16, LPD: 16, DSSC: 16, JUNGFRAU: 8 } as const;
  for (const type of DETECTOR_TYPES) {
    test(`${type}: every pixel covered once, pixel pitch, beam near the centre, no overlapping pixels`, () => {
      const g = defaultLayout(type);
      expect(g.nModules).toBe(modules[type]);
      let covered = 0;
      let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
      let nearest = Infinity;
      for (let m = 0; m < g.nModules; m++) {
        const c = pixelCentres(g, m);
        for (let i = 0; i < c.length; i += 3) {
          if (Number.isNaN(c[i])) continue;
          covered++;
          x0 = Math.min(x0, c[i]);
          x1 = Math.max(x1, c[i]);
          y0 = Math.min(y0, c[i + 1]);
          y1 = Math.max(y1, c[i + 1]);
          nearest = Math.min(nearest, Math.hypot(c[i], c[i + 1]));
        }
      }
      expect(covered).toBe(modules[type] * g.moduleSs * g.moduleFs);
      // Neighbours along fs are one pixel apart.
      const c = pixelCentres(g, 3);
      expect(Math.hypot(c[3] - c[0], c[4] - c[1])).toBeCloseTo(pixel[type], 9);
      // The beam (origin) is near the middle of the detector and hits no pixel.
      expect(Math.abs((x0 + x1) / 2)).toBeLessThan(0.1 * (x1 - x0));
      expect(Math.abs((y0 + y1) / 2)).toBeLessThan(0.1 * (y1 - y0));
      expect(nearest).toBeGreaterThan(pixel[type] / 2);
      // No two panels overlap in space (their x-y rectangles are disjoint).
      const rects = g.panels.map((p) => {
        const n = [p.maxSs - p.minSs + 1, p.maxFs - p.minFs + 1];
        const xs = [0, n[0]].flatMap((a) =>
          [0, n[1]].map((b) => (p.cornerX + a * p.ss[0] + b * p.fs[0]) / p.res)
        );
        const ys = [0, n[0]].flatMap((a) =>
          [0, n[1]].map((b) => (p.cornerY + a * p.ss[1] + b * p.fs[1]) / p.res)
        );
        return [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
      });
      let overlaps = 0;
      const eps = 1e-9;
      for (let i = 0; i < rects.length; i++) {
        for (let j = i + 1; j < rects.length; j++) {
          const [a, b] = [rects[i], rects[j]];
          if (a[0] < b[1] - eps && b[0] < a[1] - eps && a[2] < b[3] - eps && b[2] < a[3] - eps) overlaps++;
        }
      }
      expect(overlaps).toBe(0);
    });

    test(`${type}: write -> read gives the same layout and positions`, () => {
      const g = defaultLayout(type);
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "geom-"));
      const file = path.join(dir, "d.geom");
      fs.writeFileSync(file, writeGeom(g, { clen: 0.7, photonEnergy: 9000 }));
      const r = readGeom(file);
      fs.rmSync(dir, { recursive: true });
      expect(r.type).toBe(type);
      expect(r.nModules).toBe(g.nModules);
      expect(r.clen).toBe(0.7);
      expect(r.photonEnergy).toBe(9000);
      for (const m of [0, g.nModules - 1]) {
        const a = pixelCentres(g, m);
        const b = pixelCentres(r, m);
        let worst = 0;
        for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
        expect(worst).toBeLessThan(1e-12);
      }
    });
  }

  test("AGIPD matches EXtra-geom's example: module 0 first pixel corner at (-525, 625) px, quadrant 3 mirrored", () => {
    const g = defaultLayout("AGIPD");
    const k0 = pixelCorners(g, 0);
    expect(k0[0]).toBeCloseTo(-525 * 200e-6, 12);
    expect(k0[1]).toBeCloseTo(625 * 200e-6, 12);
    // Module 12, tile 1 corner: (542.5 - 66, 475) px, ss along -x, fs along +y.
    const k12 = pixelCorners(g, 12);
    const t1 = 64 * 128 * 12;
    expect(k12[t1]).toBeCloseTo((542.5 - 66) * 200e-6, 12);
    expect(k12[t1 + 1]).toBeCloseTo(475 * 200e-6, 12);
    // Corner order (ss, fs) offsets (0,0), (1,0), (1,1), (0,1): corner 1 is one pixel along ss (-x).
    expect(k12[t1 + 3] - k12[t1]).toBeCloseTo(-200e-6, 12);
    expect(k12[t1 + 7] - k12[t1 + 1]).toBeCloseTo(200e-6, 12);
    // Centre = mean of the 4 corners.
    const c = pixelCentres(g, 12);
    const cx = (k12[t1] + k12[t1 + 3] + k12[t1 + 6] + k12[t1 + 9]) / 4;
    expect(c[64 * 128 * 3]).toBeCloseTo(cx, 12);
  });
});
