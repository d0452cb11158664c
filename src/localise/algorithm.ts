/**
 * `localise`: signal localisation over a run, the library API behind `xfel-redu localise`.
 *
 * Flow: run reader -> frame batches (all modules aligned) -> backend stages 1, 3, 4 per module batch
 * (webgpu or cpu, same spec) -> per-frame results -> classifier (stage 5) -> ROIs (stage 6) -> module-file
 * selection (stage 7). Stage 2 (hot pixels) is a pre-pass over a sample of each module's frames
 * (hotSampleSize: `hotSample` frames at most, an eighth of the run but at least 64, spread evenly over the
 * run; all frames when the run has fewer): a pixel lit in more than `hotFraction` of them is hot.
 *
 * localise is an algorithm of the processing framework (src/framework/algorithm.ts): stages 1-4 run per
 * module group (a part: this thread, a worker thread, or a SLURM task), and `finalize` merges the parts,
 * aligned on (trainId, pulseId), and runs stages 5-7 over all modules.
 */
import type { BackendChoice } from "./result.ts";
import { defaultWorkers } from "../framework/threads.ts";
import { writeLocaliseDir } from "./output.ts";
import { InputError } from "../errors.ts";
import { type Geometry, geometry } from "../exdf/detectors.ts";
import type { FrameBatch } from "../exdf/frames.ts";
import { bytesPerElement } from "../exdf/h5.ts";
import { cpuWithoutGpu, gpuHardwarePresent } from "../gpu/device.ts";
import { Run } from "../exdf/run.ts";
import type { OptionSpec } from "../framework/options.ts";
import { type Algorithm, type PartStats, runAlgorithm, type RunInfo } from "../framework/algorithm.ts";
import { loadLayout } from "../exdf/geometry.ts";
import { moduleRadii } from "./position.ts";
import { IdWriter, SpillWriter } from "../framework/spill.ts";
import { type BatchResult, type LocaliseBackend, type LocaliseParams } from "./spec.ts";
import type { Background } from "./spec.ts";
import { createCpuBackend, hotPixels, type KeptBackground, processKeptCpu } from "./stages.ts";
import { rangesExcept } from "../framework/prefetch.ts";
import { DEFAULT_OPTIONS } from "./result.ts";
import type { LocaliseOptions } from "./result.ts";
import type { LocalisePart } from "./result.ts";
import type { LocaliseResult } from "./result.ts";
import type { Progress } from "./result.ts";
import { combine } from "./merge.ts";
import { frameRecords } from "./records.ts";

/**
 * Whether the cpu backend's main pass leaves out the frames of the hot-pixel sample (processing them from
 * what the pre-pass kept of them); false: it reads them again (tests compare both).
 */
export const sampleReuse = { enabled: true };

/** Consecutive frames per block of the hot-pixel sample. */
const HOT_BLOCK = 16;
/**
 * The hot-pixel sample of a module: `hotSample` frames at most, and at most an eighth of the run's frames but
 * never fewer than HOT_MIN (all of them in a shorter run): a short run is not read a third time over for its
 * sample, and 64 frames still measure a fraction near hotFraction 0.5 to +-6 % (one sigma).
 */
const HOT_MIN = 64;

export function hotSampleSize(nFrames: number, hotSample: number): number {
  return Math.min(nFrames, hotSample, Math.max(HOT_MIN, Math.ceil(nFrames / 8)));
}

/**
 * The backend: `cpu`; `webgpu` (an error without an adapter); `auto`: webgpu on a hardware adapter, else
 * cpu. A software adapter (llvmpipe, lavapipe) runs the shaders several times slower than the cpu backend
 * runs the same spec, so auto does not take it; `--backend webgpu` does.
 */
