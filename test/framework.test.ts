/**
 * The processing framework: double-buffered reading equals direct reading, side data aligned on trains
 * (NaN for a missing train), the same results for any number of workers, and the second algorithm
 * (average) checked against a direct computation.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun, type Truth } from "../fixtures/synth.ts";
import { FrameReader } from "../src/exdf/frames.ts";
import { bufferLayout, PrefetchReader } from "../src/framework/prefetch.ts";
import { alignSide, loadSide } from "../src/framework/side.ts";
import { moduleGroups } from "../src/framework/algorithm.ts";
import { localise } from "../src/localise/algorithm.ts";
import { type LocaliseResult } from "../src/localise/result.ts";
import { average, writeAverage } from "../src/average/average.ts";
import { Run } from "../src/exdf/run.ts";
import { validateExdf } from "./helpers/exdf-validate.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-framework-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let run: string;
let truth: Truth;
beforeAll(async () => {
  run = path.join(tmp, "run");
  truth = await makeRun(run, {
    seed: 3,
    modules: [0, 1, 2, 3],
    trains: 5,
    framesPerTrain: 10,
    trainsPerFile: 2,
    missingTrains: [{ module: 2, trains: [3] }],
    timeServerMissing: [1],
  });
}, 120_000);

describe("double-buffered reading", () => {
  test("batches through the reader worker equal direct reads; two shared buffers of one batch each", async () => {
    const r = await Run.open(run);
    const direct = new FrameReader(r.detector(), { mask: true, batchBytes: 3 * 512 * 128 * 8 });
    const pf = await PrefetchReader.open({
      runPath: run,
      options: { mask: true, batchBytes: 3 * 512 * 128 * 8 },
    });
    try {
      expect(pf.nFrames).toBe(direct.nFrames);
      expect(pf.framesPerBatch).toBe(3);
      const layout = bufferLayout(4, 3, 512 * 128, true);
      expect(pf.info.buffers.map((b) => b.byteLength)).toEqual([layout.total, layout.total]);
      let n = 0;
      for await (const b of pf.all()) {
        const d = direct.read(b.start, b.nFrames);
        expect(Array.from(b.trainId)).toEqual(Array.from(d.trainId));
        b.modules.forEach((m, i) => {
          expect(Array.from(m.present)).toEqual(Array.from(d.modules[i].present));
          expect(
            Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength).equals(
              Buffer.from(
                d.modules[i].data.buffer,
                d.modules[i].data.byteOffset,
                d.modules[i].data.byteLength,
              ),
            ),
          ).toBe(true);
          expect(Array.from(m.mask!.subarray(0, 4096))).toEqual(
            Array.from(d.modules[i].mask!.subarray(0, 4096)),
          );
        });
        n += b.nFrames;
      }
      expect(n).toBe(50);
    } finally {
      await pf.close();
      r.close();
    }
  });

  test("a bad run fails with the reader worker's one-line error", async () => {
    await expect(PrefetchReader.open({ runPath: path.join(tmp, "nope"), options: {} })).rejects.toThrow(
      /no such file or directory/,
    );
  });
});

describe("side data", () => {
  test("per-train values aligned on frames; a train missing in the source gives NaN, never a neighbour", async () => {
    const r = await Run.open(run);
    try {
      const ts = truth.sources.timeServer!;
      const slot = truth.pulses[0].slots[0];
      const side = loadSide(r, [{ name: "bp", source: ts, key: "data.bunchPatternTable", index: slot }]);
      const frames = new FrameReader(r.detector()).frameIds;
      const v = alignSide(side, frames.trainId).bp;
      for (let i = 0; i < frames.trainId.length; i++) {
        const t = truth.trains.indexOf(frames.trainId[i]);
        if (t === 1) expect(Number.isNaN(v[i])).toBe(true);
        else expect(Number.isFinite(v[i])).toBe(true);
      }
    } finally {
      r.close();
    }
  });
});

describe("workers", () => {
  test("module groups are contiguous and cover every module once", () => {
    expect(moduleGroups([0, 1, 2, 3, 4], 2)).toEqual([[0, 1], [2, 3, 4]]);
    expect(moduleGroups([0, 1], 8)).toEqual([[0], [1]]);
    expect(moduleGroups([5], 1)).toEqual([[5]]);
  });

  test("localise gives the same result for 1, 2 and 3 workers", async () => {
    const same = (a: LocaliseResult, b: LocaliseResult) => {
      expect(a.frames).toBe(b.frames);
      for (
        const k of [
          "trainId",
          "pulseId",
          "frameLit",
          "litPixels",
          "litIntensity",
          "unmaskedPixels",
          "asicLit",
          "nPeaks",
        ] as const
      ) {
        expect(Array.from(a.perFrame[k] as ArrayLike<number>), k).toEqual(
          Array.from(b.perFrame[k] as ArrayLike<number>),
        );
      }
      expect(a.perFrame.peaks).toEqual(b.perFrame.peaks);
      expect(a.modules).toEqual(b.modules);
    };
    const one = await localise(run, { backend: "cpu", workers: 1 });
    same(await localise(run, { backend: "cpu", workers: 2 }), one);
    same(await localise(run, { backend: "cpu", workers: 3 }), one);
    expect(one.modules.find((m) => m.module === 2)!.frames).toBe(40);
  });
});

describe("average (the second algorithm)", () => {
  test("equals a direct computation, is the same for any worker count, and writes a valid file", async () => {
    const a1 = await average(run, { workers: 1 });
    const a3 = await average(run, { workers: 3 });
    expect(a1.litFrom).toBe("beam");
    a1.litMean.forEach((m, i) =>
      expect(Buffer.from(m.buffer).equals(Buffer.from(a3.litMean[i].buffer))).toBe(true)
    );
    // Direct: module 1, lit frames from the truth, finite unmasked pixels only.
    const r = await Run.open(run);
    try {
      const reader = new FrameReader(r.detector(), { modules: [1], mask: true });
      const px = reader.pixels;
      const sum = new Float64Array(px), count = new Uint32Array(px);
      // Lit: frames that saw a pulse; train 1 has no bunch pattern, so all its frames count as data frames.
      const noPattern = truth.trains[1];
      const lit = new Set(
        truth.frames.filter((f) => f.lit || f.trainId === noPattern).map((f) => `${f.trainId}:${f.pulseId}`),
      );
      for (const b of reader.batches()) {
        for (let i = 0; i < b.nFrames; i++) {
          if (!lit.has(`${b.trainId[i]}:${b.pulseId[i]}`)) continue;
          const m = b.modules[0];
          for (let p = 0; p < px; p++) {
            const v = m.data[i * px + p];
            if (Number.isFinite(v) && m.mask![i * px + p] === 0) (sum[p] += v), count[p]++;
          }
        }
      }
      const got = a1.litMean[1];
      for (let p = 0; p < px; p += 61) {
        if (count[p] === 0) expect(Number.isNaN(got[p])).toBe(true);
        else expect(got[p]).toBeCloseTo(sum[p] / count[p], 5);
      }
      expect(a1.litFrames[1]).toBe(lit.size);
      const out = path.join(tmp, "avg");
      fs.mkdirSync(out);
      const files = await writeAverage(a1, out, r.files.map((f) => f.name));
      expect(files).toHaveLength(1);
      expect(await validateExdf(files[0])).toEqual([]);
    } finally {
      r.close();
    }
  });
});
