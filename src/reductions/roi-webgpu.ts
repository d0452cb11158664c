/**
 * The WebGPU backend of `roi` (shaders/roi.wgsl): uploads the frames of the regions' modules, one dispatch
 * per batch, reads back column sums and counts. Buffers grow to the largest batch seen.
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
import { columnLayout, type RoiBackend, type RoiColumns, type RoiSpec } from "./roi-spec.ts";

export async function createRoiGpu(
  device: GPUDevice,
  rois: RoiSpec[],
  shape: [number, number],
): Promise<RoiBackend> {
  const [, moduleFs] = shape;
  const pixels = shape[0] * shape[1];
  const slots = [...new Set(rois.map((r) => r.module))];
  const { offsets, total } = columnLayout(rois);
  const colTable = new Uint32Array(total * 4);
  rois.forEach((r, k) => {
    for (let c = 0; c < r.fs1 - r.fs0; c++) {
      colTable.set([slots.indexOf(r.module), r.ss0, r.ss1, r.fs0 + c], (offsets[k] + c) * 4);
    }
  });
  const module = await compileShader(device, shaderSource("roi.wgsl"), "roi");
  const layout = bindGroupLayout(device, [
    "uniform",
    "read-only-storage",
    "read-only-storage",
    "read-only-storage",
    "read-only-storage",
    "storage",
    "storage",
  ]);
  const { roi: pipeline } = await computePipelines(device, module, layout, ["roi"] as const, "roi");
  const S = BufferUsage.STORAGE | BufferUsage.COPY_DST;
  const params = createBuffer(device, 32, BufferUsage.UNIFORM | BufferUsage.COPY_DST, "roi.params");
  const cols = createBuffer(device, colTable.byteLength, S, "roi.cols");
  device.queue.writeBuffer(cols, 0, colTable);
  let maxFrames = 0;
  let bufs: {
    data: GPUBuffer;
    mask: GPUBuffer;
    present: GPUBuffer;
    sum: GPUBuffer;
    count: GPUBuffer;
    read: GPUBuffer;
    group: GPUBindGroup;
  } | undefined;
  const grow = (frames: number) => {
    if (bufs && frames <= maxFrames) return bufs;
    if (bufs) {
      for (const b of [bufs.data, bufs.mask, bufs.present, bufs.sum, bufs.count, bufs.read]) b.destroy();
    }
    maxFrames = frames;
    const n = slots.length * frames * pixels * 4;
    const data = createBuffer(device, n, S, "roi.data");
    const mask = createBuffer(device, n, S, "roi.mask");
    const present = createBuffer(device, slots.length * frames * 4, S, "roi.present");
    const out = frames * total * 4;
    const sum = createBuffer(device, out, BufferUsage.STORAGE | BufferUsage.COPY_SRC, "roi.sum");
    const count = createBuffer(device, out, BufferUsage.STORAGE | BufferUsage.COPY_SRC, "roi.count");
    const read = createBuffer(device, 2 * out, BufferUsage.MAP_READ | BufferUsage.COPY_DST, "roi.read");
    const group = bindGroup(device, layout, [params, data, mask, cols, present, sum, count]);
    bufs = { data, mask, present, sum, count, read, group };
    return bufs;
  };
  const staging = new Unshared();
  return {
    name: "webgpu",
    async columns(b: FrameBatch): Promise<RoiColumns> {
      const F = b.nFrames;
      const bf = grow(F);
      const mods = slots.map((m) => b.modules.find((x) => x.module === m)!);
      const hasMask = mods.every((m) => m.mask) ? 1 : 0;
      const presentFlags = new Uint32Array(slots.length * maxFrames);
      await withErrorScope(device, "roi upload", () => {
        mods.forEach((mf, s) => {
          device.queue.writeBuffer(
            bf.data,
            s * maxFrames * pixels * 4,
            staging.f32(mf.data, F * pixels),
          );
          if (hasMask) {
            device.queue.writeBuffer(
              bf.mask,
              s * maxFrames * pixels * 4,
              staging.u32(mf.mask!, F * pixels),
            );
          }
          for (let i = 0; i < F; i++) presentFlags[s * maxFrames + i] = mf.present[i];
        });
        device.queue.writeBuffer(bf.present, 0, presentFlags);
        device.queue.writeBuffer(
          params,
          0,
          Uint32Array.of(pixels, moduleFs, F, maxFrames, total, hasMask, 0, 0),
        );
        const enc = device.createCommandEncoder();
        const pass = enc.beginComputePass();
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, bf.group);
        pass.dispatchWorkgroups(Math.ceil(total / 64), F);
        pass.end();
        enc.copyBufferToBuffer(bf.sum, 0, bf.read, 0, F * total * 4);
        enc.copyBufferToBuffer(bf.count, 0, bf.read, F * total * 4, F * total * 4);
        device.queue.submit([enc.finish()]);
      });
      const back = await readBack(bf.read, 2 * F * total * 4);
      const present = new Uint8Array(F * rois.length);
      rois.forEach((r, k) => {
        const mf = mods[slots.indexOf(r.module)];
        for (let i = 0; i < F; i++) present[i * rois.length + k] = mf.present[i];
      });
      return {
        colSum: new Float32Array(back, 0, F * total),
        colCount: new Uint32Array(back, F * total * 4, F * total),
        present,
      };
    },
    dispose() {
      if (bufs) {
        for (const b of [bufs.data, bufs.mask, bufs.present, bufs.sum, bufs.count, bufs.read]) b.destroy();
      }
      params.destroy();
      cols.destroy();
    },
  };
}
