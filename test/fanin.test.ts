/**
 * N readers feeding one consumer (FanInReader, src/framework/prefetch.ts): the batches equal those of one
 * reader (frames, ids, presence, data, mask), and localise with the webgpu backend fed by several readers
 * (one device) gives the cpu backend's results. The GPU part runs on whatever adapter getGpuDevice() finds
 * (here: Mesa llvmpipe through Dawn's OpenGL backend) and is skipped without one.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun } from "../fixtures/synth.ts";
import { FanInReader, PrefetchReader } from "../src/framework/prefetch.ts";
import type { FrameBatch } from "../src/exdf/frames.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { localise } from "../src/localise/algorithm.ts";
import { type LocaliseResult } from "../src/localise/result.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-fanin-"));
const run = path.join(tmp, "run");

beforeAll(async () => {
  // Module 1 misses train 1 and records only 5 frames of train 2: presence differs across modules.
  await makeRun(run, {
    seed: 9,
    modules: [0, 1],
    trains: 4,
    framesPerTrain: 16,
    trainsPerFile: 2,
    missingTrains: [{ module: 1, trains: [1] }],
    shortFrames: [{ module: 1, train: 2, frames: 5 }],
  });
}, 120_000);

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A copy of every batch (the readers reuse their buffers). */
async function collect(batches: AsyncGenerator<FrameBatch>) {
  const out = [];
  for await (const b of batches) {
    out.push({
      start: b.start,
      n: b.nFrames,
      trainId: Array.from(b.trainId),
      modules: b.modules.map((m) => ({
        module: m.module,
        present: Array.from(m.present),
        data: Float32Array.from(m.data),
        mask: Uint32Array.from(m.mask!),
      })),
    });
  }
  return out;
}

describe("FanInReader", () => {
  test("3 readers give the batches of one reader, whole run and a pre-pass's scattered ranges", async () => {
    // 5 frames per batch: batches straddle trains and files; 3 readers split each batch 1/2/2.
    const init = { runPath: run, options: { mask: true, batchBytes: 5 * 128 * 512 * 8 } };
    const one = await PrefetchReader.open(init);
    const fan = await FanInReader.open(init, 3);
    try {
      expect(fan.framesPerBatch).toBe(5);
      expect(fan.nFrames).toBe(one.nFrames);
      const a = await collect(one.all()), b = await collect(fan.all());
      expect(b.length).toBe(a.length);
      expect(b.length).toBeGreaterThan(3); // more batches than the ring holds
      for (let k = 0; k < a.length; k++) {
        expect(b[k].start).toBe(a[k].start);
        expect(b[k].trainId).toEqual(a[k].trainId);
        for (let m = 0; m < 2; m++) {
          expect(b[k].modules[m].present).toEqual(a[k].modules[m].present);
          expect(Buffer.from(b[k].modules[m].data.buffer).equals(Buffer.from(a[k].modules[m].data.buffer)))
            .toBe(true);
          expect(Buffer.from(b[k].modules[m].mask.buffer).equals(Buffer.from(a[k].modules[m].mask.buffer)))
            .toBe(true);
        }
      }
      // Some module frames are absent (NaN) and the rest hold data.
      expect(a.some((x) => x.modules[1].present.includes(0))).toBe(true);
      const ranges: [number, number][] = [[40, 3], [0, 5], [20, 4]];
      const c = await collect(one.batches(ranges)), d = await collect(fan.batches(ranges));
      expect(d.map((x) => [x.start, x.n])).toEqual(ranges);
      for (let k = 0; k < c.length; k++) {
        expect(Buffer.from(d[k].modules[1].data.buffer).equals(Buffer.from(c[k].modules[1].data.buffer)))
          .toBe(true);
      }
    } finally {
      await one.close();
      await fan.close();
    }
  }, 120_000);
});

const gpu = await getGpuDevice().catch(() => undefined);
if (!gpu) console.warn("test/fanin.test.ts: webgpu part SKIPPED: no WebGPU adapter");

describe.skipIf(!gpu)("localise: one device fed by 2 readers equals the cpu backend", () => {
  const results: LocaliseResult[] = [];
  afterAll(() => {
    for (const r of results) r.dispose();
  });
  test("per-frame counters, lit frames, peaks, hot pixels, ROIs", async () => {
    const batchBytes = 6 * 2 * 128 * 512 * 8; // 6 frames per batch: several batches in the ring
    const cpu = await localise(run, { backend: "cpu", workers: 1, batchBytes });
    results.push(cpu);
    const stats = { readWait: 0, prepass: 0, process: 0, frames: 0, parts: 0 };
    const wg = await localise(run, { backend: "webgpu", workers: 2, batchBytes }, undefined, stats);
    results.push(wg);
    expect(wg.backend.name).toBe("webgpu");
    expect(stats.parts).toBe(1); // one instance (one device), not one per worker
    expect(wg.frames).toBe(cpu.frames);
    const a = cpu.perFrame, b = wg.perFrame;
    for (
      const k of ["litPixels", "unmaskedPixels", "filteredLit", "asicLit", "nPeaks", "frameLit"] as const
    ) {
      expect(Array.from(b[k]), k).toEqual(Array.from(a[k]));
    }
    for (let i = 0; i < a.litIntensity.length; i++) {
      expect(Math.abs(b.litIntensity[i] - a.litIntensity[i])).toBeLessThanOrEqual(
        1e-5 * Math.max(1, Math.abs(a.litIntensity[i])),
      );
    }
    const boxes = (r: LocaliseResult) => r.perFrame.peaks.map((l) => l.map((p) => p.box.join(",")).sort());
    expect(boxes(wg)).toEqual(boxes(cpu));
    expect(wg.modules.map((m) => m.rois)).toEqual(cpu.modules.map((m) => m.rois));
    expect(wg.modules.map((m) => m.hotPixels)).toEqual(cpu.modules.map((m) => m.hotPixels));
  }, 300_000);
});
