/** The CPU reference of the localisation stages against hand-computed expectations. */
import { describe, expect, it } from "vitest";
import { asicOf, DETECTOR_TYPES, type Geometry, geometry } from "../src/exdf/detectors.ts";
import {
  accumulateLitCountsCpu,
  candidateCut,
  createCpuBackend,
  hotPixels,
  labelsCpu,
  NO_LABEL,
  processBatchCpu,
} from "../src/localise/stages.ts";
import { DEFAULT_PARAMS, type LocaliseParams, type ModuleBatch } from "../src/localise/spec.ts";
import { batchOf, P, put } from "./helpers/batches.ts";
import { SFX_WATER, SfxRun } from "../fixtures/sfx.ts";

const AGIPD = geometry("AGIPD");
const LPD = geometry("LPD");

function run(b: ModuleBatch, params: Partial<LocaliseParams> = {}) {
  return processBatchCpu(b, { ...P, ...params });
}

/** Per-ASIC array of one frame as a sparse {asic: value} object. */
function sparse(a: ArrayLike<number>, g: Geometry, f = 0): Record<number, number> {
  const o: Record<number, number> = {};
  for (let k = 0; k < g.nAsics; k++) if (a[f * g.nAsics + k]) o[k] = a[f * g.nAsics + k];
  return o;
}

describe("stage 1: lit pixels", () => {
  it("counts nothing when nothing is lit, every pixel valid", () => {
    for (const t of DETECTOR_TYPES) {
      const g = geometry(t);
      const r = run(batchOf(g));
      expect(Array.from(r.litPixels)).toEqual(new Array(g.nAsics).fill(0));
      expect(Array.from(r.litIntensity)).toEqual(new Array(g.nAsics).fill(0));
      expect(Array.from(r.unmaskedPixels)).toEqual(new Array(g.nAsics).fill(g.asicSs * g.asicFs));
      expect(Array.from(r.filteredLit)).toEqual(new Array(g.nAsics).fill(0));
      expect(r.nPeaks[0]).toBe(0);
      expect(r.peaks[0]).toEqual([]);
    }
  });

  it("uses value > threshold, strictly", () => {
    const b = batchOf(AGIPD);
    put(b, 0, 0, 0, 0.7);
    put(b, 0, 0, 1, 0.7000001);
    put(b, 0, 70, 1, -5);
    const r = run(b);
    expect(sparse(r.litPixels, AGIPD)).toEqual({ 0: 1 });
    expect(r.litIntensity[0]).toBe(Math.fround(0.7000001));
  });

  it("never lights NaN, infinite or masked pixels, and does not count them as valid", () => {
    const b = batchOf(AGIPD, 1, true);
    // A 3x3 block at (10..12, 10..12) of 2.0 in ASIC 0, with NaN, +Inf and a masked pixel in it.
    for (let ss = 10; ss < 13; ss++) for (let fs = 10; fs < 13; fs++) put(b, 0, ss, fs, 2);
    put(b, 0, 10, 10, NaN);
    put(b, 0, 11, 11, Infinity);
    b.mask![12 * 128 + 12] = 4;
    put(b, 0, 200, 100, -Infinity); // ASIC 7
    const r = run(b);
    expect(sparse(r.litPixels, AGIPD)).toEqual({ 0: 6 });
    expect(r.litIntensity[0]).toBe(12);
    expect(r.unmaskedPixels[0]).toBe(4096 - 3);
    expect(r.unmaskedPixels[7]).toBe(4096 - 1);
    expect(r.filteredLit[0]).toBe(6);
    // The ring of 6 pixels left is one component (8-connected), without the three invalid pixels.
    expect(r.nPeaks[0]).toBe(1);
    const p = r.peaks[0][0];
    expect(p.area).toBe(6);
    expect(p.intensity).toBe(12);
    expect(p.box).toEqual([10, 10, 13, 13]);
    expect(p.max).toBe(2);
    // Pixels: (10,11) (10,12) (11,10) (11,12) (12,10) (12,11): sum ss = 66, sum fs = 66.
    expect(p.ss).toBeCloseTo(11, 6);
    expect(p.fs).toBeCloseTo(11, 6);
  });

  it("a masked frame is never lit", () => {
    const b = batchOf(AGIPD, 2, true);
    b.data.fill(3);
    b.mask!.fill(1, 0, AGIPD.pixels);
    const r = run(b, { maxArea: 1e9 });
    expect(Array.from(r.litPixels.subarray(0, 16))).toEqual(new Array(16).fill(0));
    expect(Array.from(r.unmaskedPixels.subarray(0, 16))).toEqual(new Array(16).fill(0));
    expect(r.nPeaks[0]).toBe(0);
    expect(Array.from(r.litPixels.subarray(16))).toEqual(new Array(16).fill(4096));
    expect(r.nPeaks[1]).toBe(1);
  });
});

