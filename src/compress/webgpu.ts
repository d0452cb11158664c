/**
 * The WebGPU kernels of the compression methods: float32 rounding (shaders/round.wgsl) and the integer
 * stage of the SZ codec (shaders/sz.wgsl). Each follows the spec of its CPU reference (src/compress/round.ts,
 * src/compress/sz.ts) and gives the same bits.
 *
 * A kernel owns its buffers (sized for `maxValues` values per submission, within the device's storage
 * binding limit; larger inputs are split) and runs one upload, one dispatch and one readback per chunk.
 */
import {
  bindGroup,
  bindGroupLayout,
  BufferUsage,
  compileShader,
  computePipelines,
  createBuffer,
  getGpuDevice,
  type GpuDevice,
  MapMode,
  shaderSource,
  withErrorScope,
} from "../gpu/device.ts";
import { checkRoundParams, type RoundParams } from "./round.ts";
import type { SzConstants } from "./sz.ts";

const WG = 256;

function grid(groups: number, maxPerDim: number): [number, number] {
  const x = Math.min(groups, maxPerDim);
  return [Math.max(1, x), Math.max(1, Math.ceil(groups / Math.max(1, x)))];
}

/** Values that fit one submission: the storage binding limit, in whole frames of `frameValues`. */
function chunkValues(gpu: GpuDevice, frameValues: number, want: number): number {
  const lim = Math.min(gpu.device.limits.maxStorageBufferBindingSize, gpu.device.limits.maxBufferSize);
  const fit = Math.floor(lim / 4 / Math.max(1, frameValues)) * frameValues;
  return Math.max(frameValues, Math.min(fit, Math.ceil(want / frameValues) * frameValues));
}

export interface RoundKernel {
  readonly adapter: string;
  readonly software: boolean;
  /** Round float32 values in place (same bits as roundInPlace). */
  round(values: Float32Array): Promise<Float32Array>;
  dispose(): void;
}

/** The rounding kernel, or undefined without a WebGPU adapter. */
export async function createRoundKernel(
  params: RoundParams,
  maxValues = 1 << 22,
): Promise<RoundKernel | undefined> {
  const { mantissaBits: m, absPower: p } = checkRoundParams(params);
  const gpu = await getGpuDevice();
  if (!gpu) return undefined;
  const { device } = gpu;
  const cap = chunkValues(gpu, 1, maxValues);
  return await withErrorScope(device, "round kernel setup", async () => {
    const module = await compileShader(device, shaderSource("round.wgsl"), "round.wgsl");
    const layout = bindGroupLayout(device, ["uniform", "storage"], "round");
    const pl = await computePipelines(device, module, layout, ["round_values"] as const, "round");
    const uniform = createBuffer(device, 32, BufferUsage.UNIFORM | BufferUsage.COPY_DST, "round params");
    const buf = createBuffer(
      device,
      cap * 4,
      BufferUsage.STORAGE | BufferUsage.COPY_DST | BufferUsage.COPY_SRC,
      "round values",
    );
    const staging = createBuffer(
      device,
      cap * 4,
      BufferUsage.MAP_READ | BufferUsage.COPY_DST,
      "round staging",
    );
    const group = bindGroup(device, layout, [uniform, buf]);
    const maxDim = device.limits.maxComputeWorkgroupsPerDimension;
    let busy: Promise<unknown> = Promise.resolve();
    const kernel: RoundKernel = {
      adapter: gpu.adapterName,
      software: gpu.software,
      round(values) {
        const run = busy.then(async () => {
          const u = new Uint32Array(values.buffer, values.byteOffset, values.length);
          for (let o = 0; o < u.length; o += cap) {
            const n = Math.min(cap, u.length - o);
            const [gx, gy] = grid(Math.ceil(n / WG), maxDim);
            await withErrorScope(device, "round kernel", () => {
              const hdr = new Int32Array([n, m, p === null ? 0 : 1, p ?? 0, gx, 0, 0, 0]);
              device.queue.writeBuffer(uniform, 0, hdr);
              device.queue.writeBuffer(buf, 0, u as Uint32Array<ArrayBuffer>, o, n);
              const enc = device.createCommandEncoder();
              const pass = enc.beginComputePass();
              pass.setPipeline(pl.round_values);
              pass.setBindGroup(0, group);
              pass.dispatchWorkgroups(gx, gy);
              pass.end();
              enc.copyBufferToBuffer(buf, 0, staging, 0, n * 4);
              device.queue.submit([enc.finish()]);
            });
            await staging.mapAsync(MapMode.READ, 0, n * 4);
            try {
              u.set(new Uint32Array(staging.getMappedRange(0, n * 4)), o);
            } finally {
              staging.unmap();
            }
          }
          return values;
        });
        busy = run.catch(() => undefined);
        return run;
      },
      dispose() {
        for (const b of [uniform, buf, staging]) b.destroy();
      },
    };
    return kernel;
  });
}

