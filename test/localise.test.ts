/**
 * The whole localise pipeline on synthetic runs, measured against their ground truth, and the two backends
 * against each other; the CLI contract (outputs, refusals) through Node and Deno.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun, type Truth } from "../fixtures/synth.ts";
import { evaluate } from "../fixtures/evaluate.ts";
import { hotSampleSize, localise, LocaliseAlgorithm } from "../src/localise/algorithm.ts";
import { type LocaliseResult } from "../src/localise/result.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { ROOT, runDenoTask, runNode } from "./helpers/cli.ts";
import { validateExdf } from "./helpers/exdf-validate.ts";
import { readIndependent } from "./helpers/independent-h5.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-localise-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let run: string;
let truth: Truth;
let cpu: LocaliseResult;

beforeAll(async () => {
  run = path.join(tmp, "sfx");
  // SFX-like: 4 modules, 6 trains x 24 frames, 30 % lit, spots near ASIC edges, hot, masked, NaN, dead ASIC.
  truth = await makeRun(run, {
    seed: 11,
    modules: [0, 1, 2, 3],
    trains: 6,
    framesPerTrain: 24,
    trainsPerFile: 3,
    missingTrains: [{ module: 3, trains: [2] }],
    deadAsics: [{ module: 1, asic: 5, mode: "zero" }],
  });
  cpu = await localise(run, { backend: "cpu" });
}, 300_000);

describe("against the ground truth (cpu backend)", () => {
  test("lit frames: recall >= 0.99, precision >= 0.98", () => {
    const e = evaluate(cpu, path.join(run, "truth.json"));
    expect(e.litTruth).toBeGreaterThan(20);
    expect(e.litRecall).toBeGreaterThanOrEqual(0.99);
    expect(e.litPrecision).toBeGreaterThanOrEqual(0.98);
  });

  test("spots: recall >= 0.97; peaks: precision >= 0.95", () => {
    const e = evaluate(cpu, path.join(run, "truth.json"));
    expect(e.spots).toBeGreaterThan(100);
    expect(e.spotRecall).toBeGreaterThanOrEqual(0.97);
    expect(e.peakPrecision).toBeGreaterThanOrEqual(0.95);
  });

  test("ROIs: scattered spots make none (signal persistence); --roi-fraction 0: every spot inside one", async () => {
    // The spots of this run fall anywhere on the modules: no pixel carries peaks in 10 % of the lit frames.
    for (const m of cpu.modules) expect(m.rois).toEqual([]);
    const union = await localise(run, { backend: "cpu", roiFraction: 0 });
    const e = evaluate(union, path.join(run, "truth.json"));
    expect(e.spotsOutsideRois).toBe(0);
    for (const m of union.modules) {
      expect(m.rois.length).toBeGreaterThan(0);
      expect(m.rois.length).toBeLessThanOrEqual(cpu.params.maxRois);
    }
  });

  test("hot pixels are found; hot, masked and NaN pixels make no peaks", () => {
    const e = evaluate(cpu, path.join(run, "truth.json"));
    expect(e.peaksOnBadPixels).toBe(0);
    for (const h of truth.hotPixels) {
      const m = cpu.modules.find((x) => x.module === h.module)!;
      expect(m.hotPixels).toContainEqual([h.ss, h.fs]);
    }
    // No peak is centred on a hot, NaN or masked pixel, nor on the masked columns.
    const bad = new Set<string>();
    for (const h of truth.hotPixels) bad.add(`${h.module}:${h.ss}:${h.fs}`);
    for (const n of truth.nanPixels) bad.add(`${n.module}:${n.ss}:${n.fs}`);
    for (const f of cpu.perFrame.peaks) {
      for (const p of f) {
        expect(bad.has(`${p.module}:${Math.round(p.ss)}:${Math.round(p.fs)}`)).toBe(false);
        const cols = truth.maskedPixels.find((m) => m.module === p.module)?.columns ?? [];
        if (p.area <= 3) expect(cols.includes(Math.round(p.fs))).toBe(false);
      }
    }
  });

  test("module frames and selection follow the data", () => {
    const m3 = cpu.modules.find((m) => m.module === 3)!;
    expect(m3.frames).toBe(truth.frames.filter((f) => f.modules.includes(3)).length);
    expect(cpu.modules.every((m) => m.selected)).toBe(true);
    expect(cpu.selectedFiles.length).toBe(8);
  });
});

describe("hot-pixel sample", () => {
  test("at most hotSample frames, an eighth of the run, at least 64; blocks of 16 spread over the run", () => {
    expect(hotSampleSize(40, 128)).toBe(40); // a short run: all of it
    expect(hotSampleSize(352, 128)).toBe(64); // 352 / 8 = 44 < 64
    expect(hotSampleSize(800, 128)).toBe(100);
    expect(hotSampleSize(100_000, 128)).toBe(128);
    expect(hotSampleSize(100_000, 32)).toBe(32);
    const a = new LocaliseAlgorithm();
    a.configure({});
    const ranges = a.prepassRanges(352, 32);
    expect(ranges.reduce((n, r) => n + r[1], 0)).toBe(64);
    expect(ranges.map((r) => r[1])).toEqual([16, 16, 16, 16]);
    expect(ranges.map((r) => r[0])).toEqual([0, 88, 176, 264]);
  });

  test("every sampled frame once: no block overlaps another, all inside the run", () => {
    const a = new LocaliseAlgorithm();
    a.configure({});
    for (const [n, perBatch] of [[24, 32], [16, 32], [40, 32], [70, 32], [127, 8], [352, 32], [1000, 64]]) {
      const ranges = a.prepassRanges(n, perBatch);
      const seen = new Uint8Array(n);
      for (const [start, count] of ranges) {
        expect(start).toBeGreaterThanOrEqual(0);
        expect(start + count).toBeLessThanOrEqual(n);
        for (let f = start; f < start + count; f++) seen[f]++;
      }
      expect(seen.every((x) => x <= 1)).toBe(true);
      expect(seen.reduce((x, y) => x + y, 0)).toBe(hotSampleSize(n, 128));
    }
    // A short run (24 frames: the sample is all of it) was sampled as [0, 16) and [8, 16) before.
    expect(a.prepassRanges(24, 32)).toEqual([[0, 16], [16, 8]]);
  });
});

describe("webgpu backend", () => {
  test("gives the same results as the cpu backend", async () => {
    const gpu = await getGpuDevice();
    if (!gpu) {
      console.warn("no WebGPU adapter: webgpu backend comparison skipped");
      return;
    }
    const w = await localise(run, { backend: "webgpu" });
    expect(w.backend.name).toBe("webgpu");
    expect(w.frames).toBe(cpu.frames);
    expect(Array.from(w.perFrame.frameLit)).toEqual(Array.from(cpu.perFrame.frameLit));
    expect(Array.from(w.perFrame.litPixels)).toEqual(Array.from(cpu.perFrame.litPixels));
    expect(Array.from(w.perFrame.unmaskedPixels)).toEqual(Array.from(cpu.perFrame.unmaskedPixels));
    expect(Array.from(w.perFrame.filteredLit)).toEqual(Array.from(cpu.perFrame.filteredLit));
    expect(Array.from(w.perFrame.asicLit)).toEqual(Array.from(cpu.perFrame.asicLit));
    expect(Array.from(w.perFrame.nPeaks)).toEqual(Array.from(cpu.perFrame.nPeaks));
    for (let k = 0; k < cpu.perFrame.litIntensity.length; k++) {
      const a = cpu.perFrame.litIntensity[k], b = w.perFrame.litIntensity[k];
      expect(Math.abs(a - b)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(a)));
    }
    for (let f = 0; f < cpu.frames; f++) {
      const boxes = (r: LocaliseResult) =>
        r.perFrame.peaks[f].map((p) => `${p.module}:${p.box.join(",")}:${p.area}`).sort();
      expect(boxes(w)).toEqual(boxes(cpu));
    }
    expect(w.modules.map((m) => [m.module, m.litFrames, m.rois, m.hotPixels, m.selected])).toEqual(
      cpu.modules.map((m) => [m.module, m.litFrames, m.rois, m.hotPixels, m.selected]),
    );
  });
});

describe("adaptive classifier (diffuse signal)", () => {
  test("finds SPI-like frames with a weak diffuse ring and no Bragg spots", async () => {
    const spi = path.join(tmp, "spi");
    const t = await makeRun(spi, {
      seed: 5,
      modules: [0, 1, 2, 3],
      trains: 4,
      framesPerTrain: 32,
      litFraction: 0.1,
      diffuse: 0.05,
      spotsPerFrame: [0, 0],
    });
    const r = await localise(spi, { backend: "cpu", mode: "adaptive" });
    const e = evaluate(r, path.join(spi, "truth.json"));
    expect(t.frames.filter((f) => f.lit).length).toBeGreaterThan(5);
    expect(e.litRecall).toBeGreaterThanOrEqual(0.99);
    expect(e.litPrecision).toBeGreaterThanOrEqual(0.98);
  });
});

describe("CLI contract", () => {
  test("writes summary.json and a valid REDU file; deno task gives the same summary as Node", () => {
    const a = path.join(tmp, "out-node"), b = path.join(tmp, "out-deno");
    const r1 = runNode(["localise", "fixtures/sample", "--out", a, "--backend", "cpu", "--json"]);
    expect(r1.code).toBe(0);
    const r2 = runDenoTask("localise", ["fixtures/sample", "--out", b, "--backend", "cpu", "--json"]);
    expect(r2.code).toBe(0);
    const s1 = JSON.parse(fs.readFileSync(path.join(a, "summary.json"), "utf8"));
    const s2 = JSON.parse(fs.readFileSync(path.join(b, "summary.json"), "utf8"));
    expect(JSON.parse(r1.stdout)).toEqual({ ...s1, timing: JSON.parse(r1.stdout).timing });
    const strip = (s: any) => ({ ...s, timing: undefined });
    expect(strip(s2)).toEqual(strip(s1));
    const t = JSON.parse(fs.readFileSync(path.join(ROOT, "fixtures/sample/truth.json"), "utf8"));
    expect(s1.litFrames).toBe(t.frames.filter((f: any) => f.lit).length);
    expect(s1.detector.modules).toEqual([0, 1, 2]);
    expect(s1.modules.map((m: any) => m.module)).toEqual([0, 1, 2]);
    const redu = fs.readdirSync(a).filter((f) => f.endsWith(".h5"));
    expect(redu).toEqual(["CORR-R0007-REDU00-S00000.h5"]);
  });

  test("the REDU file passes the validity rules and reads back independently", async () => {
    const out = path.join(tmp, "out-node");
    const file = path.join(out, "CORR-R0007-REDU00-S00000.h5");
    expect(await validateExdf(file)).toEqual([]);
    const src = "INSTRUMENT/SPB_DET_AGIPD1M-1/REDU/LOCALISE:output/data";
    const mods = "RUN/SPB_DET_AGIPD1M-1/REDU/LOCALISE/modules/value";
    const got = readIndependent(file, {
      info: [`${src}/frameLit`, `${src}/litPixels`, `${src}/peakBox`],
      values: [{ path: `${src}/frameLit` }, { path: mods }],
    });
    const t = JSON.parse(fs.readFileSync(path.join(ROOT, "fixtures/sample/truth.json"), "utf8"));
    expect(got.info[`${src}/litPixels`].shape).toEqual([t.frames.length, 3, 16]);
    expect(got.info[`${src}/peakBox`].shape).toEqual([t.frames.length, 256, 4]);
    expect(got.values[`${src}/frameLit`].data).toEqual(t.frames.map((f: any) => (f.lit ? 1 : 0)));
    expect(got.values[mods].data).toEqual([0, 1, 2]);
  });

  test("refuses an existing output directory without --force, and an output inside the run", () => {
    const out = path.join(tmp, "out-node");
    const r = runNode(["localise", "fixtures/sample", "--out", out, "--backend", "cpu"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/exists; use --force/);
    expect(runNode(["localise", "fixtures/sample", "--out", out, "--backend", "cpu", "--force"]).code).toBe(
      0,
    );
    const inside = runNode(["localise", "fixtures/sample", "--out", "fixtures/sample/x", "--backend", "cpu"]);
    expect(inside.code).toBe(2);
    expect(fs.existsSync(path.join(ROOT, "fixtures/sample/x"))).toBe(false);
  });
});