async function makeBackend(
  choice: BackendChoice,
  params: LocaliseParams,
  g: Geometry,
  framesPerBatch: number,
  notes: string[],
): Promise<LocaliseBackend> {
  if (choice === "cpu") return createCpuBackend(params);
  if (choice === "auto" && !gpuHardwarePresent()) {
    notes.push("no GPU on this machine: using the cpu backend");
    return createCpuBackend(params);
  }
  const { createWebgpuBackend } = await import("./webgpu.ts");
  const gpu = await createWebgpuBackend(params, g, framesPerBatch).catch((e: unknown) => {
    notes.push(`webgpu failed: ${e instanceof Error ? e.message.split("\n")[0] : e}`);
    return undefined;
  });
  if (gpu && (choice === "webgpu" || !gpu.software)) return gpu;
  if (choice === "webgpu") throw new InputError(undefined, "--backend webgpu: no WebGPU adapter found");
  if (gpu) {
    notes.push(`software WebGPU adapter (${gpu.adapter}) is slower than the cpu backend: using cpu`);
    gpu.dispose();
  } else {
    notes.push("no WebGPU adapter found: using the cpu backend");
  }
  return createCpuBackend(params);
}

export class LocaliseAlgorithm implements Algorithm<LocalisePart, LocaliseResult> {
  readonly id = "localise";
  readonly source = { module: import.meta.url, name: "LocaliseAlgorithm" };

  async writeOutput(result: LocaliseResult, dir: string): Promise<void> {
    await writeLocaliseDir(result, dir);
  }
  readonly help = "signal localisation: lit pixels, hot pixels, peaks, lit frames, ROIs, module files";
  readonly options: OptionSpec[] = [];
  opt: LocaliseOptions = { ...DEFAULT_OPTIONS };
  private t0 = performance.now();
  private runPath = "";
  private g?: Geometry;
  private modules: number[] = [];
  private files: string[][] = [];
  private frameBytes = 0;
  private backend?: LocaliseBackend;
  private notes: string[] = [];
  private counts: Uint32Array[] = [];
  private recorded: Uint32Array = new Uint32Array(0);
  private hot?: Uint8Array[];
  /** Per module: each pixel's radius from the layout (stage 0 per radius bin), when bgBinWidth > 0. */
  private radius: (Float32Array | undefined)[] = [];
  private bytesRead = 0;
  /**
   * The part's frames: their ids (trainId, pulseId) go to the id spill file, their per-frame results to the
   * record spill file, as batches finish; nothing per frame stays in memory.
   */
  private ids = new IdWriter("localise-ids");
  private framesRecorded: number[] = [];
  private spill?: SpillWriter;
  /**
   * Per module: stage 0 of the pre-pass's frames (by frame index), kept by the cpu backend so that the
   * main pass does not compute it again; each entry is dropped when the main pass has used it.
   */
  private sampleBg: Map<number, Background>[] = [];
  /**
   * Whether the main pass leaves out the sample's frames (mainRanges: the cpu backend, minSnr > 0: the
   * pre-pass keeps each sampled frame's stage-1 sums and candidates); then the sample's frames (ids and
   * presence by frame index), processed from what was kept in run order (emitKept) before the next batch.
   */
  private reuse = false;
  private keptFrames = new Map<number, { trainId: number; pulseId: number; present: number[] }>();
  /** The last batch's results going to the spill file (a GPU batch finishes during the next one). */
  private appending: Promise<void> = Promise.resolve();
  private failed?: { error: unknown };

  configure(options: Record<string, unknown>): void {
    this.opt = { ...DEFAULT_OPTIONS, ...(options as Partial<LocaliseOptions>) };
    this.t0 = performance.now();
  }

