/**
 * The WebGPU backend of `xpcs` (shaders/xpcs.wgsl and xpcs-twotime.wgsl, each with shaders/xpcs-common.wgsl
 * in front: their workgroup sums and reduction): the q-bin table as a CSR matrix (as azint's), the
 * frames on a timeline of the previous batch's last D frames (the history) followed by the batch's; two
 * timeline buffers alternate, the history copied on the GPU. Per batch: `prep` turns masked and non-finite
 * pixels into NaN, `pairs` reduces one workgroup per (bin, delay, train segment). Returns the sums per train
 * segment (all modules together); a train that spans batches gets sums from each.
 */
import type { FrameBatch } from "../exdf/frames.ts";
import { Unshared } from "./common.ts";
import { BufferUsage, createBuffer, Kernel, readBuffers, withErrorScope } from "../gpu/kernel.ts";
import { shaderWith } from "../gpu/shaders.ts";
import { csr } from "./azint-webgpu.ts";
import { type TrainSums, type TwoTimeSums, zeroSums } from "./xpcs-spec.ts";
import type { XpcsGpu } from "./xpcs-spec.ts";

/** The uniform struct Params of shaders/xpcs.wgsl. */
const XPCS_PARAMS = {
  pixels: "u32",
  stride: "u32",
  hist: "u32",
  nFrames: "u32",
  bins: "u32",
  delays: "u32",
  slots: "u32",
  hasMask: "u32",
} as const;

/** The uniform struct Params of shaders/xpcs-twotime.wgsl. */
const TWO_TIME_PARAMS = { pixels: "u32", frames: "u32", bins: "u32", first: "u32" } as const;

