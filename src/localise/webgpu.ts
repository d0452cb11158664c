/**
 * The WebGPU backend of the localisation stages (spec: src/localise/stages.ts; one WGSL file per stage in
 * shaders/, each starting with its stage's spec; shaders/common.wgsl is put in front of each).
 *
 * Per batch of frames (at most `maxFrames` per GPU submission; larger batches are split): one upload
 * (data, mask if any, hot bytes if any, a 80-byte uniform; on Dawn, frames go through a persistent mapped
 * staging buffer per slot, then a GPU copy), one command encoder with every stage, one
 * readback of compact results: per frame the per-ASIC counters and the peak count, and a peak table of
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
 * Buffers and pipelines are created once per backend. Inputs (data, mask, hot, uniform) and the readback
 * buffer are double-buffered in two slots, so two calls can be in flight (a third waits for a slot); the
 * intermediate buffers are shared, which is safe because the queue runs submissions in order.
 */
import type { Geometry } from "../exdf/detectors.ts";
import {
  bindGroup,
  bindGroupLayout,
  type BindingKind,
  BufferUsage,
  compileShader,
  computePipelines,
  createBuffer,
  getGpuDevice,
  MapMode,
  shaderSource,
  ShaderStage,
  withErrorScope,
} from "../gpu/device.ts";
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
const WG = 256;
const PARAMS_BYTES = 96;
/** The binding of the stage-0 cells (shaders/common.wgsl `cells`) in the stages that read the background. */
const CELLS_BINDING = 15;
const CELLS_STAGES = new Set(["hotcount", "filter", "peaks"]);

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
  staging: GPUBuffer;
  labelsStaging?: GPUBuffer;
  /** Upload staging (MAP_WRITE): data at 0, mask at maxFrames * pixels * 4; absent with writeBuffer uploads. */
  upload?: GPUBuffer;
  /** The pending re-map of `upload` after its last use (false: it failed). */
  mapping?: Promise<boolean>;
  groups: {
    background: GPUBindGroup;
    litpixels: GPUBindGroup;
    hotcount: GPUBindGroup;
    filter: GPUBindGroup;
    components: GPUBindGroup;
    peaks: GPUBindGroup;
  };
}

const LAYOUTS = {
  background: ["uniform", "read-only-storage", "read-only-storage", "storage", "read-only-storage"],
  litpixels: ["uniform", "read-only-storage", "read-only-storage", "storage"],
  hotcount: ["uniform", "read-only-storage", "read-only-storage", "storage", "read-only-storage"],
  filter: [
    "uniform",
    "read-only-storage",
    "read-only-storage",
    "read-only-storage",
    "storage",
    "storage",
    "read-only-storage",
  ],
  components: ["uniform", "storage", "storage"],
  peaks: [
    "uniform",
    "read-only-storage",
    "read-only-storage",
    "storage",
    "storage",
    "storage",
    "read-only-storage",
  ],
} satisfies Record<string, BindingKind[]>;

const ENTRIES = {
  background: ["background", "bgthreshold", "radialbg", "radialthr"],
  litpixels: ["litpixels"],
  hotcount: ["hotcount"],
  filter: ["noisefilter"],
  components: ["merge", "compress"],
  peaks: ["areas", "allocate", "bounds", "accumulate"],
} as const;

