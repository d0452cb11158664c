/**
 * The WebGPU backend of the localisation stages (spec: src/localise/stages.ts; one WGSL file per stage in
 * shaders/, each starting with its stage's spec; shaders/common.wgsl is put in front of each). Each stage
 * is a `Kernel` (src/gpu/kernel.ts): bindings by the shaders' names, common.wgsl's Params struct declared
 * once (PARAMS) and checked against the WGSL, workgroup sizes and the tile side read from the shaders.
 *
 * Per batch of frames (at most `maxFrames` per GPU submission; larger batches are split): one upload
 * (data, mask if any, hot bytes if any, a 96-byte uniform; on Dawn, frames go through a persistent mapped
 * staging buffer per slot, then a GPU copy), one command encoder with every stage in one compute pass,
 * one readback (readBuffers) of compact results: per frame the per-ASIC counters and the peak count, and a peak table of
 * `peakCapacity` entries per frame (default max(1024, 4 * maxPeaks)). The host only sorts each frame's
 * table and keeps the brightest maxPeaks.
 *
 *   background (tiles/64, frames)                 stage 0: mu, sigma per 16 x 16 tile
 *   bgthreshold (tiles/64, frames)                stage 0: thr (the neighbourhood's median sigma)
 *   or, with radius bins (bgBinWidth > 0 and a batch radius; the bins' pixel lists uploaded per module):
 *   radialbg   (bins, frames) workgroups          stage 0: mu, sigma per bin (segmented reduction)
 *   radialthr  (bins/64, frames)                  stage 0: thr (median sigma of the bin and its neighbours)
 *   litpixels  (nAsics, frames) workgroups        stage 1 counters
 *   filter     (fs/16, ss/16, frames)             stage 3: survivors -> labels[i] = i | NONE, filteredLit
 *   merge      (pixels/256, frames)               stage 4 union-find
 *   compress   (pixels/256, frames)               labels -> roots, area[] = 0
 *   areas      (pixels/16/256, frames)            area[root]
 *   allocate   (pixels/256, frames)               peak count per frame (exact), table slots
 *   bounds     (pixels/16/256, frames)            table entries: area, box
 *   accumulate (pixels/16/256, frames)            table entries: sums (about the box centre), max
 *
 * Overflow: a frame with more peaks than `peakCapacity` has only `peakCapacity` of them (whichever won
 * the allocation race) in the GPU table. Its nPeaks is still exact (counted on the GPU), and the backend
 * recomputes that frame's peak list with the CPU reference (stages 3-4 of that frame only), so the
 * result is the same as without overflow; `stats.overflowFrames` counts these frames.
 *
 * Buffers and kernels are created once per backend. Inputs (data, mask, hot, uniform) are double-buffered
 * in two slots (readbacks use readBuffers' pooled staging buffers), so two calls can be in flight (a third waits for a slot); the
 * intermediate buffers are shared, which is safe because the queue runs submissions in order.
 */
import type { Geometry } from "../exdf/detectors.ts";
import { getGpuDevice } from "../gpu/device.ts";
import {
  type Buffers,
  BufferUsage,
  createBuffer,
  Kernel,
  MapMode,
  readBuffers,
  withErrorScope,
} from "../gpu/kernel.ts";
import { shaderSource } from "../gpu/shaders.ts";
import { cellList, type Cells, cellsOf, newBackground, TILE, tilesOf } from "./background.ts";
import type { Background } from "./spec.ts";
import {
  type BatchResult,
  type LocaliseBackend,
  type LocaliseParams,
  type ModuleBatch,
  type Peak,
} from "./spec.ts";
import { emptyResult, framePeaksCpu, NO_LABEL, sortAndCut } from "./stages.ts";
import { checkBatch } from "./spec.ts";

/** Words per peak-table entry (shaders/common.wgsl ENTRY). */
const ENTRY = 11;
/** Pixels per row segment of the run passes (shaders/common.wgsl SEG). */
const SEG = 16;

