/**
 * Peak positions (src/localise/position.ts) against the pixel centres of src/exdf/geometry.ts, and a .geom file
 * read back (as `--geometry FILE` does): shifted panels move the positions by the shift.
 */
import { describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { defaultLayout, loadLayout, pixelCentres, writeGeom } from "../src/exdf/geometry.ts";
import { positioner } from "../src/localise/position.ts";
import { uniform } from "../fixtures/synth.ts";

describe("peak positions", () => {
  it("at pixel centres: the layout's pixel centres (AGIPD, LPD, DSSC, JUNGFRAU); radius = |xy| * res", () => {
    for (const type of ["AGIPD", "LPD", "DSSC", "JUNGFRAU"] as const) {
      const layout = defaultLayout(type);
      const where = positioner(layout, type);
      const r = uniform(5);
      const centres = new Map<number, Float64Array>();
      for (let k = 0; k < 200; k++) {
        const m = Math.floor(r() * layout.nModules);
        const ss = Math.floor(r() * layout.moduleSs), fs_ = Math.floor(r() * layout.moduleFs);
        if (!centres.has(m)) centres.set(m, pixelCentres(layout, m));
        const c = centres.get(m)!;
        const q = (ss * layout.moduleFs + fs_) * 3;
        const p = where(type === "JUNGFRAU" ? m + 1 : m, ss, fs_);
        expect(p.x).toBeCloseTo(c[q], 9);
        expect(p.y).toBeCloseTo(c[q + 1], 9);
        expect(p.radius).toBeCloseTo(Math.hypot(c[q], c[q + 1]) * layout.panels[0].res, 6);
      }
      expect(Number.isNaN(where(type === "JUNGFRAU" ? 99 : 99, 0, 0).x)).toBe(true);
    }
  });

  it("between pixels: linear along ss and fs within a panel", () => {
    const layout = defaultLayout("AGIPD");
    const where = positioner(layout, "AGIPD");
    const a = where(3, 10, 20), b = where(3, 11, 20), mid = where(3, 10.5, 20);
    expect(mid.x).toBeCloseTo((a.x + b.x) / 2, 12);
    expect(mid.y).toBeCloseTo((a.y + b.y) / 2, 12);
  });

  it("a .geom file read back: a panel shifted by 10 pixels moves its peaks by 10 pixels", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-position-"));
    try {
      const layout = defaultLayout("AGIPD");
      const shifted = { ...layout, panels: layout.panels.map((p) => ({ ...p, cornerX: p.cornerX + 10 })) };
      const file = path.join(dir, "agipd.geom");
      fs.writeFileSync(file, writeGeom(shifted));
      const read = loadLayout(file, "AGIPD");
      const a = positioner(layout, "AGIPD")(5, 100.3, 40.7), b = positioner(read, "AGIPD")(5, 100.3, 40.7);
      const res = layout.panels[0].res;
      expect((b.x - a.x) * res).toBeCloseTo(10, 6);
      expect(b.y).toBeCloseTo(a.y, 9);
      expect(() => loadLayout(path.join(dir, "missing.geom"), "AGIPD")).toThrow(/missing\.geom/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
