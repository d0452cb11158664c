/**
 * Stage 0 (background and noise per 16 x 16 tile, geometry-free) and the background mode of stages 2-4 on
 * the realistic SFX generator (fixtures/sfx.ts): the tile background against the generator's expected
 * background, and GPU == CPU (the GPU's stage 0 within float32 rounding of the CPU's; given the same
 * stage 0, integer outputs equal and floats close).
 */
import { describe, expect, it } from "vitest";
import { SFX_WATER, SfxRun } from "../fixtures/sfx.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { accumulateLitCountsCpu } from "../src/localise/stages.ts";
import { backgroundCpu, TILE, tilesOf } from "../src/localise/background.ts";
import { DEFAULT_PARAMS } from "../src/localise/spec.ts";
import { createWebgpuBackend } from "../src/localise/webgpu.ts";
import { expectCpu } from "./helpers/stage-compare.ts";

const run = new SfxRun({ ...SFX_WATER, modules: [0, 9], frames: 24, hitRate: 0.5 });
const g = run.geometry;
const nT = tilesOf(g), tFs = g.moduleFs / TILE;
const batch = (mi: number, f0: number, n: number) => ({
  geometry: g,
  nFrames: n,
  data: run.batch(mi, f0, n),
  mask: run.batchMask(mi, n),
});

describe("stage 0 on the water-ring run", () => {
  it("mu follows the expected background (median error 0.02 photon), sigma its noise (median 4 %)", () => {
    const errMu: number[] = [], errSigma: number[] = [];
    for (let mi = 0; mi < 2; mi++) {
      const b = batch(mi, 0, run.frames);
      const bg = backgroundCpu(b, DEFAULT_PARAMS);
      for (let f = 0; f < run.frames; f++) {
        if (run.hit[f]) continue;
        const lambda = run.background(mi, f);
        for (let t = 0; t < nT; t++) {
          const ss0 = Math.floor(t / tFs) * TILE, fs0 = (t % tFs) * TILE;
          let s = 0, s2 = 0;
          for (let ss = ss0; ss < ss0 + TILE; ss++) {
            for (let fs = fs0; fs < fs0 + TILE; fs++) {
              const l = lambda[ss * g.moduleFs + fs];
              s += l;
              s2 += l * l;
            }
          }
          const n = TILE * TILE, mean = s / n, spread = s2 / n - mean * mean;
          // Poisson + the spread of lambda over the tile + offsets (0.1) + gain errors (2 %).
          const sigma = Math.sqrt(mean + spread + 0.01 + (0.02 * mean) ** 2);
          errMu.push(Math.abs(bg.mu[f * nT + t] - mean));
          if (mean > 0.3) errSigma.push(Math.abs(bg.sigma[f * nT + t] / sigma - 1));
        }
      }
    }
    const q = (a: number[], p: number) => a.sort((x, y) => x - y)[Math.floor(p * (a.length - 1))];
    expect(errMu.length).toBeGreaterThan(1000);
    // Measured (seed 1): |mu error| median 0.018, 99th percentile 0.12 photon (the noise of a 256-pixel
    // mean on a ~1.3-photon sigma is 0.08); sigma: median 4 %, 95th percentile 12 %.
    expect(q(errMu, 0.5)).toBeLessThan(0.03);
    expect(q(errMu, 0.99)).toBeLessThan(0.16);
    expect(errSigma.length).toBeGreaterThan(500);
    expect(q(errSigma, 0.5)).toBeLessThan(0.06);
    expect(q(errSigma, 0.95)).toBeLessThan(0.16);
  });

  it("without a background (minSnr 0): mu = sigma = 0, thr = threshold", () => {
    const bg = backgroundCpu(batch(0, 0, 2), { ...DEFAULT_PARAMS, minSnr: 0, threshold: 0.7 });
    expect(bg.mu.every((x) => x === 0) && bg.sigma.every((x) => x === 0)).toBe(true);
    expect(bg.thr.every((x) => x === Math.fround(0.7))).toBe(true);
  });
});

const gpu = await getGpuDevice();
describe.skipIf(!gpu)("webgpu: the background mode equals the CPU reference", () => {
  it("stage 0 within float32 rounding; stages 1-4 and the hot-pixel counts equal given the same stage 0", async () => {
    const params = { ...DEFAULT_PARAMS };
    const be = (await createWebgpuBackend(params, g, 8))!;
    try {
      for (let mi = 0; mi < 2; mi++) {
        const b = { ...batch(mi, 4, 6), hot: new Uint8Array(g.pixels) };
        b.hot[1000] = 1;
        const res = await be.process(b);
        expectCpu(b, res, params, "tiles");
        const counts = new Uint32Array(g.pixels), expected = new Uint32Array(g.pixels);
        await be.accumulateLitCounts(b, counts);
        accumulateLitCountsCpu(b, expected, params, res.background);
        expect(counts).toEqual(expected);
        expect(expected.reduce((a, x) => a + x, 0)).toBeGreaterThan(10);
      }
    } finally {
      be.dispose();
    }
  });
});