describe("stages 3-4 on every geometry", () => {
  for (const t of DETECTOR_TYPES) {
    const g = geometry(t);
    it(`${t}: a spot on the image corner and one on an ASIC edge`, () => {
      const b = batchOf(g);
      put(b, 0, 0, 0, 2);
      put(b, 0, 0, 1, 3);
      put(b, 0, 1, 0, 4);
      // A vertical 3-pixel spot in the last column of ASIC column 0, inside one ASIC.
      const fs = g.asicFs - 1;
      for (let k = 0; k < 3; k++) put(b, 0, 5 + k, fs, 1 + k);
      const r = run(b);
      expect(sparse(r.litPixels, g)).toEqual({ 0: 6 });
      expect(sparse(r.filteredLit, g)).toEqual({ 0: 6 });
      expect(r.nPeaks[0]).toBe(2);
      const [a, c] = r.peaks[0];
      expect(a.box).toEqual([0, 0, 2, 2]);
      expect(a.area).toBe(3);
      expect(a.intensity).toBe(9);
      expect(a.ss).toBeCloseTo(4 / 9, 6);
      expect(a.fs).toBeCloseTo(3 / 9, 6);
      expect(a.max).toBe(4);
      expect(c.box).toEqual([5, fs, 8, fs + 1]);
      expect(c.intensity).toBe(6);
      expect(c.ss).toBeCloseTo((5 + 12 + 21) / 6, 5);
      expect(c.fs).toBe(fs);
    });

    it(`${t}: a component across the corner of four ASICs is one component`, () => {
      const b = batchOf(g);
      const s0 = g.asicSs - 1;
      const f0 = g.asicFs - 1;
      // Only diagonally connected across the horizontal seam: three pixels in a diagonal line.
      const s1 = g.asicSs - 1;
      const fs1 = f0 + 10;
      const pixels: [number, number, number][] = [
        [s0, f0, 1],
        [s0, f0 + 1, 2],
        [s0 + 1, f0, 3],
        [s0 + 1, f0 + 1, 4],
        [s1, fs1, 1.5],
        [s1 + 1, fs1 + 1, 1.5],
        [s1 + 2, fs1 + 2, 1.5],
      ];
      const perAsic: Record<number, number> = {};
      for (const [ss, fs, v] of pixels) {
        put(b, 0, ss, fs, v);
        perAsic[asicOf(g, ss, fs)] = (perAsic[asicOf(g, ss, fs)] ?? 0) + 1;
      }
      expect(Object.keys(perAsic).length).toBe(4);
      const r = run(b);
      expect(sparse(r.litPixels, g)).toEqual(perAsic);
      expect(sparse(r.filteredLit, g)).toEqual(perAsic);
      expect(r.nPeaks[0]).toBe(2);
      const big = r.peaks[0][0];
      expect(big.box).toEqual([s0, f0, s0 + 2, f0 + 2]);
      expect(big.area).toBe(4);
      expect(big.intensity).toBe(10);
      expect(big.ss).toBe(Math.fround(s0 + 0.7));
      expect(big.fs).toBe(Math.fround(f0 + 0.6));
      const diag = r.peaks[0][1];
      expect(diag.box).toEqual([s1, fs1, s1 + 3, fs1 + 3]);
      expect(diag.area).toBe(3);
      expect(diag.intensity).toBe(4.5);
    });
  }
});

