/**
 * `roi RUN --roi NAME=MODULE:SS0:SS1:FS0:FS1 [--roi ...] --out DIR` (or `--roi-file FILE`): fixed regions of
 * interest per frame -- the spectrometer case (XES, XAS): a line on a module summed over slow scan.
 *
 * Spec (CPU reference `roiColumns`, GPU kernel shaders/roi.wgsl):
 * - A region is module MODULE, slow scan [SS0, SS1), fast scan [FS0, FS1) (half-open, in the module image).
 * - A pixel is valid when the module recorded the frame, the value is finite and its mask is 0.
 * - Per frame, region and column fs: colSum = sum over ss of the valid values, colCount = the number of valid
 *   pixels. The CPU sums in float64; the GPU in float32 with Kahan compensation (floats close, counts equal).
 *   colSum is then float32.
 * - Per frame and region: `spectrum` = colSum (float32, FS1 - FS0 values; NaN when the module did not record
 *   the frame), `sum` = the float64 sum of colSum over fs, `count` = the sum of colCount, `mean` = sum /
 *   count (NaN when count is 0).
 * - `--lit-only`: only frames the beam annotation (or `--from` localise output) says are lit.
 * - Memory: each part appends its per-frame values to a spill file (src/framework/spill.ts); the merge reads them back
 *   in blocks (summary, writer): memory bounded by batch and block sizes plus 16 bytes per frame.
 * Output: `DIR/<PREFIX>-R<run>-REDU03-S00000.h5`, instrument source `<DET>/REDU/ROI:output` with per frame
 * `data.trainId`, `data.pulseId`, `data.<NAME>.sum` (f64), `.count` (u32), `.mean` (f64), `.spectrum`
 * (f32, FS1 - FS0); control source `<DET>/REDU/ROI` keys `<NAME>.module` (u16), `<NAME>.box` (u32: SS0, SS1,
 * FS0, FS1). `DIR/summary.json`: regions, frames, per region the run's mean of `sum` and of `mean`, total
 * counts and the mean spectrum; bytes in (the files of the modules read), bytes out, their ratio.
 */
import * as fs from "node:fs";
import { InputError } from "../errors.ts";
import type { FrameBatch } from "../exdf/frames.ts";
import { type Algorithm, runAlgorithm, type RunInfo } from "../framework/algorithm.ts";
import {
  type BackendChoice,
  type BlockIds,
  blocksOfTrains,
  checkBackend,
  FrameRecords,
  mergeSpills,
  partsSummary,
  pickDevice,
  ReductionAlgorithm,
  type ReductionResult,
  workersFor,
  writeReductionDir,
  writeReduFile,
} from "./common.ts";
import { Run } from "../exdf/run.ts";
import { litLookup } from "../average/average.ts";
import type { WriterSchema } from "../exdf/writer/writer.ts";
import type { TrainFrames } from "../framework/spill.ts";
import type { RoiBackend } from "./roi-spec.ts";
import type { RoiColumns } from "./roi-spec.ts";
import type { RoiSpec } from "./roi-spec.ts";
import { columnLayout } from "./roi-spec.ts";

const NAME_RE = /^[A-Za-z][A-Za-z0-9_]*$/;

/** `NAME=MODULE:SS0:SS1:FS0:FS1`. */
export function parseRoi(text: string, where = "--roi"): RoiSpec {
  const m = /^([^=]+)=(\d+):(\d+):(\d+):(\d+):(\d+)$/.exec(text.trim());
  if (!m) {
    throw new InputError(undefined, `${where}: ${JSON.stringify(text)} is not NAME=MODULE:SS0:SS1:FS0:FS1`);
  }
  const [name, module, ss0, ss1, fs0, fs1] = [m[1], ...m.slice(2).map(Number)] as [string, ...number[]];
  return checkRoi({ name, module, ss0, ss1, fs0, fs1 }, where);
}

function checkRoi(r: RoiSpec, where: string): RoiSpec {
  if (!NAME_RE.test(r.name)) {
    throw new InputError(
      undefined,
      `${where}: region name ${JSON.stringify(r.name)}: letters, digits, _ only`,
    );
  }
  if (!(r.ss1 > r.ss0 && r.fs1 > r.fs0)) {
    throw new InputError(undefined, `${where}: region ${r.name} is empty (SS1 <= SS0 or FS1 <= FS0)`);
  }
  return r;
}

/**
 * A JSON file of regions: `[{"name": "kb", "module": 3, "ss": [0, 64], "fs": [10, 120]}, ...]` or
 * `{"regions": [...]}`.
 */
