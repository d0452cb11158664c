/**
 * The WebGPU backend of the localisation stages (spec: src/localise/stages.ts; one WGSL file per stage in
 * shaders/, each starting with its stage's spec; shaders/common.wgsl is put in front of each). Each stage
 * is a `Kernel` (src/gpu/kernel.ts): bindings by the shaders' names, common.wgsl's Params struct declared
 * once (PARAMS) and checked against the WGSL, workgroup sizes and the tile side read from the shaders.
 *
 * A call takes several modules' batches of the same frames (`processModules`, `accumulateModules`;
 * `process` and `accumulateLitCounts` are calls of one module). Each submission holds the frames of a group
 * of modules, module after module: module-frame j = module * m + f (m frames per module), and every stage is
 * dispatched once over all J = modules x m module frames ("frames" below); the shaders index per-module
 * inputs (hot bytes, stage-0 cells, radius-bin lists and counts) by the module of j (common.wgsl moduleOf).
 * Per submission: one upload (data, mask if any module has one, hot bytes if any, stage-0 cells when they
 * changed, a 96-byte uniform; on Dawn, frames go through persistent mapped staging buffers per slot, then
 * GPU copies), one command encoder with every stage in one compute pass, one readback (readBuffers) of
 * compact results: per module frame the per-ASIC counters and the peak count, and a peak table of
 * `peakCapacity` entries per module frame (default max(1024, 4 * maxPeaks)). The host only sorts each
 * frame's table and keeps the brightest maxPeaks. A call larger than the storage-binding cap is split
 * (planParts): into the largest even groups of modules with all their frames, or, when one module's frames
 * do not fit, into chunks of one module's frames; modules with radius bins and with tiles apart.
 *
 *   background (tiles/64, frames)                 stage 0: mu, sigma per 16 x 16 tile
 *   bgthreshold (tiles/64, frames)                stage 0: thr (the neighbourhood's median sigma)
 *   or, with radius bins (bgBinWidth > 0 and a batch radius; the bins' pixel lists uploaded per module):
 *   radialbg   (maxBins, frames) workgroups       stage 0: mu, sigma per bin (segmented reduction)
 *   radialthr  (maxBins/64, frames)               stage 0: thr (median sigma of the bin and its neighbours)
 *   litpixels  (nAsics, frames) workgroups        stage 1 counters
 *   filter     (fs/16, ss/16, frames)             stage 3: survivors -> labels[i] = i | NONE, filteredLit
 *   merge      (pixels/256, frames)               stage 4 union-find
 *   compress   (pixels/256, frames)               labels -> roots, area[] = 0
 *   areas      (pixels/16/256, frames)            area[root]
 *   allocate   (pixels/256, frames)               peak count per frame (exact), table slots
 *   bounds     (pixels/16/256, frames)            table entries: area, box
 *   accumulate (pixels/16/256, frames)            table entries: sums (about the box centre), max
 *   hotcount   (pixels/256, modules)              the pre-pass (after stage 0): candidate counts per module
 *
 * Overflow: a frame with more peaks than `peakCapacity` has only `peakCapacity` of them (whichever won
 * the allocation race) in the GPU table. Its nPeaks is still exact (counted on the GPU), and the backend
 * recomputes that frame's peak list with the CPU reference (stages 3-4 of that frame only, from its data and
 * mask read back from the slot), so the result is the same as without overflow; `stats.overflowFrames`
 * counts these frames.
 *
 * Kernels are created once per backend; buffers grow to the largest submission asked for (up to the cap).
 * Inputs (data, mask, hot, cells, uniform) are double-buffered in two slots (readbacks use readBuffers'
 * pooled staging buffers), so two submissions can be in flight (a third waits for a slot); the intermediate
 * buffers are shared, which is safe because the queue runs submissions in order (replaced ones are destroyed
 * after the work submitted before). `processModules` gives `uploaded` as soon as every submission of the
 * call has taken its inputs (the caller may then reuse its arrays: localise returns from processBatch then,
 * so the next batch is read and uploaded while this one computes) and `results` when they are read back.
 */
