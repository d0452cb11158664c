/**
 * `roi` on a generated spectrometer run (an emission line on module 0, masked and NaN pixels, a module
 * missing a train): against numpy/h5py on the input files (independent), against the generated line
 * (truth), GPU kernel against the CPU reference, any worker count, CLI under Node and Deno, output valid in
 * extra-data-validate and readable by extra_data.RunDirectory.
 */
import { algorithm } from "../src/cli/algorithms.ts";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeSpectrometerRun, type SpectrometerTruth } from "../fixtures/experiments.ts";
import type { Truth } from "../fixtures/synth.ts";
import { parseRoi, readRoiFile, roi, roiColumns, roiSummary, writeRoiDir } from "../src/reductions/roi.ts";
import { type RoiSpec } from "../src/reductions/roi-spec.ts";
import { FrameReader } from "../src/exdf/frames.ts";
import { Run } from "../src/exdf/run.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { InputError } from "../src/errors.ts";
import { runDenoTask, runNode } from "./helpers/cli.ts";
import { extraDataValidate, openWithExtraData, pythonHas, runPython } from "./helpers/python-refs.ts";
import { validateExdf } from "./helpers/exdf-validate.ts";

let tmp: string;
let run: string;
let truth: SpectrometerTruth;
let synth: Truth;
const DET = "SPB_DET_AGIPD1M-1";
const ROIS: RoiSpec[] = [
  { name: "line", module: 0, ss0: 100, ss1: 140, fs0: 0, fs1: 128 },
  { name: "bg", module: 1, ss0: 10, ss1: 74, fs0: 20, fs1: 90 },
];

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "roi-"));
  run = path.join(tmp, "run");
  ({ truth, synth } = await makeSpectrometerRun(run, {
    seed: 151,
    modules: [0, 1],
    trains: 4,
    trainsPerFile: 2,
    framesPerTrain: 6,
    missingTrains: [{ module: 1, trains: [2] }],
    maskedPixels: 200,
    nanPixels: 100,
  }));
}, 120_000);

afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

const NUMPY_ROI = `
import sys, json, glob, h5py, numpy as np
a = json.loads(sys.argv[1])
out = {}
for r in a["rois"]:
    rows = {}
    for f in sorted(glob.glob(a["dir"] + "/CORR-*-AGIPD%02d-S*.h5" % r["module"])):
        with h5py.File(f, "r") as h:
            g = h["INSTRUMENT/%s/DET/%dCH0:xtdf/image" % (a["det"], r["module"])]
            tid = g["trainId"][()]; pid = g["pulseId"][()]
            d = g["data"][:, r["ss0"]:r["ss1"], r["fs0"]:r["fs1"]].astype(np.float64)
            m = g["mask"][:, r["ss0"]:r["ss1"], r["fs0"]:r["fs1"]]
            ok = np.isfinite(d) & (m == 0)
            d = np.where(ok, d, 0.0)
            for i in range(len(tid)):
                if tid[i] == 0: continue
                rows["%d:%d" % (tid[i], pid[i])] = {"sum": float(d[i].sum()), "count": int(ok[i].sum()),
                    "spectrum": d[i].sum(axis=0).tolist()}
    out[r["name"]] = rows
print(json.dumps(out))
`;