export function readRoiFile(file: string): RoiSpec[] {
  let v: unknown;
  try {
    v = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new InputError(
      file,
      `not a JSON region file (${e instanceof Error ? e.message.split("\n")[0] : e})`,
    );
  }
  const list = Array.isArray(v) ? v : (v as { regions?: unknown })?.regions;
  if (!Array.isArray(list)) throw new InputError(file, 'expected a list of regions or {"regions": [...]}');
  return list.map((r: any, i: number) => {
    const ok = r && typeof r.name === "string" && Number.isInteger(r.module) && Array.isArray(r.ss) &&
      Array.isArray(r.fs) && [...r.ss, ...r.fs].length === 4 && [...r.ss, ...r.fs].every(Number.isInteger);
    if (!ok) {
      throw new InputError(
        file,
        `region ${i}: expected {"name", "module", "ss": [SS0, SS1], "fs": [FS0, FS1]}`,
      );
    }
    try {
      return checkRoi({
        name: r.name,
        module: r.module,
        ss0: r.ss[0],
        ss1: r.ss[1],
        fs0: r.fs[0],
        fs1: r.fs[1],
      }, `region ${i}`);
    } catch (e) {
      throw new InputError(file, (e as Error).message);
    }
  });
}

/** The regions checked against the detector: modules present, boxes inside the module, names unique. */
export function checkRegions(rois: RoiSpec[], modules: number[], shape: [number, number]): void {
  if (!rois.length) {
    throw new InputError(undefined, "no region: give --roi NAME=MODULE:SS0:SS1:FS0:FS1 or --roi-file");
  }
  const seen = new Set<string>();
  for (const r of rois) {
    if (seen.has(r.name)) throw new InputError(undefined, `region name ${r.name} given twice`);
    seen.add(r.name);
    if (!modules.includes(r.module)) {
      throw new InputError(
        undefined,
        `region ${r.name}: no module ${r.module} in the run (modules ${modules.join(",")})`,
      );
    }
    if (r.ss1 > shape[0] || r.fs1 > shape[1]) {
      throw new InputError(undefined, `region ${r.name}: outside the ${shape[0]} x ${shape[1]} module image`);
    }
  }
}

/** The CPU reference: column sums (float64, stored float32) and counts of a batch. */
export function roiColumns(b: FrameBatch, rois: RoiSpec[], moduleFs: number, pixels: number): RoiColumns {
  const { offsets, total } = columnLayout(rois);
  const colSum = new Float32Array(b.nFrames * total);
  const colCount = new Uint32Array(b.nFrames * total);
  const present = new Uint8Array(b.nFrames * rois.length);
  rois.forEach((r, k) => {
    const mf = b.modules.find((m) => m.module === r.module);
    if (!mf) return;
    const w = r.fs1 - r.fs0;
    const sums = new Float64Array(w);
    const counts = new Uint32Array(w);
    for (let i = 0; i < b.nFrames; i++) {
      const o = i * total + offsets[k];
      if (!mf.present[i]) {
        colSum.fill(NaN, o, o + w);
        continue;
      }
      present[i * rois.length + k] = 1;
      sums.fill(0);
      counts.fill(0);
      for (let s = r.ss0; s < r.ss1; s++) {
        const row = i * pixels + s * moduleFs;
        for (let c = 0; c < w; c++) {
          const p = row + r.fs0 + c;
          const v = mf.data[p];
          if (Number.isFinite(v) && (!mf.mask || mf.mask[p] === 0)) {
            sums[c] += v;
            counts[c]++;
          }
        }
      }
      colSum.set(sums, o);
      colCount.set(counts, o);
    }
  });
  return { colSum, colCount, present };
}

export interface RoiPart {
  modules: number[];
  /** Regions of this part's modules (indices into the configured regions). */
  regions: number[];
  /** The part's frames: how many, and their id spill file (src/framework/spill.ts `IdWriter`). */
  frames: number;
  ids: string;
  /** Spill file (src/framework/spill.ts) of per-frame records (`recordLayout` of the part's regions). */
  spill: string;
  backend: string;
}

/**
 * A frame's record for regions of widths w_k: sums (f64 x K), counts (u32 x K), spectra (f32, sum of w_k),
 * padded to 8 bytes.
 */
export function recordLayout(widths: number[]): { bytes: number; counts: number; spectra: number[] } {
  const K = widths.length;
  const spectra: number[] = [];
  let o = 12 * K;
  for (const w of widths) {
    spectra.push(o);
    o += 4 * w;
  }
  return { bytes: Math.ceil(o / 8) * 8, counts: 8 * K, spectra };
}