import type { Geometry } from "../exdf/detectors.ts";
import { getGpuDevice } from "../gpu/device.ts";
import {
  type Buffers,
  BufferUsage,
  createBuffer,
  type Groups,
  Kernel,
  MapMode,
  readBuffers,
  withErrorScope,
} from "../gpu/kernel.ts";
import { shaderSource } from "../gpu/shaders.ts";
import { cellList, type Cells, cellsOf, newBackground, TILE, tilesOf } from "./background.ts";
import type { Background } from "./spec.ts";
import { type BatchResult, type LocaliseBackend, type LocaliseParams, type ModuleBatch } from "./spec.ts";
import { emptyResult, framePeaksCpu, NO_LABEL } from "./stages.ts";
import { checkBatch } from "./spec.ts";
import {
  clampU32,
  counterStride,
  defaultPeakCapacity,
  ENTRY,
  framesPerBatch,
  PARAMS,
  PARAMS_BYTES,
  parseResults,
  type Part,
  planParts,
  SEG,
} from "./webgpu-host.ts";

export { defaultPeakCapacity, framesPerBatch, planParts };

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
  /**
   * The largest storage binding to use, in bytes (default: the device's limit; 128 MiB on software
   * adapters). Submissions are sized to fit it; tests set a small one to split batches (also
   * $XFEL_REDU_GPU_MAX_BINDING, bytes).
   */
  maxBindingBytes?: number;
}

/** A call on several modules: `uploaded` when their arrays are no longer read, `results` in call order. */
export interface ModulesRun {
  uploaded: Promise<void>;
  results: Promise<WebgpuBatchResult[]>;
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
  /** Module-frames (modules x frames) per GPU submission at most (the binding cap). */
  readonly maxFrames: number;
  readonly peakCapacity: number;
  readonly upload: "mapped" | "writeBuffer";
  /**
   * Module batches and frames done, overflowing frames; GPU submissions and compute dispatches made
   * (pre-pass included).
   */
  readonly stats: {
    batches: number;
    frames: number;
    overflowFrames: number;
    submissions: number;
    dispatches: number;
  };
  process(batch: ModuleBatch): Promise<WebgpuBatchResult>;
  processModules(batches: ModuleBatch[]): ModulesRun;
  accumulateModules(batches: ModuleBatch[], counts: Uint32Array[]): Promise<void>;
}

