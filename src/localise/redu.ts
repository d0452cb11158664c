/**
 * localise's REDU file: its writer and its one reader (a contract other tools rely on, documented in the
 * README).
 *
 * Spec:
 * - `<PREFIX>-R<run>-REDU00-S00000.h5` (more sequences when large; prefix and run from the run's file names,
 *   exdf/run.ts runNaming), written with the writer library: fast source `<DET>/REDU/LOCALISE:output`,
 *   index group `data`, one entry per frame of the run (frames aligned across modules, sorted by trainId
 *   then pulseId), and the module order of the nModules axes in the RUN section of the control source
 *   `<DET>/REDU/LOCALISE` (key `modules`). The beam annotation (LITFRM) goes into the same file.
 * - Reading (`ReduReader`, used by reduce, report, average/roi/azint/xpcs `--from` and cxi): every file of
 *   a directory holding the source, in the order of their first trains; the frames are the rows INDEX lists
 *   (exdf/keydata.ts), in file order, then INDEX order. `frames()` gives (trainId, pulseId, frameLit) of
 *   every frame (a stored trainId 0 is the INDEX's train); `read()` any per-frame table for a range of
 *   frames, into a caller buffer; `blocks()` the frame ranges to read large tables in bounded memory.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { InputError } from "../errors.ts";
import { dsInfo, type H5Dataset, readAll } from "../exdf/h5.ts";
import { KeyData, type KeyFile, readRowsInto, type RowBuffer } from "../exdf/keydata.ts";
import { Run, type RunFile, runNaming } from "../exdf/run.ts";
import { type DataInput, openWriter } from "../exdf/writer/writer.ts";
import { loadLayout } from "../exdf/geometry.ts";
import type { DetectorType } from "../exdf/detectors.ts";
import { litframesCounts, litframesData, litframesDevice, litframesSchema } from "../beam/litfrm.ts";
import type { LocaliseOptions, LocaliseResult } from "./result.ts";
import { resolutionAngstrom } from "./position.ts";
import { largestBlock } from "./merge.ts";

/**
 * Options of the outputs only (command.ts `--photon-energy`, `--clen`): they pass through localise in
 * `params` untouched. They override the `.geom` file's `photon_energy` / `clen`.
 */
export interface OutputOptions {
  /** Photon energy (eV). */
  photonEnergy?: number;
  /** Detector distance, sample to detector plane (metres). */
  clen?: number;
}

/** Where the peak resolution's photon energy and clen come from, and the values (undefined: unknown). */
export interface ResolutionSource {
  photonEnergy?: number;
  clen?: number;
  photonEnergyFrom: "option" | "geometry" | "unknown";
  clenFrom: "option" | "geometry" | "unknown";
}

export function resolutionSource(r: LocaliseResult): ResolutionSource {
  const p = r.params as LocaliseOptions & OutputOptions;
  let layout: { photonEnergy?: number; clen?: number } = {};
  if (p.geometry) layout = loadLayout(p.geometry, r.detector.type as DetectorType);
  const pick = (opt?: number, geom?: number) =>
    opt !== undefined
      ? { v: opt, from: "option" as const }
      : geom !== undefined
      ? { v: geom, from: "geometry" as const }
      : { v: undefined, from: "unknown" as const };
  const e = pick(p.photonEnergy, layout.photonEnergy);
  const c = pick(p.clen, layout.clen);
  return { photonEnergy: e.v, clen: c.v, photonEnergyFrom: e.from, clenFrom: c.from };
}