describe("stages 3-4", () => {
  it("a ring with a hole is one component", () => {
    const b = batchOf(AGIPD);
    // 5x5 square ring at ss 100..104, fs 30..34, values 1..16 in order.
    let v = 1;
    let sumSs = 0;
    let sumFs = 0;
    for (let ss = 100; ss < 105; ss++) {
      for (let fs = 30; fs < 35; fs++) {
        if (ss === 100 || ss === 104 || fs === 30 || fs === 34) {
          put(b, 0, ss, fs, v);
          sumSs += v * ss;
          sumFs += v * fs;
          v++;
        }
      }
    }
    const r = run(b);
    expect(r.nPeaks[0]).toBe(1);
    const p = r.peaks[0][0];
    expect(p.area).toBe(16);
    expect(p.box).toEqual([100, 30, 105, 35]);
    expect(p.intensity).toBe(136);
    expect(p.max).toBe(16);
    expect(p.ss).toBeCloseTo(sumSs / 136, 5);
    expect(p.fs).toBeCloseTo(sumFs / 136, 5);
    const labels = labelsCpu(b, P);
    const first = 100 * 128 + 30;
    let labelled = 0;
    for (let q = 0; q < AGIPD.pixels; q++) {
      if (labels[q] !== NO_LABEL) {
        expect(labels[q]).toBe(first);
        labelled++;
      }
    }
    expect(labelled).toBe(16);
    expect(labels[102 * 128 + 32]).toBe(NO_LABEL); // the hole
  });

  it("all pixels lit: one component of the whole module, a peak only if maxArea allows", () => {
    const b = batchOf(LPD);
    b.data.fill(1);
    let r = run(b);
    expect(Array.from(r.litPixels)).toEqual(new Array(16).fill(32 * 128));
    expect(Array.from(r.filteredLit)).toEqual(new Array(16).fill(32 * 128));
    expect(Array.from(r.litIntensity)).toEqual(new Array(16).fill(32 * 128));
    expect(r.nPeaks[0]).toBe(0);
    r = run(b, { maxArea: LPD.pixels });
    expect(r.nPeaks[0]).toBe(1);
    expect(r.peaks[0][0]).toEqual({
      box: [0, 0, 256, 256],
      area: 65536,
      intensity: 65536,
      ss: 127.5,
      fs: 127.5,
      max: 1,
      snr: 0, // no background (minSnr 0)
    });
  });

  it("removes isolated single photons", () => {
    const b = batchOf(AGIPD);
    for (let k = 0; k < 50; k++) put(b, 0, 3 + 10 * k, 5 + (k % 12) * 10, 1);
    const r = run(b);
    expect(r.litPixels.reduce((a, x) => a + x, 0)).toBe(50);
    expect(r.filteredLit.reduce((a, x) => a + x, 0)).toBe(0);
    expect(r.nPeaks[0]).toBe(0);
  });

  it("keeps a strong isolated pixel in the filter but drops it as a peak (area 1 < minArea)", () => {
    const b = batchOf(AGIPD);
    put(b, 0, 300, 70, 5); // strong: value >= 5
    put(b, 0, 310, 70, 4.99);
    const r = run(b);
    expect(sparse(r.filteredLit, AGIPD)).toEqual({ [asicOf(AGIPD, 300, 70)]: 1 });
    expect(r.nPeaks[0]).toBe(0);
    expect(run(b, { minArea: 1 }).peaks[0]).toEqual([{
      box: [300, 70, 301, 71],
      area: 1,
      intensity: 5,
      ss: 300,
      fs: 70,
      max: 5,
      snr: 0, // no background (minSnr 0)
    }]);
  });

  it("needs `neighbours` lit neighbours", () => {
    const b = batchOf(AGIPD);
    // An L of three pixels: the corner has 2 lit neighbours, the ends 1.
    put(b, 0, 20, 20, 1);
    put(b, 0, 21, 20, 1);
    put(b, 0, 21, 21, 1);
    expect(run(b, { neighbours: 2 }).filteredLit[0]).toBe(3); // the ends are diagonal neighbours too
    put(b, 0, 21, 21, 0);
    put(b, 0, 22, 20, 1);
    expect(run(b, { neighbours: 2 }).filteredLit[0]).toBe(1); // 20..22 x 20: only the middle survives
    expect(run(b, { neighbours: 1 }).filteredLit[0]).toBe(3);
  });

  it("a hot pixel counts in stage 1 but not in stages 3-4", () => {
    const b = batchOf(AGIPD);
    // Two 3-pixel spots joined by one pixel that is hot: two components, not one.
    for (const fs of [40, 41, 42, 43, 44, 45, 46]) put(b, 0, 50, fs, 2);
    b.hot = new Uint8Array(AGIPD.pixels);
    b.hot[50 * 128 + 43] = 1;
    const r = run(b);
    expect(r.litPixels[0]).toBe(7);
    expect(r.litIntensity[0]).toBe(14);
    expect(r.filteredLit[0]).toBe(6);
    expect(r.nPeaks[0]).toBe(2);
    expect(r.peaks[0].map((p) => p.box)).toEqual([[50, 40, 51, 43], [50, 44, 51, 47]]);
    delete b.hot;
    expect(run(b).nPeaks[0]).toBe(1);
  });

  it("keeps the brightest maxPeaks, ties by box ss0 then fs0, and counts them all", () => {
    const b = batchOf(AGIPD, 2);
    // Frame 0: 6 spots of 3 pixels: intensities 3*v.
    const spots: [number, number, number][] = [[10, 10, 1], [10, 90, 4], [200, 10, 4], [300, 100, 2], [
      400,
      4,
      4,
    ], [
      5,
      100,
      3,
    ]];
    for (const [ss, fs, v] of spots) for (let k = 0; k < 3; k++) put(b, 0, ss, fs + k, v);
    const r = run(b, { maxPeaks: 4 });
    expect(Array.from(r.nPeaks)).toEqual([6, 0]);
    expect(r.peaks[0].map((p) => [p.box[0], p.box[1], p.intensity])).toEqual([
      [10, 90, 12],
      [200, 10, 12],
      [400, 4, 12],
      [5, 100, 9],
    ]);
    expect(r.peaks[1]).toEqual([]);
    expect(run(b, { maxPeaks: 0 }).peaks[0]).toEqual([]);
  });

  it("respects minArea and maxArea inclusively", () => {
    const b = batchOf(AGIPD);
    for (let k = 0; k < 3; k++) put(b, 0, 10, 10 + k, 1); // area 3
    for (let k = 0; k < 5; k++) put(b, 0, 20, 10 + k, 1); // area 5
    for (let k = 0; k < 6; k++) put(b, 0, 30, 10 + k, 1); // area 6
    expect(run(b, { minArea: 3, maxArea: 5 }).peaks[0].map((p) => p.area)).toEqual([5, 3]);
    expect(run(b, { minArea: 4, maxArea: 6 }).nPeaks[0]).toBe(2);
  });

  it("drops components below minIntensity (inclusive bound) and does not count them in nPeaks", () => {
    const b = batchOf(AGIPD);
    for (let k = 0; k < 3; k++) put(b, 0, 10, 10 + k, 1); // intensity 3: coincident background photons
    for (let k = 0; k < 3; k++) put(b, 0, 20, 10 + k, 10 / 3); // intensity fround(10)
    for (let k = 0; k < 4; k++) put(b, 0, 30, 10 + k, 25); // intensity 100
    const r = run(b, { minIntensity: 10 });
    expect(r.nPeaks[0]).toBe(2);
    expect(r.peaks[0].map((p) => p.box[0])).toEqual([30, 20]);
    expect(run(b, { minIntensity: 10.5 }).nPeaks[0]).toBe(1);
    expect(run(b).nPeaks[0]).toBe(3);
    // The default cuts the 3-photon triple.
    expect(processBatchCpu(b, DEFAULT_PARAMS).nPeaks[0]).toBe(DEFAULT_PARAMS.minIntensity <= 3 ? 3 : 2);
  });

  it("keeps frames apart", () => {
    const b = batchOf(AGIPD, 3);
    // A spot at the last row of frame 0 and one at the first row of frame 1: never joined.
    for (let k = 0; k < 3; k++) {
      put(b, 0, 511, 60 + k, 1);
      put(b, 1, 0, 60 + k, 1);
    }
    const r = run(b);
    expect(Array.from(r.nPeaks)).toEqual([1, 1, 0]);
    const labels = labelsCpu(b, P);
    expect(labels[511 * 128 + 61]).toBe(511 * 128 + 60);
    expect(labels[AGIPD.pixels + 61]).toBe(60);
  });
});