export interface WebgpuOptions {
  /** Peak-table entries per frame on the GPU (default max(1024, 4 * maxPeaks)). */
  peakCapacity?: number;
  /** Read the component labels back too (tests): WebgpuBatchResult.labels. */
  debugLabels?: boolean;
  /**
   * How frames reach the GPU: "mapped" copies them into a persistent mapped staging buffer per slot,
   * then a GPU copy; "writeBuffer" uses queue.writeBuffer. Default: "mapped" on Dawn (its writeBuffer
   * stages large writes through fresh allocations: 4x slower on an H100), "writeBuffer" on Deno (its
   * mapped writes are 60x slower there).
   */
  upload?: "mapped" | "writeBuffer";
}

export interface WebgpuBatchResult extends BatchResult {
  /** Stage 0 as the GPU computed it (frames x tiles). */
  background: Background;
  /** With debugLabels: nFrames * pixels labels, the spec's convention (module-frame index of the root). */
  labels?: Uint32Array;
  /** Frames (batch indices) whose peaks overflowed the GPU table and were recomputed on the CPU. */
  overflowFrames: number[];
}

export interface WebgpuBackend extends LocaliseBackend {
  readonly name: "webgpu";
  readonly software: boolean;
  /** Frames per GPU submission. */
  readonly maxFrames: number;
  readonly peakCapacity: number;
  readonly upload: "mapped" | "writeBuffer";
  readonly stats: { batches: number; frames: number; overflowFrames: number };
  process(batch: ModuleBatch): Promise<WebgpuBatchResult>;
}

/** Per-frame counter words: litPixels, litIntensity, unmaskedPixels, filteredLit per ASIC, + peak count. */
function counterStride(g: Geometry): number {
  return 4 * g.nAsics + 1;
}

export function defaultPeakCapacity(params: LocaliseParams): number {
  return Math.max(1024, 4 * params.maxPeaks);
}

/**
 * How many frames of this geometry fit one GPU submission under the device limits (the largest storage
 * binding is a frame-major f32 array of the batch, or the peak table).
 */
export function framesPerBatch(
  geometry: Geometry,
  limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupsPerDimension?: number;
  },
  peakCapacity = 1024,
): number {
  const binding = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  return Math.max(
    0,
    Math.min(
      Math.floor(binding / (4 * geometry.pixels)),
      Math.floor(binding / (4 * ENTRY * Math.max(1, peakCapacity))),
      limits.maxComputeWorkgroupsPerDimension ?? 65535,
    ),
  );
}

interface Slot {
  params: GPUBuffer;
  data: GPUBuffer;
  mask: GPUBuffer;
  hot: GPUBuffer;
  /** Stage-0 cells of the module pixels (u32 each) and the cell list (stages.ts cellList). */
  cells: GPUBuffer;
  cellList: GPUBuffer;
  /** The Cells last written to `cells` / `cellList`. */
  cellsOf?: Cells;
  /** Upload staging (MAP_WRITE): data at 0, mask at maxFrames * pixels * 4; absent with writeBuffer uploads. */
  upload?: GPUBuffer;
  /** The pending re-map of `upload` after its last use (false: it failed). */
  mapping?: Promise<boolean>;
  /** Each stage's buffers by binding name (the shaders' names; `cells` is common.wgsl's). */
  groups: Record<Stage, Buffers>;
}

const ENTRIES = {
  background: ["background", "bgthreshold", "radialbg", "radialthr"],
  litpixels: ["litpixels"],
  hotcount: ["hotcount"],
  filter: ["noisefilter"],
  components: ["merge", "compress"],
  peaks: ["areas", "allocate", "bounds", "accumulate"],
} as const;

type Stage = keyof typeof ENTRIES;

/** The uniform struct Params of shaders/common.wgsl. */
const PARAMS = {
  pixels: "u32",
  moduleSs: "u32",
  moduleFs: "u32",
  asicSs: "u32",
  asicFs: "u32",
  asicCols: "u32",
  nAsics: "u32",
  nFrames: "u32",
  hasMask: "u32",
  hasHot: "u32",
  neighbours: "u32",
  minArea: "u32",
  maxArea: "u32",
  capacity: "u32",
  stride: "u32",
  segments: "u32",
  threshold: "f32",
  strong: "f32",
  bgIterations: "u32",
  tilesFs: "u32",
  minSnr: "f32",
  bgClip: "f32",
  cellsN: "u32",
  radial: "u32",
} as const;

