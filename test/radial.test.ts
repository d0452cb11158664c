/**
 * Stage 0 per radius bin (peakfinder8's background, when a layout gives each pixel's radius) on the
 * realistic SFX generator (fixtures/sfx.ts): the per-pixel background model against the generator's
 * expected background (compared with the 16 x 16 tiles), and GPU == CPU (stage 0 within float32
 * rounding; given the same stage 0, integer outputs equal and floats close).
 */
import { describe, expect, it } from "vitest";
import { SFX_WATER, SfxRun } from "../fixtures/sfx.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { accumulateLitCountsCpu } from "../src/localise/stages.ts";
import { backgroundCpu, cellList, cellsOf } from "../src/localise/background.ts";
import { DEFAULT_PARAMS, type ModuleBatch } from "../src/localise/spec.ts";
import { createWebgpuBackend } from "../src/localise/webgpu.ts";
import { defaultLayout } from "../src/exdf/geometry.ts";
import { moduleRadii } from "../src/localise/position.ts";
import { expectCpu } from "./helpers/stage-compare.ts";

const run = new SfxRun({ ...SFX_WATER, modules: [0, 9], frames: 24, hitRate: 0.5 });
const g = run.geometry;
const batch = (mi: number, f0: number, n: number): ModuleBatch => ({
  geometry: g,
  nFrames: n,
  data: run.batch(mi, f0, n),
  mask: run.batchMask(mi, n),
  radius: run.radius[mi],
});
const RADIAL = { ...DEFAULT_PARAMS, bgBinWidth: 4 };
const TILES = { ...DEFAULT_PARAMS, bgBinWidth: 0 };
const q = (a: number[], p: number) => a.sort((x, y) => x - y)[Math.floor(p * (a.length - 1))];