/** Per-region values of frames [f0, f1). */
export interface RoiBlock {
  f0: number;
  f1: number;
  sum: Float64Array[];
  count: Uint32Array[];
  mean: Float64Array[];
  spectrum: Float32Array[];
}

export interface RoiResult extends ReductionResult {
  rois: RoiSpec[];
  frames: number;
  /** Per train, in order: its trainId and frames. */
  trains: TrainFrames;
  /** Every frame's ids, made on first access (16 bytes a frame: tests); blocks carry their own. */
  readonly trainId: Float64Array;
  readonly pulseId: Float64Array;
  /** Frames [f0, f1) for consecutive ranges, read from the parts' spill files (memory bounded by the range). */
  blocks(bounds: number[]): Generator<RoiBlock & BlockIds>;
  /** All frames at once (materialised from the spill files on first access: tests, small runs). */
  readonly sum: Float64Array[];
  readonly count: Uint32Array[];
  readonly mean: Float64Array[];
  readonly spectrum: Float32Array[];
  /** Remove the spill files (after writing). */
  dispose(): void;
}

export interface RoiOptions {
  rois: RoiSpec[];
  backend?: BackendChoice;
  workers?: number;
  /** Only frames the beam annotation (or `from`, a localise output) says are lit. */
  litOnly?: boolean;
  from?: string;
}

export class RoiAlgorithm extends ReductionAlgorithm implements Algorithm<RoiPart, RoiResult> {
  readonly id = "roi";
  readonly source = { module: import.meta.url, name: "RoiAlgorithm" };

  async writeOutput(result: RoiResult, dir: string): Promise<void> {
    await writeRoiDir(result, dir);
  }
  readonly help = "sums, counts, means and spectra of fixed regions per frame";
  private rois: RoiSpec[] = [];
  private backendChoice: BackendChoice = "auto";
  private mine: RoiSpec[] = [];
  private mineIx: number[] = [];
  private backend?: RoiBackend;
  private moduleFs = 0;
  private pixels = 0;
  private records = new FrameRecords("roi");
  private modules: number[] = [];
  private litOnly = false;
  private from?: string;
  private lit?: (t: number, p: number) => boolean;

  configure(options: Record<string, unknown>): void {
    this.rois = options.rois as RoiSpec[];
    this.backendChoice = checkBackend(options.backend);
    this.litOnly = !!options.litOnly;
    this.from = options.from as string | undefined;
  }

  async initialize(info: RunInfo) {
    this.takeRun(info);
    const det = info.detector;
    const all = det.modules.map((m) => m.module);
    checkRegions(this.rois, all, det.imageShape);
    const needed = all.filter((m) => this.rois.some((r) => r.module === m));
    if (info.modules.length) {
      this.modules = info.modules;
      this.mineIx = this.rois.map((_, i) => i).filter((i) => info.modules.includes(this.rois[i].module));
      this.mine = this.mineIx.map((i) => this.rois[i]);
      this.moduleFs = det.imageShape[1];
      this.pixels = det.imageShape[0] * det.imageShape[1];
      if (this.litOnly) this.lit = (await litLookup(info.run, this.from)).lit;
      const device = await pickDevice(this.backendChoice, this.notes);
      if (device) {
        const { createRoiGpu } = await import("./roi-webgpu.ts");
        this.backend = await createRoiGpu(device, this.mine, det.imageShape);
      } else {
        const rois = this.mine, fsz = this.moduleFs, px = this.pixels;
        this.backend = { name: "cpu", columns: (b) => roiColumns(b, rois, fsz, px), dispose() {} };
      }
    }
    return { modules: needed, mask: true, batchBytes: 128 * 2 ** 20 };
  }

  async processBatch(b: FrameBatch): Promise<void> {
    const cols = await this.backend!.columns(b);
    const { offsets, total } = columnLayout(this.mine);
    const K = this.mine.length;
    const lay = recordLayout(this.mine.map((r) => r.fs1 - r.fs0));
    const kept = this.records.keep(b, this.lit);
    const buf = new ArrayBuffer(kept.length * lay.bytes);
    kept.forEach((i, j) => {
      const at = j * lay.bytes;
      const sums = new Float64Array(buf, at, K);
      const counts = new Uint32Array(buf, at + lay.counts, K);
      this.mine.forEach((r, k) => {
        const w = r.fs1 - r.fs0;
        const o = i * total + offsets[k];
        const spec = cols.colSum.subarray(o, o + w);
        new Float32Array(buf, at + lay.spectra[k], w).set(spec);
        if (!cols.present[i * K + k]) {
          sums[k] = NaN;
          counts[k] = 0;
          return;
        }
        let s = 0;
        let n = 0;
        for (let c = 0; c < w; c++) {
          s += spec[c];
          n += cols.colCount[o + c];
        }
        sums[k] = s;
        counts[k] = n;
      });
    });
    this.records.append(lay.bytes, new Uint8Array(buf));
  }

