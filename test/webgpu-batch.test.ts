/**
 * localise with the webgpu backend on a run of several modules: each batch goes to the GPU as whole-batch
 * submissions (all modules x frames, one dispatch per stage), split into module groups when the batch
 * exceeds the storage-binding cap (forced small here with $XFEL_REDU_GPU_MAX_BINDING). The results equal
 * the cpu backend's (integers equal, floats close). Runs on whatever adapter getGpuDevice() finds (here:
 * Mesa llvmpipe through Dawn's OpenGL backend); skipped without one.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun } from "../fixtures/synth.ts";
import { geometry } from "../src/exdf/detectors.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { localise } from "../src/localise/algorithm.ts";
import { type LocaliseResult } from "../src/localise/result.ts";
import type { ModuleBatch } from "../src/localise/spec.ts";
import { planParts } from "../src/localise/webgpu-host.ts";

const gpu = await getGpuDevice();
if (!gpu) console.warn("test/webgpu-batch.test.ts: SKIPPED: no WebGPU adapter");

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-gpubatch-"));
const run = path.join(tmp, "run");
const results: LocaliseResult[] = [];

beforeAll(async () => {
  if (!gpu) return;
  // Module 2 misses train 1: presence differs across modules.
  await makeRun(run, {
    seed: 21,
    modules: [0, 1, 2, 3],
    trains: 3,
    framesPerTrain: 8,
    trainsPerFile: 2,
    missingTrains: [{ module: 2, trains: [1] }],
  });
}, 120_000);

afterAll(() => {
  for (const r of results) r.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe("planParts: a call cut into submissions under the binding cap", () => {
  const g = geometry("AGIPD");
  const mods = (n: number, radial: number[] = []) =>
    Array.from({ length: n }, (_, i) => ({ geometry: g, nFrames: 0, data: new Float32Array(0), i, radial }));
  const plan = (n: number, frames: number, perJ: number, perModules = 1000, radial: number[] = []) =>
    planParts(
      mods(n) as unknown as ModuleBatch[],
      frames,
      perJ,
      perModules,
      (b) => radial.includes((b as unknown as { i: number }).i),
    ).map((p) => [p.index, p.f0, p.m]);
  test("whole batches, even module groups, frame chunks, tiles and radius bins apart", () => {
    expect(plan(8, 32, 512)).toEqual([[[0, 1, 2, 3, 4, 5, 6, 7], 0, 32]]);
    expect(plan(8, 128, 512)).toEqual([[[0, 1, 2, 3], 0, 128], [[4, 5, 6, 7], 0, 128]]);
    expect(plan(7, 10, 40)).toEqual([[[0, 1, 2, 3], 0, 10], [[4, 5, 6], 0, 10]]);
    expect(plan(5, 6, 12)).toEqual([[[0, 1], 0, 6], [[2, 3], 0, 6], [[4], 0, 6]]);
    expect(plan(4, 6, 1000, 3)).toEqual([[[0, 1], 0, 6], [[2, 3], 0, 6]]); // at most 3 modules: 2 + 2
    expect(plan(2, 10, 4)).toEqual([
      [[0], 0, 4],
      [[0], 4, 4],
      [[0], 8, 2],
      [[1], 0, 4],
      [[1], 4, 4],
      [[1], 8, 2],
    ]);
    expect(plan(4, 8, 1000, 1000, [1, 3])).toEqual([[[0, 2], 0, 8], [[1, 3], 0, 8]]);
    expect(plan(4, 0, 1000)).toEqual([]);
  });
});

function expectSameResults(wg: LocaliseResult, cpu: LocaliseResult): void {
  expect(wg.backend.name).toBe("webgpu");
  expect(wg.frames).toBe(cpu.frames);
  const a = cpu.perFrame, b = wg.perFrame;
  for (const k of ["litPixels", "unmaskedPixels", "filteredLit", "asicLit", "nPeaks", "frameLit"] as const) {
    expect(Array.from(b[k]), k).toEqual(Array.from(a[k]));
  }
  for (let i = 0; i < a.litIntensity.length; i++) {
    expect(Math.abs(b.litIntensity[i] - a.litIntensity[i])).toBeLessThanOrEqual(
      1e-5 * Math.max(1, Math.abs(a.litIntensity[i])),
    );
  }
  const peaks = (r: LocaliseResult) =>
    r.perFrame.peaks.map((l) => l.map((p) => `${p.module}:${p.box.join(",")}:${p.area}`).sort());
  expect(peaks(wg)).toEqual(peaks(cpu));
  expect(wg.modules.map((m) => [m.module, m.litFrames, m.rois, m.hotPixels, m.selected])).toEqual(
    cpu.modules.map((m) => [m.module, m.litFrames, m.rois, m.hotPixels, m.selected]),
  );
}

describe.skipIf(!gpu)("localise, webgpu, 4 modules: whole-batch submissions equal the cpu backend", () => {
  test("one submission per batch, and batches split into module groups by a small binding cap", async () => {
    const g = geometry("AGIPD");
    const batchBytes = 4 * 8 * g.pixels * 8; // 8 frames of 4 modules (data + mask) per batch
    const cpu = await localise(run, { backend: "cpu", workers: 1, batchBytes });
    results.push(cpu);
    expect(cpu.perFrame.nPeaks.reduce((x, y) => x + y, 0)).toBeGreaterThan(10);
    const old = process.env.XFEL_REDU_GPU_MAX_BINDING;
    // GPU submissions counted on the process's device (the backend uses the same one).
    const queue = gpu!.device.queue;
    const submit = queue.submit;
    let submissions = 0;
    queue.submit = (buffers) => {
      submissions++;
      return submit.call(queue, buffers);
    };
    const counted: { submissions: number; batches: number }[] = [];
    try {
      for (const cap of [undefined, 2 * 8 * 4 * g.pixels]) {
        if (cap) process.env.XFEL_REDU_GPU_MAX_BINDING = String(cap); // two modules' frames per submission
        else delete process.env.XFEL_REDU_GPU_MAX_BINDING;
        submissions = 0;
        let batches = 0;
        const wg = await localise(run, { backend: "webgpu", workers: 1, batchBytes }, () => batches++);
        results.push(wg);
        expectSameResults(wg, cpu);
        counted.push({ submissions, batches });
      }
    } finally {
      queue.submit = submit;
      if (old === undefined) delete process.env.XFEL_REDU_GPU_MAX_BINDING;
      else process.env.XFEL_REDU_GPU_MAX_BINDING = old;
    }
    // 3 main-pass batches of 8 frames, and 3 pre-pass batches (the 24-frame sample in blocks of 8): one
    // submission each for all 4 modules; two each (module groups of 2) under the small cap.
    expect(counted).toEqual([{ submissions: 6, batches: 3 }, { submissions: 12, batches: 3 }]);
  }, 300_000);
});
