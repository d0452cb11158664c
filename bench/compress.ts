/**
 * Compression figures (docs/compression.md): ratio, PSNR, SSIM, max error and throughput of every method on
 * a synthetic CORR run, and the throughput of the kernels (SZ integer stage, rounding) on the CPU and on the
 * WebGPU adapter.
 *
 *   npx deno run -A bench/compress.ts [--run DIR --from LOCALISE_OUT] [--modules 4] [--trains 8]
 *                                     [--frames 64] [--lit 0.5] [--methods a;b;...] [--kernels-only]
 *                                     [--kernel-frames 64] [--backend auto|cpu|webgpu]
 *   npm run build && node dist/bench/compress.js ...
 *
 * Without --run, a synthetic CORR run (fixtures/synth.ts defaults: read noise 0.12 photon, Bragg-like spots,
 * hot, masked and NaN pixels) is made in a temporary directory and localised on the CPU; each method then
 * runs `reduce --compress` on it (lit frames only) and the figures come from its record (reduction.json):
 * "ratio" is image.data's (uncompressed kept frames / bytes the dataset takes in the file), "all" every
 * compressed dataset's (data, mask, gain), PSNR / SSIM / max error over the sampled frames (8 per module
 * file; masked pixels left out), MB/s in = uncompressed bytes per second of transform + encode + write,
 * MB/s out = per second of read + decode of the sample.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { makeRun } from "../fixtures/synth.ts";
import type { CompressionRecord } from "../src/compress/compressor.ts";
import { roundInPlace } from "../src/compress/round.ts";
import { szCodesCpu, szConstants, SzFrameDecoder, SzFrameEncoder } from "../src/compress/sz.ts";
import { createRoundKernel, createSzKernel } from "../src/compress/webgpu.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { localise } from "../src/localise/algorithm.ts";
import { summaryJson } from "../src/localise/output.ts";
import { writeRedu } from "../src/localise/redu.ts";
import { reduce } from "../src/reduce/reduce.ts";
import { uniform } from "../fixtures/synth.ts";

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

const DEFAULT_METHODS = [
  "lossless:gzip:1",
  "lossless:gzip",
  "lossless:bitshuffle+lz4",
  "lossless:blosc:zstd",
  "lossless:blosc:lz4",
  "lossless:zstd",
  "lossless:lz4",
  "round:10",
  "round:10,-3",
  "round:7,-2",
  "round:23,-1",
  "sz:2",
  "sz:1",
  "sz:0.5",
  "sz:0.25",
  "sz:0.1",
  "sz:0.05",
];

const prng = uniform;

/** AGIPD-like frames: 0.12 photon read noise, 0.3 % of pixels with photons, a few garbage pixels. */
function frames(n: number, P: number): Float32Array {
  const r = prng(5);
  const d = new Float32Array(n * P);
  for (let i = 0; i < d.length; i++) {
    d[i] = 0.12 * Math.sqrt(-2 * Math.log(r() + 1e-300)) * Math.cos(2 * Math.PI * r());
    if (r() < 0.003) d[i] += Math.round(2000 * r() ** 3);
    if (r() < 0.0002) d[i] = 1e5 * 1e4 ** r();
  }
  return d;
}

async function best(reps: number, f: () => unknown | Promise<unknown>): Promise<number> {
  let t = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await f();
    t = Math.min(t, performance.now() - t0);
  }
  return t / 1000;
}

async function kernels(): Promise<void> {
  const H = 512, W = 128, P = H * W;
  const n = Number(arg("kernel-frames", "64"));
  const d = frames(n, P);
  const mb = (n * P * 4) / 1e6;
  const c = szConstants(0.5);
  const codes = new Uint16Array(n * P);
  const lines: string[] = [];
  const cpuCodes = await best(5, () => szCodesCpu(d, n, H, W, c, codes));
  const enc = new SzFrameEncoder(c);
  const streams: Uint8Array[] = [];
  const huff = await best(5, () => {
    streams.length = 0;
    for (let f = 0; f < n; f++) {
      streams.push(enc.encode(codes.subarray(f * P, (f + 1) * P), d.subarray(f * P, (f + 1) * P), H, W));
    }
  });
  const dec = new SzFrameDecoder();
  const out = new Float32Array(P);
  const decode = await best(5, () => {
    for (const s of streams) dec.decode(s, out);
  });
  const cpuRound = await best(5, () => roundInPlace(d.slice(), { mantissaBits: 10, absPower: -3 }));
  lines.push(
    `| SZ integer stage (pre-quantise, Lorenzo, codes) | cpu (1 thread) | ${(mb / cpuCodes).toFixed(0)} |`,
  );
  lines.push(`| SZ Huffman stage | cpu (1 thread) | ${(mb / huff).toFixed(0)} |`);
  lines.push(`| SZ decode (Huffman + reconstruction) | cpu (1 thread) | ${(mb / decode).toFixed(0)} |`);
  lines.push(`| rounding round:10,-3 (incl. a copy) | cpu (1 thread) | ${(mb / cpuRound).toFixed(0)} |`);
  const gpu = await getGpuDevice();
  if (gpu) {
    const k = (await createSzKernel(c, H, W, n))!;
    const got = new Uint16Array(n * P);
    const t = await best(5, () => k.codes(d, n, H, W, got));
    let diff = 0;
    for (let i = 0; i < got.length; i++) if (got[i] !== codes[i]) diff++;
    lines.push(
      `| SZ integer stage | webgpu: ${gpu.adapterName} | ${(mb / t).toFixed(0)} (codes ${
        diff ? `DIFFER in ${diff}` : "identical"
      }) |`,
    );
    const rk = (await createRoundKernel({ mantissaBits: 10, absPower: -3 }, n * P))!;
    const tr = await best(5, () => rk.round(d.slice()));
    lines.push(
      `| rounding round:10,-3 (incl. a copy) | webgpu: ${gpu.adapterName} | ${(mb / tr).toFixed(0)} |`,
    );
    k.dispose();
    rk.dispose();
  } else lines.push("| (no WebGPU adapter) | | |");
  console.log(`\nKernels, ${n} AGIPD frames (${mb.toFixed(1)} MB), best of 5:\n`);
  console.log("| stage | backend | MB/s |\n| --- | --- | --- |");
  console.log(lines.join("\n"));
}

