/**
 * The benchmark suite: `npm run bench` (Node, compiled) or `npx deno run -A bench/run.ts`.
 *
 * Generates (or reuses) a synthetic AGIPD CORR run of about `--size-gb` GB of image data (bench/data/),
 * then measures, each configuration in a child process of its own (so that peak memory is its own):
 * - the raw read ceiling: every frame's data and mask read into buffers, no compute (1 reader; and one
 *   module group per core through localise's own driver and threads, bench/read-only.ts);
 * - localise end to end with each backend and worker count: frames/s and GB/s, time per stage (hot-pixel
 *   pre-pass, waiting for reads, compute, classify/ROIs, write), peak RSS.
 * Writes bench/RESULTS.md with the machine (CPU model, cores, adapter) and the table.
 *
 * `--run DIR` measures any run instead (a real CORR run, a mock run): the detector and modules are taken
 * from it; accuracy is reported only when DIR/truth.json exists. The generated run is laid out like
 * EuXFEL's corrected files: image.data float32 in 1-frame chunks, image.mask uint32 gzip-compressed per frame.
 *
 * Figures, each for the same files in the same run of the suite:
 * - image-data GB/s: bytes of image.data per second (what users call the detector rate; AGIPD-1M real time
 *   is 14.8 GB/s), and data + mask GB/s (everything decoded);
 * - frames/s: aligned detector frames (all modules) per second;
 * - vs read ceiling: image-data GB/s over the fastest read configuration's;
 * - start-up: localise on the first train only (workers, their h5wasm, the backend, opening the run): the fixed
 *   cost, timed from after this process found the run's first train (h5wasm loaded); with the run index cache
 *   as the command after another finds it (`startup`), and without it (`startup-cold`: every file read);
 * - peak RSS of each configuration's own process.
 *
 * A config name ending in `-h5wasm` runs with the direct chunk reads off (XFEL_REDU_DIRECT=0, src/exdf/chunks.ts):
 * every byte through h5wasm, the read ceiling as it was before them; one ending in `-cold` with the run index
 * cache off (XFEL_REDU_CACHE_DIR=off, src/exdf/run-cache.ts).
 *
 * Options: --run DIR, --size-gb G (2), --out FILE (bench/RESULTS.md), --configs
 * read1,readN,readN-h5wasm,startup,startup-cold,cpu1,cpuN,webgpu1
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { bytesPerTrain, makeRun } from "../fixtures/synth.ts";
import { evaluate } from "../fixtures/evaluate.ts";
import { FrameReader } from "../src/exdf/frames.ts";
import { emptyStats, moduleGroups, runAlgorithm } from "../src/framework/algorithm.ts";
import { holdYoungGeneration } from "../src/framework/threads.ts";
import { ReadOnlyAlgorithm } from "./read-only.ts";
import { getGpuDevice, gpuHardwarePresent } from "../src/gpu/device.ts";
import { localise } from "../src/localise/algorithm.ts";
import { writeRedu } from "../src/localise/redu.ts";
import { Run } from "../src/exdf/run.ts";
import { writeResults } from "./results.ts";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = fs.existsSync(path.join(here, "../package.json"))
  ? path.join(here, "..")
  : path.join(here, "../..");

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

interface Row {
  config: string;
  seconds: number;
  frames: number;
  moduleFrames: number;
  bytes: number;
  /** Image data only (the detector rate). */
  dataGbPerSecond: number;
  /** Everything decoded (data + mask, the hot-pixel sample included for localise). */
  gbPerSecond: number;
  framesPerSecond: number;
  stages?: Record<string, number>;
  rssMB: number;
  backend?: string;
  accuracy?: string;
}

const MODULES = [0, 1, 2, 3, 4, 5, 6, 7];
const FRAMES = 32;

/** What one module frame weighs as read: image data and mask apart (bytes). */
interface Layout {
  modules: number[];
  dataBytes: number;
  maskBytes: number;
  description: string;
}

async function layoutOf(dir: string): Promise<Layout> {
  const run = await Run.open(dir);
  try {
    const det = run.detector();
    const px = det.imageShape[0] * det.imageShape[1];
    const dataBytes = px * (det.dtype === "uint16" ? 2 : 4);
    const maskBytes = det.raw ? 0 : px * 4;
    const frames = det.modules.reduce((a, m) => a + m.frames, 0);
    const onDisk = fs.readdirSync(dir).filter((f) => f.endsWith(".h5")).reduce(
      (a, f) => a + fs.statSync(path.join(dir, f)).size,
      0,
    );
    return {
      modules: det.modules.map((m) => m.module),
      dataBytes,
      maskBytes,
      description: `${det.name} (${det.type} ${det.raw ? "RAW" : "CORR"}), ${det.modules.length} modules, ` +
        `${frames} module frames, ${run.trainIds.length} trains, ${(onDisk / 1e9).toFixed(2)} GB on disk`,
    };
  } finally {
    run.close();
  }
}

