/**
 * Peak resolution (REDU `data.peakResolution`, Angstrom): d = lambda / (2 sin(theta)), 2 theta =
 * atan(r / clen), lambda = hc / E. Checked against hand-computed values, and end to end on the committed
 * sample run: photon energy and clen from a .geom file, from --photon-energy / --clen (which override the
 * file), and NaN when unknown; summary.json states them and the background estimate used.
 */
import { afterAll, describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { defaultLayout, writeGeom } from "../src/exdf/geometry.ts";
import { h5, readAll } from "../src/exdf/h5.ts";
import { localise } from "../src/localise/algorithm.ts";
import { writeLocaliseDir } from "../src/localise/output.ts";
import { toLocaliseOptions } from "../src/cli/localise.ts";
import { resolutionAngstrom } from "../src/localise/position.ts";

const SAMPLE = path.resolve(__dirname, "../fixtures/sample");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-resolution-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe("resolutionAngstrom", () => {
  it("hand-computed values", () => {
    // E = hc / 1 A: lambda = 1 A. clen 0.1 m, r 0.1 m: 2 theta = 45 deg, d = 1 / (2 sin 22.5 deg).
    expect(resolutionAngstrom(0.1, 12398.419843320026, 0.1)).toBeCloseTo(1.3065629648763766, 12);
    // 9.3 keV (lambda 1.33316 A), clen 0.12 m, r = 0.05 m: 2 theta = atan(0.41667) = 22.6199 deg,
    // theta = 11.30993 deg, sin = 0.196116, d = 1.333163 / 0.392232 = 3.398918 A.
    expect(resolutionAngstrom(0.05, 9300, 0.12)).toBeCloseTo(3.3989132, 6);
    expect(resolutionAngstrom(0, 9300, 0.12)).toBe(Infinity);
    expect(resolutionAngstrom(0.05, undefined, 0.12)).toBeNaN();
    expect(resolutionAngstrom(0.05, 9300, undefined)).toBeNaN();
    expect(resolutionAngstrom(NaN, 9300, 0.12)).toBeNaN();
  });
});

async function peakTable(dir: string) {
  const lib = await h5();
  const name = fs.readdirSync(dir).find((n) => n.includes("REDU00"))!;
  const f = new lib.File(path.join(dir, name), "r");
  try {
    const g = "INSTRUMENT/SPB_DET_AGIPD1M-1/REDU/LOCALISE:output/data";
    return {
      n: readAll(f, `${g}/nPeaks`) as Uint32Array,
      x: readAll(f, `${g}/peakX`) as Float32Array,
      y: readAll(f, `${g}/peakY`) as Float32Array,
      d: readAll(f, `${g}/peakResolution`) as Float32Array,
      maxPeaks: (f.get(`${g}/peakX`) as InstanceType<typeof lib.Dataset>).shape![1],
    };
  } finally {
    f.close();
  }
}

async function run(name: string, cli: Record<string, unknown>) {
  const r = await localise(SAMPLE, { ...toLocaliseOptions({ batchMb: 128, ...cli }), backend: "cpu" });
  const dir = path.join(tmp, name);
  try {
    await writeLocaliseDir(r, dir);
  } finally {
    r.dispose();
  }
  return {
    t: await peakTable(dir),
    summary: JSON.parse(fs.readFileSync(path.join(dir, "summary.json"), "utf8")),
  };
}

describe("REDU peakResolution", () => {
  const geom = path.join(tmp, "agipd.geom");
  fs.writeFileSync(geom, writeGeom(defaultLayout("AGIPD"), { photonEnergy: 9300, clen: 0.12 }));

  it("from the .geom file's photon_energy and clen; options override; NaN when unknown", async () => {
    const a = await run("geom", { geometry: geom });
    const b = await run("opts", { geometry: geom, photonEnergy: 12398.419843320026, clen: 0.2 });
    const c = await run("none", {});
    expect(a.summary.resolution).toEqual({
      photonEnergy: 9300,
      clen: 0.12,
      photonEnergyFrom: "geometry",
      clenFrom: "geometry",
    });
    expect(b.summary.resolution.photonEnergyFrom).toBe("option");
    expect(b.summary.params.clen).toBe(0.2);
    expect(c.summary.resolution.clenFrom).toBe("unknown");
    expect(a.summary.background.method).toBe(`radius bins of width 4 px from geometry ${geom}`);
    expect(c.summary.background.method).toBe("radius bins of width 4 px from geometry default AGIPD-1M");
    let checked = 0;
    const t = a.t;
    for (let f = 0; f < t.n.length; f++) {
      for (let j = 0; j < Math.min(t.n[f], t.maxPeaks); j++) {
        const k = f * t.maxPeaks + j;
        const r = Math.hypot(t.x[k], t.y[k]);
        // By hand: lambda = 12398.42 / 9300; theta = atan(r / 0.12) / 2.
        const d = (12398.419843320026 / 9300) / (2 * Math.sin(Math.atan(r / 0.12) / 2));
        expect(t.d[k]).toBeCloseTo(d, 3);
        // 1 A and 0.2 m.
        expect(b.t.d[k]).toBeCloseTo(1 / (2 * Math.sin(Math.atan(r / 0.2) / 2)), 3);
        expect(c.t.d[k]).toBeNaN();
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(10);
  }, 120_000);

  it("tiles without geometry: summary.json says so", async () => {
    const t = await run("tiles", { bgBinWidth: 0 });
    expect(t.summary.background).toEqual({ method: "16x16 tiles, no geometry", binWidth: 0, layout: null });
  }, 60_000);
});