describe("radius bins", () => {
  it("the layout's radii are the generator's; every pixel lies in one bin of its radius", () => {
    const layout = defaultLayout("AGIPD");
    for (let mi = 0; mi < 2; mi++) {
      const r = moduleRadii(layout, "AGIPD", run.o.modules[mi]);
      for (let p = 0; p < g.pixels; p += 97) expect(r[p]).toBeCloseTo(run.radius[mi][p], 2);
      const cells = cellsOf(batch(mi, 0, 1), RADIAL);
      expect(cells.radial).toBe(true);
      const list = cellList(cells), N = cells.n;
      expect(list[N]).toBe(g.pixels);
      const seen = new Uint8Array(g.pixels);
      for (let c = 0; c < N; c++) {
        for (let k = list[c]; k < list[c + 1]; k++) {
          const p = list[N + 1 + k];
          expect(seen[p]).toBe(0);
          seen[p] = 1;
          expect(Math.floor(run.radius[mi][p] / 4) - Math.floor(run.radius[mi][list[N + 1]] / 4)).toBe(c);
        }
      }
      expect(seen.every((x) => x === 1)).toBe(true);
    }
    // Without a radius (no layout), or width 0: the tiles.
    expect(cellsOf({ ...batch(0, 0, 1), radius: undefined }, RADIAL).radial).toBe(false);
    expect(cellsOf(batch(0, 0, 1), TILES).radial).toBe(false);
  });

  it("mu per pixel follows the expected background better than the tiles; sigma its noise", () => {
    const errR: number[] = [], errT: number[] = [], errSigma: number[] = [];
    for (let mi = 0; mi < 2; mi++) {
      const b = batch(mi, 0, run.frames);
      const rc = cellsOf(b, RADIAL), tc = cellsOf(b, TILES);
      const bgR = backgroundCpu(b, RADIAL), bgT = backgroundCpu(b, TILES);
      for (let f = 0; f < run.frames; f++) {
        if (run.hit[f]) continue;
        const lambda = run.background(mi, f);
        const s = new Float64Array(rc.n), s2 = new Float64Array(rc.n), n = new Float64Array(rc.n);
        for (let p = 0; p < g.pixels; p++) {
          errR.push(Math.abs(bgR.mu[f * rc.n + rc.cell[p]] - lambda[p]));
          errT.push(Math.abs(bgT.mu[f * tc.n + tc.cell[p]] - lambda[p]));
          const c = rc.cell[p];
          n[c]++;
          s[c] += lambda[p];
          s2[c] += lambda[p] ** 2;
        }
        for (let c = 0; c < rc.n; c++) {
          if (n[c] < 200) continue;
          const mean = s[c] / n[c], spread = s2[c] / n[c] - mean * mean;
          if (mean < 0.3) continue;
          // Poisson + the spread of lambda over the bin (the jet) + offsets (0.1) + gain errors (2 %).
          const sigma = Math.sqrt(mean + spread + 0.01 + (0.02 * mean) ** 2);
          errSigma.push(Math.abs(bgR.sigma[f * rc.n + c] / sigma - 1));
        }
      }
    }
    const figures = [0.5, 0.9, 0.99].map((p) => `${q(errR, p).toFixed(3)} / ${q(errT, p).toFixed(3)}`);
    console.info(`|mu - lambda| per pixel, radial / tiles, median 90 % 99 %: ${figures.join(", ")}`);
    console.info(
      `radial sigma error: median ${q(errSigma, 0.5).toFixed(3)}, 95 % ${q(errSigma, 0.95).toFixed(3)}`,
    );
    expect(errR.length).toBeGreaterThan(100000);
    expect(q(errR, 0.5)).toBeLessThan(q(errT, 0.5));
    expect(q(errR, 0.5)).toBeLessThan(0.03);
    expect(q(errR, 0.99)).toBeLessThan(0.3);
    expect(errSigma.length).toBeGreaterThan(200);
    expect(q(errSigma, 0.5)).toBeLessThan(0.06);
  });

  it("stage 0 is the spec's clip (in-order float64 sums, done here directly) and the candidates its own", () => {
    // Harder than the run: strong spots and hot pixels (limits falling far: the clip's tail split made
    // again), negative values, NaN, infinite and masked pixels; bin widths of 1 (few values a bin) and 4.
    const b = { ...batch(1, 0, 4) };
    b.data = b.data.slice();
    b.mask = b.mask!.slice();
    const P = g.pixels;
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    for (let k = 0; k < 3000; k++) {
      const i = Math.floor(rnd() * b.data.length), x = rnd();
      if (x < 0.5) b.data[i] = 5 + 2000 * rnd() ** 4;
      else if (x < 0.7) b.data[i] = -3 * rnd();
      else if (x < 0.8) b.data[i] = [NaN, Infinity, -Infinity][k % 3];
      else b.mask[i] = 1 + (k % 5);
    }
    for (const width of [1, 4]) {
      const params = { ...RADIAL, bgBinWidth: width };
      const cells = cellsOf(b, params);
      const bg = backgroundCpu(b, params);
      const counts = new Uint32Array(P);
      accumulateLitCountsCpu(b, counts, params);
      const expectCounts = new Uint32Array(P);
      let clipped = 0;
      for (let f = 0; f < b.nFrames; f++) {
        const values: number[][] = Array.from({ length: cells.n }, () => []);
        for (let p = 0; p < P; p++) {
          const v = b.data[f * P + p];
          if (Number.isFinite(v) && b.mask[f * P + p] === 0) values[cells.cell[p]].push(v);
        }
        for (let c = 0; c < cells.n; c++) {
          let limit = Infinity, prev = -1, mu = 0, sigma = 0;
          for (let it = 0; it < params.bgIterations; it++) {
            let n = 0, S = 0, Q = 0;
            for (const v of values[c]) if (v < limit) (n++, S += v, Q += v * v);
            if (n === 0 || n === prev) break;
            if (it > 1) clipped++;
            prev = n;
            mu = S / n;
            sigma = Math.sqrt(Math.max(0, Q / n - mu * mu));
            limit = mu + params.bgClip * sigma;
          }
          const t = f * cells.n + c;
          // Equal but for the float64 sums' association: within a float32 rounding.
          expect(Math.abs(bg.mu[t] - mu)).toBeLessThanOrEqual(1e-6 * (Math.abs(mu) + 1e-3));
          expect(Math.abs(bg.sigma[t] - sigma)).toBeLessThanOrEqual(1e-6 * (sigma + 1e-3));
        }
        for (let p = 0; p < P; p++) {
          const v = b.data[f * P + p], t = f * cells.n + cells.cell[p];
          if (Number.isFinite(v) && b.mask[f * P + p] === 0 && Math.fround(v - bg.mu[t]) > bg.thr[t]) {
            expectCounts[p]++;
          }
        }
      }
      expect(clipped).toBeGreaterThan(10); // bins clipped over 3 or more iterations
      expect(counts).toEqual(expectCounts);
      expect(expectCounts.reduce((a, x) => a + x, 0)).toBeGreaterThan(1000);
    }
  });

  it("without a background (minSnr 0): mu = sigma = 0, thr = threshold", () => {
    const bg = backgroundCpu(batch(0, 0, 2), { ...RADIAL, minSnr: 0, threshold: 0.7 });
    expect(bg.mu.every((x) => x === 0) && bg.sigma.every((x) => x === 0)).toBe(true);
    expect(bg.thr.every((x) => x === Math.fround(0.7))).toBe(true);
  });
});