  initialize(info: RunInfo) {
    this.runPath = info.runPath;
    const det = info.detector;
    // A bad --geometry fails before the run is read (finalize uses it for the peak positions).
    const layout = loadLayout(this.opt.geometry, det.type);
    if (info.modules.length) {
      if (this.opt.bgBinWidth > 0) this.radius = info.modules.map((n) => moduleRadii(layout, det.type, n));
      this.g = geometry(det.type);
      this.modules = info.modules;
      const mods = info.modules.map((n) => det.modules.find((m) => m.module === n)!);
      this.files = mods.map((m) => m.files.map((f) => f.file.name));
      const hasMask = mods.some((m) => m.files.some((f) => f.file.h5.get(`${f.groupPath}/mask`) !== null));
      this.frameBytes = this.g.pixels * (bytesPerElement(det.dtype) + (hasMask ? 4 : 0));
      this.counts = mods.map(() => new Uint32Array(this.g!.pixels));
      this.recorded = new Uint32Array(mods.length);
      this.framesRecorded = mods.map(() => 0);
      if (det.raw) {
        this.notes.push(
          "RAW data: thresholds apply to ADU values (localise is meant for CORR data in photons)",
        );
      }
    }
    return {
      detector: this.opt.detector,
      modules: this.opt.modules,
      mask: true,
      firstTrain: this.opt.firstTrain,
      lastTrain: this.opt.lastTrain,
      batchBytes: this.opt.batchBytes,
    };
  }

  private async ensureBackend(framesPerBatch: number): Promise<LocaliseBackend> {
    this.backend ??= await makeBackend(this.opt.backend, this.opt, this.g!, framesPerBatch, this.notes);
    return this.backend;
  }

  /** Stage 2 sample: blocks of consecutive frames spread evenly over the run. */
  prepassRanges(nFrames: number, framesPerBatch: number): [number, number][] {
    const sampleN = hotSampleSize(nFrames, this.opt.hotSample);
    const block = Math.min(HOT_BLOCK, framesPerBatch);
    const nBlocks = Math.ceil(sampleN / block);
    const out: [number, number][] = [];
    // Blocks spread evenly when they fit apart; else (the sample is within a block of the whole run) one
    // after another from the start, so that no frame is sampled twice.
    const spread = nBlocks * block <= nFrames;
    for (let k = 0; k < nBlocks; k++) {
      const start = spread ? Math.min(nFrames - block, Math.floor((k * nFrames) / nBlocks)) : k * block;
      out.push([start, Math.min(block, sampleN - k * block, nFrames - start)]);
    }
    return out;
  }

  /** The main pass's frames: all, or (reuse) those outside the sample. */
  mainRanges(nFrames: number, framesPerBatch: number, pre: [number, number][]): [number, number][] {
    // The cpu backend, known before it is made (makeBackend takes it for "cpu", and for "auto" without a GPU).
    const cpu = cpuWithoutGpu(this.opt.backend);
    this.reuse = sampleReuse.enabled && cpu && this.opt.minSnr > 0 && this.modules.length > 0;
    return rangesExcept(nFrames, framesPerBatch, this.reuse ? pre : []);
  }

  async prepassBatch(b: FrameBatch): Promise<void> {
    const backend = await this.ensureBackend(b.nFrames);
    if (this.reuse) {
      for (let f = 0; f < b.nFrames; f++) {
        const present = b.modules.map((mf) => mf.present[f]);
        this.keptFrames.set(b.start + f, { trainId: b.trainId[f], pulseId: b.pulseId[f], present });
      }
    }
    const g = this.g!;
    this.bytesRead += b.nFrames * b.modules.length * this.frameBytes;
    const keep = backend.name === "cpu";
    // Absent frames are NaN: never lit, not counted.
    b.modules.forEach((mf, m) => (this.recorded[m] += mf.present.reduce((a, x) => a + x, 0)));
    if (backend.accumulateModules) {
      // All modules at once (whole-batch dispatches).
      const batches = b.modules.map((mf, m) => ({
        geometry: g,
        nFrames: b.nFrames,
        data: mf.data,
        mask: mf.mask,
        radius: this.radius[m],
      }));
      await backend.accumulateModules(batches, this.counts);
      return;
    }
    for (let m = 0; m < b.modules.length; m++) {
      const mf = b.modules[m];
      const backgrounds: (Background | undefined)[] | undefined = keep ? new Array(b.nFrames) : undefined;
      await backend.accumulateLitCounts(
        {
          geometry: g,
          nFrames: b.nFrames,
          data: mf.data,
          mask: mf.mask,
          radius: this.radius[m],
          backgrounds,
        },
        this.counts[m],
      );
      if (backgrounds) {
        const map = (this.sampleBg[m] ??= new Map());
        backgrounds.forEach((bg, f) => bg && map.set(b.start + f, bg));
      }
    }
  }