async function ensureRun(dir: string, sizeGb: number): Promise<void> {
  const opts = { seed: 2026, modules: MODULES, framesPerTrain: FRAMES, trainsPerFile: 250 };
  const perTrain = bytesPerTrain(opts);
  const trains = Math.max(2, Math.round((sizeGb * 1e9) / perTrain));
  const tag = JSON.stringify({ ...opts, trains });
  const stamp = path.join(dir, "bench.json");
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, "utf8") === tag) return;
  fs.rmSync(dir, { recursive: true, force: true });
  console.error(`bench: generating ${trains} trains (${(trains * perTrain / 1e9).toFixed(2)} GB) in ${dir}`);
  await makeRun(dir, { ...opts, trains });
  fs.writeFileSync(stamp, tag);
}

async function one(name: string, dir: string): Promise<Row> {
  const t0 = performance.now();
  const config = name.replace(/-(h5wasm|cold)$/, "");
  const via = config === name ? "" : name.endsWith("-cold") ? ", index cache off" : ", h5wasm only";
  const rss = () => Math.round(process.resourceUsage().maxRSS / 1024);
  const lay = await layoutOf(dir);
  const FRAME_BYTES = lay.dataBytes + lay.maskBytes;
  const withMask = lay.maskBytes > 0;
  if (config === "read1") {
    const run = await Run.open(dir);
    const reader = new FrameReader(run.detector(), { mask: withMask, batchBytes: 32 * 2 ** 20 });
    let frames = 0, mf = 0;
    for (const b of reader.batches()) {
      frames += b.nFrames;
      mf += b.nFrames * b.modules.length;
    }
    run.close();
    const s = (performance.now() - t0) / 1000;
    return row(config + via, s, frames, mf, mf * FRAME_BYTES, rss(), mf * lay.dataBytes);
  }
  if (config === "startup") {
    // The fixed cost: localise (default backend and workers) on the first train only, from when this thread
    // has h5wasm loaded and knows the first train (layoutOf and this Run.open fill the run index cache).
    const run = await Run.open(dir);
    const first = run.trainIds[0];
    run.close();
    const t1 = performance.now();
    const r = await localise(dir, { firstTrain: first, lastTrain: first });
    r.dispose();
    const s = (performance.now() - t1) / 1000;
    const mf = r.modules.reduce((a, m) => a + m.frames, 0);
    return {
      ...row(
        `start-up (localise, first train only${via})`,
        s,
        r.frames,
        mf,
        r.timing.bytesRead,
        rss(),
        mf * lay.dataBytes,
      ),
      backend: r.backend.name,
    };
  }
  if (config === "readN") {
    // localise's driver and threads (one module group per core, each reading its own frames), no compute.
    const groups = moduleGroups(lay.modules, os.availableParallelism());
    const r = await runAlgorithm(new ReadOnlyAlgorithm(), dir, { mask: withMask }, {
      workers: groups.length,
    });
    const s = (performance.now() - t0) / 1000;
    const mf = r.moduleFrames;
    return row(
      `read, ${groups.length} readers${via}`,
      s,
      Math.round(mf / lay.modules.length),
      mf,
      mf * FRAME_BYTES,
      rss(),
      mf * lay.dataBytes,
    );
  }
  const backend = config.startsWith("webgpu") ? "webgpu" : "cpu";
  const workers = config.endsWith("N") ? os.availableParallelism() : 1;
  const stats = emptyStats();
  const r = await localise(dir, { backend, workers }, undefined, stats);
  const tw = performance.now();
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "bench-redu-"));
  await writeRedu(r, out, r.runFiles);
  fs.rmSync(out, { recursive: true, force: true });
  const write = (performance.now() - tw) / 1000;
  const s = (performance.now() - t0) / 1000;
  const truth = path.join(dir, "truth.json");
  let e;
  try {
    e = fs.existsSync(truth) ? evaluate(r, truth) : null;
  } finally {
    r.dispose(); // the spill files
  }
  const moduleFrames = r.modules.reduce((a, m) => a + m.frames, 0);
  const per = (x: number) => x / Math.max(1, stats.parts); // per part: parts run side by side
  return {
    ...row(
      `localise ${backend}, ${workers} worker${workers > 1 ? "s" : ""}${via}`,
      s,
      r.frames,
      moduleFrames,
      r.timing.bytesRead,
      rss(),
      moduleFrames * lay.dataBytes,
    ),
    backend: `${r.backend.name} (${r.backend.adapter})`,
    stages: {
      "hot-pixel pre-pass": per(stats.prepass),
      "waiting for reads": per(stats.readWait),
      "compute (stages 1, 3, 4)": per(stats.process),
      "classify, ROIs, merge": Math.max(
        0,
        r.timing.seconds - per(stats.prepass + stats.readWait + stats.process),
      ),
      "write REDU": write,
    },
    accuracy: e
      ? `lit recall ${e.litRecall.toFixed(3)}, precision ${e.litPrecision.toFixed(3)}; ` +
        `spot recall ${e.spotRecall.toFixed(3)}, peak precision ${e.peakPrecision.toFixed(3)}`
      : "no truth.json",
  };
}

