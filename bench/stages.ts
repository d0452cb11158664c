/**
 * Throughput of the localisation stages (1, 3, 4: LocaliseBackend.process, and the stage-2 pre-pass)
 * on synthetic module batches, CPU reference vs WebGPU backend.
 *
 *   npm run build && node dist/bench/stages.js [--type AGIPD] [--frames 64] [--batches 16] [--lit 0.01]
 *                                              [--mask] [--backend cpu,webgpu] [--upload mapped|writeBuffer]
 *   npx deno run -A bench/stages.ts ...      (Deno: its built-in WebGPU when it finds an adapter)
 *
 * GB/s counts the input bytes of a batch (data, plus the mask with --mask) per second of wall time.
 * The WebGPU numbers keep two batches in flight, as the localise pipeline does.
 *
 * Measured (AGIPD, 64 frames of 512x128 f32 = 16.8 MB per batch, 1.5% lit, ~53 peaks per frame, no mask;
 * process = stages 1, 3, 4 with results on the host):
 *   2-core dev VM, Node 20:  cpu (1 thread)            1150 frames/s  0.30 GB/s
 *                            webgpu, Dawn OpenGL llvmpipe 165 frames/s  0.04 GB/s
 *                            webgpu, Deno wgpu llvmpipe    66 frames/s  0.02 GB/s
 *   H100 machine, Node 20:   cpu (1 thread)             675 frames/s  0.18 GB/s
 *                            webgpu, Dawn Vulkan        14300 frames/s  3.7 GB/s  (256-frame batches: 15800, 4.1 GB/s;
 *                                                        with mask 7450 frames/s, 3.9 GB/s; JUNGFRAU 1810 frames/s, 3.8 GB/s)
 *                            webgpu, Deno wgpu Vulkan    5770 frames/s  1.5 GB/s
 * On the H100 the upload (host copy into mapped memory, PCIe) bounds it: the stage-2 pre-pass, which
 * uploads the same bytes, runs at 4.8 GB/s; the GPU work is ~2 ms per batch. With a software adapter the
 * CPU backend is ~7x faster than the WebGPU one.
 */
import process from "node:process";
import { type DetectorType, geometry } from "../src/exdf/detectors.ts";
import { createCpuBackend } from "../src/localise/stages.ts";
import { DEFAULT_PARAMS, type LocaliseBackend, type ModuleBatch } from "../src/localise/spec.ts";
import { createWebgpuBackend } from "../src/localise/webgpu.ts";

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

const type = arg("type", "AGIPD") as DetectorType;
const nFrames = Number(arg("frames", "64"));
const nBatches = Number(arg("batches", "16"));
const litFraction = Number(arg("lit", "0.01"));
const withMask = process.argv.includes("--mask");
const backends = arg("backend", "cpu,webgpu").split(",");
const uploadMode = arg("upload", "") as "mapped" | "writeBuffer" | "";
const g = geometry(type);

/** Gaussian noise (sigma 0.15 photon) and Gaussian spots until ~litFraction of the pixels are lit. */
function makeBatch(seed: number): ModuleBatch {
  let s = seed >>> 0;
  const r = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const data = new Float32Array(nFrames * g.pixels);
  for (let k = 0; k < data.length; k++) {
    data[k] = 0.15 * Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  }
  // A spot of sigma ~1 px and amplitude a lights ~ 2 pi ln(a / 0.7) pixels; aim at the lit fraction.
  const spotsPerFrame = Math.round((litFraction * g.pixels) / 12);
  for (let f = 0; f < nFrames; f++) {
    for (let k = 0; k < spotsPerFrame; k++) {
      const cs = r() * g.moduleSs;
      const cf = r() * g.moduleFs;
      const amp = 3 + 20 * r();
      for (let ss = Math.floor(cs) - 3; ss <= Math.floor(cs) + 3; ss++) {
        for (let fs = Math.floor(cf) - 3; fs <= Math.floor(cf) + 3; fs++) {
          if (ss < 0 || fs < 0 || ss >= g.moduleSs || fs >= g.moduleFs) continue;
          const d2 = (ss + 0.5 - cs) ** 2 + (fs + 0.5 - cf) ** 2;
          data[f * g.pixels + ss * g.moduleFs + fs] += amp * Math.exp(-d2 / 2);
        }
      }
    }
  }
  const mask = withMask ? new Uint32Array(data.length) : undefined;
  if (mask) { for (let k = 0; k < mask.length; k += 997) mask[k] = 1; }
  return { geometry: g, nFrames, data, mask };
}

const batches = [makeBatch(1), makeBatch(2)];
let lit = 0;
for (const v of batches[0].data) if (v > DEFAULT_PARAMS.threshold) lit++;
const bytesPerBatch = nFrames * g.pixels * 4 * (withMask ? 2 : 1);
console.log(
  `${type}: ${nFrames} frames of ${g.moduleSs}x${g.moduleFs} f32 per batch (${
    (bytesPerBatch / 1e6).toFixed(1)
  } MB${withMask ? " with mask" : ""}), ${
    (100 * lit / batches[0].data.length).toFixed(2)
  }% lit, ${nBatches} batches`,
);

async function measure(b: LocaliseBackend, n: number, inFlight: number) {
  // Warm up (pipelines, first allocations).
  await b.process(batches[0]);
  let t0 = performance.now();
  const pending: Promise<unknown>[] = [];
  let peaks = 0;
  for (let k = 0; k < n; k++) {
    const p = b.process(batches[k % 2]).then((r) => {
      peaks += r.nPeaks.reduce((x, y) => x + y, 0);
    });
    pending.push(p);
    if (pending.length >= inFlight) await pending.shift();
  }
  await Promise.all(pending);
  const dt = (performance.now() - t0) / 1000;
  const counts = new Uint32Array(g.pixels);
  t0 = performance.now();
  const m = Math.max(1, Math.ceil(n / 2));
  for (let k = 0; k < m; k++) await b.accumulateLitCounts(batches[k % 2], counts);
  const dtCounts = (performance.now() - t0) / 1000;
  const line = (what: string, frames: number, bytes: number, s: number) =>
    `  ${what.padEnd(22)} ${(frames / s).toFixed(0).padStart(8)} frames/s ${
      (bytes / s / 1e9).toFixed(3).padStart(7)
    } GB/s  (${(1000 * s / (frames / nFrames)).toFixed(2)} ms/batch)`;
  console.log(`${b.name}: ${b.adapter}${"upload" in b ? `, ${b.upload} uploads` : ""}`);
  console.log(line("process (stages 1,3,4)", n * nFrames, n * bytesPerBatch, dt));
  console.log(line("accumulateLitCounts", m * nFrames, m * bytesPerBatch, dtCounts));
  console.log(`  peaks per frame: ${(peaks / (n * nFrames)).toFixed(1)}`);
}

for (const which of backends) {
  if (which === "cpu") {
    const b = createCpuBackend(DEFAULT_PARAMS);
    await measure(b, Math.max(2, Math.ceil(nBatches / 4)), 1);
    b.dispose();
  } else if (which === "webgpu") {
    const b = await createWebgpuBackend(DEFAULT_PARAMS, g, nFrames, { upload: uploadMode || undefined });
    if (!b) {
      console.log("webgpu: no adapter");
      continue;
    }
    await measure(b, nBatches, 2);
    b.dispose();
  }
}
process.exit(0);