describe("stage 2 and the backend", () => {
  it("accumulates lit counts and finds hot pixels", () => {
    const b = batchOf(AGIPD, 4, true);
    for (let f = 0; f < 4; f++) put(b, f, 7, 7, 1); // lit in 4 of 4 frames
    for (let f = 0; f < 2; f++) put(b, f, 8, 8, 1); // 2 of 4: not more than half
    for (let f = 0; f < 3; f++) put(b, f, 9, 9, 1); // 3 of 4
    put(b, 3, 9, 9, NaN);
    for (let f = 0; f < 4; f++) put(b, f, 10, 10, 1);
    b.mask![AGIPD.pixels + 10 * 128 + 10] = 1; // masked in frames 1 and 2: 2 of 4
    b.mask![2 * AGIPD.pixels + 10 * 128 + 10] = 1;
    const counts = new Uint32Array(AGIPD.pixels);
    accumulateLitCountsCpu(b, counts, { ...P, threshold: 0.7 });
    accumulateLitCountsCpu(b, counts, { ...P, threshold: 0.7 }); // accumulates: as if 8 frames
    expect(counts[7 * 128 + 7]).toBe(8);
    expect(counts[8 * 128 + 8]).toBe(4);
    expect(counts[9 * 128 + 9]).toBe(6);
    expect(counts[10 * 128 + 10]).toBe(4);
    expect(counts.reduce((a, x) => a + x, 0)).toBe(22);
    const hot = hotPixels(counts, 8, 0.5);
    expect([...hot.entries()].filter(([, h]) => h).map(([p]) => p)).toEqual([7 * 128 + 7, 9 * 128 + 9]);
  });

  it("the CPU backend wraps the reference", async () => {
    const cpu = createCpuBackend(P);
    expect(cpu.name).toBe("cpu");
    const b = batchOf(AGIPD, 1);
    for (let k = 0; k < 3; k++) put(b, 0, 10, 10 + k, 2);
    const r = await cpu.process(b);
    expect(r.nPeaks[0]).toBe(1);
    const counts = new Uint32Array(AGIPD.pixels);
    await cpu.accumulateLitCounts(b, counts);
    expect(counts.reduce((a, x) => a + x, 0)).toBe(3);
    await expect(cpu.process({ ...b, data: new Float32Array(5) })).rejects.toThrow(RangeError);
    cpu.dispose();
  });
});

