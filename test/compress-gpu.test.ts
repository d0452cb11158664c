/**
 * The WGSL kernels of the compression methods against their CPU references: float32 rounding
 * (shaders/round.wgsl) and the SZ integer stage (shaders/sz.wgsl) give identical bits, so the SZ streams of
 * both backends are identical bytes. Runs on whatever adapter getGpuDevice() finds (CI: llvmpipe through
 * Dawn's OpenGL backend); skipped, with a message, when there is none.
 */
import { afterAll, describe, expect, test } from "vitest";
import { Compressor, parseCompress } from "../src/compress/compressor.ts";
import { roundInPlace } from "../src/compress/round.ts";
import { szCodesCpu, szConstants, szDecode } from "../src/compress/sz.ts";
import {
  createRoundKernel,
  createSzKernel,
  type RoundKernel,
  type SzKernel,
} from "../src/compress/webgpu.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { uniform } from "../fixtures/synth.ts";

const gpu = await getGpuDevice();
if (!gpu) console.warn("test/compress-gpu.test.ts: SKIPPED: no WebGPU adapter");
else {console.info(
    `test/compress-gpu.test.ts: adapter ${gpu.adapterName}${gpu.software ? " (software)" : ""}`,
  );}

const disposables: { dispose(): void }[] = [];
afterAll(() => {
  for (const d of disposables) d.dispose();
});

const prng = uniform;

/** Random bit patterns: every class of float32, subnormals and NaN payloads included. */
function randomBits(n: number, seed: number): Float32Array {
  const r = prng(seed);
  const u = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const k = r();
    if (k < 0.05) u[i] = Math.floor(r() * 0x800000) | (r() < 0.5 ? 0x80000000 : 0); // subnormal
    else if (k < 0.08) u[i] = 0x7f800000 | Math.floor(r() * 0x800000) | (r() < 0.5 ? 0x80000000 : 0); // NaN/Inf
    else u[i] = Math.floor(r() * 2 ** 32);
  }
  return new Float32Array(u.buffer);
}

/** Detector-like frames: read noise around 0, spots, bright garbage, a few NaN. */
function detectorFrames(n: number, H: number, W: number, seed: number): Float32Array {
  const r = prng(seed);
  const d = new Float32Array(n * H * W);
  for (let i = 0; i < d.length; i++) {
    d[i] = 0.12 * Math.sqrt(-2 * Math.log(r() + 1e-300)) * Math.cos(2 * Math.PI * r());
    if (r() < 0.003) d[i] += Math.round(2000 * r() ** 3);
    if (r() < 0.0005) d[i] = 1e5 * 1e4 ** r();
    if (r() < 0.0002) d[i] = NaN;
  }
  return d;
}

function sameBits(a: ArrayBufferView, b: ArrayBufferView): number {
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  expect(x.length).toBe(y.length);
  let diff = 0;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) diff++;
  return diff;
}

describe.skipIf(!gpu)("round.wgsl == roundBits", () => {
  test.each([[10, null], [10, -24], [23, 0], [0, null], [7, -3], [3, 100], [22, -149], [1, 127]] as const)(
    "m = %s, p = %s on 2^20 random bit patterns",
    async (m, p) => {
      const k = (await createRoundKernel({ mantissaBits: m, absPower: p }, 1 << 18)) as RoundKernel;
      disposables.push(k);
      const data = randomBits(1 << 20, m * 31 + (p ?? 7));
      const cpu = roundInPlace(data.slice(), { mantissaBits: m, absPower: p });
      const got = await k.round(data.slice());
      expect(sameBits(got, cpu)).toBe(0);
    },
  );
});

describe.skipIf(!gpu)("sz.wgsl == szCodesCpu", () => {
  async function codesBoth(data: Float32Array, n: number, H: number, W: number, eb: number, maxFrames = 8) {
    const c = szConstants(eb);
    const k = (await createSzKernel(c, H, W, maxFrames)) as SzKernel;
    disposables.push(k);
    const cpu = new Uint16Array(n * H * W), got = new Uint16Array(n * H * W);
    szCodesCpu(data, n, H, W, c, cpu);
    await k.codes(data, n, H, W, got);
    return { cpu, got };
  }

  test.each([0.5, 0.05, 1e-3, 2 ** -100, 1e-20, 1e30, 2 ** 100])(
    "detector-like and random frames, eb = %s",
    async (eb) => {
      const H = 512, W = 128;
      const det = await codesBoth(detectorFrames(6, H, W, 5), 6, H, W, eb);
      expect(sameBits(det.got, det.cpu)).toBe(0);
      const rnd = await codesBoth(randomBits(4 * H * W, 9), 4, H, W, eb);
      expect(sameBits(rnd.got, rnd.cpu)).toBe(0);
    },
  );

  test("odd sizes, one pixel, batches split across submissions", async () => {
    for (const [n, H, W] of [[3, 7, 13], [1, 1, 1], [5, 33, 1], [9, 64, 32]]) {
      const d = detectorFrames(n, H, W, n * H + W);
      const { cpu, got } = await codesBoth(d, n, H, W, 0.1, 2);
      expect(sameBits(got, cpu), `${n}x${H}x${W}`).toBe(0);
    }
  });

  test("the streams of both backends are the same bytes and decode within the bound", async () => {
    const method = parseCompress("sz:0.05");
    const cpuC = await Compressor.create(method, { backend: "cpu" });
    const gpuC = await Compressor.create(method, { backend: "webgpu" });
    disposables.push(cpuC, gpuC);
    expect(gpuC.backend).toBe("webgpu");
    const H = 512, W = 128, n = 16;
    const d = detectorFrames(n, H, W, 33);
    const t0 = performance.now();
    const a = await cpuC.encodeFrames(d, n, H, W);
    const t1 = performance.now();
    const b = await gpuC.encodeFrames(d, n, H, W);
    const t2 = performance.now();
    expect(b).toEqual(a);
    const back = szDecode(b).data;
    for (let i = 0; i < d.length; i++) {
      if (Number.isFinite(d[i]) && !(Math.abs(d[i] - back[i]) <= 0.05)) throw new Error(`pixel ${i}`);
    }
    // Integer stage alone, after a warm-up: CPU vs this adapter.
    const c = szConstants(0.05);
    const k = (await createSzKernel(c, H, W, n)) as SzKernel;
    disposables.push(k);
    const codes = new Uint16Array(n * H * W);
    await k.codes(d, n, H, W, codes);
    const t3 = performance.now();
    await k.codes(d, n, H, W, codes);
    const t4 = performance.now();
    szCodesCpu(d, n, H, W, c, codes);
    const t5 = performance.now();
    const mb = (d.length * 4) / 1e6;
    console.info(
      `sz encode ${n} AGIPD frames: cpu ${(mb / ((t1 - t0) / 1000)).toFixed(0)} MB/s, webgpu ${
        (mb / ((t2 - t1) / 1000)).toFixed(0)
      } MB/s; integer stage: webgpu ${(mb / ((t4 - t3) / 1000)).toFixed(0)} MB/s, cpu ${
        (mb / ((t5 - t4) / 1000)).toFixed(0)
      } MB/s (${gpu!.adapterName})`,
    );
  });
});
