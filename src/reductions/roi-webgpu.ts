/**
 * The WebGPU backend of `roi` (shaders/roi.wgsl): uploads the frames of the regions' modules, one dispatch
 * per batch, reads back column sums and counts. Buffers grow to the largest batch seen.
 */
import type { FrameBatch } from "../exdf/frames.ts";
import { Unshared } from "./common.ts";
import { BufferUsage, createBuffer, Kernel, readBuffers } from "../gpu/kernel.ts";
import { columnLayout, type RoiBackend, type RoiColumns, type RoiSpec } from "./roi-spec.ts";

/** The uniform struct Params of shaders/roi.wgsl. */
const ROI_PARAMS = {
  pixels: "u32",
  moduleFs: "u32",
  nFrames: "u32",
  maxFrames: "u32",
  total: "u32",
  hasMask: "u32",
} as const;

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
  const kernel = await Kernel.create(device, { shader: "roi.wgsl", entries: ["roi"], uniforms: ROI_PARAMS });
  const S = BufferUsage.STORAGE | BufferUsage.COPY_DST;
  const cols = createBuffer(device, colTable.byteLength, S, "roi.cols");
  device.queue.writeBuffer(cols, 0, colTable);
  let maxFrames = 0;
  let bufs: Record<"data" | "mask" | "present" | "colSum" | "colCount", GPUBuffer> | undefined;
  const grow = (frames: number) => {
    if (bufs && frames <= maxFrames) return bufs;
    if (bufs) { for (const b of Object.values(bufs)) b.destroy(); }
    maxFrames = frames;
    const n = slots.length * frames * pixels * 4;
    const out = frames * total * 4;
    const R = BufferUsage.STORAGE | BufferUsage.COPY_SRC;
    bufs = {
      data: createBuffer(device, n, S, "roi.data"),
      mask: createBuffer(device, n, S, "roi.mask"),
      present: createBuffer(device, slots.length * frames * 4, S, "roi.present"),
      colSum: createBuffer(device, out, R, "roi.sum"),
      colCount: createBuffer(device, out, R, "roi.count"),
    };
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
      const out = { size: F * total * 4 };
      const [sum, count] = await readBuffers(device, "roi", [
        { buffer: bf.colSum, ...out },
        { buffer: bf.colCount, ...out },
      ], (enc) => {
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
        kernel.setUniforms({ pixels, moduleFs, nFrames: F, maxFrames, total, hasMask });
        kernel.dispatch("roi", { ...bf, cols }, [Math.ceil(total / kernel.workgroupSize("roi")[0]), F], enc);
      });
      const present = new Uint8Array(F * rois.length);
      rois.forEach((r, k) => {
        const mf = mods[slots.indexOf(r.module)];
        for (let i = 0; i < F; i++) present[i * rois.length + k] = mf.present[i];
      });
      return {
        colSum: new Float32Array(sum),
        colCount: new Uint32Array(count),
        present,
      };
    },
    dispose() {
      if (bufs) { for (const b of Object.values(bufs)) b.destroy(); }
      kernel.dispose();
      cols.destroy();
    },
  };
}