const gpu = await getGpuDevice();
describe.skipIf(!gpu)("webgpu: stage 0 per radius bin equals the CPU reference", () => {
  it("stage 0 within float32 rounding; stages 1-4 and the hot-pixel counts equal given the same stage 0", async () => {
    for (const width of [1, 4]) {
      const params = { ...RADIAL, bgBinWidth: width };
      const be = (await createWebgpuBackend(params, g, 8))!;
      try {
        for (let mi = 0; mi < 2; mi++) {
          const b = { ...batch(mi, 4, 6), hot: new Uint8Array(g.pixels) };
          b.hot[1000] = 1;
          const res = await be.process(b);
          expectCpu(b, res, params, `width ${width}`);
          const counts = new Uint32Array(g.pixels), expected = new Uint32Array(g.pixels);
          await be.accumulateLitCounts(b, counts);
          accumulateLitCountsCpu(b, expected, params, res.background);
          expect(counts).toEqual(expected);
          expect(expected.reduce((a, x) => a + x, 0)).toBeGreaterThan(10);
        }
      } finally {
        be.dispose();
      }
    }
  });

  it("several modules (each its own radius bins) in one call, and split by a small binding cap", async () => {
    const params = RADIAL;
    const n = 6;
    const mods = [0, 1, 2].map((mi) => {
      const b: ModuleBatch = { ...batch(mi % 2, 2 + 7 * mi, n), hot: new Uint8Array(g.pixels) };
      b.hot![3000 + 500 * mi] = 1;
      // Module 2: module 0's frames with module 1's radii (different bins over the same data).
      if (mi === 2) b.radius = run.radius[1];
      return b;
    });
    expect(new Set(mods.map((b) => cellsOf(b, params).n)).size).toBeGreaterThan(1);
    for (
      const [cap, parts] of [[undefined, 1], [2 * n * 4 * g.pixels, 2], [4 * 4 * g.pixels, 6]] as const
    ) {
      const be = (await createWebgpuBackend(params, g, 8, { maxBindingBytes: cap }))!;
      try {
        const run = be.processModules(mods);
        await run.uploaded;
        const res = await run.results;
        expect(be.stats.submissions).toBe(parts);
        for (let m = 0; m < mods.length; m++) {
          expectCpu(mods[m], res[m], params, `cap ${cap} module ${m}`);
        }
        const counts = mods.map(() => new Uint32Array(g.pixels));
        await be.accumulateModules(mods, counts);
        for (let m = 0; m < mods.length; m++) {
          const expected = new Uint32Array(g.pixels);
          accumulateLitCountsCpu(mods[m], expected, params, res[m].background);
          expect(counts[m]).toEqual(expected);
        }
      } finally {
        be.dispose();
      }
    }
  });
});