type Stage = keyof typeof LAYOUTS;

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
    const pipelines = {} as { [S in Stage]: Record<(typeof ENTRIES)[S][number], GPUComputePipeline> };
    const layouts = {} as Record<Stage, GPUBindGroupLayout>;
    const common = shaderSource("common.wgsl");
    for (const stage of Object.keys(LAYOUTS) as Stage[]) {
      const module = await compileShader(
        device,
        common + "\n" + shaderSource(`${stage}.wgsl`),
        `${stage}.wgsl`,
      );
      layouts[stage] = CELLS_STAGES.has(stage)
        ? device.createBindGroupLayout({
          label: stage,
          entries: [...LAYOUTS[stage], "read-only-storage" as const].map((type, k) => ({
            binding: k < LAYOUTS[stage].length ? k : CELLS_BINDING,
            visibility: ShaderStage.COMPUTE,
            buffer: { type },
          })),
        })
        : bindGroupLayout(device, LAYOUTS[stage], stage);
      (pipelines as any)[stage] = await computePipelines(
        device,
        module,
        layouts[stage],
        ENTRIES[stage],
        stage,
      );
    }

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
    const resultBytes = F * W * 4 + F * C * ENTRY * 4 + F * bgBytes;
    const shared = [labels, area, counters, table, litCount, bg];

    const slots: Slot[] = [];
    for (let k = 0; k < 2; k++) {
      const s = {
        params: createBuffer(device, PARAMS_BYTES, BufferUsage.UNIFORM | BufferUsage.COPY_DST, `params ${k}`),
        data: createBuffer(device, F * frameBytes, S | BufferUsage.COPY_DST, `data ${k}`),
        mask: createBuffer(device, F * frameBytes, S | BufferUsage.COPY_DST, `mask ${k}`),
        hot: createBuffer(device, P, S | BufferUsage.COPY_DST, `hot ${k}`),
        cells: createBuffer(device, 4 * P, S | BufferUsage.COPY_DST, `cells ${k}`),
        cellList: createBuffer(device, 4 * (NC + 1 + P), S | BufferUsage.COPY_DST, `cell list ${k}`),
        staging: createBuffer(
          device,
          Math.max(resultBytes, frameBytes),
          BufferUsage.MAP_READ | BufferUsage.COPY_DST,
          `staging ${k}`,
        ),
        labelsStaging: options.debugLabels
          ? createBuffer(
            device,
            F * frameBytes,
            BufferUsage.MAP_READ | BufferUsage.COPY_DST,
            `labels staging ${k}`,
          )
          : undefined,
        upload: uploadMode === "writeBuffer" ? undefined : device.createBuffer({
          size: 2 * F * frameBytes,
          usage: BufferUsage.MAP_WRITE | BufferUsage.COPY_SRC,
          mappedAtCreation: true,
          label: `upload ${k}`,
        }),
      };
      // The stages reading the background per pixel also get the cells at binding CELLS_BINDING.
      const withCells = (layout: GPUBindGroupLayout, buffers: GPUBuffer[]) =>
        device.createBindGroup({
          layout,
          entries: [...buffers, s.cells].map((buffer, k) => ({
            binding: k < buffers.length ? k : CELLS_BINDING,
            resource: { buffer },
          })),
        });
      slots.push({
        ...s,
        groups: {
          background: bindGroup(device, layouts.background, [s.params, s.data, s.mask, bg, s.cellList]),
          litpixels: bindGroup(device, layouts.litpixels, [s.params, s.data, s.mask, counters]),
          hotcount: withCells(layouts.hotcount, [s.params, s.data, s.mask, litCount, bg]),
          filter: withCells(layouts.filter, [s.params, s.data, s.mask, s.hot, labels, counters, bg]),
          components: bindGroup(device, layouts.components, [s.params, labels, area]),
          peaks: withCells(layouts.peaks, [s.params, s.data, labels, area, counters, table, bg]),
        },
      });
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
      const u = new ArrayBuffer(PARAMS_BYTES);
      const u32 = new Uint32Array(u);
      const f32 = new Float32Array(u);
      u32.set([
        P,
        g.moduleSs,
        g.moduleFs,
        g.asicSs,
        g.asicFs,
        g.asicCols,
        A,
        m,
        batch.mask ? 1 : 0,
        batch.hot ? 1 : 0,
        Math.max(0, Math.ceil(p.neighbours)),
        clampU32(Math.ceil(p.minArea)),
        clampU32(Math.floor(p.maxArea)),
        C,
        W,
        segments,
      ]);
      f32[16] = p.threshold;
      f32[17] = p.strong;
      u32[18] = Math.max(0, Math.floor(p.bgIterations));
      u32[19] = g.moduleFs / TILE;
      f32[20] = p.minSnr;
      f32[21] = p.bgClip;
      u32[22] = cells.n;
      u32[23] = cells.radial ? 1 : 0;
      q.writeBuffer(slot.params, 0, u);
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
        let nc = NT, radial = false;
        await uploadReady(slot);
        await withErrorScope(device, "webgpu process", () => {
          const enc = device.createCommandEncoder();
          const cells = upload(slot, batch, f0, m, enc);
          nc = cells.n;
          radial = cells.radial;
          enc.clearBuffer(counters, 0, countersBytes);
          const pass = enc.beginComputePass();
          const run = (pl: GPUComputePipeline, bg: GPUBindGroup, x: number, y: number, z = 1) => {
            pass.setPipeline(pl);
            pass.setBindGroup(0, bg);
            pass.dispatchWorkgroups(x, y, z);
          };
          const px = Math.ceil(P / WG);
          const sx = Math.ceil(segments / WG);
          stage0(pass, slot, !radial, nc, m);
          run(pipelines.litpixels.litpixels, slot.groups.litpixels, A, m);
          run(pipelines.filter.noisefilter, slot.groups.filter, g.moduleFs / TILE, g.moduleSs / TILE, m);
          run(pipelines.components.merge, slot.groups.components, px, m);
          run(pipelines.components.compress, slot.groups.components, px, m);
          run(pipelines.peaks.areas, slot.groups.peaks, sx, m);
          run(pipelines.peaks.allocate, slot.groups.peaks, px, m);
          run(pipelines.peaks.bounds, slot.groups.peaks, sx, m);
          run(pipelines.peaks.accumulate, slot.groups.peaks, sx, m);
          pass.end();
          enc.copyBufferToBuffer(counters, 0, slot.staging, 0, countersBytes);
          enc.copyBufferToBuffer(table, 0, slot.staging, countersBytes, tableBytes);
          enc.copyBufferToBuffer(bg, 0, slot.staging, countersBytes + tableBytes, m * 16 * nc);
          if (slot.labelsStaging) enc.copyBufferToBuffer(labels, 0, slot.labelsStaging, 0, m * frameBytes);
          device.queue.submit([enc.finish()]);
          remap(slot);
        });

        const bgRead = m * 16 * nc;
        await slot.staging.mapAsync(MapMode.READ, 0, countersBytes + tableBytes + bgRead);
        try {
          const buf = slot.staging.getMappedRange(0, countersBytes + tableBytes + bgRead);
          const b = new Float32Array(buf, countersBytes + tableBytes, bgRead / 4);
          for (let k = 0; k < m * nc; k++) {
            const o = f0 * nc + k;
            res.background.mu[o] = b[4 * k];
            res.background.sigma[o] = b[4 * k + 1];
            res.background.thr[o] = b[4 * k + 2];
          }
          parse(new Uint32Array(buf), new Float32Array(buf), batch, f0, m, res);
        } finally {
          slot.staging.unmap();
        }
        if (slot.labelsStaging && res.labels) {
          await slot.labelsStaging.mapAsync(MapMode.READ, 0, m * frameBytes);
          try {
            const l = new Uint32Array(slot.labelsStaging.getMappedRange(0, m * frameBytes));
            for (let f = 0; f < m; f++) {
              const out = res.labels.subarray((f0 + f) * P, (f0 + f + 1) * P);
              const base = f * P;
              for (let q = 0; q < P; q++) {
                const v = l[base + q];
                out[q] = v === NO_LABEL ? NO_LABEL : v - base;
              }
            }
          } finally {
            slot.labelsStaging.unmap();
          }
        }
      } finally {
        release(slot);
      }
    }

    const keyView = new DataView(new ArrayBuffer(4));

    function parse(
      u32: Uint32Array,
      f32: Float32Array,
      batch: ModuleBatch,
      f0: number,
      m: number,
      res: WebgpuBatchResult,
    ) {
      const tableBase = m * W;
      const minIntensity = Math.fround(p.minIntensity);
      for (let f = 0; f < m; f++) {
        const o = f * W;
        const r = (f0 + f) * A;
        for (let a = 0; a < A; a++) {
          res.litPixels[r + a] = u32[o + a];
          res.litIntensity[r + a] = f32[o + A + a];
          res.unmaskedPixels[r + a] = u32[o + 2 * A + a];
          res.filteredLit[r + a] = u32[o + 3 * A + a];
        }
        const count = u32[o + 4 * A];
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
          const t = tableBase + (f * C + s) * ENTRY;
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
        await withErrorScope(device, "webgpu accumulateLitCounts", () => {
          const enc = device.createCommandEncoder();
          const cells = upload(slot, batch, f0, m, enc);
          const pass = enc.beginComputePass();
          stage0(pass, slot, !cells.radial, cells.n, m);
          pass.setPipeline(pipelines.hotcount.hotcount);
          pass.setBindGroup(0, slot.groups.hotcount);
          pass.dispatchWorkgroups(Math.ceil(P / WG));
          pass.end();
          enc.copyBufferToBuffer(litCount, 0, slot.staging, 0, frameBytes);
          device.queue.submit([enc.finish()]);
          remap(slot);
        });
        await slot.staging.mapAsync(MapMode.READ, 0, frameBytes);
        try {
          const n = new Uint32Array(slot.staging.getMappedRange(0, frameBytes));
          for (let q = 0; q < P; q++) counts[q] += n[q];
        } finally {
          slot.staging.unmap();
        }
      } finally {
        release(slot);
      }
    }

    /** Stage 0 of m frames into `bg`: tiles, or nc radius bins. */
    function stage0(pass: GPUComputePassEncoder, slot: Slot, tiles: boolean, nc: number, m: number) {
      pass.setBindGroup(0, slot.groups.background);
      if (tiles) {
        pass.setPipeline(pipelines.background.background);
        pass.dispatchWorkgroups(Math.ceil(NT / 64), m);
        pass.setPipeline(pipelines.background.bgthreshold);
        pass.dispatchWorkgroups(Math.ceil(NT / 64), m);
      } else {
        pass.setPipeline(pipelines.background.radialbg);
        pass.dispatchWorkgroups(nc, m);
        pass.setPipeline(pipelines.background.radialthr);
        pass.dispatchWorkgroups(Math.ceil(nc / 64), m);
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
        if (slots[0].labelsStaging) res.labels = new Uint32Array(batch.nFrames * P);
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
              s.staging,
              s.labelsStaging,
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