interface Slot {
  params: GPUBuffer;
  /** Module-frames and modules its buffers hold. */
  capJ: number;
  capM: number;
  data: GPUBuffer;
  mask: GPUBuffer;
  /** Hot bytes per module (modules x pixels bytes). */
  hot: GPUBuffer;
  /** Per module: stage-0 cells of the pixels (u32 each), a cell-list segment, and its cell count. */
  cells: GPUBuffer;
  cellList: GPUBuffer;
  cellCounts: GPUBuffer;
  /** Per module position: the Cells last written to `cells` / `cellList` there. */
  cellsOf: (Cells | undefined)[];
  /** Upload staging (MAP_WRITE) of data and mask; absent with writeBuffer uploads. */
  upload?: GPUBuffer;
  uploadMask?: GPUBuffer;
  /** The pending re-map of the staging buffers after their last use (false: it failed). */
  mapping?: Promise<boolean>;
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

type StageKernels = { [S in Stage]: Kernel<(typeof ENTRIES)[S][number], typeof PARAMS> };

/**
 * The WebGPU backend for one geometry, or undefined when there is no WebGPU adapter. Throws when the
 * device cannot build the pipelines or buffers. `initialFrames`: module-frames the buffers are made for
 * at first (they grow, up to the binding cap, to the largest submission asked for).
 */
export async function createWebgpuBackend(
  params: LocaliseParams,
  geometry: Geometry,
  initialFrames: number,
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
  const binding = Math.min(
    device.limits.maxStorageBufferBindingSize,
    device.limits.maxBufferSize,
    options.maxBindingBytes ?? (Number(process.env.XFEL_REDU_GPU_MAX_BINDING) || Infinity),
  );
  const limits = {
    maxStorageBufferBindingSize: binding,
    maxBufferSize: binding,
    maxComputeWorkgroupsPerDimension: device.limits.maxComputeWorkgroupsPerDimension,
  };
  const fit = framesPerBatch(g, limits, C);
  if (fit < 1) throw new Error(`webgpu backend: one ${g.type} frame does not fit the device's buffer limits`);
  const segments = P / SEG;
  const NT = tilesOf(g);
  // Stage-0 cells: tiles, or radius bins of at most NC of them (bins of bgBinWidth over a module's
  // range of radii, bounded by twice its side sum).
  const NC = p.bgBinWidth > 0
    ? Math.max(NT, Math.ceil((2 * (g.moduleSs + g.moduleFs)) / p.bgBinWidth) + 2)
    : NT;
  /** Words of a module's cell-list segment (the radial stride is NC). */
  const L = NC + 1 + P;
  // Modules per submission: the per-module bindings (cell lists) fit the cap too.
  const perModules = Math.max(1, Math.min(fit, Math.floor(binding / (4 * L))));
  const uploadMode = options.upload ?? (gpu.implementation === "deno" ? "writeBuffer" : "mapped");
  const frameBytes = 4 * P;

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
    /** Buffers shared by the slots (the queue runs submissions in order), for capJ module-frames, capM modules. */
    const shared = {
      capJ: 0,
      capM: 0,
      labels: undefined as unknown as GPUBuffer,
      area: undefined as unknown as GPUBuffer,
      counters: undefined as unknown as GPUBuffer,
      table: undefined as unknown as GPUBuffer,
      bg: undefined as unknown as GPUBuffer,
      litCount: undefined as unknown as GPUBuffer,
    };
    /** Destroy buffers after the work submitted so far (another slot's may still use them). */
    const retire = (bs: (GPUBuffer | undefined)[]) => {
      const list = bs.filter((b): b is GPUBuffer => !!b);
      if (list.length) {
        device.queue.onSubmittedWorkDone().then(() => list.forEach((b) => b.destroy()), () => undefined);
      }
    };
    function growShared(J: number, M: number) {
      if (J > shared.capJ) {
        const j = Math.min(fit, Math.max(J, 2 * shared.capJ));
        retire([shared.labels, shared.area, shared.counters, shared.table, shared.bg]);
        shared.labels = createBuffer(device, j * frameBytes, S | BufferUsage.COPY_SRC, "labels");
        shared.area = createBuffer(device, j * frameBytes, S, "area");
        shared.counters = createBuffer(
          device,
          j * W * 4,
          S | BufferUsage.COPY_SRC | BufferUsage.COPY_DST,
          "counters",
        );
        shared.table = createBuffer(device, j * C * ENTRY * 4, S | BufferUsage.COPY_SRC, "peak table");
        shared.bg = createBuffer(device, j * 16 * NC, S | BufferUsage.COPY_SRC, "background");
        shared.capJ = j;
      }
      if (M > shared.capM) {
        retire([shared.litCount]);
        shared.litCount = createBuffer(device, M * frameBytes, S | BufferUsage.COPY_SRC, "lit counts");
        shared.capM = M;
      }
    }

    const slots: Slot[] = [];
    for (let i = 0; i < 2; i++) {
      slots.push({
        params: createBuffer(device, PARAMS_BYTES, BufferUsage.UNIFORM | BufferUsage.COPY_DST, `params ${i}`),
        capJ: 0,
        capM: 0,
        data: undefined as unknown as GPUBuffer,
        mask: undefined as unknown as GPUBuffer,
        hot: undefined as unknown as GPUBuffer,
        cells: undefined as unknown as GPUBuffer,
        cellList: undefined as unknown as GPUBuffer,
        cellCounts: undefined as unknown as GPUBuffer,
        cellsOf: [],
      });
    }
    /** A slot's buffers for J module-frames of M modules (its previous submission is complete). */
    function growSlot(s: Slot, J: number, M: number) {
      if (J > s.capJ) {
        const j = Math.min(fit, Math.max(J, 2 * s.capJ));
        for (const b of [s.data, s.mask, s.upload, s.uploadMask]) b?.destroy();
        s.mapping = undefined;
        s.data = createBuffer(
          device,
          j * frameBytes,
          S | BufferUsage.COPY_DST | BufferUsage.COPY_SRC,
          "data",
        );
        s.mask = createBuffer(
          device,
          j * frameBytes,
          S | BufferUsage.COPY_DST | BufferUsage.COPY_SRC,
          "mask",
        );
        if (uploadMode === "mapped") {
          const staging = (label: string) =>
            device.createBuffer({
              size: j * frameBytes,
              usage: BufferUsage.MAP_WRITE | BufferUsage.COPY_SRC,
              mappedAtCreation: true,
              label,
            });
          s.upload = staging("upload data");
          s.uploadMask = staging("upload mask");
        }
        s.capJ = j;
      }
      if (M > s.capM) {
        const m = Math.min(perModules, Math.max(M, 2 * s.capM));
        for (const b of [s.hot, s.cells, s.cellList, s.cellCounts]) b?.destroy();
        s.hot = createBuffer(device, m * P, S | BufferUsage.COPY_DST, "hot");
        s.cells = createBuffer(device, m * 4 * P, S | BufferUsage.COPY_DST, "cells");
        s.cellList = createBuffer(device, m * 4 * L, S | BufferUsage.COPY_DST, "cell list");
        s.cellCounts = createBuffer(device, m * 4, S | BufferUsage.COPY_DST, "cell counts");
        s.cellsOf = [];
        s.capM = m;
      }
    }
    growShared(Math.max(1, Math.min(fit, Math.floor(initialFrames) || 1)), 1);

    /** Each stage's buffers by binding name (the shaders' names; `cells` is common.wgsl's). */
    function groups(s: Slot): Record<Stage, Buffers> {
      const { params, data, mask, cells, cellList, cellCounts } = s;
      const { labels, area, counters, table, bg, litCount } = shared;
      return {
        background: { params, data, mask, bg, cells, cellList, cellCounts },
        litpixels: { params, data, mask, counters, cells },
        hotcount: { params, data, mask, litCount, bg, cells },
        filter: { params, data, mask, hotBytes: s.hot, labels, counters, bg, cells },
        components: { params, labels, area, cells },
        peaks: { params, data, labels, area, counters, table, bg, cells },
      };
    }

    // Slot pool: two submissions in flight; more wait in order.
    const free = [...slots];
    const waiting: ((s: Slot) => void)[] = [];
    const acquire = (): Slot | Promise<Slot> => free.shift() ?? new Promise<Slot>((r) => waiting.push(r));
    const release = (s: Slot) => {
      // After a failure between unmap and submit: map the upload buffers again.
      if (s.upload && !s.mapping && s.upload.mapState === "unmapped" && !disposed) remap(s);
      const w = waiting.shift();
      if (w) w(s);
      else free.push(s);
    };
    let disposed = false;
    const stats = { batches: 0, frames: 0, overflowFrames: 0, submissions: 0, dispatches: 0 };

    function checkGeometry(batches: readonly ModuleBatch[]) {
      if (disposed) throw new Error("webgpu backend: used after dispose()");
      for (const batch of batches) {
        checkBatch(batch);
        const b = batch.geometry;
        if (
          b.moduleSs !== g.moduleSs || b.moduleFs !== g.moduleFs || b.asicSs !== g.asicSs ||
          b.asicFs !== g.asicFs
        ) {
          throw new Error(`webgpu backend: made for ${g.type} modules, given ${b.type}`);
        }
        if (batch.nFrames !== batches[0].nFrames) {
          throw new RangeError(
            `webgpu backend: modules of one call have ${batches[0].nFrames} and ${batch.nFrames} frames`,
          );
        }
      }
    }

    /** Wait until a slot's upload staging buffers are mapped again (after its previous submission). */
    async function uploadReady(slot: Slot): Promise<void> {
      if (!slot.mapping) return;
      const ok = await slot.mapping;
      slot.mapping = undefined;
      if (!ok) throw new Error("webgpu backend: cannot map the upload buffer");
    }

    /**
     * Upload a part's frames (module after module: module-frame j = g * m + f) and per-module inputs
     * into a slot, and its uniform (with mapped staging buffers: the copies are recorded in `enc`; call
     * after uploadReady, and call remap after submitting). Gives the bg stride (cells per module-frame).
     */
    function upload(slot: Slot, part: Part, enc: GPUCommandEncoder): { radial: boolean; stride: number } {
      const q = device.queue;
      const { mods, f0, m } = part;
      const n = m * P;
      const hasMask = mods.some((b) => b.mask);
      const hasHot = mods.some((b) => b.hot);
      const bytes = 4 * n * mods.length;
      if (slot.upload && slot.uploadMask) {
        // Only the ranges used (some implementations copy a mapped range in and out).
        const d = new Float32Array(slot.upload.getMappedRange(0, bytes));
        mods.forEach((b, i) => d.set(b.data.subarray(f0 * P, f0 * P + n), i * n));
        slot.upload.unmap();
        enc.copyBufferToBuffer(slot.upload, 0, slot.data, 0, bytes);
        if (hasMask) {
          const k = new Uint32Array(slot.uploadMask.getMappedRange(0, bytes));
          mods.forEach((b, i) => {
            if (b.mask) k.set(b.mask.subarray(f0 * P, f0 * P + n), i * n);
            else k.fill(0, i * n, (i + 1) * n);
          });
          enc.copyBufferToBuffer(slot.uploadMask, 0, slot.mask, 0, bytes);
        }
        slot.uploadMask.unmap();
      } else {
        // (The casts: typed arrays over a SharedArrayBuffer are fine for writeBuffer too.)
        mods.forEach((b, i) => {
          q.writeBuffer(slot.data, 4 * i * n, b.data as Float32Array<ArrayBuffer>, f0 * P, n);
          if (b.mask) q.writeBuffer(slot.mask, 4 * i * n, b.mask as Uint32Array<ArrayBuffer>, f0 * P, n);
          else if (hasMask) enc.clearBuffer(slot.mask, 4 * i * n, 4 * n);
        });
      }
      mods.forEach((b, i) => {
        if (b.hot) q.writeBuffer(slot.hot, i * P, b.hot as Uint8Array<ArrayBuffer>, 0, P);
        else if (hasHot) enc.clearBuffer(slot.hot, i * P, P);
      });
      const cells = mods.map((b) => cellsOf(b, p));
      const radial = cells[0].radial;
      const counts = new Uint32Array(mods.length);
      cells.forEach((c, i) => {
        if (c.n > NC) throw new Error(`webgpu backend: ${c.n} radius bins, room for ${NC}`);
        if (c.radial !== radial) throw new Error("webgpu backend: tiles and radius bins in one submission");
        counts[i] = c.n;
        if (slot.cellsOf[i] === c) return;
        q.writeBuffer(slot.cells, 4 * i * P, c.cell as Uint32Array<ArrayBuffer>);
        if (c.radial) q.writeBuffer(slot.cellList, 4 * i * L, cellList(c) as Uint32Array<ArrayBuffer>);
        slot.cellsOf[i] = c;
      });
      q.writeBuffer(slot.cellCounts, 0, counts);
      const stride = radial ? NC : NT;
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
          hasMask: hasMask ? 1 : 0,
          hasHot: hasHot ? 1 : 0,
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
          cellsN: stride,
          radial: radial ? 1 : 0,
        }),
      );
      return { radial, stride };
    }

    /** After submitting a slot's part: map its upload buffers again for the next one. */
    function remap(slot: Slot) {
      if (slot.upload && slot.uploadMask) {
        const maps = [slot.upload, slot.uploadMask].map((b) => b.mapAsync(MapMode.WRITE));
        slot.mapping = Promise.all(maps).then(() => true, () => false);
      }
    }

    /** A slot with buffers for a part, its staging buffers mapped. */
    async function slotFor(J: number, M: number): Promise<Slot> {
      const got = acquire();
      const slot = got instanceof Promise ? await got : got;
      try {
        await uploadReady(slot);
        growSlot(slot, J, M);
        growShared(J, M);
        return slot;
      } catch (e) {
        release(slot);
        throw e;
      }
    }

    /** Dispatch counted (stats.dispatches): every dispatch of this backend goes through here. */
    function dispatch<S extends Stage>(
      pass: GPUComputePassEncoder,
      stage: S,
      entry: (typeof ENTRIES)[S][number],
      G: Record<Stage, Buffers>,
      n: Groups,
    ) {
      (k[stage] as Kernel<string, typeof PARAMS>).dispatchInPass(pass, entry, G[stage], n);
      stats.dispatches++;
    }

    async function runPart(part: Part, res: WebgpuBatchResult[], uploaded: () => void): Promise<void> {
      const { mods, f0, m } = part;
      const M = mods.length;
      const J = M * m;
      const slot = await slotFor(J, M);
      try {
        const countersBytes = J * W * 4;
        const tableBytes = J * C * ENTRY * 4;
        const px = Math.ceil(P / WG);
        const sx = Math.ceil(segments / WG);
        const G = groups(slot);
        let recorded = false;
        const radial = cellsOf(mods[0], p).radial;
        const stride = radial ? NC : NT;
        const labs = part.index.map((i) => res[i].labels?.subarray(f0 * P, (f0 + m) * P));
        const debug = labs.some((l) => l);
        const reading = readBuffers(device, "webgpu process", [
          { buffer: shared.counters, size: countersBytes },
          { buffer: shared.table, size: tableBytes },
          { buffer: shared.bg, size: J * 16 * stride },
          ...(debug ? [{ buffer: shared.labels, size: J * frameBytes }] : []),
        ], (enc) => {
          upload(slot, part, enc);
          enc.clearBuffer(shared.counters, 0, countersBytes);
          const pass = enc.beginComputePass();
          stage0(pass, G, radial, J);
          dispatch(pass, "litpixels", "litpixels", G, [A, J]);
          dispatch(pass, "filter", "noisefilter", G, [g.moduleFs / T, g.moduleSs / T, J]);
          dispatch(pass, "components", "merge", G, [px, J]);
          dispatch(pass, "components", "compress", G, [px, J]);
          dispatch(pass, "peaks", "areas", G, [sx, J]);
          dispatch(pass, "peaks", "allocate", G, [px, J]);
          dispatch(pass, "peaks", "bounds", G, [sx, J]);
          dispatch(pass, "peaks", "accumulate", G, [sx, J]);
          pass.end();
          recorded = true;
          stats.submissions++;
        });
        // readBuffers submits synchronously (inside its error scope) before it first waits: the inputs
        // are in GPU buffers (or queued writes) and the staging buffers can be mapped again now.
        if (recorded) {
          remap(slot);
          uploaded();
        }
        const [cnt, tab, bgBytes, labBytes] = await reading;
        const b = new Float32Array(bgBytes);
        const overflow: { i: number; f: number; j: number }[] = [];
        part.index.forEach((i, gi) => {
          const r = res[i];
          const nc = cellsOf(mods[gi], p).n;
          for (let f = 0; f < m; f++) {
            const src = (gi * m + f) * stride;
            const dst = (f0 + f) * nc;
            for (let c = 0; c < nc; c++) {
              r.background.mu[dst + c] = b[4 * (src + c)];
              r.background.sigma[dst + c] = b[4 * (src + c) + 1];
              r.background.thr[dst + c] = b[4 * (src + c) + 2];
            }
          }
          const over = parseResults(cnt, tab, gi * m, f0, m, r, { A, W, C }, p);
          for (const f of over) overflow.push({ i, f, j: gi * m + f - f0 });
          const lab = labs[gi];
          if (lab && labBytes) {
            const all = new Uint32Array(labBytes, gi * m * frameBytes, m * P);
            for (let f = 0; f < m; f++) {
              const base = (gi * m + f) * P;
              for (let q = f * P; q < (f + 1) * P; q++) {
                const v = all[q];
                lab[q] = v === NO_LABEL ? NO_LABEL : v - base;
              }
            }
          }
        });
        if (overflow.length) await recomputeOverflow(slot, part, overflow, res);
      } finally {
        release(slot);
      }
    }

    /**
     * The frames whose peaks overflowed the GPU table: their peak lists by the CPU reference, from the
     * frames as uploaded (read back from the slot: the caller's arrays may be reused once uploaded).
     */
    async function recomputeOverflow(
      slot: Slot,
      part: Part,
      frames: { i: number; f: number; j: number }[],
      res: WebgpuBatchResult[],
    ) {
      const hasMask = part.mods.some((b) => b.mask);
      const ranges = frames.flatMap(({ j }) => [
        { buffer: slot.data, offset: j * frameBytes, size: frameBytes },
        ...(hasMask ? [{ buffer: slot.mask, offset: j * frameBytes, size: frameBytes }] : []),
      ]);
      const got = await readBuffers(device, "webgpu overflow frames", ranges);
      frames.forEach(({ i, f }, k) => {
        const src = part.mods[part.index.indexOf(i)];
        const r = res[i];
        const nc = cellsOf(src, p).n;
        const one: ModuleBatch = {
          geometry: src.geometry,
          nFrames: 1,
          data: new Float32Array(got[hasMask ? 2 * k : k]),
          mask: hasMask ? new Uint32Array(got[2 * k + 1]) : undefined,
          hot: src.hot,
          radius: src.radius,
        };
        const bg = {
          mu: r.background.mu.subarray(f * nc, (f + 1) * nc),
          sigma: r.background.sigma.subarray(f * nc, (f + 1) * nc),
          thr: r.background.thr.subarray(f * nc, (f + 1) * nc),
        };
        const cpu = framePeaksCpu(one, 0, p, bg);
        r.nPeaks[f] = cpu.nPeaks;
        r.peaks[f] = cpu.peaks;
        r.overflowFrames.push(f);
      });
    }

    async function accumulatePart(part: Part, counts: Uint32Array[]): Promise<void> {
      const M = part.mods.length;
      const slot = await slotFor(M * part.m, M);
      try {
        let recorded = false;
        const G = groups(slot);
        const reading = readBuffers(device, "webgpu accumulateLitCounts", [
          { buffer: shared.litCount, size: M * frameBytes },
        ], (enc) => {
          const { radial } = upload(slot, part, enc);
          const pass = enc.beginComputePass();
          stage0(pass, G, radial, M * part.m);
          dispatch(pass, "hotcount", "hotcount", G, [
            Math.ceil(P / k.hotcount.workgroupSize("hotcount")[0]),
            M,
          ]);
          pass.end();
          recorded = true;
          stats.submissions++;
        });
        if (recorded) remap(slot); // (submitted: see runPart)
        const n = new Uint32Array((await reading)[0]);
        part.index.forEach((i, gi) => {
          const c = counts[i];
          for (let q = 0; q < P; q++) c[q] += n[gi * P + q];
        });
      } finally {
        release(slot);
      }
    }

    /** Stage 0 of J module-frames into `bg`: tiles, or radius bins (NC workgroups, those past a module's count idle). */
    function stage0(pass: GPUComputePassEncoder, G: Record<Stage, Buffers>, radial: boolean, J: number) {
      const b = k.background;
      if (!radial) {
        dispatch(pass, "background", "background", G, [Math.ceil(NT / b.workgroupSize("background")[0]), J]);
        dispatch(pass, "background", "bgthreshold", G, [
          Math.ceil(NT / b.workgroupSize("bgthreshold")[0]),
          J,
        ]);
      } else {
        dispatch(pass, "background", "radialbg", G, [NC, J]);
        dispatch(pass, "background", "radialthr", G, [Math.ceil(NC / b.workgroupSize("radialthr")[0]), J]);
      }
    }

    const plan = (batches: readonly ModuleBatch[]) =>
      planParts(batches, batches[0].nFrames, fit, perModules, (b) => cellsOf(b, p).radial);

    function processModules(batches: ModuleBatch[]): ModulesRun {
      let parts: Part[] = [];
      let res: WebgpuBatchResult[] = [];
      try {
        checkGeometry(batches);
        res = batches.map((batch) => ({
          ...emptyResult(g, batch.nFrames),
          background: newBackground(g, batch.nFrames, cellsOf(batch, p).n),
          overflowFrames: [],
          ...(options.debugLabels ? { labels: new Uint32Array(batch.nFrames * P) } : {}),
        }));
        parts = batches.length ? plan(batches) : [];
      } catch (e) {
        const results = Promise.reject(e);
        results.catch(() => undefined); // (handled by the caller)
        return { uploaded: Promise.resolve(), results };
      }
      const ups = parts.map(() => {
        let done!: () => void;
        return { p: new Promise<void>((r) => (done = r)), done };
      });
      const runs = parts.map((part, i) => runPart(part, res, ups[i].done).finally(() => ups[i].done()));
      const results = Promise.all(runs).then(() => {
        for (const r of res) {
          r.overflowFrames.sort((a, b) => a - b);
          stats.batches++;
          stats.frames += r.litPixels.length / A;
          stats.overflowFrames += r.overflowFrames.length;
        }
        return res;
      });
      results.catch(() => undefined); // (handled by the caller, maybe after `uploaded`)
      return { uploaded: Promise.all(ups.map((u) => u.p)).then(() => undefined), results };
    }

    async function accumulateModules(batches: ModuleBatch[], counts: Uint32Array[]): Promise<void> {
      checkGeometry(batches);
      if (counts.length !== batches.length) {
        throw new RangeError(`${counts.length} count arrays for ${batches.length} modules`);
      }
      for (const c of counts) {
        if (c.length !== P) throw new RangeError(`counts has ${c.length} values, need ${P}`);
      }
      if (!batches.length) return;
      await Promise.all(plan(batches).map((part) => accumulatePart(part, counts)));
    }

    const backend: WebgpuBackend = {
      name: "webgpu",
      adapter: gpu.adapterName,
      software: gpu.software,
      maxFrames: fit,
      peakCapacity: C,
      upload: uploadMode,
      stats,
      accumulateLitCounts: (batch, counts) => accumulateModules([batch], [counts]),
      accumulateModules,
      process: async (batch) => (await processModules([batch]).results)[0],
      processModules,
      dispose() {
        if (disposed) return;
        disposed = true;
        for (
          const b of [shared.labels, shared.area, shared.counters, shared.table, shared.bg, shared.litCount]
        ) {
          b?.destroy();
        }
        for (const s of slots) {
          for (
            const b of [
              s.params,
              s.data,
              s.mask,
              s.hot,
              s.cells,
              s.cellList,
              s.cellCounts,
              s.upload,
              s.uploadMask,
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
