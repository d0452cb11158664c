/**
 * `azint` on a generated powder/SAXS run (4 AGIPD modules of the built-in layout, rings at known q on a SAXS
 * falloff, masked and NaN pixels): against pyFAI 0.21 (the same pixel corners through
 * `Detector.set_pixel_corners`, method ("no", "csr", "cython"), solid angle on) bin by bin; against the
 * generated rings (truth); GPU kernel against the CPU reference; any worker count; CLI under Node and Deno;
 * output valid in extra-data-validate and readable by extra_data.RunDirectory.
 */
import { algorithm } from "../src/cli/algorithms.ts";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makePowderRun, type PowderTruth } from "../fixtures/experiments.ts";
import type { Truth } from "../fixtures/synth.ts";
import {
  azint,
  azintFrames,
  type AzintOptions,
  azintSetup,
  binOf,
  DEFAULT_AZINT,
  modulePixels,
  pixelTable,
  writeAzintDir,
} from "../src/reductions/azint.ts";
import { NO_BIN } from "../src/reductions/azint-spec.ts";
import { defaultLayout, pixelCorners, writeGeom } from "../src/exdf/geometry.ts";
import { FrameReader } from "../src/exdf/frames.ts";
import { Run } from "../src/exdf/run.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { runDenoTask, runNode } from "./helpers/cli.ts";
import { extraDataValidate, openWithExtraData, pythonHas, runPython } from "./helpers/python-refs.ts";
import { validateExdf } from "./helpers/exdf-validate.ts";

let tmp: string;
let run: string;
let geom: string;
let truth: PowderTruth;
let synth: Truth;
const DET = "SPB_DET_AGIPD1M-1";
const MODULES = [0, 1, 2, 3];
const BINS = 200;
const RANGE: [number, number] = [1, 14];

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "azint-"));
  run = path.join(tmp, "run");
  // Bright (scale 100: about 500 photons per pixel of background), so that the few pixels whose centre
  // lies on a bin edge within float32 precision (binned by pyFAI on the other side) move a bin's mean by
  // less than 1e-4.
  ({ truth, synth } = await makePowderRun(
    run,
    { seed: 77, modules: MODULES, trains: 2, framesPerTrain: 3, nanPixels: 200 },
    { scale: 100 },
  ));
  geom = path.join(tmp, "agipd.geom");
  fs.writeFileSync(
    geom,
    writeGeom(defaultLayout("AGIPD"), { clen: truth.clen, photonEnergy: truth.photonEnergy }),
  );
}, 120_000);

afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** pyFAI on the same frames: per frame, and on the sum of the frames (the run). */
const PYFAI = `
import sys, json, glob, h5py, numpy as np
from pyFAI.detectors import Detector
from pyFAI.azimuthalIntegrator import AzimuthalIntegrator
a = json.loads(sys.argv[1])
mods = a["modules"]; ss, fs = a["shape"]
corners = np.fromfile(a["corners"], dtype="<f8").reshape(len(mods) * ss, fs, 4, 3)[..., ::-1].astype(np.float32)
det = Detector(pixel1=a["pixel"], pixel2=a["pixel"], max_shape=(len(mods) * ss, fs))
det.set_pixel_corners(np.ascontiguousarray(corners))
ai = AzimuthalIntegrator(dist=a["distance"], poni1=0, poni2=0, detector=det,
                         wavelength=12.398419843320026 / (a["energy"] / 1000) * 1e-10)
imgs = {}
for k, m in enumerate(mods):
    for f in sorted(glob.glob(a["dir"] + "/*-AGIPD%02d-S*.h5" % m)):
        with h5py.File(f, "r") as h:
            g = h["INSTRUMENT/%s/DET/%dCH0:xtdf/image" % (a["det"], m)]
            tid = g["trainId"][()]; pid = g["pulseId"][()]; d = g["data"][()]; mk = g["mask"][()]
            for i in range(len(tid)):
                if tid[i] == 0: continue
                img, bad = imgs.setdefault("%d:%d" % (tid[i], pid[i]),
                    (np.full((len(mods) * ss, fs), np.nan, np.float32), np.ones((len(mods) * ss, fs), np.int8)))
                img[k * ss:(k + 1) * ss] = d[i]
                bad[k * ss:(k + 1) * ss] = (mk[i] != 0) | ~np.isfinite(d[i])
kw = dict(npt=a["bins"], unit=a["unit"], radial_range=tuple(a["range"]), method=("no", "csr", "cython"),
          correctSolidAngle=a["solidAngle"], polarization_factor=a.get("polarization"))
out = {"frames": {}}
tot = None
for key, (img, bad) in imgs.items():
    r = ai.integrate1d(img, mask=bad, **kw)
    out["frames"][key] = {"intensity": r.intensity.tolist(), "count": r.count.tolist()}
    out["radial"] = r.radial.tolist()
    tot = np.where(bad, 0, img) if tot is None else tot + np.where(bad, 0, img)
out["sum"] = ai.integrate1d(tot, mask=bad, **kw).intensity.tolist()
out["nframes"] = len(imgs)
print(json.dumps(out))
`;