describe("roi", () => {
  test("equals numpy over h5py on the input files; any worker count gives the same result", async () => {
    const one = await roi(run, { rois: ROIS, backend: "cpu", workers: 1 });
    const two = await roi(run, { rois: ROIS, backend: "cpu", workers: 2 });
    expect(Array.from(two.trainId)).toEqual(Array.from(one.trainId));
    ROIS.forEach((_, k) => {
      expect(Array.from(two.count[k])).toEqual(Array.from(one.count[k]));
      expect(Array.from(two.sum[k])).toEqual(Array.from(one.sum[k]));
    });
    expect(one.trainId.length).toBe(4 * 6);
    if (!pythonHas("h5py", "numpy")) return;
    const ref = runPython(NUMPY_ROI, { dir: run, det: DET, rois: ROIS });
    let missing = 0;
    ROIS.forEach((r, k) => {
      for (let i = 0; i < one.trainId.length; i++) {
        const e = ref[r.name][`${one.trainId[i]}:${one.pulseId[i]}`];
        if (!e) {
          missing++;
          expect(one.sum[k][i]).toBeNaN();
          expect(one.count[k][i]).toBe(0);
          continue;
        }
        expect(one.count[k][i]).toBe(e.count);
        expect(one.sum[k][i]).toBeCloseTo(e.sum, 6);
        expect(one.mean[k][i]).toBeCloseTo(e.sum / e.count, 9);
        const w = r.fs1 - r.fs0;
        for (let c = 0; c < w; c++) expect(one.spectrum[k][i * w + c]).toBeCloseTo(e.spectrum[c], 4);
      }
    });
    // Module 1 misses train 2: its 6 frames have no values.
    expect(missing).toBe(6);
  }, 120_000);

  test("finds the generated emission line: peak position and height", async () => {
    const r = await roi(run, { rois: [ROIS[0]], backend: "cpu", workers: 1 });
    const [s] = roiSummary(r);
    const spec = s.meanSpectrum;
    const peak = spec.indexOf(Math.max(...spec));
    expect(Math.abs(peak - truth.centre)).toBeLessThanOrEqual(1);
    // Centroid of the background-subtracted spectrum within 0.3 px of the line centre.
    const rows = truth.ss1 - truth.ss0;
    let num = 0, den = 0;
    spec.forEach((v, c) => {
      const x = v - truth.background * rows;
      if (Math.abs(c - truth.centre) < 4 * truth.sigma) (num += x * c), (den += x);
    });
    expect(Math.abs(num / den - truth.centre)).toBeLessThan(0.3);
    // Peak height: rows x (background + peak) photons, less the masked/NaN pixels (a few %), Poisson-noisy.
    const expected = rows *
      (truth.background + truth.peak * Math.exp(-((peak - truth.centre) ** 2) / (2 * truth.sigma ** 2)));
    expect(spec[peak] / expected).toBeGreaterThan(0.9);
    expect(spec[peak] / expected).toBeLessThan(1.05);
  }, 60_000);

  test("the WebGPU kernel equals the CPU reference (counts equal, sums close)", async (ctx) => {
    const gpu = await getGpuDevice();
    if (!gpu) {
      console.warn("roi GPU test SKIPPED: no WebGPU adapter");
      ctx.skip();
      return;
    }
    const { createRoiGpu } = await import("../src/reductions/roi-webgpu.ts");
    const rois = [...ROIS, { name: "edge", module: 0, ss0: 500, ss1: 512, fs0: 120, fs1: 128 }];
    const backend = await createRoiGpu(gpu.device, rois, [512, 128]);
    const r = await Run.open(run);
    try {
      const reader = new FrameReader(r.detector(), {
        modules: [0, 1],
        mask: true,
        batchBytes: 256 * 1024 * 7,
      });
      let batches = 0;
      for (const b of reader.batches()) {
        batches++;
        const g = await backend.columns(b);
        const c = roiColumns(b, rois, 128, 512 * 128);
        expect(Array.from(g.present)).toEqual(Array.from(c.present));
        expect(Array.from(g.colCount)).toEqual(Array.from(c.colCount));
        for (let i = 0; i < c.colSum.length; i++) {
          if (Number.isNaN(c.colSum[i])) expect(g.colSum[i]).toBeNaN();
          else {expect(Math.abs(g.colSum[i] - c.colSum[i])).toBeLessThanOrEqual(
              1e-6 * Math.max(1, Math.abs(c.colSum[i])),
            );}
        }
      }
      expect(batches).toBeGreaterThan(1);
    } finally {
      r.close();
      backend.dispose();
    }
    // End to end through the framework (prefetch reader, shared buffers): the same counts, sums close.
    const cpu = await roi(run, { rois: ROIS, backend: "cpu", workers: 1 });
    const viaGpu = await roi(run, { rois: ROIS, backend: "webgpu", workers: 1 });
    expect(viaGpu.backend).toBe("webgpu");
    ROIS.forEach((_, k) => {
      expect(Array.from(viaGpu.count[k])).toEqual(Array.from(cpu.count[k]));
      cpu.sum[k].forEach((v, i) => {
        if (Number.isNaN(v)) expect(viaGpu.sum[k][i]).toBeNaN();
        else expect(Math.abs(viaGpu.sum[k][i] - v)).toBeLessThanOrEqual(1e-6 * Math.abs(v));
      });
    });
  }, 120_000);

  test("--lit-only keeps the frames the beam annotation says are lit", async () => {
    const all = await roi(run, { rois: ROIS, backend: "cpu", workers: 2 });
    const lit = await roi(run, { rois: ROIS, backend: "cpu", workers: 2, litOnly: true });
    const want = synth.frames.filter((f) => f.lit).map((f) => `${f.trainId}:${f.pulseId}`);
    expect(want.length).toBeGreaterThan(0);
    expect(want.length).toBeLessThan(all.trainId.length);
    expect(Array.from(lit.trainId, (t, i) => `${t}:${lit.pulseId[i]}`)).toEqual(want);
    const ix = Array.from(all.trainId, (t, i) => `${t}:${all.pulseId[i]}`);
    lit.trainId.forEach((t, i) => {
      const j = ix.indexOf(`${t}:${lit.pulseId[i]}`);
      ROIS.forEach((_, k) => expect(lit.count[k][i]).toBe(all.count[k][j]));
    });
  }, 120_000);

  test(
    "SLURM parts and merge (spill files in the work directory) give the single-process output",
    async () => {
      const { prepareJob, runJobPart, mergeJob } = await import("../src/framework/slurm.ts");
      const out = path.join(tmp, "out-slurm");
      const { work, todo } = await prepareJob(
        algorithm("roi"),
        run,
        out,
        { rois: ROIS, backend: "cpu" },
        2,
        false,
      );
      const before = process.env.XFEL_REDU_SPILL_DIR;
      process.env.XFEL_REDU_SPILL_DIR = work; // as task.sh sets it
      try {
        for (const i of todo) expect(await runJobPart(work, i)).toBe(true);
      } finally {
        if (before === undefined) delete process.env.XFEL_REDU_SPILL_DIR;
        else process.env.XFEL_REDU_SPILL_DIR = before;
      }
      // Per part: its records and its frames' ids.
      const spills = () => fs.readdirSync(work).filter((f) => f.endsWith(".spill"));
      expect(spills()).toHaveLength(4);
      expect(spills().filter((f) => f.includes("-ids-"))).toHaveLength(2);
      await mergeJob(work);
      // The parts' spill files stay with the parts: the merge can be rerun, with the same output.
      expect(spills()).toHaveLength(4);
      const single = roiSummary(await roi(run, { rois: ROIS, backend: "cpu", workers: 1 }));
      const js = JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8"));
      ROIS.forEach((_, k) => {
        expect(js.roi[k].count).toBe(single[k].count);
        expect(js.roi[k].meanSum).toBeCloseTo(single[k].meanSum, 9);
      });
      await mergeJob(work);
      expect(JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8")).roi).toEqual(js.roi);
    },
    120_000,
  );

  test("region parsing: good and bad input", () => {
    expect(parseRoi("kb=3:0:64:10:120")).toEqual({
      name: "kb",
      module: 3,
      ss0: 0,
      ss1: 64,
      fs0: 10,
      fs1: 120,
    });
    expect(() => parseRoi("kb=3:0:64:10")).toThrow(InputError);
    expect(() => parseRoi("k b=3:0:64:10:120")).toThrow(/letters, digits/);
    expect(() => parseRoi("kb=3:64:64:10:120")).toThrow(/empty/);
    const f = path.join(tmp, "rois.json");
    fs.writeFileSync(f, JSON.stringify({ regions: [{ name: "a", module: 0, ss: [0, 2], fs: [0, 3] }] }));
    expect(readRoiFile(f)).toEqual([{ name: "a", module: 0, ss0: 0, ss1: 2, fs0: 0, fs1: 3 }]);
    fs.writeFileSync(f, '[{"name": "a", "module": 0, "ss": [0]}]');
    expect(() => readRoiFile(f)).toThrow(/rois\.json: region 0/);
  });

  test(
    "writes a valid EuXFEL file and summary.json; CLI under Node and Deno; bad input exits 2",
    async () => {
      const r = await roi(run, { rois: ROIS, backend: "cpu", workers: 1 });
      const out = path.join(tmp, "out-api");
      const summary = await writeRoiDir(r, out);
      expect(summary.ratio).toBeGreaterThan(10);
      const files = fs.readdirSync(out).filter((f) => f.endsWith(".h5"));
      expect(files).toEqual(["CORR-R0001-REDU03-S00000.h5"]);
      expect(await validateExdf(path.join(out, files[0]))).toEqual([]);
      const js = JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8"));
      expect(js.roi.map((x: { name: string }) => x.name)).toEqual(["line", "bg"]);
      expect(js.bytesIn / js.bytesOut).toBeCloseTo(js.ratio, 6);
      // The report section: a self-contained page with the numbers and the spectra.
      const html = fs.readFileSync(path.join(out, "report.html"), "utf8");
      expect(html).toContain(`data-key="ratio" data-value="${js.ratio}"`);
      expect(html.match(/<polyline /g)).toHaveLength(2);
      expect(html.replaceAll("http://www.w3.org/2000/svg", "")).not.toMatch(/https?:|<script src|<link /);
      fs.rmSync(path.join(out, "report.html"));
      const rep = runNode(["report", out]);
      expect(rep.code, rep.stderr).toBe(0);
      expect(fs.readFileSync(path.join(out, "report.html"), "utf8")).toBe(html);

      if (pythonHas("extra_data")) {
        const v = extraDataValidate(out);
        expect(v.status, v.output).toBe(0);
        const src = `${DET}/REDU/ROI:output`;
        const ed = openWithExtraData(out, {
          [src]: ["data.line.sum", "data.line.spectrum", "data.bg.count"],
        });
        expect(ed.trains).toBe(4);
        expect(ed.sources).toContain(src);
        expect(ed.keys[src]["data.line.spectrum"].shape).toEqual([24, 128]);
        const total = Array.from(r.sum[0]).reduce((a, b) => a + (Number.isNaN(b) ? 0 : b), 0);
        expect(ed.keys[src]["data.line.sum"].sum).toBeCloseTo(total, 3);
      }

      // The CLI (Node, compiled dist/) and Deno give the same numbers.
      const cliOut = path.join(tmp, "out-node");
      const args = [run, "--roi", "line=0:100:140:0:128", "--roi", "bg=1:10:74:20:90", "--backend", "cpu"];
      const n = runNode(["roi", ...args, "--out", cliOut, "--json"]);
      expect(n.code, n.stderr).toBe(0);
      const ns = JSON.parse(fs.readFileSync(path.join(cliOut, "summary.json"), "utf8"));
      expect(ns.roi[0].meanSum).toBeCloseTo(js.roi[0].meanSum, 9);
      const denoOut = path.join(tmp, "out-deno");
      const d = runDenoTask("roi", [...args, "--out", denoOut]);
      expect(d.code, d.stderr).toBe(0);
      const ds = JSON.parse(fs.readFileSync(path.join(denoOut, "summary.json"), "utf8"));
      expect(ds.roi[1].count).toBe(js.roi[1].count);

      const bad = runNode(["roi", run, "--roi", "x=7:0:1:0:1", "--out", path.join(tmp, "bad")]);
      expect(bad.code).toBe(2);
      expect(bad.stderr.trim().split("\n")).toHaveLength(1);
      expect(bad.stderr).toMatch(/region x: no module 7/);
      expect(fs.existsSync(path.join(tmp, "bad"))).toBe(false);
    },
    240_000,
  );
});
