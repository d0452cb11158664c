/**
 * Throughput of the CPU reference (LocaliseBackend.process: stages 0, 1, 3, 4, one thread) on the realistic
 * SFX frames of fixtures/sfx.ts (water ring), the defaults (background per radius bin) against the tiles
 * and the former fixed-threshold mode, and stage 0 alone.
 *
 *   npm run build && node dist/bench/sfx.js [frames per batch, default 32]
 *   npx deno run -A bench/sfx.ts
 *
 * Measured 2026-12-02 (2-core dev VM, load average 10-18 from other jobs, Node 20; best of 7 in process CPU
 * time, AGIPD module frames of the water-ring run, ms per module frame), before -> after the h1speed changes
 * (stage 0 per radius bin gathered in one raster pass with the clip's first iteration, runs of one cell
 * per ASIC row segment; outputs bit-identical):
 *   defaults (radius bins, minSnr 3.5): 0.89 -> 0.76 (stage 0 alone: 0.55 -> 0.36)
 *   tiles (bgBinWidth 0):               0.76 -> 0.74 (stage 0 alone: 0.41 -> 0.41)
 *   fixed threshold (minSnr 0):         0.51 -> 0.51
 * Branch h9stage (stage 1's sums made in stage 0's gather pass, candidate-only stage-1 pass with a per-cell
 * cut, branch-free clip passes; outputs bit-identical), same VM at load 11, base and new interleaved, best
 * of 3 runs: defaults 0.75 -> 0.63, stage 0 alone 0.36 -> 0.39 (it now makes stage 1's sums too), tiles
 * 0.72 -> 0.71, fixed threshold 0.53 -> 0.52.
 * Branch h10st (gather by a per-pixel place in the cell-major order, no runs; the clip's later iterations
 * and the candidates from each cell's tail above the previous cell's mu + 2 sigma; no stage-1 raster pass;
 * candidates carry their cell and value to the peak statistics; tiles through the same code; stage 0's
 * float32 outputs and everything after identical on the test and realistic runs), load 5.8, main
 * interleaved, best of 3: defaults 0.56 -> 0.32, stage 0 alone 0.37 -> 0.25, tiles 0.64 -> 0.38 (stage 0
 * 0.38 -> 0.28), fixed threshold 0.48 -> 0.48.
 * A bare raster pass over a module frame's data and mask (validity test and count) costs ~0.085 ms here;
 * stage 0's raster pass (that, the scattered store, stage 1's sums) ~0.15, its per-cell pass ~0.06, the
 * clip's tails, thr and the candidates ~0.04, stages 1-4 on the ~1,000 candidates of a frame ~0.05. With
 * a batch small enough to stay in cache (1-2 frames) the defaults take 0.29-0.30: memory is ~0.05 of it.
 * 0.32 ms x 2816 module frames = 0.9 s of one core for a 0.7 GB run (plus the hot-pixel sample's stage 0);
 * see bench/RESULTS.md end to end.
 */
import process from "node:process";
import { backgroundCpu } from "../src/localise/background.ts";
import { DEFAULT_PARAMS } from "../src/localise/spec.ts";
import { processBatchCpu } from "../src/localise/stages.ts";
import { SFX_WATER, SfxRun } from "../fixtures/sfx.ts";

const n = Number(process.argv[2] ?? 32);
const run = new SfxRun({ ...SFX_WATER, modules: [0], frames: n });
const batch = {
  geometry: run.geometry,
  nFrames: n,
  data: run.batch(0, 0, n),
  mask: run.batchMask(0, n),
  radius: run.radius[0],
};
const tiles = { ...DEFAULT_PARAMS, bgBinWidth: 0 };

/** Best of 7 in CPU time of this process (user + system: robust on a machine shared with other jobs). */
function best(f: () => void): number {
  f();
  let t = Infinity;
  for (let k = 0; k < 7; k++) {
    const t0 = process.cpuUsage();
    f();
    const d = process.cpuUsage(t0);
    t = Math.min(t, (d.user + d.system) / 1000);
  }
  return t / n;
}

const fixed = { ...DEFAULT_PARAMS, minSnr: 0, neighbours: 1, minArea: 3 };
console.log(`fixed threshold: ${best(() => processBatchCpu(batch, fixed)).toFixed(2)} ms per module frame`);
console.log(
  `defaults:        ${best(() => processBatchCpu(batch, DEFAULT_PARAMS)).toFixed(2)} ms per module frame`,
);
console.log(
  `stage 0 alone:   ${best(() => backgroundCpu(batch, DEFAULT_PARAMS)).toFixed(2)} ms per module frame`,
);
console.log(`tiles:           ${best(() => processBatchCpu(batch, tiles)).toFixed(2)} ms per module frame`);
console.log(`tiles stage 0:   ${best(() => backgroundCpu(batch, tiles)).toFixed(2)} ms per module frame`);