/** Write the REDU file(s) of a localise result into dir; returns their paths. */
export async function writeRedu(r: LocaliseResult, dir: string, runFiles: string[] = []): Promise<string[]> {
  const { prefix, run } = runNaming(runFiles);
  const nMod = r.detector.modules.length;
  const nA = r.nAsics;
  const maxPeaks = r.params.maxPeaks;
  const { photonEnergy, clen } = resolutionSource(r);
  const perFrame = [nMod, nA];
  // Per-frame counters and IDs are small: modest chunks, fast gzip.
  const packed = { chunks: 256, compression: "gzip", compressionOpts: 1 } as const;
  // Peak tables: a frame's peaks first, zeros after. Chunks 32 peaks wide, written only as far as a block of
  // frames has peaks (zeroTail): the rest is never written and reads as 0. Writing all 256 columns, the
  // writer's HDF5 calls took 237-264 ms for 8,000 frames, 128-130 ms now (bench/RESULTS.md).
  const peakWidth = Math.min(32, maxPeaks);
  const peakTable = (entry: number[] = []) =>
    ({
      chunks: [256, peakWidth, ...entry],
      compression: "gzip",
      compressionOpts: 1,
      zeroTail: true,
    }) as const;
  // The beam annotation (LITFRM) goes into the same file, in the facility's layout.
  const litfrm = r.beam ? litframesSchema(litframesDevice(r.beam.instrument)) : undefined;
  const schema = {
    parameters: ["det", "nmod", "nasic", "maxpeaks"],
    aliases: { out: "{det}/REDU/LOCALISE:output", ctl: "{det}/REDU/LOCALISE", ...litfrm?.aliases },
    datasets: {
      ...litfrm?.datasets,
      trainId: { source: "@out", key: "data.trainId", shape: [], dtype: "uint64", ...packed },
      pulseId: { source: "@out", key: "data.pulseId", shape: [], dtype: "uint64", ...packed },
      frameLit: { source: "@out", key: "data.frameLit", shape: [], dtype: "uint8", ...packed },
      litPixels: {
        source: "@out",
        key: "data.litPixels",
        shape: ["nmod", "nasic"],
        dtype: "uint32",
        ...packed,
      },
      litIntensity: {
        source: "@out",
        key: "data.litIntensity",
        shape: ["nmod", "nasic"],
        dtype: "float32",
        ...packed,
      },
      unmaskedPixels: {
        source: "@out",
        key: "data.unmaskedPixels",
        shape: ["nmod", "nasic"],
        dtype: "uint32",
        ...packed,
      },
      filteredLit: {
        source: "@out",
        key: "data.filteredLit",
        shape: ["nmod", "nasic"],
        dtype: "uint32",
        ...packed,
      },
      asicLit: { source: "@out", key: "data.asicLit", shape: ["nmod", "nasic"], dtype: "uint8", ...packed },
      nPeaks: { source: "@out", key: "data.nPeaks", shape: [], dtype: "uint32", ...packed },
      peakModule: {
        source: "@out",
        key: "data.peakModule",
        shape: ["maxpeaks"],
        dtype: "uint16",
        ...peakTable(),
      },
      peakBox: {
        source: "@out",
        key: "data.peakBox",
        shape: ["maxpeaks", 4],
        dtype: "uint16",
        ...peakTable([4]),
      },
      peakArea: {
        source: "@out",
        key: "data.peakArea",
        shape: ["maxpeaks"],
        dtype: "uint32",
        ...peakTable(),
      },
      peakIntensity: {
        source: "@out",
        key: "data.peakIntensity",
        shape: ["maxpeaks"],
        dtype: "float32",
        ...peakTable(),
      },
      peakSs: { source: "@out", key: "data.peakSs", shape: ["maxpeaks"], dtype: "float32", ...peakTable() },
      peakFs: { source: "@out", key: "data.peakFs", shape: ["maxpeaks"], dtype: "float32", ...peakTable() },
      peakMax: { source: "@out", key: "data.peakMax", shape: ["maxpeaks"], dtype: "float32", ...peakTable() },
      peakSnr: { source: "@out", key: "data.peakSnr", shape: ["maxpeaks"], dtype: "float32", ...peakTable() },
      peakX: { source: "@out", key: "data.peakX", shape: ["maxpeaks"], dtype: "float32", ...peakTable() },
      peakY: { source: "@out", key: "data.peakY", shape: ["maxpeaks"], dtype: "float32", ...peakTable() },
      peakRadius: {
        source: "@out",
        key: "data.peakRadius",
        shape: ["maxpeaks"],
        dtype: "float32",
        ...peakTable(),
      },
      peakResolution: {
        source: "@out",
        key: "data.peakResolution",
        shape: ["maxpeaks"],
        dtype: "float32",
        ...peakTable(),
      },
      modules: { source: "@ctl", key: "modules", shape: ["nmod"], dtype: "uint16", ...packed },
    },
  } as const;
  const w = await openWriter(path.join(dir, "{prefix}-R{run:04d}-{aggregator}-S{seq:05d}.h5"), schema, {
    params: { det: r.detector.name, nmod: nMod, nasic: nA, maxpeaks: maxPeaks },
    prefix,
    run,
    aggregator: "REDU00",
    maxBytesPerFile: 4 * 2 ** 30,
    // Staging of all 38 datasets together: their stages fill within the first few blocks of any run
    // (blocks of 2,048 frames, ~4 kB per frame), so what they hold does not grow with the run length.
    bufferBytes: 16 * 2 ** 20,
  });
  try {
    w.setConstant("modules", Uint16Array.from(r.detector.modules));
    // Blocks of whole trains (frames are sorted by trainId, then pulseId), read back from the spill files.
    // The peak columns are allocated once for the largest block and reused (the writer copies what it is
    // given): memory per block, not per run, and no garbage of a block's size per block.
    const bounds = r.blockBounds();
    const cap = largestBlock(bounds);
    const cols = {
      trainId: new BigUint64Array(cap),
      pulseId: new BigUint64Array(cap),
      peakModule: new Uint16Array(cap * maxPeaks),
      peakBox: new Uint16Array(cap * maxPeaks * 4),
      peakArea: new Uint32Array(cap * maxPeaks),
      peakIntensity: new Float32Array(cap * maxPeaks),
      peakSs: new Float32Array(cap * maxPeaks),
      peakFs: new Float32Array(cap * maxPeaks),
      peakMax: new Float32Array(cap * maxPeaks),
      peakSnr: new Float32Array(cap * maxPeaks),
      peakX: new Float32Array(cap * maxPeaks),
      peakY: new Float32Array(cap * maxPeaks),
      peakRadius: new Float32Array(cap * maxPeaks),
      peakResolution: new Float32Array(cap * maxPeaks),
    };
    for (const { f0, f1, per: pf } of r.frameBlocks(bounds)) {
      const n = f1 - f0;
      const ids: number[] = [];
      const c: number[] = [];
      for (let f = 0; f < n; f++) {
        if (ids.length && ids[ids.length - 1] === pf.trainId[f]) c[c.length - 1]++;
        else {
          ids.push(pf.trainId[f]);
          c.push(1);
        }
      }
      w.addTrains(ids, { "@out": c, ...(r.beam ? litframesCounts(r.beam, ids) : {}) });
      if (r.beam) w.addData(litframesData(r.beam, ids) as Record<string, DataInput>);
      const np = n * maxPeaks;
      const trainId = cols.trainId.subarray(0, n), pulseId = cols.pulseId.subarray(0, n);
      for (let f = 0; f < n; f++) {
        trainId[f] = BigInt(pf.trainId[f]);
        pulseId[f] = BigInt(pf.pulseId[f]);
      }
      const peakModule = cols.peakModule.subarray(0, np).fill(0);
      const peakBox = cols.peakBox.subarray(0, np * 4).fill(0);
      const peakArea = cols.peakArea.subarray(0, np).fill(0);
      const peakIntensity = cols.peakIntensity.subarray(0, np).fill(0);
      const peakSs = cols.peakSs.subarray(0, np).fill(0);
      const peakFs = cols.peakFs.subarray(0, np).fill(0);
      const peakMax = cols.peakMax.subarray(0, np).fill(0);
      const peakSnr = cols.peakSnr.subarray(0, np).fill(0);
      const peakX = cols.peakX.subarray(0, np).fill(0);
      const peakY = cols.peakY.subarray(0, np).fill(0);
      const peakRadius = cols.peakRadius.subarray(0, np).fill(0);
      const peakResolution = cols.peakResolution.subarray(0, np).fill(0);
      for (let i = 0; i < n; i++) {
        pf.peaks[i].forEach((p, j) => {
          const k = i * maxPeaks + j;
          peakModule[k] = p.module;
          peakBox.set(p.box, k * 4);
          peakArea[k] = p.area;
          peakIntensity[k] = p.intensity;
          peakSs[k] = p.ss;
          peakFs[k] = p.fs;
          peakMax[k] = p.max;
          peakSnr[k] = p.snr;
          peakX[k] = p.x ?? NaN;
          peakY[k] = p.y ?? NaN;
          peakRadius[k] = p.radius ?? NaN;
          peakResolution[k] = resolutionAngstrom(Math.hypot(p.x ?? NaN, p.y ?? NaN), photonEnergy, clen);
        });
      }
      w.addData({
        trainId,
        pulseId,
        frameLit: pf.frameLit,
        litPixels: { data: pf.litPixels, shape: [n, ...perFrame] },
        litIntensity: { data: pf.litIntensity, shape: [n, ...perFrame] },
        unmaskedPixels: { data: pf.unmaskedPixels, shape: [n, ...perFrame] },
        filteredLit: { data: pf.filteredLit, shape: [n, ...perFrame] },
        asicLit: { data: pf.asicLit, shape: [n, ...perFrame] },
        nPeaks: pf.nPeaks,
        peakModule: { data: peakModule, shape: [n, maxPeaks] },
        peakBox: { data: peakBox, shape: [n, maxPeaks, 4] },
        peakArea: { data: peakArea, shape: [n, maxPeaks] },
        peakIntensity: { data: peakIntensity, shape: [n, maxPeaks] },
        peakSs: { data: peakSs, shape: [n, maxPeaks] },
        peakFs: { data: peakFs, shape: [n, maxPeaks] },
        peakMax: { data: peakMax, shape: [n, maxPeaks] },
        peakSnr: { data: peakSnr, shape: [n, maxPeaks] },
        peakX: { data: peakX, shape: [n, maxPeaks] },
        peakY: { data: peakY, shape: [n, maxPeaks] },
        peakRadius: { data: peakRadius, shape: [n, maxPeaks] },
        peakResolution: { data: peakResolution, shape: [n, maxPeaks] },
      });
    }
    return w.close();
  } catch (e) {
    w.abort(String(e));
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Reading

/** The fast source of localise's REDU file: `<DET>/REDU/LOCALISE:output`. */
export const LOCALISE_SOURCE_RE = /\/REDU\/LOCALISE:output$/;

/** A directory without localise's REDU file (opened as a run, but no source `<DET>/REDU/LOCALISE:output`). */
export class NoReduFile extends InputError {
  constructor(dir: string) {
    super(dir, "no localise REDU file (source <DET>/REDU/LOCALISE:output) found");
    this.name = "NoReduFile";
  }
}

/** A range of frames in one file: rows [row, row + n) hold frames [frame, frame + n). */
interface Range {
  part: KeyFile;
  /** `INSTRUMENT/<source>/data` in that file. */
  base: string;
  row: number;
  n: number;
  frame: number;
}

/** The frames of a localise output directory (its REDU files), read through INDEX. */
export class ReduReader {
  private constructor(
    readonly dir: string,
    private readonly run: Run,
    /** The source name (the last found when a directory holds several). */
    readonly source: string,
    /** The files holding the source, in the order of their first trains. */
    readonly files: RunFile[],
    private readonly keys: KeyData[],
    private readonly ranges: Range[],
    readonly nFrames: number,
  ) {}

  /**
   * Open the REDU file(s) of a localise output directory. InputError naming `dir` when it holds no REDU
   * file (errors of opening the run pass through).
   */
  static async open(dir: string): Promise<ReduReader> {
    const run = await Run.open(dir);
    try {
      const files = [...run.files].sort((a, b) => (a.trainIds[0] ?? 0) - (b.trainIds[0] ?? 0));
      const names = new Set<string>();
      let source: string | null = null;
      for (const f of files) {
        for (const s of f.sources.values()) {
          if (!LOCALISE_SOURCE_RE.test(s.name)) continue;
          source = s.name;
          names.add(s.name);
        }
      }
      if (!source) throw new NoReduFile(dir);
      const keys: KeyData[] = [];
      const ranges: Range[] = [];
      let nFrames = 0;
      // Per file, each source: the order the per-file readers of the past used.
      for (const f of files) {
        for (const name of names) {
          const kd = new KeyData({ files: [f] }, name, "data.frameLit");
          if (!kd.present) continue;
          keys.push(kd);
          for (const r of kd.ranges()) {
            ranges.push({
              part: r.part,
              base: `INSTRUMENT/${name}/data`,
              row: r.row,
              n: r.n,
              frame: nFrames,
            });
            nFrames += r.n;
          }
        }
      }
      const holding = files.filter((f) => [...names].some((n) => f.sources.has(n)));
      return new ReduReader(dir, run, source, holding, keys, ranges, nFrames);
    } catch (e) {
      run.close();
      throw e;
    }
  }

  /** The detector the output is of: the source name without `/REDU/LOCALISE:output`. */
  get detector(): string {
    return this.source.replace(LOCALISE_SOURCE_RE, "");
  }

  /** The module order of the nModules axes (RUN `<DET>/REDU/LOCALISE` modules), or null when not stored. */
  modules(): number[] | null {
    const ctl = `RUN/${this.source.replace(/:output$/, "")}/modules/value`;
    for (const f of this.files) {
      if (f.h5.get(ctl)) return Array.from(readAll(f.h5, ctl) as ArrayLike<number>, Number);
    }
    return null;
  }

  /** Whether every file holding the source has `data.<key>`; else the first file that lacks it. */
  missing(key: string): RunFile | null {
    for (const f of this.files) {
      for (const s of f.sources.values()) {
        if (LOCALISE_SOURCE_RE.test(s.name) && !f.h5.get(`INSTRUMENT/${s.name}/data/${key}`)) return f;
      }
    }
    return null;
  }

  /** The shape of one entry of `data.<key>` in each file holding the source, by file. */
  entryShapes(key: string): { file: RunFile; shape: number[] }[] {
    const out: { file: RunFile; shape: number[] }[] = [];
    for (const f of this.files) {
      for (const s of f.sources.values()) {
        if (!LOCALISE_SOURCE_RE.test(s.name)) continue;
        out.push({
          file: f,
          shape: dsInfo(f.h5.get(`INSTRUMENT/${s.name}/data/${key}`) as H5Dataset).shape.slice(1),
        });
      }
    }
    return out;
  }

  /** trainId, pulseId and frameLit of every frame (a stored trainId 0 is the INDEX's train). */
  frames(): { trainId: Float64Array; pulseId: Float64Array; frameLit: Uint8Array } {
    const trainId = new Float64Array(this.nFrames), pulseId = new Float64Array(this.nFrames);
    const frameLit = new Uint8Array(this.nFrames);
    for (const b of this.frameWindows(this.nFrames)) {
      trainId.set(b.trainId, b.start);
      pulseId.set(b.pulseId, b.start);
      frameLit.set(b.frameLit, b.start);
    }
    return { trainId, pulseId, frameLit };
  }

  /**
   * trainId, pulseId and frameLit of consecutive frames [start, start + n), n <= maxFrames, in order (a stored
   * trainId 0 is the INDEX's train), in buffers reused from one window to the next.
   */
  *frameWindows(
    maxFrames: number,
  ): Generator<
    { start: number; n: number; trainId: Float64Array; pulseId: Float64Array; frameLit: Uint8Array }
  > {
    const size = Math.max(1, Math.min(maxFrames, this.nFrames));
    const tBuf = new Float64Array(size), pBuf = new Float64Array(size), lBuf = new Uint8Array(size);
    // The INDEX's train of each frame, in frame order: the keys' trains, each `count` frames.
    const trains = (function* (keys: KeyData[]) {
      for (const kd of keys) for (const t of kd.trains()) yield t;
    })(this.keys);
    let train = trains.next(), left = train.done ? 0 : train.value.count;
    for (let start = 0; start < this.nFrames; start += size) {
      const n = Math.min(size, this.nFrames - start);
      const trainId = tBuf.subarray(0, n), pulseId = pBuf.subarray(0, n), frameLit = lBuf.subarray(0, n);
      this.read("trainId", start, n, trainId);
      this.read("pulseId", start, n, pulseId);
      this.read("frameLit", start, n, frameLit);
      for (let i = 0; i < n; i++) {
        while (left === 0 && !train.done) {
          train = trains.next();
          left = train.done ? 0 : train.value.count;
        }
        if (trainId[i] === 0 && !train.done) trainId[i] = train.value.trainId;
        left--;
      }
      yield { start, n, trainId, pulseId, frameLit };
    }
  }

  /** Frames [frame, frame + n) of the per-frame table `data.<key>` into `out` (at element `at`). */
  read(key: string, frame: number, n: number, out: RowBuffer, at = 0): void {
    let per = -1;
    for (const r of this.ranges) {
      const a = Math.max(frame, r.frame), b = Math.min(frame + n, r.frame + r.n);
      if (a >= b) continue;
      const p = `${r.base}/${key}`;
      if (per < 0) per = dsInfo(r.part.file.h5.get(p) as H5Dataset).shape.slice(1).reduce((x, y) => x * y, 1);
      readRowsInto(r.part, p, r.row + a - r.frame, b - a, out, at + (a - frame) * per);
    }
  }

  /** The shape of one entry of `data.<key>` in the file holding `frame`. */
  entryShape(key: string, frame: number): number[] {
    const r = this.ranges.find((r) => frame >= r.frame && frame < r.frame + r.n)!;
    return dsInfo(r.part.file.h5.get(`${r.base}/${key}`) as H5Dataset).shape.slice(1);
  }

  /** The file holding a frame. */
  fileOf(frame: number): RunFile {
    return this.ranges.find((r) => frame >= r.frame && frame < r.frame + r.n)!.part.file;
  }

  /** Frame ranges of at most `maxFrames` frames, each within one file: read large tables a block at a time. */
  *blocks(maxFrames: number): Generator<{ start: number; n: number }> {
    for (const r of this.ranges) {
      for (let k = 0; k < r.n; k += maxFrames) yield { start: r.frame + k, n: Math.min(maxFrames, r.n - k) };
    }
  }

  close(): void {
    this.run.close();
  }
}

// -----------------------------------------------------------------------------------------------------
// The selection: frameLit per frame

/**
 * One train's frames in a Selection: their pulse IDs, `first + k * step` (k = 0 .. n - 1, step > 0) while they
 * come as such a progression (a REDU file's trains, as a rule: nothing per frame), else `pulse` (ascending
 * when `sorted`); lit and matched flags per frame.
 */
interface TrainSelection {
  pulse?: Uint32Array | Float64Array;
  first: number;
  step: number;
  /** Bit 0: lit; bit 1: matched (`match`). */
  flags: Uint8Array;
  n: number;
  sorted: boolean;
}

const pulseAt = (t: TrainSelection, k: number) => (t.pulse ? t.pulse[k] : t.first + k * t.step);
const isU32 = (p: number) => p >= 0 && p < 2 ** 32 && Number.isInteger(p);

/**
 * frameLit per (trainId, pulseId), from the localise REDU file(s): per train a flag byte per frame, and its
 * pulse IDs as a first ID and a step when they are a progression (about 1 byte a frame plus ~0.1 kB a train;
 * 7.3 bytes a frame with u32 pulse IDs per frame, 41 with a Map of Maps), else per frame (u32, or f64 for a
 * train with a pulse ID beyond). A frame added twice counts once, its last decision kept.
 */
export class Selection {
  private readonly byTrain = new Map<number, TrainSelection>();
  frames = 0;
  lit = 0;
  /** Frames `match` has found (each counted once). */
  matched = 0;

  /** The train added to last: its arrays are trimmed to its frames when another train's come. */
  private last?: TrainSelection;

  add(trainId: number, pulseId: number, lit: number): void {
    let t = this.byTrain.get(trainId);
    if (!t) {
      this.byTrain.set(trainId, t = { first: 0, step: 0, flags: new Uint8Array(4), n: 0, sorted: true });
    }
    if (t !== this.last) {
      if (this.last) resize(this.last, this.last.n);
      this.last = t;
    }
    const end = t.n > 0 ? pulseAt(t, t.n - 1) : NaN;
    const at = end === pulseId ? t.n - 1 : t.sorted && (t.n === 0 || end < pulseId) ? -1 : find(t, pulseId);
    if (at >= 0) {
      if (t.flags[at] & 1) this.lit--;
      t.flags[at] = (t.flags[at] & ~1) | (lit ? 1 : 0);
      if (lit) this.lit++;
      return;
    }
    if (t.n === t.flags.length) resize(t, 2 * Math.max(2, t.n));
    if (!t.pulse) {
      if (t.n === 0) t.first = pulseId;
      else if (t.n === 1 && pulseId > t.first) t.step = pulseId - t.first;
      else if (pulseId !== t.first + t.n * t.step || !(pulseId > end)) {
        // Not the progression: the train's pulse IDs per frame from now on.
        const all = t.flags.length, u32 = isU32(t.first) && isU32(end);
        t.pulse = u32 ? new Uint32Array(all) : new Float64Array(all);
        for (let k = 0; k < t.n; k++) t.pulse[k] = t.first + k * t.step;
      }
    }
    if (t.pulse) {
      if (t.pulse instanceof Uint32Array && !isU32(pulseId)) t.pulse = Float64Array.from(t.pulse);
      t.pulse[t.n] = pulseId;
    }
    if (t.n > 0 && !(end < pulseId)) t.sorted = false;
    t.flags[t.n++] = lit ? 1 : 0;
    this.frames++;
    if (lit) this.lit++;
  }

  /** 1 lit, 0 dark, -1 not listed. */
  lookup(trainId: number, pulseId: number): number {
    const t = this.byTrain.get(trainId);
    const at = t ? find(t, pulseId) : -1;
    return at < 0 ? -1 : t!.flags[at] & 1;
  }

  /** lookup, and the frame (when listed) marked as matched: `matched` counts the frames marked. */
  match(trainId: number, pulseId: number): number {
    const t = this.byTrain.get(trainId);
    const at = t ? find(t, pulseId) : -1;
    if (at < 0) return -1;
    if (!(t!.flags[at] & 2)) {
      t!.flags[at] |= 2;
      this.matched++;
    }
    return t!.flags[at] & 1;
  }

  /** Bytes of the trains' arrays (not counting the Map and the objects): what the representation costs. */
  arrayBytes(): number {
    let n = 0;
    for (const t of this.byTrain.values()) n += t.flags.byteLength + (t.pulse?.byteLength ?? 0);
    return n;
  }
}

/** A train's arrays resized to hold `size` frames (at least its n). */
function resize(t: TrainSelection, size: number): void {
  if (size === t.flags.length) return;
  if (t.pulse) {
    const pulse = new (t.pulse.constructor as Uint32ArrayConstructor | Float64ArrayConstructor)(size);
    pulse.set(t.pulse.subarray(0, t.n));
    t.pulse = pulse;
  }
  const flags = new Uint8Array(size);
  flags.set(t.flags.subarray(0, t.n));
  t.flags = flags;
}

/** The index of pulseId among the train's frames, -1 when not there (binary search when sorted). */
function find(t: TrainSelection, pulseId: number): number {
  if (!t.pulse) {
    if (t.n === 0) return -1;
    if (t.n === 1) return pulseId === t.first ? 0 : -1;
    const k = (pulseId - t.first) / t.step;
    return Number.isInteger(k) && k >= 0 && k < t.n && t.first + k * t.step === pulseId ? k : -1;
  }
  const pulse = t.pulse;
  if (!t.sorted) {
    for (let i = 0; i < t.n; i++) if (pulse[i] === pulseId) return i;
    return -1;
  }
  let lo = 0, hi = t.n - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1, v = pulse[mid];
    if (v === pulseId) return mid;
    if (v < pulseId) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/** The frame selection of a localise output directory: frameLit of every frame of its REDU file(s). */
export async function readSelection(dir: string): Promise<{ selection: Selection; detector: string }> {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new InputError(dir, "localise output directory not found");
  }
  const redu = await ReduReader.open(dir);
  try {
    const selection = new Selection();
    // Read a window at a time (64k frames): nothing per frame but the selection's own ~6 bytes.
    for (const w of redu.frameWindows(1 << 16)) {
      for (let f = 0; f < w.n; f++) selection.add(w.trainId[f], w.pulseId[f], w.frameLit[f]);
    }
    return { selection, detector: redu.detector };
  } finally {
    redu.close();
  }
}