function f(x: number | null, d: number): string {
  if (x === null) return "-";
  if (x === Infinity) return "inf";
  return x.toFixed(d);
}

async function methods(): Promise<void> {
  let run = arg("run", "");
  let from = arg("from", "");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-bench-compress-"));
  try {
    if (!run) {
      run = path.join(tmp, "corr");
      from = path.join(tmp, "loc");
      const modules = Number(arg("modules", "4"));
      await makeRun(run, {
        seed: 17,
        modules: Array.from({ length: modules }, (_, i) => i),
        trains: Number(arg("trains", "8")),
        trainsPerFile: 1000,
        framesPerTrain: Number(arg("frames", "64")),
        litFraction: Number(arg("lit", "0.5")),
        compression: 1,
        naming: "output",
      });
      const r = await localise(run, { backend: "cpu" });
      fs.mkdirSync(from);
      await writeRedu(r, from, r.runFiles);
      fs.writeFileSync(path.join(from, "summary.json"), JSON.stringify(summaryJson(r), null, 2));
      r.dispose(); // the spill files
    }
    const list = arg("methods", DEFAULT_METHODS.join(";")).split(";").filter(Boolean);
    const backend = arg("backend", "auto") as "auto" | "cpu" | "webgpu";
    console.log(`\nMethods on ${run} (reduce --compress, lit frames):\n`);
    for (const m of list) {
      const out = path.join(tmp, `out-${m.replace(/[^a-z0-9.]/gi, "_")}`);
      const rec = await reduce(run, from, out, { compress: m, compressBackend: backend });
      const c = rec.compression as CompressionRecord;
      const data = c.modules.filter((x) => x.dataset === "image.data");
      if (m === list[0]) {
        const fr = data.reduce((a, x) => a + x.frames, 0);
        const mb = data.reduce((a, x) => a + x.bytesIn, 0) / 1e6;
        console.log(`(${fr} module frames kept, ${mb.toFixed(0)} MB of image.data)\n`);
        console.log(
          "| method | filter | ratio (data) | ratio (all) | PSNR dB | SSIM | max error | MB/s in | MB/s out |",
        );
        console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
      }
      const bi = data.reduce((a, x) => a + x.bytesIn, 0), bo = data.reduce((a, x) => a + x.bytesOut, 0);
      const secIn = data.reduce((a, x) => a + (x.compressMBps > 0 ? x.bytesIn / 1e6 / x.compressMBps : 0), 0);
      const frameMB = (x: { bytesIn: number; frames: number }) => x.bytesIn / Math.max(1, x.frames) / 1e6;
      const sampleMB = data.reduce((a, x) => a + x.sampledFrames * frameMB(x), 0);
      const secOut = data.reduce(
        (a, x) => a + (x.decompressMBps > 0 ? (x.sampledFrames * frameMB(x)) / x.decompressMBps : 0),
        0,
      );
      console.log(
        `| ${c.spec} | ${c.filter}${c.method === "sz" ? ` (${c.backend})` : ""} | ${f(bi / bo, 1)} | ${
          f(c.ratio, 1)
        } | ${f(c.psnr, 1)} | ${f(c.ssim, 4)} | ${c.maxAbsError.toPrecision(3)} | ${
          (bi / 1e6 / secIn).toFixed(0)
        } | ${(sampleMB / secOut).toFixed(0)} |`,
      );
      fs.rmSync(out, { recursive: true, force: true });
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

await kernels();
if (!process.argv.includes("--kernels-only")) await methods();