export async function createXpcsGpu(
  device: GPUDevice,
  modules: number[],
  bins: Uint32Array[],
  pixels: number,
  nBins: number,
  delays: number,
): Promise<XpcsGpu> {
  const table = csr({ modules, pixels, bin: bins, corr: bins.map((b) => new Float32Array(b.length)) }, nBins);
  const kernel = await Kernel.create(device, {
    shader: "xpcs.wgsl",
    source: shaderWith(["xpcs-common.wgsl"], "xpcs.wgsl"),
    entries: ["prep", "pairs"],
    uniforms: XPCS_PARAMS,
  });
  const S = BufferUsage.STORAGE | BufferUsage.COPY_DST;
  const csrBufs = {
    offsets: createBuffer(device, table.offsets.byteLength, S, "xpcs.offsets"),
    entries: createBuffer(device, table.entries.byteLength, S, "xpcs.entries"),
  };
  device.queue.writeBuffer(csrBufs.offsets, 0, table.offsets);
  if (table.entries.length) device.queue.writeBuffer(csrBufs.entries, 0, table.entries);
  const slots = modules.length;
  let fMax = 0;
  let stride = 0;
  let cur = 0;
  let histTrains: number[] = [];
  let b: {
    data: GPUBuffer[];
    mask: GPUBuffer;
    segs: GPUBuffer;
    out: GPUBuffer;
    segMax: number;
  } | undefined;
  const destroy = () => {
    if (b) { for (const x of [...b.data, b.mask, b.segs, b.out]) x.destroy(); }
  };
  const copyHistory = (
    enc: GPUCommandEncoder,
    from: GPUBuffer,
    fromStride: number,
    start: number,
    n: number,
    to: GPUBuffer,
  ) => {
    if (!n) return;
    for (let s = 0; s < slots; s++) {
      enc.copyBufferToBuffer(
        from,
        (s * fromStride + start) * pixels * 4,
        to,
        s * stride * pixels * 4,
        n * pixels * 4,
      );
    }
  };
  const grow = (F: number, segCount: number) => {
    if (b && F <= fMax && segCount <= b.segMax) return b;
    const old = b;
    const oldStride = stride;
    fMax = Math.max(F, fMax);
    stride = delays + fMax;
    const segMax = Math.max(segCount, old?.segMax ?? 0, 16);
    const size = slots * stride * pixels * 4;
    const data = [
      createBuffer(device, size, S | BufferUsage.COPY_SRC, "xpcs.data0"),
      createBuffer(device, size, S | BufferUsage.COPY_SRC, "xpcs.data1"),
    ];
    const outBytes = segMax * nBins * delays * 16;
    b = {
      data,
      mask: createBuffer(device, slots * fMax * pixels * 4, S, "xpcs.mask"),
      segs: createBuffer(device, segMax * 8, S, "xpcs.segs"),
      out: createBuffer(device, outBytes, BufferUsage.STORAGE | BufferUsage.COPY_SRC, "xpcs.out"),
      segMax,
    };
    if (old && histTrains.length) {
      const enc = device.createCommandEncoder();
      copyHistory(enc, old.data[cur], oldStride, 0, histTrains.length, data[0]);
      device.queue.submit([enc.finish()]);
    }
    cur = 0;
    if (old) { for (const x of [...old.data, old.mask, old.segs, old.out]) x.destroy(); }
    return b;
  };
  const staging = new Unshared();
  return {
    name: "webgpu",
    async batch(batch: FrameBatch): Promise<TrainSums[]> {
      const F = batch.nFrames;
      const H = histTrains.length;
      const timeline = [...histTrains, ...batch.trainId];
      // Train segments holding at least one batch frame.
      const segs: [number, number, number][] = [];
      for (let u = H; u < timeline.length; u++) {
        const t = timeline[u];
        if (segs.length && segs[segs.length - 1][2] === t) segs[segs.length - 1][1] = u + 1;
        else {
          let s = u;
          while (s > 0 && timeline[s - 1] === t) s--;
          segs.push([s, u + 1, t]);
        }
      }
      const bf = grow(F, segs.length);
      const data = bf.data[cur];
      const mods = modules.map((m) => batch.modules.find((x) => x.module === m)!);
      const hasMask = mods.every((m) => m.mask) ? 1 : 0;
      const outWords = segs.length * nBins * delays * 4;
      const read = segs.length ? [{ buffer: bf.out, size: outWords * 4 }] : [];
      const [back] = await readBuffers(device, "xpcs dispatch", read, (enc) => {
        mods.forEach((mf, s) => {
          device.queue.writeBuffer(
            data,
            (s * stride + H) * pixels * 4,
            staging.f32(mf.data, F * pixels),
          );
          if (hasMask) {
            device.queue.writeBuffer(
              bf.mask,
              s * F * pixels * 4,
              staging.u32(mf.mask!, F * pixels),
            );
          }
        });
        device.queue.writeBuffer(bf.segs, 0, Uint32Array.from(segs.flatMap(([s, e]) => [s, e])));
        kernel.setUniforms({ pixels, stride, hist: H, nFrames: F, bins: nBins, delays, slots, hasMask });
        const buffers = { data, mask: bf.mask, ...csrBufs, segs: bf.segs, out: bf.out };
        kernel.dispatch("prep", buffers, [Math.ceil(pixels / kernel.workgroupSize("prep")[0]), F], enc);
        kernel.dispatch("pairs", buffers, [nBins, delays, segs.length], enc);
        // The next history: the timeline's last `delays` frames, into the other buffer.
        const keep = Math.min(delays, timeline.length);
        copyHistory(enc, data, stride, timeline.length - keep, keep, bf.data[1 - cur]);
        histTrains = timeline.slice(timeline.length - keep);
        cur = 1 - cur;
      });
      if (!segs.length) return [];
      const f = new Float32Array(back), u = new Uint32Array(back);
      const n = nBins * delays;
      return segs.map(([, , trainId], g) => {
        const s: TrainSums = { trainId, ...zeroSums(n) };
        for (let j = 0; j < n; j++) {
          const o = (g * n + j) * 4;
          s.a[j] = f[o];
          s.l[j] = f[o + 1];
          s.r[j] = f[o + 2];
          s.p[j] = u[o + 3];
        }
        return s;
      });
    },
    dispose() {
      destroy();
      kernel.dispose();
      for (const x of Object.values(csrBufs)) x.destroy();
    },
  };
}

