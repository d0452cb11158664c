/**
 * Throughput of the CPU reference (LocaliseBackend.process: stages 0, 1, 3, 4, one thread) on the realistic
 * SFX frames of fixtures/sfx.ts (water ring), the defaults (background per radius bin) against the tiles
 * and the former fixed-threshold mode, and stage 0 alone.
 *
 *   npm run build && node dist/bench/sfx.js [frames per batch, default 32]
 *   npx deno run -A bench/sfx.ts
 *
 * Measured (2-core dev VM shared with other jobs, Node 20, AGIPD module frames of the water-ring run):
 *   fixed threshold (minSnr 0, neighbours 1, minArea 3): 2.1 ms per module frame
 *   defaults (tile background, minSnr 3.5):              3.4 ms per module frame (stage 0 alone: 1.1 ms)
 * i.e. 8 modules x 352 frames (0.7 GB) in ~4.8 s of stage time on 2 threads, before reading.
 */
import process from "node:process";
import { backgroundCpu, DEFAULT_PARAMS, processBatchCpu } from "../src/localise/stages.ts";
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
