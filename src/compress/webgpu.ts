/**
 * The WebGPU kernels of the compression methods: float32 rounding (shaders/round.wgsl) and the integer
 * stage of the SZ codec (shaders/sz.wgsl). Each follows the spec of its CPU reference (src/compress/round.ts,
 * src/compress/sz.ts) and gives the same bits.
 *
 * A kernel owns its buffers (sized for `maxValues` values per submission, within the device's storage
 * binding limit; larger inputs are split) and runs one upload, one dispatch and one readback per chunk.
 */
import { getGpuDevice, type GpuDevice } from "../gpu/device.ts";
import {
  BufferUsage,
  createBuffer,
  Kernel,
  readBuffers,
  Serial,
  type UniformDecl,
  type UniformValues,
  withErrorScope,
} from "../gpu/kernel.ts";
import { checkRoundParams, type RoundParams } from "./round.ts";
import type { SzConstants } from "./sz.ts";

/** The uniform struct RoundParams of shaders/round.wgsl. */
const ROUND_PARAMS = { n: "u32", m: "u32", hasP: "u32", p: "i32", xGroups: "u32" } as const;

/** The uniform struct SzParams of shaders/sz.wgsl. */
const SZ_PARAMS = {
  pixels: "u32",
  width: "u32",
  height: "u32",
  total: "u32",
  pairs: "u32",
  xGroups: "u32",
  limBits: "u32",
  binWidth: "f32",
  inv: "f32",
  eb32: "f32",
} as const;

/** Values that fit one submission: the storage binding limit, in whole frames of `frameValues`. */
function chunkValues(gpu: GpuDevice, frameValues: number, want: number): number {
  const lim = Math.min(gpu.device.limits.maxStorageBufferBindingSize, gpu.device.limits.maxBufferSize);
  const fit = Math.floor(lim / 4 / Math.max(1, frameValues)) * frameValues;
  return Math.max(frameValues, Math.min(fit, Math.ceil(want / frameValues) * frameValues));
}

/**
 * What the two kernels share: one entry point over a 1-D range of invocations (a 2-D grid of rows of
 * `xGroups` workgroups past the per-dimension limit), an input buffer of `inWords` u32 and an output one
 * (the same buffer when `output` names the input's binding), calls run one at a time.
 */
class Stream<U extends UniformDecl & { xGroups: "u32" }> {
  private constructor(
    private readonly kernel: Kernel<string, U>,
    private readonly entry: string,
    private readonly buffers: Record<string, GPUBuffer>,
    private readonly input: GPUBuffer,
    private readonly output: GPUBuffer,
  ) {}
  readonly serial = new Serial();

  static async create<U extends UniformDecl & { xGroups: "u32" }>(
    device: GPUDevice,
    shader: string,
    entry: string,
    uniforms: U,
    io: { input: string; inWords: number; output: string; outWords: number },
  ): Promise<Stream<U>> {
    return await withErrorScope(device, `${shader} setup`, async () => {
      const kernel = await Kernel.create(device, { shader, entries: [entry], uniforms });
      const inPlace = io.input === io.output;
      const input = createBuffer(
        device,
        io.inWords * 4,
        BufferUsage.STORAGE | BufferUsage.COPY_DST | (inPlace ? BufferUsage.COPY_SRC : 0),
        `${shader}.${io.input}`,
      );
      const output = inPlace ? input : createBuffer(
        device,
        io.outWords * 4,
        BufferUsage.STORAGE | BufferUsage.COPY_SRC,
        `${shader}.${io.output}`,
      );
      return new Stream(kernel, entry, { [io.input]: input, [io.output]: output }, input, output);
    });
  }

  /** Upload `input`, dispatch `n` invocations with `uniforms`, read `outWords` u32 of the output into `into`. */
  async run(
    what: string,
    n: number,
    uniforms: Omit<UniformValues<U>, "xGroups">,
    input: Uint32Array<ArrayBuffer>,
    outWords: number,
    into: ArrayBufferView,
  ): Promise<void> {
    const [gx, gy] = this.kernel.grid(this.entry, n);
    const device = this.kernel.device;
    await readBuffers(device, what, [{ buffer: this.output, size: outWords * 4, into }], (enc) => {
      this.kernel.setUniforms({ ...uniforms, xGroups: gx } as UniformValues<U>);
      device.queue.writeBuffer(this.input, 0, input);
      this.kernel.dispatch(this.entry, this.buffers, [gx, gy], enc);
    });
  }

  dispose(): void {
    this.input.destroy();
    if (this.output !== this.input) this.output.destroy();
    this.kernel.dispose();
  }
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
  const cap = chunkValues(gpu, 1, maxValues);
  const io = { input: "values", inWords: cap, output: "values", outWords: cap };
  const stream = await Stream.create(gpu.device, "round.wgsl", "round_values", ROUND_PARAMS, io);
  return {
    adapter: gpu.adapterName,
    software: gpu.software,
    round(values) {
      return stream.serial.run(async () => {
        const u = new Uint32Array(values.buffer, values.byteOffset, values.length);
        for (let o = 0; o < u.length; o += cap) {
          const n = Math.min(cap, u.length - o);
          const uniforms = { n, m, hasP: p === null ? 0 : 1, p: p ?? 0 };
          const chunk = u.subarray(o, o + n) as Uint32Array<ArrayBuffer>;
          await stream.run("round kernel", n, uniforms, chunk, n, chunk);
        }
        return values;
      });
    },
    dispose: () => stream.dispose(),
  };
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
  const P = H * W;
  const cap = chunkValues(gpu, Math.max(1, P), Math.max(1, P) * maxFrames);
  const framesPer = Math.max(1, Math.floor(cap / Math.max(1, P)));
  const io = { input: "values", inWords: cap, output: "codes", outWords: Math.ceil(cap / 2) };
  const stream = await Stream.create(gpu.device, "sz.wgsl", "sz_codes", SZ_PARAMS, io);
  return {
    adapter: gpu.adapterName,
    software: gpu.software,
    codes(data, nFrames, h, w, codes) {
      if (h !== H || w !== W) throw new Error(`sz kernel: made for ${H} x ${W} frames, given ${h} x ${w}`);
      if (data.length < nFrames * P || codes.length < nFrames * P) {
        throw new RangeError("sz kernel: arrays too short");
      }
      return stream.serial.run(async () => {
        for (let f0 = 0; f0 < nFrames; f0 += framesPer) {
          const m = Math.min(framesPer, nFrames - f0);
          const total = m * P;
          if (total === 0) continue;
          const pairs = Math.ceil(total / 2);
          const bits = new Uint32Array(data.buffer, data.byteOffset + f0 * P * 4, total);
          const uniforms = {
            pixels: P,
            width: W,
            height: H,
            total,
            pairs,
            limBits: c.limBits,
            binWidth: c.binWidth,
            inv: c.inv,
            eb32: c.eb32,
          };
          const into = codes.subarray(f0 * P, f0 * P + total);
          await stream.run("sz kernel", pairs, uniforms, bits as Uint32Array<ArrayBuffer>, pairs, into);
        }
      });
    },
    dispose: () => stream.dispose(),
  };
}