/**
 * The two-time sums of one train on the GPU (shaders/xpcs-twotime.wgsl; the same spec and arguments as
 * `twoTimeSums` of src/reductions/xpcs.ts, float32 sums): one dispatch per module, the module's frames of the train
 * uploaded as they are (invalid pixels NaN), its q-bin table as a CSR matrix; the lower triangle mirrored
 * here as on the CPU.
 */
export async function twoTimeSumsGpu(
  device: GPUDevice,
  trainId: number,
  pulseIds: number[],
  frames: Float32Array[][],
  bins: Uint32Array[],
  nBins: number,
): Promise<TwoTimeSums> {
  const T = pulseIds.length;
  const kernel = await Kernel.create(device, {
    shader: "xpcs-twotime.wgsl",
    source: shaderWith(["xpcs-common.wgsl"], "xpcs-twotime.wgsl"),
    entries: ["twoTime"],
    uniforms: TWO_TIME_PARAMS,
  });
  const S = BufferUsage.STORAGE | BufferUsage.COPY_DST;
  const n = nBins * T * T;
  const made: GPUBuffer[] = [];
  const buf = (size: number, usage: number, label: string) => {
    const b = createBuffer(device, size, usage, label);
    made.push(b);
    return b;
  };
  try {
    const out = buf(n * 16, BufferUsage.STORAGE | BufferUsage.COPY_SRC, "xpcs2t.out");
    const pixels = bins[0]?.length ?? 0;
    const data = buf(T * pixels * 4, S, "xpcs2t.frames");
    await withErrorScope(device, "xpcs two-time dispatch", async () => {
      for (let m = 0; m < frames.length; m++) {
        const table = csr({ modules: [0], pixels, bin: [bins[m]], corr: [new Float32Array(pixels)] }, nBins);
        const off = buf(table.offsets.byteLength, S, "xpcs2t.offsets");
        const ent = buf(table.entries.byteLength, S, "xpcs2t.entries");
        device.queue.writeBuffer(off, 0, table.offsets);
        if (table.entries.length) device.queue.writeBuffer(ent, 0, table.entries);
        kernel.setUniforms({ pixels, frames: T, bins: nBins, first: m === 0 ? 1 : 0 });
        for (let t = 0; t < T; t++) device.queue.writeBuffer(data, t * pixels * 4, frames[m][t]);
        kernel.dispatch("twoTime", { frames: data, offsets: off, entries: ent, out }, [T, T, nBins]);
        // One module's frames in flight at a time (the next upload overwrites them).
        await device.queue.onSubmittedWorkDone();
      }
    });
    const s: TwoTimeSums = { trainId, pulseIds, ...zeroSums(n) };
    if (!frames.length) return s;
    const [back] = await readBuffers(device, "xpcs two-time readback", [{ buffer: out, size: n * 16 }]);
    const f = new Float32Array(back), u = new Uint32Array(back);
    for (let k = 0; k < nBins; k++) {
      for (let t1 = 0; t1 < T; t1++) {
        for (let t2 = t1; t2 < T; t2++) {
          const j = (k * T + t1) * T + t2, i = (k * T + t2) * T + t1;
          s.a[j] = s.a[i] = f[j * 4];
          s.l[j] = s.r[i] = f[j * 4 + 1];
          s.r[j] = s.l[i] = f[j * 4 + 2];
          s.p[j] = s.p[i] = u[j * 4 + 3];
        }
      }
    }
    return s;
  } finally {
    kernel.dispose();
    for (const b of made) b.destroy();
  }
}
