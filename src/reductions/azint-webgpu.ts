/**
 * The WebGPU backend of `azint` (shaders/azint.wgsl): the pixel table as a CSR matrix (bins -> pixels) on
 * the GPU once; per batch the frames of the part's modules are uploaded and one dispatch of bins x frames
 * workgroups reduces them. Buffers grow to the largest batch seen.
 */
import type { FrameBatch } from "../exdf/frames.ts";
import { Unshared } from "./common.ts";
import { BufferUsage, createBuffer, Kernel, readBuffers } from "../gpu/kernel.ts";
import { type AzintBackend, type AzintSums, NO_BIN, type PixelTable } from "./azint-spec.ts";

/** The CSR form of a pixel table: per bin its pixels (slot * pixels + p) and their corrections. */
export function csr(
  t: PixelTable,
  bins: number,
): { offsets: Uint32Array; entries: Uint32Array; corr: Float32Array } {
  const offsets = new Uint32Array(bins + 1);
  t.bin.forEach((b) => {
    for (const k of b) if (k !== NO_BIN) offsets[k + 1]++;
  });
  for (let k = 0; k < bins; k++) offsets[k + 1] += offsets[k];
  const fill = offsets.slice(0, bins);
  const entries = new Uint32Array(offsets[bins]);
  const corr = new Float32Array(offsets[bins]);
  t.bin.forEach((b, s) => {
    for (let p = 0; p < b.length; p++) {
      const k = b[p];
      if (k === NO_BIN) continue;
      const j = fill[k]++;
      entries[j] = s * t.pixels + p;
      corr[j] = t.corr[s][p];
    }
  });
  return { offsets, entries, corr };
}

/** The uniform struct Params of shaders/azint.wgsl. */
const AZINT_PARAMS = {
  pixels: "u32",
  nFrames: "u32",
  maxFrames: "u32",
  bins: "u32",
  hasMask: "u32",
} as const;

export async function createAzintGpu(device: GPUDevice, t: PixelTable, bins: number): Promise<AzintBackend> {
  const { offsets, entries, corr } = csr(t, bins);
  const kernel = await Kernel.create(device, {
    shader: "azint.wgsl",
    entries: ["azint"],
    uniforms: AZINT_PARAMS,
  });
  const S = BufferUsage.STORAGE | BufferUsage.COPY_DST;
  const table = {
    offsets: createBuffer(device, offsets.byteLength, S, "azint.offsets"),
    entries: createBuffer(device, entries.byteLength, S, "azint.entries"),
    corr: createBuffer(device, corr.byteLength, S, "azint.corr"),
  };
  device.queue.writeBuffer(table.offsets, 0, offsets);
  if (entries.length) {
    device.queue.writeBuffer(table.entries, 0, entries);
    device.queue.writeBuffer(table.corr, 0, corr);
  }
  const nSlots = t.modules.length;
  const pixels = t.pixels;
  let maxFrames = 0;
  let bufs: Record<"data" | "mask" | "out", GPUBuffer> | undefined;
  const destroy = () => {
    if (bufs) { for (const b of Object.values(bufs)) b.destroy(); }
  };
  const grow = (frames: number) => {
    if (bufs && frames <= maxFrames) return bufs;
    destroy();
    maxFrames = frames;
    const n = nSlots * frames * pixels * 4;
    bufs = {
      data: createBuffer(device, n, S, "azint.data"),
      mask: createBuffer(device, n, S, "azint.mask"),
      out: createBuffer(device, frames * bins * 12, BufferUsage.STORAGE | BufferUsage.COPY_SRC, "azint.out"),
    };
    return bufs;
  };
  const staging = new Unshared();
  return {
    name: "webgpu",
    async frames(b: FrameBatch): Promise<AzintSums> {
      const F = b.nFrames;
      const bf = grow(F);
      const mods = t.modules.map((m) => b.modules.find((x) => x.module === m)!);
      const hasMask = mods.every((m) => m.mask) ? 1 : 0;
      const [back] = await readBuffers(
        device,
        "azint dispatch",
        [{ buffer: bf.out, size: F * bins * 12 }],
        (enc) => {
          mods.forEach((mf, s) => {
            const at = s * maxFrames * pixels * 4;
            device.queue.writeBuffer(bf.data, at, staging.f32(mf.data, F * pixels));
            if (hasMask) {
              device.queue.writeBuffer(bf.mask, at, staging.u32(mf.mask!, F * pixels));
            }
          });
          kernel.setUniforms({ pixels, nFrames: F, maxFrames, bins, hasMask });
          kernel.dispatch("azint", { ...bf, ...table }, [bins, F], enc);
        },
      );
      const u = new Uint32Array(back);
      const f = new Float32Array(back);
      const sum = new Float64Array(F * bins),
        norm = new Float64Array(F * bins),
        count = new Uint32Array(F * bins);
      for (let j = 0; j < F * bins; j++) {
        sum[j] = f[3 * j];
        norm[j] = f[3 * j + 1];
        count[j] = u[3 * j + 2];
      }
      return { sum, norm, count };
    },
    dispose() {
      destroy();
      kernel.dispose();
      for (const b of Object.values(table)) b.destroy();
    },
  };
}