  finalizeChunk(): RoiPart {
    return {
      modules: this.modules,
      regions: this.mineIx,
      ...this.records.close(recordLayout(this.mine.map((r) => r.fs1 - r.fs0)).bytes),
      backend: this.backend?.name ?? "cpu",
    };
  }

  finalize(parts: RoiPart[]): Promise<RoiResult> {
    return this.withRun((run, det) => {
      const rois = this.rois;
      const lays = parts.map((p) => recordLayout(p.regions.map((g) => rois[g].fs1 - rois[g].fs0)));
      const merged = mergeSpills(parts, (_p, pi) => lays[pi].bytes, (f0, f1): {
        add(pi: number, buffer: ArrayBufferLike, at: number, f: number): void;
        done(): RoiBlock;
      } => {
        const m = f1 - f0;
        const sum = rois.map(() => new Float64Array(m).fill(NaN));
        const count = rois.map(() => new Uint32Array(m));
        const spectrum = rois.map((r) => new Float32Array(m * (r.fs1 - r.fs0)).fill(NaN));
        return {
          add(pi, buffer, at, f) {
            const lay = lays[pi], p = parts[pi], K = p.regions.length;
            const sums = new Float64Array(buffer, at, K);
            const counts = new Uint32Array(buffer, at + lay.counts, K);
            p.regions.forEach((g, k) => {
              const w = rois[g].fs1 - rois[g].fs0;
              sum[g][f] = sums[k];
              count[g][f] = counts[k];
              spectrum[g].set(new Float32Array(buffer, at + lay.spectra[k], w), f * w);
            });
          },
          done() {
            const mean = sum.map((s, g) =>
              Float64Array.from(s, (v, i) => (count[g][i] ? v / count[g][i] : NaN))
            );
            return { f0, f1, sum, count, mean, spectrum };
          },
        };
      });
      const n = merged.frames;
      let all: RoiBlock | undefined;
      const materialise = () => {
        if (!all) { for (const blk of merged.blocks([0, n])) all = blk; }
        return all!;
      };
      return {
        run: run.path,
        detector: det.name,
        rois: this.rois,
        frames: n,
        trains: merged.trains,
        get trainId() {
          return merged.trainId;
        },
        get pulseId() {
          return merged.pulseId;
        },
        blocks: (b: number[]) => merged.blocks(b),
        get sum() {
          return materialise().sum;
        },
        get count() {
          return materialise().count;
        },
        get mean() {
          return materialise().mean;
        },
        get spectrum() {
          return materialise().spectrum;
        },
        dispose: merged.dispose,
        notes: this.notes,
        ...partsSummary(parts, run, det.name),
      };
    });
  }

  dispose(): void {
    this.backend?.dispose();
  }
}

export async function roi(
  runPath: string,
  options: RoiOptions,
  progress?: (done: number, total: number) => void,
): Promise<RoiResult> {
  const backend = checkBackend(options.backend);
  // Regions checked before anything looks for a GPU.
  const r = await Run.open(runPath);
  try {
    const det = r.detector();
    checkRegions(options.rois, det.modules.map((m) => m.module), det.imageShape);
  } finally {
    r.close();
  }
  const algoOptions = { rois: options.rois, backend, litOnly: !!options.litOnly, from: options.from };
  return await runAlgorithm<RoiPart, RoiResult>(new RoiAlgorithm(), runPath, algoOptions, {
    workers: await workersFor(backend, options.workers),
    progress,
  });
}

const TRAINS_PER_CALL = 512;