  async processBatch(b: FrameBatch): Promise<void> {
    const g = this.g!;
    const nA = g.nAsics;
    const nMod = b.modules.length;
    const backend = await this.ensureBackend(b.nFrames);
    this.hot ??= this.counts.map((c, m) => hotPixels(c, this.recorded[m], this.opt.hotFraction));
    this.bytesRead += b.nFrames * nMod * this.frameBytes;
    const n = b.nFrames;
    if (this.failed) throw this.failed.error;
    this.emitKept(b.start);
    const batches = b.modules.map((mf, m) => ({
      backgrounds: this.takeSampleBackgrounds(m, b.start, n),
      geometry: g,
      nFrames: n,
      data: mf.data,
      mask: mf.mask,
      hot: this.hot![m],
      radius: this.radius[m],
    }));
    let results: Promise<(BatchResult | undefined)[]>;
    if (backend.processModules) {
      // All modules in whole-batch submissions. Once uploaded, the batch's arrays are free: this batch
      // computes and reads back while the next one is read and uploaded (the backend's slots bound it).
      const run = backend.processModules(batches);
      await run.uploaded;
      results = run.results;
    } else {
      const out: (BatchResult | undefined)[] = new Array(nMod);
      // Two module batches in flight: the next module's upload overlaps the current one's compute.
      let inFlight: Promise<BatchResult> | undefined;
      for (let m = 0; m <= nMod; m++) {
        const next = m < nMod ? backend.process(batches[m]) : undefined;
        if (inFlight) out[m - 1] = await inFlight;
        inFlight = next;
      }
      results = Promise.resolve(out);
    }
    this.ids.append(b.trainId, b.pulseId);
    b.modules.forEach((mf, m) => (this.framesRecorded[m] += mf.present.reduce((a, x) => a + x, 0)));
    const present = b.modules.map((mf) => mf.present.slice());
    // Records appended in batch order; a failure is thrown by the next batch or finalizeChunk.
    const previous = this.appending;
    this.appending = (async () => {
      const r = await results;
      await previous;
      this.spill ??= new SpillWriter(1, "localise");
      this.spill.append(frameRecords(n, nMod, nA, r, present));
    })().catch((error: unknown) => {
      this.failed ??= { error };
    });
  }

  /** The pre-pass's stage 0 of frames [start, start + n) of module m (undefined where none), dropped. */
  private takeSampleBackgrounds(m: number, start: number, n: number): (Background | undefined)[] | undefined {
    const map = this.sampleBg[m];
    if (!map?.size) return undefined;
    const out: (Background | undefined)[] = new Array(n);
    for (let f = 0; f < n; f++) {
      out[f] = map.get(start + f);
      map.delete(start + f);
    }
    return out;
  }

