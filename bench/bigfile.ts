/**
 * Reading a 5 GB file in bounded memory (a benchmark, not a test: generating 5 GB takes minutes).
 *
 *   npm run build && node dist/bench/bigfile.js [--size-gb 5] [--batch-mb 64]
 *
 * Writes one AGIPD CORR module file of about --size-gb GB (bench/data/bigfile/, reused), reads every frame
 * (data and mask) with the FrameReader in batches, and reports the read speed, the peak RSS of the process
 * and the size of h5wasm's heap: both must stay near the batch size, far below the file size.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { bytesPerTrain, makeRun } from "../fixtures/synth.ts";
import { FrameReader } from "../src/exdf/frames.ts";
import { wasmHeapBytes } from "../src/exdf/h5.ts";
import { Run } from "../src/exdf/run.ts";

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

const here = path.dirname(fileURLToPath(import.meta.url));
const root = fs.existsSync(path.join(here, "../package.json"))
  ? path.join(here, "..")
  : path.join(here, "../..");
const dir = path.join(root, "bench/data/bigfile");
const sizeGb = Number(arg("size-gb", "5"));
const opts = {
  seed: 5,
  modules: [0],
  framesPerTrain: 64,
  spotsPerFrame: [0, 2] as [number, number],
  writeDa: false,
};
const trains = Math.ceil((sizeGb * 1e9) / bytesPerTrain(opts));
const tag = JSON.stringify({ ...opts, trains });
if (
  !fs.existsSync(path.join(dir, "bench.json")) ||
  fs.readFileSync(path.join(dir, "bench.json"), "utf8") !== tag
) {
  fs.rmSync(dir, { recursive: true, force: true });
  console.error(`bigfile: writing ${trains} trains into one file in ${dir} ...`);
  await makeRun(dir, { ...opts, trains, trainsPerFile: trains });
  fs.writeFileSync(path.join(dir, "bench.json"), tag);
}
const files = fs.readdirSync(dir).filter((f) => f.endsWith(".h5"));
const bytes = files.reduce((a, f) => a + fs.statSync(path.join(dir, f)).size, 0);
const rss0 = process.memoryUsage().rss;
const t0 = performance.now();
const run = await Run.open(dir);
const reader = new FrameReader(run.detector(), {
  mask: true,
  batchBytes: Number(arg("batch-mb", "64")) * 2 ** 20,
});
let frames = 0;
let peakRss = 0;
for (const b of reader.batches()) {
  frames += b.nFrames;
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
}
run.close();
const s = (performance.now() - t0) / 1000;
const heap = wasmHeapBytes();
console.log(JSON.stringify({
  files: files.length,
  fileGB: +(bytes / 1e9).toFixed(2),
  frames,
  seconds: +s.toFixed(1),
  gbPerSecond: +((frames * 512 * 128 * 8) / s / 1e9).toFixed(2),
  rssBeforeMB: Math.round(rss0 / 2 ** 20),
  peakRssMB: Math.round(peakRss / 2 ** 20),
  maxRssMB: Math.round(process.resourceUsage().maxRSS / 1024),
  wasmHeapMB: Math.round(heap / 2 ** 20),
}));