/** Bytes of Params (24 scalars, no padding). */
const PARAMS_BYTES = 16 * Math.ceil(Object.keys(PARAMS).length / 4);

type StageKernels = { [S in Stage]: Kernel<(typeof ENTRIES)[S][number], typeof PARAMS> };

function fromOrderedKey(k: number, scratch: DataView): number {
  scratch.setUint32(0, k & 0x80000000 ? k & 0x7fffffff : ~k >>> 0, true);
  return scratch.getFloat32(0, true);
}

/**
 * The WebGPU backend for one geometry, or undefined when there is no WebGPU adapter. Throws when the
 * device cannot build the pipelines or buffers.
 */
export async function createWebgpuBackend(
  params: LocaliseParams,
  geometry: Geometry,
  maxFramesPerBatch: number,
  options: WebgpuOptions = {},
): Promise<WebgpuBackend | undefined> {
  const gpu = await getGpuDevice();
  if (!gpu) return undefined;
  const { device } = gpu;
  const p = { ...params };
  const g = { ...geometry };
  const P = g.pixels;
  const A = g.nAsics;
  const W = counterStride(g);
  if (g.moduleFs % TILE || g.moduleSs % TILE || g.asicSs % TILE || g.asicFs % TILE) {
    throw new Error(`webgpu backend: ${g.type} module/ASIC sides are not multiples of ${TILE}`);
  }
  const C = Math.max(1, Math.floor(options.peakCapacity ?? defaultPeakCapacity(p)));
  const fit = framesPerBatch(g, device.limits, C);
  if (fit < 1) throw new Error(`webgpu backend: one ${g.type} frame does not fit the device's buffer limits`);
  const F = Math.max(1, Math.min(Math.floor(maxFramesPerBatch) || 1, fit));
  const segments = P / SEG;
  const NT = tilesOf(g);
  // Stage-0 cells: tiles, or radius bins of at most NC of them (bins of bgBinWidth over a module's
  // range of radii, bounded by twice its side sum).
  const NC = p.bgBinWidth > 0
    ? Math.max(NT, Math.ceil((2 * (g.moduleSs + g.moduleFs)) / p.bgBinWidth) + 2)
    : NT;
  const uploadMode = options.upload ?? (gpu.implementation === "deno" ? "writeBuffer" : "mapped");

  return await withErrorScope(device, "webgpu backend setup", async () => {
    const k = {} as StageKernels;
    const common = shaderSource("common.wgsl");
    for (const stage of Object.keys(ENTRIES) as Stage[]) {
      (k as Record<Stage, Kernel<string, typeof PARAMS>>)[stage] = await Kernel.create(device, {
        shader: `${stage}.wgsl`,
        source: common + "\n" + shaderSource(`${stage}.wgsl`),
        entries: ENTRIES[stage],
        uniforms: PARAMS,
        callerUniformBuffer: true,
      });
    }
    const WG = k.components.workgroupSize("merge")[0];
    const T = k.filter.constant("T");
    if (T !== TILE) throw new Error(`filter.wgsl: tile side ${T}, stage 0 has ${TILE}`);

    const S = BufferUsage.STORAGE;
    const frameBytes = 4 * P;
    const labels = createBuffer(device, F * frameBytes, S | BufferUsage.COPY_SRC, "labels");
    const area = createBuffer(device, F * frameBytes, S, "area");
    const counters = createBuffer(
      device,
      F * W * 4,
      S | BufferUsage.COPY_SRC | BufferUsage.COPY_DST,
      "counters",
    );
    const table = createBuffer(device, F * C * ENTRY * 4, S | BufferUsage.COPY_SRC, "peak table");
    const litCount = createBuffer(device, frameBytes, S | BufferUsage.COPY_SRC, "lit counts");
    const bgBytes = 16 * NC;
    const bg = createBuffer(device, F * bgBytes, S | BufferUsage.COPY_SRC, "background");
    const shared = [labels, area, counters, table, litCount, bg];

    const slots: Slot[] = [];
    for (let i = 0; i < 2; i++) {
      const s = {
        params: createBuffer(device, PARAMS_BYTES, BufferUsage.UNIFORM | BufferUsage.COPY_DST, `params ${i}`),
        data: createBuffer(device, F * frameBytes, S | BufferUsage.COPY_DST, `data ${i}`),
        mask: createBuffer(device, F * frameBytes, S | BufferUsage.COPY_DST, `mask ${i}`),
        hot: createBuffer(device, P, S | BufferUsage.COPY_DST, `hot ${i}`),
        cells: createBuffer(device, 4 * P, S | BufferUsage.COPY_DST, `cells ${i}`),
        cellList: createBuffer(device, 4 * (NC + 1 + P), S | BufferUsage.COPY_DST, `cell list ${i}`),
        upload: uploadMode === "writeBuffer" ? undefined : device.createBuffer({
          size: 2 * F * frameBytes,
          usage: BufferUsage.MAP_WRITE | BufferUsage.COPY_SRC,
          mappedAtCreation: true,
          label: `upload ${i}`,
        }),
      };
      const { params, data, mask, cells, cellList } = s;
      const groups: Record<Stage, Buffers> = {
        background: { params, data, mask, bg, cells, cellList },
        litpixels: { params, data, mask, counters, cells },
        hotcount: { params, data, mask, litCount, bg, cells },
        filter: { params, data, mask, hotBytes: s.hot, labels, counters, bg, cells },
        components: { params, labels, area, cells },
        peaks: { params, data, labels, area, counters, table, bg, cells },
      };
      // Every name checked against the shaders now (and the bind groups made once, cached by the kernels).
      for (const stage of Object.keys(groups) as Stage[]) k[stage].bindGroup(groups[stage]);
      slots.push({ ...s, groups });
    }

    // Slot pool: two calls in flight; more wait in order.
    const free = [...slots];
    const waiting: ((s: Slot) => void)[] = [];
    const acquire = (): Slot | Promise<Slot> => free.shift() ?? new Promise<Slot>((r) => waiting.push(r));
    const release = (s: Slot) => {
      // After a failure between unmap and submit: map the upload buffer again.
      if (s.upload && !s.mapping && s.upload.mapState === "unmapped" && !disposed) remap(s);
      const w = waiting.shift();
      if (w) w(s);
      else free.push(s);
    };
    let disposed = false;
    const stats = { batches: 0, frames: 0, overflowFrames: 0 };

    function checkGeometry(batch: ModuleBatch) {
      if (disposed) throw new Error("webgpu backend: used after dispose()");
      checkBatch(batch);
      const b = batch.geometry;
      if (
        b.moduleSs !== g.moduleSs || b.moduleFs !== g.moduleFs || b.asicSs !== g.asicSs ||
        b.asicFs !== g.asicFs
      ) {
        throw new Error(`webgpu backend: made for ${g.type} modules, given ${b.type}`);
      }
    }

    /** Wait until a slot's upload staging buffer is mapped again (after its previous batch). */
    async function uploadReady(slot: Slot): Promise<void> {
      if (!slot.mapping) return;
      const ok = await slot.mapping;
      slot.mapping = undefined;
      if (!ok) throw new Error("webgpu backend: cannot map the upload buffer");
    }

    /**
     * Upload frames [f0, f0 + m) of a batch and their uniform into a slot (with a mapped upload buffer:
     * the copies are recorded in `enc`; call after uploadReady, and call remap after submitting).
     */
    function upload(slot: Slot, batch: ModuleBatch, f0: number, m: number, enc: GPUCommandEncoder) {
      const q = device.queue;
      const n = m * P;
      if (slot.upload) {
        // Only the ranges used (some implementations copy a mapped range in and out).
        new Float32Array(slot.upload.getMappedRange(0, 4 * n)).set(batch.data.subarray(f0 * P, f0 * P + n));
        if (batch.mask) {
          new Uint32Array(slot.upload.getMappedRange(F * frameBytes, 4 * n))
            .set(batch.mask.subarray(f0 * P, f0 * P + n));
        }
        slot.upload.unmap();
        enc.copyBufferToBuffer(slot.upload, 0, slot.data, 0, 4 * n);
        if (batch.mask) enc.copyBufferToBuffer(slot.upload, F * frameBytes, slot.mask, 0, 4 * n);
      } else {
        // (The casts: typed arrays over a SharedArrayBuffer are fine for writeBuffer too.)
        q.writeBuffer(slot.data, 0, batch.data as Float32Array<ArrayBuffer>, f0 * P, n);
        if (batch.mask) q.writeBuffer(slot.mask, 0, batch.mask as Uint32Array<ArrayBuffer>, f0 * P, n);
      }
      if (batch.hot) q.writeBuffer(slot.hot, 0, batch.hot as Uint8Array<ArrayBuffer>, 0, P);
      const cells = cellsOf(batch, p);
      if (cells.n > NC) throw new Error(`webgpu backend: ${cells.n} radius bins, room for ${NC}`);
      if (slot.cellsOf !== cells) {
        q.writeBuffer(slot.cells, 0, cells.cell as Uint32Array<ArrayBuffer>);
        if (cells.radial) q.writeBuffer(slot.cellList, 0, cellList(cells) as Uint32Array<ArrayBuffer>);
        slot.cellsOf = cells;
      }
      q.writeBuffer(
        slot.params,
        0,
        k.litpixels.packUniforms({
          pixels: P,
          moduleSs: g.moduleSs,
          moduleFs: g.moduleFs,
          asicSs: g.asicSs,
          asicFs: g.asicFs,
          asicCols: g.asicCols,
          nAsics: A,
          nFrames: m,
          hasMask: batch.mask ? 1 : 0,
          hasHot: batch.hot ? 1 : 0,
          neighbours: Math.max(0, Math.ceil(p.neighbours)),
          minArea: clampU32(Math.ceil(p.minArea)),
          maxArea: clampU32(Math.floor(p.maxArea)),
          capacity: C,
          stride: W,
          segments,
          threshold: p.threshold,
          strong: p.strong,
          bgIterations: Math.max(0, Math.floor(p.bgIterations)),
          tilesFs: g.moduleFs / T,
          minSnr: p.minSnr,
          bgClip: p.bgClip,
          cellsN: cells.n,
          radial: cells.radial ? 1 : 0,
        }),
      );
      return cells;
    }

    /** After submitting a slot's batch: map its upload buffer again for the next one. */
    function remap(slot: Slot) {
      if (slot.upload) slot.mapping = slot.upload.mapAsync(MapMode.WRITE).then(() => true, () => false);
    }

    async function runChunk(
      batch: ModuleBatch,
      f0: number,
      m: number,
      res: WebgpuBatchResult,
    ): Promise<void> {
      const got = acquire();
      const slot = got instanceof Promise ? await got : got;
      try {
        const countersBytes = m * W * 4;
        const tableBytes = m * C * ENTRY * 4;
        const px = Math.ceil(P / WG);
        const sx = Math.ceil(segments / WG);
        const G = slot.groups;
        let recorded = false;
        await uploadReady(slot);
        const lab = res.labels?.subarray(f0 * P, (f0 + m) * P);
        const nc = cellsOf(batch, p).n;
        const reading = readBuffers(device, "webgpu process", [
          { buffer: counters, size: countersBytes },
          { buffer: table, size: tableBytes },
          { buffer: bg, size: m * 16 * nc },
          ...(lab ? [{ buffer: labels, size: m * frameBytes, into: lab }] : []),
        ], (enc) => {
          const cells = upload(slot, batch, f0, m, enc);
          enc.clearBuffer(counters, 0, countersBytes);
          const pass = enc.beginComputePass();
          stage0(pass, slot, !cells.radial, nc, m);
          k.litpixels.dispatchInPass(pass, "litpixels", G.litpixels, [A, m]);
          k.filter.dispatchInPass(pass, "noisefilter", G.filter, [g.moduleFs / T, g.moduleSs / T, m]);
          k.components.dispatchInPass(pass, "merge", G.components, [px, m]);
          k.components.dispatchInPass(pass, "compress", G.components, [px, m]);
          k.peaks.dispatchInPass(pass, "areas", G.peaks, [sx, m]);
          k.peaks.dispatchInPass(pass, "allocate", G.peaks, [px, m]);
          k.peaks.dispatchInPass(pass, "bounds", G.peaks, [sx, m]);
          k.peaks.dispatchInPass(pass, "accumulate", G.peaks, [sx, m]);
          pass.end();
          recorded = true;
        });
        // readBuffers submits synchronously (inside its error scope) before it first waits: the upload
        // buffer, used by that submission, can be mapped again for the next batch now.
        if (recorded) remap(slot);
        const [cnt, tab, bgBytes] = await reading;
        const b = new Float32Array(bgBytes);
        for (let q = 0; q < m * nc; q++) {
          const o = f0 * nc + q;
          res.background.mu[o] = b[4 * q];
          res.background.sigma[o] = b[4 * q + 1];
          res.background.thr[o] = b[4 * q + 2];
        }
        parse(cnt, tab, batch, f0, m, res);
        if (lab) {
          for (let f = 0; f < m; f++) {
            const out = lab.subarray(f * P, (f + 1) * P);
            const base = f * P;
            for (let q = 0; q < P; q++) {
              const v = out[q];
              out[q] = v === NO_LABEL ? NO_LABEL : v - base;
            }
          }
        }
      } finally {
        release(slot);
      }
    }

    const keyView = new DataView(new ArrayBuffer(4));

    /** A chunk's results from its counters and peak table (as read back). */
    function parse(
      counterBytes: ArrayBuffer,
      tableBytes: ArrayBuffer,
      batch: ModuleBatch,
      f0: number,
      m: number,
      res: WebgpuBatchResult,
    ) {
      const cu32 = new Uint32Array(counterBytes);
      const cf32 = new Float32Array(counterBytes);
      const u32 = new Uint32Array(tableBytes);
      const f32 = new Float32Array(tableBytes);
      const minIntensity = Math.fround(p.minIntensity);
      for (let f = 0; f < m; f++) {
        const o = f * W;
        const r = (f0 + f) * A;
        for (let a = 0; a < A; a++) {
          res.litPixels[r + a] = cu32[o + a];
          res.litIntensity[r + a] = cf32[o + A + a];
          res.unmaskedPixels[r + a] = cu32[o + 2 * A + a];
          res.filteredLit[r + a] = cu32[o + 3 * A + a];
        }
        const count = cu32[o + 4 * A];
        if (count > C) {
          // The GPU table holds only C of this frame's peaks: recompute its peak list on the CPU.
          const cpu = framePeaksCpu(batch, f0 + f, p, res.background);
          res.nPeaks[f0 + f] = cpu.nPeaks;
          res.peaks[f0 + f] = cpu.peaks;
          res.overflowFrames.push(f0 + f);
          continue;
        }
        // The table holds every component in the area range; the intensity cut is made here, on the
        // complete table, so nPeaks stays exact.
        const items: { peak: Peak; first: number }[] = [];
        for (let s = 0; s < count; s++) {
          const t = (f * C + s) * ENTRY;
          const intensity = f32[t + 5];
          if (!(intensity >= minIntensity)) continue;
          const var2 = f32[t + 10];
          const snr = var2 > 0 ? Math.fround(intensity / Math.sqrt(var2)) : 0;
          if (p.minSnr > 0 && !(snr >= p.minPeakSnr)) continue;
          const box: Peak["box"] = [u32[t + 1], u32[t + 2], u32[t + 3], u32[t + 4]];
          items.push({
            peak: {
              box,
              area: u32[t],
              intensity,
              ss: Math.fround((box[0] + box[2] - 1) / 2 + f32[t + 6] / intensity),
              fs: Math.fround((box[1] + box[3] - 1) / 2 + f32[t + 7] / intensity),
              max: fromOrderedKey(u32[t + 8], keyView),
              snr,
            },
            first: u32[t + 9],
          });
        }
        res.nPeaks[f0 + f] = items.length;
        res.peaks[f0 + f] = sortAndCut(items, p.maxPeaks);
      }
    }

    async function accumulateChunk(
      batch: ModuleBatch,
      f0: number,
      m: number,
      counts: Uint32Array,
    ): Promise<void> {
      const got = acquire();
      const slot = got instanceof Promise ? await got : got;
      try {
        await uploadReady(slot);
        let recorded = false;
        const reading = readBuffers(device, "webgpu accumulateLitCounts", [
          { buffer: litCount, size: frameBytes },
        ], (enc) => {
          const cells = upload(slot, batch, f0, m, enc);
          const pass = enc.beginComputePass();
          stage0(pass, slot, !cells.radial, cells.n, m);
          const hot = k.hotcount;
          hot.dispatchInPass(
            pass,
            "hotcount",
            slot.groups.hotcount,
            Math.ceil(P / hot.workgroupSize("hotcount")[0]),
          );
          pass.end();
          recorded = true;
        });
        if (recorded) remap(slot); // (submitted: see runChunk)
        const n = new Uint32Array((await reading)[0]);
        for (let q = 0; q < P; q++) counts[q] += n[q];
      } finally {
        release(slot);
      }
    }

    /** Stage 0 of m frames into `bg`: tiles, or nc radius bins. */
    function stage0(pass: GPUComputePassEncoder, slot: Slot, tiles: boolean, nc: number, m: number) {
      const b = k.background;
      const G = slot.groups.background;
      if (tiles) {
        b.dispatchInPass(pass, "background", G, [Math.ceil(NT / b.workgroupSize("background")[0]), m]);
        b.dispatchInPass(pass, "bgthreshold", G, [Math.ceil(NT / b.workgroupSize("bgthreshold")[0]), m]);
      } else {
        b.dispatchInPass(pass, "radialbg", G, [nc, m]);
        b.dispatchInPass(pass, "radialthr", G, [Math.ceil(nc / b.workgroupSize("radialthr")[0]), m]);
      }
    }

    function chunks(n: number): [number, number][] {
      const out: [number, number][] = [];
      for (let f0 = 0; f0 < n; f0 += F) out.push([f0, Math.min(F, n - f0)]);
      return out;
    }

    const backend: WebgpuBackend = {
      name: "webgpu",
      adapter: gpu.adapterName,
      software: gpu.software,
      maxFrames: F,
      peakCapacity: C,
      upload: uploadMode,
      stats,
      async accumulateLitCounts(batch, counts) {
        checkGeometry(batch);
        if (counts.length !== P) throw new RangeError(`counts has ${counts.length} values, need ${P}`);
        await Promise.all(chunks(batch.nFrames).map(([f0, m]) => accumulateChunk(batch, f0, m, counts)));
      },
      async process(batch) {
        checkGeometry(batch);
        const res: WebgpuBatchResult = {
          ...emptyResult(g, batch.nFrames),
          background: newBackground(g, batch.nFrames, cellsOf(batch, p).n),
          overflowFrames: [],
        };
        if (options.debugLabels) res.labels = new Uint32Array(batch.nFrames * P);
        await Promise.all(chunks(batch.nFrames).map(([f0, m]) => runChunk(batch, f0, m, res)));
        res.overflowFrames.sort((a, b) => a - b);
        stats.batches++;
        stats.frames += batch.nFrames;
        stats.overflowFrames += res.overflowFrames.length;
        return res;
      },
      dispose() {
        if (disposed) return;
        disposed = true;
        for (const b of shared) b.destroy();
        for (const s of slots) {
          for (
            const b of [
              s.params,
              s.data,
              s.mask,
              s.hot,
              s.cells,
              s.cellList,
              s.upload,
            ]
          ) {
            b?.destroy();
          }
        }
      },
    };
    return backend;
  });
}

function clampU32(x: number): number {
  if (!(x > 0)) return 0;
  return Math.min(x, 0xffffffff);
}