function pyfai(opts: { solidAngle: boolean; polarization?: number; unit: string; range: [number, number] }) {
  const corners = new Float64Array(MODULES.length * 512 * 128 * 12);
  const L = defaultLayout("AGIPD");
  MODULES.forEach((m, k) => corners.set(pixelCorners(L, m), k * 512 * 128 * 12));
  const cf = path.join(tmp, "corners.bin");
  fs.writeFileSync(cf, new Uint8Array(corners.buffer));
  return runPython(PYFAI, {
    dir: run,
    det: DET,
    modules: MODULES,
    shape: [512, 128],
    corners: cf,
    pixel: 200e-6,
    distance: truth.clen,
    energy: truth.photonEnergy,
    bins: BINS,
    ...opts,
  });
}

/**
 * Ours vs pyFAI per frame and for the run, bin by bin. The first and last bins are left out: pyFAI 0.21
 * (CSR and histogram engines alike) adds the pixels below / above `radial_range` to them (checked: an image
 * of ones with 100 below the range gives 44.9 in bin 0), where this spec drops them.
 * - Bins where pyFAI counts the same pixels: relative difference <= 1e-4.
 * - Bins where the counts differ (ties): a pixel centre lies on the bin's edge within float32 precision
 *   (pyFAI's positions are float32; ours float64), so each such bin must have one of our pixels within
 *   1e-4 bin widths of an edge, differ by at most 2 pixels, and be rare (<= 5 % of the bins).
 */
function compare(r: Awaited<ReturnType<typeof azint>>, ref: any, o: Partial<AzintOptions>): number {
  // Distance of the nearest pixel to each edge, in bin widths.
  const det = { type: "AGIPD", modules: MODULES.map((m) => ({ module: m })) } as any;
  const full = { ...DEFAULT_AZINT, ...o } as AzintOptions;
  const setup = azintSetup(det, full);
  const near = new Float64Array(BINS + 1).fill(Infinity);
  const [a, b] = setup.range;
  for (const m of MODULES) {
    const { value } = modulePixels(setup.layout, m, full, setup.energy, setup.distance);
    for (const v of value) {
      const t = ((v - a) / (b - a)) * BINS;
      const e = Math.round(t);
      if (e >= 0 && e <= BINS) near[e] = Math.min(near[e], Math.abs(t - e));
    }
  }
  let worst = 0, bins = 0, ties = 0;
  for (let i = 0; i < r.trainId.length; i++) {
    const theirs = ref.frames[`${r.trainId[i]}:${r.pulseId[i]}`];
    for (let k = 1; k < BINS - 1; k++) {
      const n = r.count[i * BINS + k];
      const ours = r.intensity[i * BINS + k];
      if (n === 0) {
        expect(ours).toBeNaN();
        expect(theirs.count[k]).toBe(0);
        continue;
      }
      bins++;
      if (theirs.count[k] !== n) {
        ties++;
        expect(Math.abs(theirs.count[k] - n)).toBeLessThanOrEqual(2);
        expect(Math.min(near[k], near[k + 1])).toBeLessThan(1e-4);
        continue;
      }
      worst = Math.max(worst, Math.abs(ours - theirs.intensity[k]) / Math.abs(theirs.intensity[k]));
    }
  }
  expect(bins).toBeGreaterThan(100 * r.trainId.length);
  expect(ties).toBeLessThanOrEqual(0.05 * bins);
  // The run: pyFAI on the summed frames divides by the corrections once; ours pools S and C over frames.
  const tied = (k: number) =>
    r.trainId.some((t, i) => ref.frames[`${t}:${r.pulseId[i]}`].count[k] !== r.count[i * BINS + k]);
  for (let k = 1; k < BINS - 1; k++) {
    if (!r.runCount[k] || tied(k)) continue;
    worst = Math.max(worst, Math.abs(r.runMean[k] * ref.nframes - ref.sum[k]) / Math.abs(ref.sum[k]));
  }
  expect(worst).toBeLessThan(1e-4);
  console.info(
    `azint vs pyFAI: ${bins} frame-bins, ${ties} ties, worst relative difference ${worst.toExponential(2)}`,
  );
  return worst;
}