/** Write the REDU file with the writer library; returns the file paths. */
export async function writeRoi(r: RoiResult, dir: string, runFiles: string[]): Promise<string[]> {
  const packed = { chunks: 1024, compression: "gzip", compressionOpts: 1 } as const;
  const datasets: Record<string, any> = {
    trainId: { source: "@out", key: "data.trainId", shape: [], dtype: "uint64", ...packed },
    pulseId: { source: "@out", key: "data.pulseId", shape: [], dtype: "uint64", ...packed },
  };
  for (const g of r.rois) {
    const n = g.name;
    datasets[`${n}.sum`] = { source: "@out", key: `data.${n}.sum`, shape: [], dtype: "float64", ...packed };
    datasets[`${n}.count`] = {
      source: "@out",
      key: `data.${n}.count`,
      shape: [],
      dtype: "uint32",
      ...packed,
    };
    datasets[`${n}.mean`] = { source: "@out", key: `data.${n}.mean`, shape: [], dtype: "float64", ...packed };
    datasets[`${n}.spectrum`] = {
      source: "@out",
      key: `data.${n}.spectrum`,
      shape: [g.fs1 - g.fs0],
      dtype: "float32",
      ...packed,
    };
    datasets[`${n}.module`] = { source: "@ctl", key: `${n}.module`, shape: [], dtype: "uint16", ...packed };
    datasets[`${n}.box`] = { source: "@ctl", key: `${n}.box`, shape: [4], dtype: "uint32", ...packed };
  }
  const schema = {
    parameters: ["det"],
    aliases: { out: "{det}/REDU/ROI:output", ctl: "{det}/REDU/ROI" },
    datasets,
  } as unknown as WriterSchema;
  return await writeReduFile(dir, runFiles, "REDU03", schema, { det: r.detector }, (w) => {
    for (const g of r.rois) {
      w.setConstant(`${g.name}.module`, Uint16Array.of(g.module));
      w.setConstant(`${g.name}.box`, Uint32Array.of(g.ss0, g.ss1, g.fs0, g.fs1));
    }
    for (const { blk, trainIds, frames } of blocksOfTrains((b) => r.blocks(b), r.trains, TRAINS_PER_CALL)) {
      const { f0, f1, sum, count, mean, spectrum, trainId, pulseId } = blk;
      const n = f1 - f0;
      w.addTrains(trainIds, { "@out": frames });
      const data: Record<string, unknown> = {
        trainId: BigUint64Array.from(trainId, BigInt),
        pulseId: BigUint64Array.from(pulseId, BigInt),
      };
      r.rois.forEach((g, k) => {
        data[`${g.name}.sum`] = sum[k];
        data[`${g.name}.count`] = count[k];
        data[`${g.name}.mean`] = mean[k];
        data[`${g.name}.spectrum`] = { data: spectrum[k], shape: [n, g.fs1 - g.fs0] };
      });
      w.addData(data as never);
    }
  });
}

/** The run summary of each region (NaN frames left out). */
export function roiSummary(r: RoiResult) {
  const acc = r.rois.map((g) => ({
    frames: 0,
    sumOfSums: 0,
    sumOfMeans: 0,
    meanFrames: 0,
    total: 0,
    spec: new Float64Array(g.fs1 - g.fs0),
  }));
  const n = r.frames;
  const bounds = [0];
  while (bounds[bounds.length - 1] < n) bounds.push(Math.min(n, bounds[bounds.length - 1] + 4096));
  if (bounds.length > 1) {
    for (const blk of r.blocks(bounds)) {
      r.rois.forEach((g, k) => {
        const a = acc[k], w = g.fs1 - g.fs0;
        for (let i = 0; i < blk.f1 - blk.f0; i++) {
          if (Number.isNaN(blk.sum[k][i])) continue;
          a.frames++;
          a.sumOfSums += blk.sum[k][i];
          a.total += blk.count[k][i];
          if (blk.count[k][i]) {
            a.sumOfMeans += blk.mean[k][i];
            a.meanFrames++;
          }
          for (let c = 0; c < w; c++) a.spec[c] += blk.spectrum[k][i * w + c];
        }
      });
    }
  }
  return r.rois.map((g, k) => {
    const a = acc[k];
    return {
      ...g,
      frames: a.frames,
      meanSum: a.frames ? a.sumOfSums / a.frames : NaN,
      meanMean: a.meanFrames ? a.sumOfMeans / a.meanFrames : NaN,
      count: a.total,
      meanSpectrum: Array.from(a.spec, (v) => (a.frames ? v / a.frames : NaN)),
    };
  });
}

/** The output directory: REDU file and summary.json, built under a temporary name. */
export function writeRoiDir(r: RoiResult, dir: string): Promise<Record<string, unknown>> {
  return writeReductionDir("roi", r, dir, (tmp, names) => writeRoi(r, tmp, names), {
    frames: r.frames,
  }, { roi: roiSummary(r) });
}

/** `--roi` values and `--roi-file` into regions. */
export function regionsFromOptions(o: Record<string, any>): RoiSpec[] {
  const list: string[] = o.roi === undefined ? [] : Array.isArray(o.roi) ? o.roi : [o.roi];
  const rois = list.map((t) => parseRoi(t));
  if (o.roiFile) rois.push(...readRoiFile(o.roiFile));
  return rois;
}