  /** The kept sample frames before frame `end` (reuse): stages 1, 3, 4 from what the pre-pass kept. */
  private emitKept(end: number): void {
    if (!this.reuse || !this.keptFrames.size) return;
    const idx = [...this.keptFrames.keys()].filter((f) => f < end).sort((a, b) => a - b);
    if (!idx.length) return;
    this.hot ??= this.counts.map((c, m) => hotPixels(c, this.recorded[m], this.opt.hotFraction));
    const g = this.g!, nMod = this.modules.length, n = idx.length;
    const frames = idx.map((f) => this.keptFrames.get(f)!);
    idx.forEach((f) => this.keptFrames.delete(f));
    const r = this.modules.map((_, m) => {
      const map = this.sampleBg[m];
      const bgs = idx.map((f) => map?.get(f) as KeptBackground);
      idx.forEach((f) => map?.delete(f));
      return processKeptCpu(bgs, g, this.hot![m], this.radius[m], this.opt);
    });
    this.ids.append(
      frames.map((x) => x.trainId),
      frames.map((x) => x.pulseId),
    );
    const present = this.modules.map((_, m) => Uint8Array.from(frames, (x) => x.present[m]));
    present.forEach((p, m) => (this.framesRecorded[m] += p.reduce((a, x) => a + x, 0)));
    const previous = this.appending;
    this.appending = (async () => {
      await previous;
      this.spill ??= new SpillWriter(1, "localise");
      this.spill.append(frameRecords(n, nMod, g.nAsics, r, present));
    })().catch((error: unknown) => {
      this.failed ??= { error };
    });
  }

  async finalizeChunk(): Promise<LocalisePart> {
    this.emitKept(Infinity);
    await this.appending;
    if (this.failed) throw this.failed.error;
    this.spill ??= new SpillWriter(1, "localise");
    return {
      modules: this.modules,
      files: this.files,
      ...this.ids.close(),
      recorded: this.framesRecorded,
      spill: this.spill.close(),
      hot: this.hot ?? this.counts.map((c, m) => hotPixels(c, this.recorded[m], this.opt.hotFraction)),
      bytesRead: this.bytesRead,
      backend: this.backend
        ? { name: this.backend.name, adapter: this.backend.adapter }
        : { name: "none", adapter: "no frames" },
      notes: this.notes,
    };
  }

  async finalize(parts: LocalisePart[]): Promise<LocaliseResult> {
    const run = await Run.open(this.runPath);
    let r: LocaliseResult;
    try {
      r = combine(run, parts, this.opt, this.t0);
    } catch (e) {
      run.close();
      throw e;
    }
    // The beam annotation is streamed: it reads the run's bunch patterns as the blocks are read (the REDU
    // writer's included), so the run stays open until the result is disposed.
    const dispose = r.dispose;
    r.dispose = () => {
      dispose();
      run.close();
    };
    return r;
  }

  dispose(): void {
    this.backend?.dispose();
    this.backend = undefined;
  }
}

/** Run localisation on a run (directory or file). */
export async function localise(
  runPath: string,
  options: Partial<LocaliseOptions> = {},
  progress?: Progress,
  stats?: PartStats,
): Promise<LocaliseResult> {
  const opt: LocaliseOptions = { ...DEFAULT_OPTIONS, ...options };
  // A GPU: one device in this thread, fed by `workers` reader workers (default cores - 1: FanInReader).
  // The cpu backend (also auto's fallback without a hardware adapter): module groups on the cores.
  const gpu = await usesGpu(opt.backend);
  const workers = gpu ? 1 : opt.workers ?? await defaultWorkers();
  const readers = gpu ? opt.workers ?? Math.max(1, (await defaultWorkers()) - 1) : 1;
  return await runAlgorithm<LocalisePart, LocaliseResult>(
    new LocaliseAlgorithm(),
    runPath,
    opt as unknown as Record<string, unknown>,
    { workers, readers, progress, stats },
  );
}

/** Whether a backend choice will run on a GPU: webgpu, or auto with a hardware adapter. */
async function usesGpu(choice: BackendChoice): Promise<boolean> {
  if (cpuWithoutGpu(choice)) return false;
  if (choice === "webgpu") return true;
  const { getGpuDevice } = await import("../gpu/device.ts");
  const gpu = await getGpuDevice().catch(() => undefined);
  return !!gpu && !gpu.software;
}