describe("shortcuts of the CPU loops", () => {
  it("candidateCut: every candidate value lies above the cut, and the cut is near mu + thr", () => {
    // Float32 mu, thr over many magnitudes; v: float32 values stepping across mu + thr one ulp at a time.
    const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
    const next = (x: number, d: number) => {
      f32[0] = x;
      if (x === 0) return d > 0 ? 1.4e-45 : -1.4e-45;
      u32[0] += (x > 0) === (d > 0) ? 1 : -1;
      return f32[0];
    };
    let seed = 12345;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    let checked = 0;
    for (let k = 0; k < 2000; k++) {
      const mu = Math.fround((rnd() - 0.3) * 10 ** (rnd() * 8 - 3));
      const thr = Math.fround(rnd() * 10 ** (rnd() * 8 - 3));
      const cut = candidateCut(mu, thr);
      expect(cut).toBeGreaterThan(mu + thr - 1e-4 * (Math.abs(mu) + Math.abs(thr)) - 1e-29);
      let v = Math.fround(mu + thr);
      for (let j = 0; j < 40; j++) v = next(v, -1);
      for (let j = 0; j < 80; j++, v = next(v, 1)) {
        if (Math.fround(v - mu) > thr) {
          checked++;
          expect(v).toBeGreaterThan(cut);
        }
      }
    }
    expect(checked).toBeGreaterThan(50000);
    // Non-finite stage 0: no cut (every value goes through the exact rule).
    expect(candidateCut(NaN, 1)).toBe(-Infinity);
    expect(candidateCut(0, Infinity)).toBe(-Infinity);
    expect(candidateCut(-Infinity, 1)).toBe(-Infinity);
  });

  it("the pre-pass's kept stage 0 and stage-1 sums give the results of a fresh pass; stage 1 as counted here", () => {
    const run = new SfxRun({ ...SFX_WATER, modules: [0], frames: 6, hitRate: 0.5 });
    const g = run.geometry;
    const params = { ...DEFAULT_PARAMS, bgBinWidth: 4 };
    const batch: ModuleBatch = {
      geometry: g,
      nFrames: 6,
      data: run.batch(0, 0, 6),
      mask: run.batchMask(0, 6),
      radius: run.radius[0],
      hot: new Uint8Array(g.pixels),
    };
    const fresh = processBatchCpu(batch, params);
    const backgrounds: ModuleBatch["backgrounds"] = new Array(6);
    accumulateLitCountsCpu({ ...batch, backgrounds }, new Uint32Array(g.pixels), params);
    expect(backgrounds.every((b) => b !== undefined)).toBe(true);
    const kept = processBatchCpu({ ...batch, backgrounds }, params);
    expect(kept).toEqual(fresh);
    // Stage 1 counted independently: every frame x ASIC.
    for (let f = 0; f < 6; f++) {
      const valid = new Array(g.nAsics).fill(0),
        lit = new Array(g.nAsics).fill(0),
        sum = new Array(g.nAsics).fill(0);
      for (let p = 0; p < g.pixels; p++) {
        const v = batch.data[f * g.pixels + p];
        if (!Number.isFinite(v) || batch.mask![f * g.pixels + p] !== 0) continue;
        const a = asicOf(g, Math.floor(p / g.moduleFs), p % g.moduleFs);
        valid[a]++;
        if (v > Math.fround(params.threshold)) {
          lit[a]++;
          sum[a] += v;
        }
      }
      expect(Array.from(kept.unmaskedPixels.subarray(f * g.nAsics, (f + 1) * g.nAsics))).toEqual(valid);
      expect(Array.from(kept.litPixels.subarray(f * g.nAsics, (f + 1) * g.nAsics))).toEqual(lit);
      expect(lit.reduce((a, x) => a + x, 0)).toBeGreaterThan(1000);
      for (let a = 0; a < g.nAsics; a++) {
        expect(Math.abs(kept.litIntensity[f * g.nAsics + a] - sum[a])).toBeLessThanOrEqual(1e-6 * sum[a]);
      }
    }
  });
});