export interface SzKernel {
  readonly adapter: string;
  readonly software: boolean;
  /** Quantisation codes of nFrames H x W frames into `codes` (same bits as szCodesCpu). */
  codes(data: Float32Array, nFrames: number, H: number, W: number, codes: Uint16Array): Promise<void>;
  dispose(): void;
}

/** The SZ integer-stage kernel for frames of H x W pixels, or undefined without a WebGPU adapter. */
export async function createSzKernel(
  c: SzConstants,
  H: number,
  W: number,
  maxFrames = 32,
): Promise<SzKernel | undefined> {
  const gpu = await getGpuDevice();
  if (!gpu) return undefined;
  const { device } = gpu;
  const P = H * W;
  const cap = chunkValues(gpu, Math.max(1, P), Math.max(1, P) * maxFrames);
  const framesPer = Math.max(1, Math.floor(cap / Math.max(1, P)));
  return await withErrorScope(device, "sz kernel setup", async () => {
    const module = await compileShader(device, shaderSource("sz.wgsl"), "sz.wgsl");
    const layout = bindGroupLayout(device, ["uniform", "read-only-storage", "storage"], "sz");
    const pl = await computePipelines(device, module, layout, ["sz_codes"] as const, "sz");
    const uniform = createBuffer(device, 48, BufferUsage.UNIFORM | BufferUsage.COPY_DST, "sz params");
    const input = createBuffer(device, cap * 4, BufferUsage.STORAGE | BufferUsage.COPY_DST, "sz values");
    const pairsCap = Math.ceil(cap / 2);
    const output = createBuffer(device, pairsCap * 4, BufferUsage.STORAGE | BufferUsage.COPY_SRC, "sz codes");
    const staging = createBuffer(
      device,
      pairsCap * 4,
      BufferUsage.MAP_READ | BufferUsage.COPY_DST,
      "sz staging",
    );
    const group = bindGroup(device, layout, [uniform, input, output]);
    const maxDim = device.limits.maxComputeWorkgroupsPerDimension;
    let busy: Promise<unknown> = Promise.resolve();
    const kernel: SzKernel = {
      adapter: gpu.adapterName,
      software: gpu.software,
      codes(data, nFrames, h, w, codes) {
        if (h !== H || w !== W) throw new Error(`sz kernel: made for ${H} x ${W} frames, given ${h} x ${w}`);
        if (data.length < nFrames * P || codes.length < nFrames * P) {
          throw new RangeError("sz kernel: arrays too short");
        }
        const run = busy.then(async () => {
          for (let f0 = 0; f0 < nFrames; f0 += framesPer) {
            const m = Math.min(framesPer, nFrames - f0);
            const total = m * P;
            if (total === 0) continue;
            const pairs = Math.ceil(total / 2);
            const [gx, gy] = grid(Math.ceil(pairs / WG), maxDim);
            await withErrorScope(device, "sz kernel", () => {
              const u = new ArrayBuffer(48);
              new Uint32Array(u, 0, 8).set([P, W, H, total, pairs, gx, c.limBits, 0]);
              new Float32Array(u, 32, 4).set([c.binWidth, c.inv, c.eb32, 0]);
              device.queue.writeBuffer(uniform, 0, u);
              const bits = new Uint32Array(data.buffer, data.byteOffset + f0 * P * 4, total);
              device.queue.writeBuffer(input, 0, bits as Uint32Array<ArrayBuffer>, 0, total);
              const enc = device.createCommandEncoder();
              const pass = enc.beginComputePass();
              pass.setPipeline(pl.sz_codes);
              pass.setBindGroup(0, group);
              pass.dispatchWorkgroups(gx, gy);
              pass.end();
              enc.copyBufferToBuffer(output, 0, staging, 0, pairs * 4);
              device.queue.submit([enc.finish()]);
            });
            await staging.mapAsync(MapMode.READ, 0, pairs * 4);
            try {
              const got = new Uint16Array(staging.getMappedRange(0, pairs * 4), 0, total);
              codes.set(got, f0 * P);
            } finally {
              staging.unmap();
            }
          }
        });
        busy = run.catch(() => undefined);
        return run;
      },
      dispose() {
        for (const b of [uniform, input, output, staging]) b.destroy();
      },
    };
    return kernel;
  });
}
