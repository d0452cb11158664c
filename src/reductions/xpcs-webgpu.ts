/**
 * The WebGPU backend of `xpcs` (shaders/xpcs.wgsl): the q-bin table as a CSR matrix (as azint's), the
 * frames on a timeline of the previous batch's last D frames (the history) followed by the batch's; two
 * timeline buffers alternate, the history copied on the GPU. Per batch: `prep` turns masked and non-finite
 * pixels into NaN, `pairs` reduces one workgroup per (bin, delay, train segment). Returns the sums per train
 * segment (all modules together); a train that spans batches gets sums from each.
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
import { csr } from "./azint-webgpu.ts";
import type { TrainSums, TwoTimeSums } from "./xpcs-spec.ts";
import type { XpcsGpu } from "./xpcs-spec.ts";

export async function createXpcsGpu(
  device: GPUDevice,
  modules: number[],
  bins: Uint32Array[],
  pixels: number,
  nBins: number,
  delays: number,
): Promise<XpcsGpu> {
  const table = csr({ modules, pixels, bin: bins, corr: bins.map((b) => new Float32Array(b.length)) }, nBins);
  const module = await compileShader(device, shaderSource("xpcs.wgsl"), "xpcs");
  const layout = bindGroupLayout(device, [
    "uniform",
    "storage",
    "read-only-storage",
    "read-only-storage",
    "read-only-storage",
    "read-only-storage",
    "storage",
  ]);
  const pipes = await computePipelines(device, module, layout, ["prep", "pairs"] as const, "xpcs");
  const S = BufferUsage.STORAGE | BufferUsage.COPY_DST;
  const params = createBuffer(device, 32, BufferUsage.UNIFORM | BufferUsage.COPY_DST, "xpcs.params");
  const off = createBuffer(device, table.offsets.byteLength, S, "xpcs.offsets");
  const ent = createBuffer(device, table.entries.byteLength, S, "xpcs.entries");
  device.queue.writeBuffer(off, 0, table.offsets);
  if (table.entries.length) device.queue.writeBuffer(ent, 0, table.entries);
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
    read: GPUBuffer;
    segMax: number;
  } | undefined;
  const destroy = () => {
    if (b) { for (const x of [...b.data, b.mask, b.segs, b.out, b.read]) x.destroy(); }
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
      read: createBuffer(device, outBytes, BufferUsage.MAP_READ | BufferUsage.COPY_DST, "xpcs.read"),
      segMax,
    };
    if (old && histTrains.length) {
      const enc = device.createCommandEncoder();
      copyHistory(enc, old.data[cur], oldStride, 0, histTrains.length, data[0]);
      device.queue.submit([enc.finish()]);
    }
    cur = 0;
    if (old) { for (const x of [...old.data, old.mask, old.segs, old.out, old.read]) x.destroy(); }
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
      await withErrorScope(device, "xpcs dispatch", () => {
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
        device.queue.writeBuffer(
          params,
          0,
          Uint32Array.of(pixels, stride, H, F, nBins, delays, slots, hasMask),
        );
        const group = bindGroup(device, layout, [params, data, bf.mask, off, ent, bf.segs, bf.out]);
        const enc = device.createCommandEncoder();
        const pass = enc.beginComputePass();
        pass.setBindGroup(0, group);
        pass.setPipeline(pipes.prep);
        pass.dispatchWorkgroups(Math.ceil(pixels / 256), F);
        pass.setPipeline(pipes.pairs);
        if (segs.length) pass.dispatchWorkgroups(nBins, delays, segs.length);
        pass.end();
        if (segs.length) enc.copyBufferToBuffer(bf.out, 0, bf.read, 0, outWords * 4);
        // The next history: the timeline's last `delays` frames, into the other buffer.
        const keep = Math.min(delays, timeline.length);
        copyHistory(enc, data, stride, timeline.length - keep, keep, bf.data[1 - cur]);
        device.queue.submit([enc.finish()]);
        histTrains = timeline.slice(timeline.length - keep);
        cur = 1 - cur;
      });
      if (!segs.length) return [];
      const back = await readBack(bf.read, outWords * 4);
      const f = new Float32Array(back), u = new Uint32Array(back);
      const n = nBins * delays;
      return segs.map(([, , trainId], g) => {
        const s: TrainSums = {
          trainId,
          a: new Float64Array(n),
          l: new Float64Array(n),
          r: new Float64Array(n),
          p: new Float64Array(n),
        };
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
      for (const x of [params, off, ent]) x.destroy();
    },
  };
}

/**
 * The two-time sums of one train on the GPU (shaders/xpcs-twotime.wgsl; the same spec and arguments as
 * `twoTimeSums` of src/xpcs.ts, float32 sums): one dispatch per module, the module's frames of the train
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
  const module = await compileShader(device, shaderSource("xpcs-twotime.wgsl"), "xpcs-twotime");
  const layout = bindGroupLayout(device, [
    "uniform",
    "read-only-storage",
    "read-only-storage",
    "read-only-storage",
    "storage",
  ]);
  const pipes = await computePipelines(device, module, layout, ["twoTime"] as const, "xpcs-twotime");
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
    const read = buf(n * 16, BufferUsage.MAP_READ | BufferUsage.COPY_DST, "xpcs2t.read");
    const pixels = bins[0]?.length ?? 0;
    const data = buf(T * pixels * 4, S, "xpcs2t.frames");
    await withErrorScope(device, "xpcs two-time dispatch", async () => {
      for (let m = 0; m < frames.length; m++) {
        const table = csr({ modules: [0], pixels, bin: [bins[m]], corr: [new Float32Array(pixels)] }, nBins);
        const off = buf(table.offsets.byteLength, S, "xpcs2t.offsets");
        const ent = buf(table.entries.byteLength, S, "xpcs2t.entries");
        const params = buf(16, BufferUsage.UNIFORM | BufferUsage.COPY_DST, "xpcs2t.params");
        device.queue.writeBuffer(off, 0, table.offsets);
        if (table.entries.length) device.queue.writeBuffer(ent, 0, table.entries);
        device.queue.writeBuffer(params, 0, Uint32Array.of(pixels, T, nBins, m === 0 ? 1 : 0));
        for (let t = 0; t < T; t++) device.queue.writeBuffer(data, t * pixels * 4, frames[m][t]);
        const enc = device.createCommandEncoder();
        const pass = enc.beginComputePass();
        pass.setBindGroup(0, bindGroup(device, layout, [params, data, off, ent, out]));
        pass.setPipeline(pipes.twoTime);
        pass.dispatchWorkgroups(T, T, nBins);
        pass.end();
        if (m === frames.length - 1) enc.copyBufferToBuffer(out, 0, read, 0, n * 16);
        device.queue.submit([enc.finish()]);
        // One module's frames in flight at a time (the next upload overwrites them).
        await device.queue.onSubmittedWorkDone();
      }
    });
    const s: TwoTimeSums = {
      trainId,
      pulseIds,
      a: new Float64Array(n),
      l: new Float64Array(n),
      r: new Float64Array(n),
      p: new Float64Array(n),
    };
    if (!frames.length) return s;
    const back = await readBack(read, n * 16);
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
    for (const b of made) b.destroy();
  }
}