function row(
  config: string,
  s: number,
  frames: number,
  moduleFrames: number,
  bytes: number,
  rssMB: number,
  dataBytes: number,
): Row {
  return {
    config,
    seconds: s,
    frames,
    moduleFrames,
    bytes,
    dataGbPerSecond: dataBytes / s / 1e9,
    gbPerSecond: bytes / s / 1e9,
    framesPerSecond: frames / s,
    rssMB,
  };
}

async function main(): Promise<void> {
  const given = arg("run", "");
  const dir = given ? path.resolve(given) : path.join(root, "bench/data/agipd-corr");
  const only = arg("one", "");
  if (only) {
    holdYoungGeneration(); // each configuration's process as the CLI's (bin/xfel-redu.js)
    console.log(JSON.stringify(await one(only, dir)));
    return;
  }
  const sizeGb = Number(arg("size-gb", "2"));
  if (!given) await ensureRun(dir, sizeGb);
  const lay = await layoutOf(dir);
  const gpu = gpuHardwarePresent() ? await getGpuDevice().catch(() => undefined) : undefined;
  const configs = arg(
    "configs",
    `read1,readN,readN-h5wasm,startup,startup-cold,cpu1,cpuN${gpu ? ",webgpu1" : ""}`,
  )
    .split(",");
  const rows: Row[] = [];
  for (const c of configs) {
    const self = fileURLToPath(import.meta.url);
    const deno = (globalThis as { Deno?: { execPath(): string } }).Deno;
    const cmd = deno ? [deno.execPath(), "run", "-A", self] : [process.execPath, self];
    const r = spawnSync(cmd[0], [...cmd.slice(1), "--one", c, ...(given ? ["--run", dir] : [])], {
      encoding: "utf8",
      env: c.endsWith("-h5wasm")
        ? { ...process.env, XFEL_REDU_DIRECT: "0" }
        : c.endsWith("-cold")
        ? { ...process.env, XFEL_REDU_CACHE_DIR: "off" }
        : process.env,
      maxBuffer: 1 << 26,
    });
    if (r.status !== 0) {
      console.error(`bench: ${c} failed:\n${r.stderr}`);
      continue;
    }
    const res = JSON.parse(r.stdout.trim().split("\n").pop()!) as Row;
    rows.push(res);
    console.error(
      `bench: ${res.config}: ${res.seconds.toFixed(2)} s, image data ${
        res.dataGbPerSecond.toFixed(2)
      } GB/s, ` +
        `${res.framesPerSecond.toFixed(0)} frames/s, RSS ${res.rssMB} MB`,
    );
  }
  const reads = rows.filter((r) => r.config.startsWith("read"));
  const ceiling = Math.max(...reads.map((r) => r.dataGbPerSecond));
  const lines = [
    "# Benchmarks",
    "",
    `Measured ${new Date().toISOString().slice(0, 16)}Z by \`npm run bench${
      given ? " -- --run DIR" : ""
    }\` (${process.versions.node ? `Node ${process.versions.node}` : "Deno"}).`,
    "",
    `- Machine: ${os.cpus()[0]?.model ?? "?"}, ${os.availableParallelism()} cores, ${
      (os.totalmem() / 2 ** 30).toFixed(0)
    } GiB`,
    `- WebGPU adapter: ${gpu ? `${gpu.adapterName}${gpu.software ? " (software)" : ""}` : "none (no GPU)"}`,
    `- Run: ${
      given
        ? ""
        : "synthetic, laid out like EuXFEL CORR files (data f32 1-frame chunks, mask u32 gzip per frame): "
    }${lay.description}`,
    "- image data GB/s: image.data bytes per second (the detector rate; AGIPD-1M real time: 14.8 GB/s);",
    "  data + mask: every decoded byte (for localise, the hot-pixel sample included); frames/s: aligned",
    "  detector frames (all modules) per second; vs ceiling: image data GB/s over the best read row.",
    "",
    "| configuration | seconds | image data GB/s | data + mask GB/s | frames/s | vs read ceiling | peak RSS (MB) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...rows.map((r) =>
      `| ${r.config} | ${r.seconds.toFixed(2)} | ${r.dataGbPerSecond.toFixed(2)} | ${
        r.gbPerSecond.toFixed(2)
      } | ${r.framesPerSecond.toFixed(0)} | ` +
      `${
        r.config.startsWith("start-up") ? "-" : `${(r.dataGbPerSecond / ceiling).toFixed(2)}x`
      } | ${r.rssMB} |`
    ),
    "",
    "Time per stage (seconds, per worker: workers run side by side):",
    "",
    "| configuration | " + Object.keys(rows.find((r) => r.stages)?.stages ?? {}).join(" | ") +
    " | backend | accuracy |",
    "| --- | " + Object.keys(rows.find((r) => r.stages)?.stages ?? {}).map(() => "---:").join(" | ") +
    " | --- | --- |",
    ...rows.filter((r) => r.stages).map((r) =>
      `| ${r.config} | ${
        Object.values(r.stages!).map((v) => v.toFixed(2)).join(" | ")
      } | ${r.backend} | ${r.accuracy} |`
    ),
    "",
  ];
  const outFile = arg("out", path.join(root, "bench/RESULTS.md"));
  writeResults(outFile, lines.join("\n"));
  console.error(`bench: wrote ${outFile}`);
}

await main();
