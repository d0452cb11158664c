/**
 * Accuracy of stage 0's two background estimates (per radius bin from the layout, the default; per 16 x 16
 * tile, no geometry) against the truth of fixtures/sfx.ts, on the non-hit frames of both realistic runs
 * (docs/localise.md quotes the output):
 * - mu: per pixel, |mu of its cell - lambda| / lambda (lambda: the generator's expected background of the
 *   pixel, pixels with lambda >= 0.1 photon; the low run: >= 0.01), and |mu - lambda| in photons;
 * - sigma: per cell, |sigma / expected noise - 1|, the expected noise of the cell's pixels: Poisson + the
 *   spread of lambda over the cell + calibration offsets (0.1) + gain errors (2 %); cells of >= 200 pixels
 *   with a mean >= 0.3 photon (the low run: >= 0.02).
 *
 *   npx deno run -A bench/background-accuracy.ts [frames, default 24]
 */
import process from "node:process";
import { backgroundCpu, cellsOf } from "../src/localise/background.ts";
import { DEFAULT_PARAMS } from "../src/localise/spec.ts";
import { SFX_LOW, SFX_WATER, type SfxOptions, SfxRun } from "../fixtures/sfx.ts";

const frames = Number(process.argv[2] ?? 24);
const q = (a: number[], p: number) => a.sort((x, y) => x - y)[Math.floor(p * (a.length - 1))] ?? NaN;

for (const [name, o] of [["water", SFX_WATER], ["low", SFX_LOW]] as [string, SfxOptions][]) {
  const run = new SfxRun({ ...o, modules: [0, 3, 8, 11], frames, hitRate: 0.1 });
  const g = run.geometry;
  // The low run's background is ~0.01-0.1 photon: lower floors for its relative errors.
  const [minLambda, minMean] = name === "low" ? [0.01, 0.02] : [0.1, 0.3];
  for (
    const [est, params] of [
      ["radius bins 4 px", { ...DEFAULT_PARAMS, bgBinWidth: 4 }],
      ["16x16 tiles", { ...DEFAULT_PARAMS, bgBinWidth: 0 }],
    ] as const
  ) {
    const relMu: number[] = [], absMu: number[] = [], relSigma: number[] = [];
    run.o.modules.forEach((_, mi) => {
      const b = {
        geometry: g,
        nFrames: frames,
        data: run.batch(mi, 0, frames),
        mask: run.batchMask(mi, frames),
        radius: params.bgBinWidth > 0 ? run.radius[mi] : undefined,
      };
      const cells = cellsOf(b, params);
      const bg = backgroundCpu(b, params);
      for (let f = 0; f < frames; f++) {
        if (run.hit[f]) continue;
        const lambda = run.background(mi, f);
        const s = new Float64Array(cells.n), s2 = new Float64Array(cells.n), n = new Float64Array(cells.n);
        for (let p = 0; p < g.pixels; p++) {
          const c = cells.cell[p];
          const mu = bg.mu[f * cells.n + c];
          absMu.push(Math.abs(mu - lambda[p]));
          if (lambda[p] >= minLambda) relMu.push(Math.abs(mu - lambda[p]) / lambda[p]);
          n[c]++;
          s[c] += lambda[p];
          s2[c] += lambda[p] ** 2;
        }
        for (let c = 0; c < cells.n; c++) {
          if (n[c] < 200) continue;
          const mean = s[c] / n[c], spread = Math.max(0, s2[c] / n[c] - mean * mean);
          if (mean < minMean) continue;
          const sigma = Math.sqrt(mean + spread + 0.01 + (0.02 * mean) ** 2);
          relSigma.push(Math.abs(bg.sigma[f * cells.n + c] / sigma - 1));
        }
      }
    });
    console.log(
      `${name}, ${est}: mu rel. error median ${q(relMu, 0.5).toFixed(3)} (90 % ${
        q(relMu, 0.9).toFixed(3)
      }), ` +
        `|mu - lambda| median ${q(absMu, 0.5).toFixed(3)} photon; sigma rel. error median ` +
        `${q(relSigma, 0.5).toFixed(3)} (90 % ${q(relSigma, 0.9).toFixed(3)}, ${relSigma.length} cells)`,
    );
  }
}