describe("azint", () => {
  test("equals pyFAI 0.21 bin by bin (q, solid angle) and is the same for any worker count", async (ctx) => {
    const base = { geometry: geom, bins: BINS, range: RANGE, backend: "cpu" as const };
    const one = await azint(run, { ...base, workers: 1 });
    const two = await azint(run, { ...base, workers: 2 });
    expect(Array.from(two.count)).toEqual(Array.from(one.count));
    expect(Array.from(two.intensity)).toEqual(Array.from(one.intensity));
    expect(one.trainId.length).toBe(6);
    if (!pythonHas("pyFAI", "h5py")) return ctx.skip();
    compare(one, pyfai({ solidAngle: true, unit: "q_nm^-1", range: RANGE }), { ...base, geometry: geom });
  }, 180_000);

  test("equals pyFAI with polarisation, in 2theta without solid angle", async (ctx) => {
    if (!pythonHas("pyFAI", "h5py")) return ctx.skip();
    const range: [number, number] = [2, 30];
    const a = await azint(run, {
      geometry: geom,
      bins: BINS,
      range,
      unit: "2th_deg",
      solidAngle: false,
      polarization: 0.95,
      backend: "cpu",
      workers: 1,
    });
    compare(a, pyfai({ solidAngle: false, polarization: 0.95, unit: "2th_deg", range }), {
      geometry: geom,
      range,
      unit: "2th_deg",
      solidAngle: false,
      polarization: 0.95,
    });
  }, 180_000);

  test("finds the generated rings at their q; the corrected profile follows the generated I(q)", async () => {
    const r = await azint(run, { geometry: geom, bins: 380, backend: "cpu", workers: 1 });
    const centre = (k: number) => (r.edges[k] + r.edges[k + 1]) / 2;
    const model = (q: number) =>
      truth.scale * (truth.background + truth.saxs / (1 + (q / truth.q0) ** 2) ** 2 +
        truth.rings.reduce((s, g) => s + g.peak * Math.exp(-((q - g.q) ** 2) / (2 * truth.width ** 2)), 0));
    for (const ring of truth.rings) {
      // Local maximum of the run mean within +-0.3 nm^-1 of the ring: at the ring's q within a bin.
      let best = -1;
      for (let k = 0; k < 380; k++) {
        if (Math.abs(centre(k) - ring.q) > 0.3 || !r.runCount[k]) continue;
        if (best < 0 || r.runMean[k] > r.runMean[best]) best = k;
      }
      expect(best).toBeGreaterThanOrEqual(0);
      expect(Math.abs(centre(best) - ring.q)).toBeLessThanOrEqual(r.edges[1] - r.edges[0]);
    }
    // Where bins hold many pixels, the run mean is the model within 5 % (Poisson noise, pixel-centre binning
    // of a steep falloff).
    let checked = 0;
    for (let k = 0; k < 380; k++) {
      if (r.runCount[k] < 600) continue;
      checked++;
      expect(Math.abs(r.runMean[k] / model(centre(k)) - 1)).toBeLessThan(0.05);
    }
    expect(checked).toBeGreaterThan(50);
  }, 120_000);

  test("the WebGPU kernel equals the CPU reference (counts equal, sums close)", async (ctx) => {
    const gpu = await getGpuDevice();
    if (!gpu) {
      console.warn("azint GPU test SKIPPED: no WebGPU adapter");
      return ctx.skip();
    }
    const { createAzintGpu } = await import("../src/reductions/azint-webgpu.ts");
    const r = await Run.open(run);
    try {
      const det = r.detector();
      const o = {
        geometry: geom,
        bins: 100,
        unit: "q_nm^-1",
        solidAngle: true,
        polarization: 0.9,
      } as AzintOptions;
      const setup = azintSetup(det, o);
      const t = pixelTable(setup, MODULES, o);
      const backend = await createAzintGpu(gpu.device, t, 100);
      try {
        const reader = new FrameReader(det, { modules: MODULES, mask: true, batchBytes: 256 * 1024 * 4 });
        let batches = 0;
        for (const b of reader.batches()) {
          batches++;
          const g = await backend.frames(b);
          const c = azintFrames(b, t, 100);
          expect(Array.from(g.count)).toEqual(Array.from(c.count));
          for (let j = 0; j < c.sum.length; j++) {
            expect(Math.abs(g.sum[j] - c.sum[j])).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(c.sum[j])));
            expect(Math.abs(g.norm[j] - c.norm[j])).toBeLessThanOrEqual(
              1e-5 * Math.max(1, Math.abs(c.norm[j])),
            );
          }
        }
        expect(batches).toBeGreaterThan(1);
      } finally {
        backend.dispose();
      }
    } finally {
      r.close();
    }
    // End to end through the framework (prefetch reader, shared buffers): the same counts, means close.
    const base = { geometry: geom, bins: BINS, range: RANGE, workers: 1 };
    const cpu = await azint(run, { ...base, backend: "cpu" });
    const viaGpu = await azint(run, { ...base, backend: "webgpu" });
    expect(viaGpu.backend).toBe("webgpu");
    expect(Array.from(viaGpu.count)).toEqual(Array.from(cpu.count));
    cpu.intensity.forEach((v, j) => {
      if (Number.isNaN(v)) expect(viaGpu.intensity[j]).toBeNaN();
      else expect(Math.abs(viaGpu.intensity[j] - v)).toBeLessThanOrEqual(1e-5 * Math.abs(v));
    });
  }, 120_000);

  test("SLURM parts (module groups) and their merge give the single-process output", async () => {
    const { prepareJob, runJobPart, mergeJob } = await import("../src/framework/slurm.ts");
    const out = path.join(tmp, "out-slurm");
    const options = { ...DEFAULT_AZINT, geometry: geom, bins: BINS, range: RANGE, backend: "cpu" };
    const { work, todo } = await prepareJob(algorithm("azint"), run, out, options, 3, false);
    expect(todo).toEqual([0, 1, 2]);
    for (const i of todo) expect(await runJobPart(work, i)).toBe(true);
    await mergeJob(work);
    const single = await azint(run, { geometry: geom, bins: BINS, range: RANGE, backend: "cpu", workers: 1 });
    const js = JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8"));
    expect(js.azint.count).toEqual(Array.from(single.runCount));
    js.azint.mean.forEach((v: number | null, k: number) => {
      if (v === null) expect(single.runMean[k]).toBeNaN();
      else expect(Math.abs(v - single.runMean[k])).toBeLessThanOrEqual(1e-12 * Math.abs(v));
    });
  }, 120_000);

  test("--lit-only keeps the frames the beam annotation says are lit", async () => {
    const all = await azint(run, { geometry: geom, bins: 50, backend: "cpu", workers: 1 });
    const lit = await azint(run, { geometry: geom, bins: 50, backend: "cpu", workers: 1, litOnly: true });
    expect(lit.litFrom).toBe("beam");
    const want = synth.frames.filter((f) => f.lit).map((f) => `${f.trainId}:${f.pulseId}`);
    expect(want.length).toBeGreaterThan(0);
    expect(want.length).toBeLessThan(all.trainId.length);
    expect(Array.from(lit.trainId, (t, i) => `${t}:${lit.pulseId[i]}`)).toEqual(want);
    // Each kept frame's profile is the one of the full run.
    const ix = Array.from(all.trainId, (t, i) => `${t}:${all.pulseId[i]}`);
    lit.trainId.forEach((t, i) => {
      const j = ix.indexOf(`${t}:${lit.pulseId[i]}`);
      expect(Array.from(lit.count.subarray(i * 50, (i + 1) * 50))).toEqual(
        Array.from(all.count.subarray(j * 50, (j + 1) * 50)),
      );
    });
  }, 120_000);

  test("binning: edges, the upper edge in the last bin, outside none", () => {
    expect(binOf(0, 0, 1, 10)).toBe(0);
    expect(binOf(0.0999, 0, 1, 10)).toBe(0);
    expect(binOf(0.1, 0, 1, 10)).toBe(1);
    expect(binOf(1, 0, 1, 10)).toBe(9);
    expect(binOf(1.0001, 0, 1, 10)).toBe(NO_BIN);
    expect(binOf(-0.0001, 0, 1, 10)).toBe(NO_BIN);
    expect(binOf(NaN, 0, 1, 10)).toBe(NO_BIN);
  });

  test(
    "writes a valid EuXFEL file and summary.json; CLI under Node and Deno; bad input exits 2",
    async () => {
      const r = await azint(run, { geometry: geom, bins: BINS, range: RANGE, backend: "cpu", workers: 1 });
      const out = path.join(tmp, "out-api");
      const summary = await writeAzintDir(r, out);
      const files = fs.readdirSync(out).filter((f) => f.endsWith(".h5"));
      expect(files).toEqual(["CORR-R0001-REDU04-S00000.h5"]);
      expect(await validateExdf(path.join(out, files[0]))).toEqual([]);
      const js = JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8"));
      expect(js.azint.unit).toBe("q_nm^-1");
      expect(js.azint.edges).toHaveLength(BINS + 1);
      expect(js.azint.mean).toHaveLength(BINS);
      expect(js.ratio).toBeCloseTo(js.bytesIn / js.bytesOut, 6);
      expect(fs.readFileSync(path.join(out, "report.html"), "utf8")).toMatch(
        /data-key="ratio"[\s\S]*<polyline /,
      );
      expect(summary.ratio).toBeGreaterThan(10);
      if (pythonHas("extra_data")) {
        const v = extraDataValidate(out);
        expect(v.status, v.output).toBe(0);
        const src = `${DET}/REDU/AZINT:output`;
        const ctl = `${DET}/REDU/AZINT`;
        const ed = openWithExtraData(out, {
          [src]: ["data.intensity", "data.count"],
          [ctl]: ["trainMean.value", "radialAxis.value"],
        });
        expect(ed.trains).toBe(2);
        expect(ed.keys[src]["data.intensity"].shape).toEqual([6, BINS]);
        expect(ed.keys[ctl]["trainMean.value"].shape).toEqual([2, BINS]);
        const total = Array.from(r.count).reduce((a, b) => a + b, 0);
        expect(ed.keys[src]["data.count"].sum).toBe(total);
      }
      const args = [
        run,
        "--geometry",
        geom,
        "--bins",
        String(BINS),
        "--range",
        RANGE.join(","),
        "--backend",
        "cpu",
      ];
      const n = runNode(["azint", ...args, "--out", path.join(tmp, "out-node")]);
      expect(n.code, n.stderr).toBe(0);
      const ns = JSON.parse(fs.readFileSync(path.join(tmp, "out-node", "summary.json"), "utf8"));
      expect(ns.azint.count).toEqual(js.azint.count);
      expect(ns.azint.mean[100]).toBeCloseTo(js.azint.mean[100], 9);
      const d = runDenoTask("azint", [...args, "--out", path.join(tmp, "out-deno")]);
      expect(d.code, d.stderr).toBe(0);
      const ds = JSON.parse(fs.readFileSync(path.join(tmp, "out-deno", "summary.json"), "utf8"));
      expect(ds.azint.mean[100]).toBeCloseTo(js.azint.mean[100], 9);

      // A geometry file without clen and no --distance: one line, exit 2, nothing written.
      const noClen = path.join(tmp, "noclen.geom");
      fs.writeFileSync(noClen, writeGeom(defaultLayout("AGIPD")));
      const bad = runNode(["azint", run, "--geometry", noClen, "--out", path.join(tmp, "bad")]);
      expect(bad.code).toBe(2);
      expect(bad.stderr.trim().split("\n")).toEqual([
        `xfel-redu: ${noClen}: no detector distance: give clen in the geometry file or --distance METRES`,
      ]);
      expect(fs.existsSync(path.join(tmp, "bad"))).toBe(false);
      const badGeom = path.join(tmp, "bad.geom");
      fs.writeFileSync(badGeom, "p0a0/fs = sideways\n");
      const bg = runNode(["azint", run, "--geometry", badGeom, "--out", path.join(tmp, "bad")]);
      expect(bg.code).toBe(2);
      expect(bg.stderr.trim()).toMatch(/^xfel-redu: \S+bad\.geom: line 1: /);
    },
    300_000,
  );
});
