/**
 * The WebGPU backend of `azint` (shaders/azint.wgsl): the pixel table as a CSR matrix (bins -> pixels) on
 * the GPU once; per batch the frames of the part's modules are uploaded and one dispatch of bins x frames
 * workgroups reduces them. Buffers grow to the largest batch seen.
 */
import type { FrameBatch } from "../exdf/frames.ts";
import { Unshared } from "./common.ts";
import {
  bindGroup,
  bindGroupLayout,
  BufferUsage,
  compileShader,
  computePipelines,
  createBuffer,
  readBack,
  shaderSource,
  withErrorScope,
} from "../gpu/device.ts";
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

export async function createAzintGpu(device: GPUDevice, t: PixelTable, bins: number): Promise<AzintBackend> {
  const { offsets, entries, corr } = csr(t, bins);
  const module = await compileShader(device, shaderSource("azint.wgsl"), "azint");
  const layout = bindGroupLayout(device, [
    "uniform",
    "read-only-storage",
    "read-only-storage",
    "read-only-storage",
    "read-only-storage",
    "read-only-storage",
    "storage",
  ]);
  const { azint: pipeline } = await computePipelines(device, module, layout, ["azint"] as const, "azint");
  const S = BufferUsage.STORAGE | BufferUsage.COPY_DST;
  const params = createBuffer(device, 32, BufferUsage.UNIFORM | BufferUsage.COPY_DST, "azint.params");
  const off = createBuffer(device, offsets.byteLength, S, "azint.offsets");
  const ent = createBuffer(device, entries.byteLength, S, "azint.entries");
  const cor = createBuffer(device, corr.byteLength, S, "azint.corr");
  device.queue.writeBuffer(off, 0, offsets);
  if (entries.length) {
    device.queue.writeBuffer(ent, 0, entries);
    device.queue.writeBuffer(cor, 0, corr);
  }
  const nSlots = t.modules.length;
  const pixels = t.pixels;
  let maxFrames = 0;
  let bufs:
    | { data: GPUBuffer; mask: GPUBuffer; out: GPUBuffer; read: GPUBuffer; group: GPUBindGroup }
    | undefined;
  const destroy = () => {
    if (bufs) { for (const b of [bufs.data, bufs.mask, bufs.out, bufs.read]) b.destroy(); }
  };
  const grow = (frames: number) => {
    if (bufs && frames <= maxFrames) return bufs;
    destroy();
    maxFrames = frames;
    const n = nSlots * frames * pixels * 4;
    const data = createBuffer(device, n, S, "azint.data");
    const mask = createBuffer(device, n, S, "azint.mask");
    const out = createBuffer(
      device,
      frames * bins * 12,
      BufferUsage.STORAGE | BufferUsage.COPY_SRC,
      "azint.out",
    );
    const read = createBuffer(
      device,
      frames * bins * 12,
      BufferUsage.MAP_READ | BufferUsage.COPY_DST,
      "azint.read",
    );
    const group = bindGroup(device, layout, [params, data, mask, off, ent, cor, out]);
    bufs = { data, mask, out, read, group };
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
      await withErrorScope(device, "azint dispatch", () => {
        mods.forEach((mf, s) => {
          const at = s * maxFrames * pixels * 4;
          device.queue.writeBuffer(bf.data, at, staging.f32(mf.data, F * pixels));
          if (hasMask) {
            device.queue.writeBuffer(bf.mask, at, staging.u32(mf.mask!, F * pixels));
          }
        });
        device.queue.writeBuffer(params, 0, Uint32Array.of(pixels, F, maxFrames, bins, hasMask, 0, 0, 0));
        const enc = device.createCommandEncoder();
        const pass = enc.beginComputePass();
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, bf.group);
        pass.dispatchWorkgroups(bins, F);
        pass.end();
        enc.copyBufferToBuffer(bf.out, 0, bf.read, 0, F * bins * 12);
        device.queue.submit([enc.finish()]);
      });
      const back = await readBack(bf.read, F * bins * 12);
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
      for (const b of [params, off, ent, cor]) b.destroy();
    },
  };
}
