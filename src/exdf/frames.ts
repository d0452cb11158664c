/**
 * Frame iterator: batches of detector frames over a train range, all selected modules aligned on
 * (trainId, pulseId).
 *
 * Spec:
 * - The frames of a run are the union over modules of (trainId, pulseId), sorted by trainId then pulseId.
 *   A module that misses a train, or records fewer frames in it, has those frames marked absent
 *   (present = 0, data NaN, mask 0): never shifted.
 * - JUNGFRAU stores every memory cell of a train in one entry: frame pulseId = index of the cell in the
 *   entry, cellId = `data.memoryCell` when present.
 * - Image data is delivered as float32 (RAW u16 ADU converted; AGIPD RAW gives the analog plane, axis 1 = 0),
 *   module by module, frame-major then ss then fs. Mask (u32, 0 = good) and gain (u8) where present and asked.
 * - Memory is bounded: each batch holds at most `batchBytes` per module (frames x pixels x bytes of the
 *   requested keys), read by hyperslab into buffers reused between batches (two sets, alternating, so the
 *   consumer may hold one batch while the next is read).
 * - The alignment is streamed, independent of the run length: the run's trains are split into windows of
 *   whole trains (about WINDOW_FRAMES frames each); opening counts each window's aligned frames (its table
 *   built from the rows of its trains and dropped), and a read builds the table of the window(s) it falls
 *   in (kept until a read falls outside). Kept: a few numbers per window. `frameIds` and `presence` build
 *   whole-run arrays for the callers that want them (not the processing framework).
 */
import { InputError } from "../errors.ts";
import {
  arrayFor,
  closeRunFile,
  type DsInfo,
  dsInfo,
  type H5Dataset,
  isRunFileOpen,
  type NumericArray,
  readRows,
  readSlab,
} from "./h5.ts";
import type { Detector, DetectorModule, ModuleFile } from "./run.ts";

export interface FrameOptions {
  /** Module numbers to read (default: all of the detector). */
  modules?: number[];
  /** Inclusive train-ID range (default: the whole run). */
  firstTrain?: number;
  lastTrain?: number;
  /** Bytes per module per batch (default 64 MiB). */
  batchBytes?: number;
  mask?: boolean;
  gain?: boolean;
  /** Frames per window of the frame table (default WINDOW_FRAMES; tests make it small). */
  windowFrames?: number;
}

export interface ModuleFrames {
  module: number;
  /** 1 where this module recorded the frame. */
  present: Uint8Array;
  data: Float32Array;
  mask?: Uint32Array;
  gain?: Uint8Array;
}

/** trainId / pulseId / cellId of frames. */
export interface FrameIds {
  trainId: Float64Array;
  pulseId: Float64Array;
  cellId: Int32Array;
}

export interface FrameBatch {
  /** Index of the batch's first frame among all aligned frames of the selection. */
  start: number;
  nFrames: number;
  trainId: Float64Array;
  pulseId: Float64Array;
  cellId: Int32Array;
  modules: ModuleFrames[];
}

/** Where one module's frame lives: file, row, and cell within the row (JUNGFRAU). */
interface FrameTable {
  trainId: Float64Array;
  pulseId: Float64Array;
  cellId: Int32Array;
  /** Per module: file index (-1 absent), row, and cell index per aligned frame. */
  file: Int32Array[];
  row: Int32Array[];
  cell: Int32Array[];
}

function has(mf: ModuleFile, key: string): boolean {
  try {
    return mf.file.h5.get(`${mf.groupPath}/${key}`) !== null;
  } catch {
    return false;
  }
}

/**
 * Rows [lo, hi) of a per-frame key of one module file as numbers (NaN past the dataset's end), in reused
 * buffer `slot` of `scratch` (valid until the next readIds into that slot); undefined when the file has no such
 * key.
 */
function readIds(
  mf: ModuleFile,
  key: string,
  lo: number,
  hi: number,
  slot: number,
): Float64Array | undefined {
  const p = `${mf.groupPath}/${key}`;
  const info = dsInfo(mf.file.h5.get(p) as H5Dataset);
  const per = info.shape.slice(1).reduce((a, b) => a * b, 1);
  const end = Math.min(hi, info.shape[0] ?? 0);
  const n = Math.max(0, hi - lo) * per;
  if (scratch.ids[slot].length < n) scratch.ids[slot] = new Float64Array(grow(scratch.ids[slot].length, n));
  const out = scratch.ids[slot].subarray(0, n).fill(NaN);
  if (end > lo) {
    const m = (end - lo) * per;
    let raw = scratch.raw.get(info.dtype);
    if (!raw || raw.length < m) {
      scratch.raw.set(info.dtype, raw = arrayFor(info.dtype, grow(raw?.length ?? 0, m)));
    }
    readRows(mf.file.h5, p, info.shape, lo, end - lo, raw);
    for (let k = 0; k < m; k++) out[k] = Number(raw[k]);
  }
  return out;
}

/** A reused buffer's next length: at least n, doubling (a buffer grows a few times, then stays). */
const grow = (have: number, n: number) => Math.max(n, 2 * have, 16);

/** A growable column of numbers (typed: no object per frame). */
class Column<T extends Float64Array | Int32Array> {
  n = 0;
  constructor(public a: T) {}
  push(x: number): void {
    if (this.n === this.a.length) {
      const b = new (this.a.constructor as new (n: number) => T)(Math.max(16, this.a.length * 2));
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = x;
  }
}

/**
 * The working memory of buildTable and readIds, reused from table to table (a thread builds one at a time).
 * Allocated anew for each, the counting pass's ~1 MB a window of transient columns and IDs piled up between
 * collections in the malloc heap, which keeps its high-water mark: +3.6 MB in a thread counting 4 files a
 * module against 1 (bench/RESULTS.md).
 */
const scratch = {
  T: new Column(new Float64Array(0)),
  P: new Column(new Float64Array(0)),
  C: new Column(new Float64Array(0)),
  F: new Column(new Int32Array(0)),
  R: new Column(new Int32Array(0)),
  L: new Column(new Int32Array(0)),
  order: new Uint32Array(0),
  /** trainId, pulseId, cellId (or memoryCell) of the file being read, as numbers. */
  ids: [new Float64Array(0), new Float64Array(0), new Float64Array(0)],
  /** The IDs as stored, by dtype. */
  raw: new Map<string, NumericArray>(),
};

/**
 * The frames of the trains in [first, last], aligned across modules: the rows of the full run's table for
 * those trains (its order is trainId first, so a train range is a contiguous piece of it). Only the rows of
 * those trains are read from each file (trainId, pulseId, cellId). Typed columns throughout (~50 bytes per
 * module frame while building, not a JS object and a string key each).
 */
function buildTable(
  det: Detector,
  modules: DetectorModule[],
  first: number,
  last: number,
): FrameTable {
  const { n, order, moduleEnd } = locate(det, modules, first, last, false);
  const { T, P, C, F, R, L } = scratch;
  const t = T.a, p = P.a;
  const table: FrameTable = {
    trainId: new Float64Array(n),
    pulseId: new Float64Array(n),
    cellId: new Int32Array(n),
    file: modules.map(() => new Int32Array(n).fill(-1)),
    row: modules.map(() => new Int32Array(n)),
    cell: modules.map(() => new Int32Array(n)),
  };
  let i = -1;
  for (let k = 0; k < order.length; k++) {
    const g = order[k];
    if (k === 0 || !sameFrame(t, p, g, order[k - 1])) {
      i++;
      table.trainId[i] = t[g];
      table.pulseId[i] = p[g];
      table.cellId[i] = C.a[g];
    }
    let mi = 0;
    while (g >= moduleEnd[mi]) mi++;
    if (table.file[mi][i] !== -1) continue; // a duplicated (trainId, pulseId) in one module: keep the first
    table.file[mi][i] = F.a[g];
    table.row[mi][i] = R.a[g];
    table.cell[mi][i] = L.a[g];
  }
  return table;
}

/**
 * Bytes of the frame table of n frames of m modules: its typed columns (trainId, pulseId, cellId; per module
 * file, row, cell).
 */
const tableBytesOf = (n: number, m: number) => n * (8 + 8 + 4 + m * 12);

/** (trainId, pulseId) of locations x and y equal, as the keys `${t}:${p}` were (NaN equals NaN). */
function sameFrame(t: Float64Array, p: Float64Array, x: number, y: number): boolean {
  const eq = (a: number, b: number) => a === b || (a !== a && b !== b);
  return eq(t[x], t[y]) && eq(p[x], p[y]);
}

/**
 * Every module's locations of the frames of trains [first, last] in scratch's columns (module after module,
 * moduleEnd[m] the end of module m's), and `order`: the locations sorted by (trainId, pulseId), ties in
 * location order; n: the number of distinct frames (buildTable's table length). With closeAfter a file that
 * was not open is closed once its IDs are read (the counting pass reads each file once).
 */
function locate(
  det: Detector,
  modules: DetectorModule[],
  first: number,
  last: number,
  closeAfter: boolean,
): { n: number; order: Uint32Array; moduleEnd: number[] } {
  const cells = det.cellsPerEntry;
  const jf = det.type === "JUNGFRAU";
  // All modules' locations in one set of columns, module after module (g: global location index).
  const { T, P, C, F, R, L } = scratch;
  for (const col of [T, P, C, F, R, L]) col.n = 0;
  const moduleEnd: number[] = [];
  const push = (t: number, p: number, c: number, file: number, row: number, cell: number) => {
    T.push(t);
    P.push(p);
    C.push(c);
    F.push(file);
    R.push(row);
    L.push(cell);
  };
  for (const m of modules) {
    m.files.forEach((mf, fi) => {
      const n = mf.rows;
      const trains = mf.file.trainIds;
      // The rows of this file's trains in the range.
      let lo = Infinity, hi = -Infinity;
      for (let i = 0; i < trains.length; i++) {
        const tid = trains[i];
        if (tid < first || tid > last) continue;
        const f0 = mf.index.first[i], end = Math.min(f0 + mf.index.count[i], n);
        if (end <= f0) continue;
        lo = Math.min(lo, f0);
        hi = Math.max(hi, end);
      }
      if (hi <= lo) return;
      const closeAfterIds = closeAfter && !isRunFileOpen(mf.file.path);
      const tIds = jf ? undefined : readIds(mf, "trainId", lo, hi, 0);
      const pIds = jf ? undefined : has(mf, "pulseId") ? readIds(mf, "pulseId", lo, hi, 1) : undefined;
      const cKey = jf ? "memoryCell" : "cellId";
      const cIds = has(mf, cKey) ? readIds(mf, cKey, lo, hi, 2) : undefined;
      if (closeAfterIds) closeRunFile(mf.file.path);
      for (let i = 0; i < trains.length; i++) {
        const tid = trains[i];
        if (tid < first || tid > last) continue;
        const f0 = mf.index.first[i];
        const cnt = mf.index.count[i];
        for (let r = f0; r < f0 + cnt && r < n; r++) {
          const k = r - lo;
          if (jf) {
            for (let c = 0; c < cells; c++) {
              // Past the end of memoryCell: the cell's index; no memoryCell at all: 0 (as before).
              const v = cIds ? cIds[k * cells + c] : 0;
              push(tid, c, v !== v ? c : v, fi, r, c);
            }
          } else {
            // The per-frame trainId must agree with the index; a frame that disagrees is not this train's.
            if (tIds && tIds[k] !== 0 && tIds[k] !== tid) continue;
            push(tid, pIds ? pIds[k] : 0, cIds ? cIds[k] : 0, fi, r, 0);
          }
        }
      }
    });
    moduleEnd.push(T.n);
  }
  // Union of (trainId, pulseId), sorted; ties in location order (the first module's, first location wins).
  const t = T.a, p = P.a;
  if (scratch.order.length < T.n) scratch.order = new Uint32Array(grow(scratch.order.length, T.n));
  const order = scratch.order.subarray(0, T.n);
  for (let g = 0; g < order.length; g++) order[g] = g;
  order.sort((x, y) => t[x] - t[y] || p[x] - p[y] || x - y);
  let n = 0;
  for (let k = 0; k < order.length; k++) if (k === 0 || !sameFrame(t, p, order[k], order[k - 1])) n++;
  return { n, order, moduleEnd };
}

/** Frames per window of the frame table by default (whole trains; at least one train). */
export const WINDOW_FRAMES = 4096;

/**
 * The run's trains in [first, last] split into windows of whole trains of about `windowFrames` aligned
 * frames (module frames of the index / modules, an estimate; at least one train a window): per window its
 * first and last train ID. Transient: a map of the trains' index counts (one entry per train).
 */
function trainWindows(
  det: Detector,
  modules: DetectorModule[],
  first: number,
  last: number,
  windowFrames: number,
): { first: number; last: number }[] {
  const located = new Map<number, number>();
  for (const m of modules) {
    for (const mf of m.files) {
      const trains = mf.file.trainIds;
      for (let i = 0; i < trains.length; i++) {
        const tid = trains[i];
        if (tid < first || tid > last) continue;
        const cnt = Math.max(0, Math.min(mf.index.count[i], mf.rows - mf.index.first[i]));
        located.set(tid, (located.get(tid) ?? 0) + cnt * det.cellsPerEntry);
      }
    }
  }
  const ids = Float64Array.from(located.keys()).sort();
  const out: { first: number; last: number }[] = [];
  const per = Math.max(1, windowFrames) * Math.max(1, modules.length);
  let acc = 0;
  for (let i = 0; i < ids.length; i++) {
    if (acc === 0) out.push({ first: ids[i], last: ids[i] });
    out[out.length - 1].last = ids[i];
    acc += located.get(ids[i])!;
    if (acc >= per) acc = 0;
  }
  return out;
}

/** One window of the frame table: its trains, its first frame among all frames, its frame count. */
interface Window {
  first: number;
  last: number;
  start: number;
  frames: number;
}

/** Aligned frames of a detector, read in batches. */
export class FrameReader {
  readonly modules: DetectorModule[];
  readonly nFrames: number;
  readonly framesPerBatch: number;
  readonly pixels: number;
  /** The windows of trains over the selection (a few per 4,096 frames: independent of the frames). */
  private windows: Window[];
  /** The frame table of windows [w0, w1] (the last built), and its first frame. */
  private table: FrameTable;
  private w0 = 0;
  private w1 = -1;
  private tableStart = 0;
  /** The largest frame table built (bytes of its columns); see `tableBytes`. */
  private maxTableBytes = 0;
  private buffers: ModuleFrames[][] = [];
  private scratch?: NumericArray;
  private nextBuffer = 0;
  /** Per module file: mask / gain dataset info, null where the file has none. */
  private auxInfo = new Map<ModuleFile, Map<string, DsInfo | null>>();

  constructor(readonly detector: Detector, readonly options: FrameOptions = {}) {
    const wanted = options.modules;
    this.modules = wanted ? detector.modules.filter((m) => wanted.includes(m.module)) : detector.modules;
    if (wanted) {
      const missing = wanted.filter((w) => !detector.modules.some((m) => m.module === w));
      if (missing.length) {
        throw new InputError(undefined, `detector ${detector.name} has no module ${missing.join(", ")}`);
      }
    }
    const [ss, fs] = detector.imageShape;
    this.pixels = ss * fs;
    const bytesPerFrame = this.pixels * (4 + (options.mask ? 4 : 0) + (options.gain ? 1 : 0));
    this.framesPerBatch = Math.max(1, Math.floor((options.batchBytes ?? 64 * 2 ** 20) / bytesPerFrame));
    // The frames of each window of trains, counted window by window (each window's table built and dropped):
    // the run is never aligned all at once.
    const trains = trainWindows(
      detector,
      this.modules,
      options.firstTrain ?? -Infinity,
      options.lastTrain ?? Infinity,
      options.windowFrames ?? WINDOW_FRAMES,
    );
    let start = 0;
    // The counting pass reads every file's IDs once: a file it opened is closed after (HDF5 holds ~0.37 MB
    // of the wasm heap per open file, and the heap keeps its high-water mark); reading opens it again.
    this.windows = trains.map(({ first, last }) => {
      const frames = locate(detector, this.modules, first, last, true).n;
      this.maxTableBytes = Math.max(this.maxTableBytes, tableBytesOf(frames, this.modules.length));
      const w = { first, last, start, frames };
      start += w.frames;
      return w;
    });
    this.nFrames = start;
    this.table = this.build(1, 0);
  }

  private build(first: number, last: number): FrameTable {
    const t = buildTable(this.detector, this.modules, first, last);
    this.maxTableBytes = Math.max(this.maxTableBytes, tableBytesOf(t.trainId.length, this.modules.length));
    return t;
  }

  /**
   * Memory of the frame alignment: the largest frame table held at once (bytes; a window of trains, or the
   * windows one batch spans) and the number of windows (a few dozen bytes each). Neither grows with the run
   * beyond the window count; `frameIds` and `presence` build whole-run arrays for the callers that ask.
   */
  get tableBytes(): { maxTable: number; windows: number } {
    return { maxTable: this.maxTableBytes, windows: this.windows.length };
  }

  /** The window holding frame f (the last window with start <= f and frames > 0). */
  private windowOf(f: number): number {
    let lo = 0, hi = this.windows.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.windows[mid].start <= f) lo = mid;
      else hi = mid - 1;
    }
    while (lo > 0 && this.windows[lo].frames === 0) lo--;
    return lo;
  }

  /** The frame table covering frames [start, start + count) (count >= 1), and its first frame. */
  private tableFor(start: number, count: number): { table: FrameTable; at: number } {
    const a = this.windowOf(start), b = this.windowOf(start + count - 1);
    if (a < this.w0 || b > this.w1) {
      const t = this.build(this.windows[a].first, this.windows[b].last);
      const want = this.windows[b].start + this.windows[b].frames - this.windows[a].start;
      if (t.trainId.length !== want) {
        throw new Error(`frame table: ${t.trainId.length} frames in trains where ${want} were counted`);
      }
      this.table = t;
      this.w0 = a;
      this.w1 = b;
      this.tableStart = this.windows[a].start;
    }
    return { table: this.table, at: start - this.tableStart };
  }

  /**
   * trainId / pulseId / cellId of the aligned frames [start, start + n) of each window in turn: views into
   * the window's table, valid until the next window is taken.
   */
  *frameIdWindows(): Generator<
    { start: number; trainId: Float64Array; pulseId: Float64Array; cellId: Int32Array }
  > {
    for (const w of this.windows) {
      if (!w.frames) continue;
      const { table, at } = this.tableFor(w.start, w.frames);
      yield {
        start: w.start,
        trainId: table.trainId.subarray(at, at + w.frames),
        pulseId: table.pulseId.subarray(at, at + w.frames),
        cellId: table.cellId.subarray(at, at + w.frames),
      };
    }
  }

  /** trainId / pulseId / cellId of every aligned frame (whole-run arrays, built window by window). */
  get frameIds(): { trainId: Float64Array; pulseId: Float64Array; cellId: Int32Array } {
    const out = {
      trainId: new Float64Array(this.nFrames),
      pulseId: new Float64Array(this.nFrames),
      cellId: new Int32Array(this.nFrames),
    };
    for (const w of this.frameIdWindows()) {
      out.trainId.set(w.trainId, w.start);
      out.pulseId.set(w.pulseId, w.start);
      out.cellId.set(w.cellId, w.start);
    }
    return out;
  }

  /** Which modules recorded each frame: present[moduleIndex][frame] (whole-run arrays). */
  presence(): Uint8Array[] {
    const out = this.modules.map(() => new Uint8Array(this.nFrames));
    for (const w of this.windows) {
      if (!w.frames) continue;
      const { table, at } = this.tableFor(w.start, w.frames);
      table.file.forEach((f, mi) => {
        for (let i = 0; i < w.frames; i++) out[mi][w.start + i] = f[at + i] >= 0 ? 1 : 0;
      });
    }
    return out;
  }

  private buffersFor(k: number): ModuleFrames[] {
    if (!this.buffers[k]) {
      const n = this.framesPerBatch;
      this.buffers[k] = this.modules.map((m) => ({
        module: m.module,
        present: new Uint8Array(n),
        data: new Float32Array(n * this.pixels),
        mask: this.options.mask ? new Uint32Array(n * this.pixels) : undefined,
        gain: this.options.gain ? new Uint8Array(n * this.pixels) : undefined,
      }));
    }
    return this.buffers[k];
  }

  /** Read frames [start, start + count) of the selection. The returned buffers are reused two calls later. */
  read(start: number, count: number): FrameBatch {
    const bufs = this.buffersFor(this.nextBuffer);
    this.nextBuffer ^= 1;
    return this.readInto(start, count, bufs);
  }

  /**
   * Read frames [start, start + count) into the caller's buffers (one ModuleFrames per selected module,
   * each at least framesPerBatch frames long; SharedArrayBuffer-backed arrays are fine).
   */
  readInto(start: number, count: number, bufs: ModuleFrames[], ids?: FrameIds): FrameBatch {
    count = Math.max(0, Math.min(count, this.framesPerBatch, this.nFrames - start));
    const { table, at } = count > 0 ? this.tableFor(start, count) : { table: this.table, at: 0 };
    let trainId = table.trainId.subarray(at, at + count),
      pulseId = table.pulseId.subarray(at, at + count),
      cellId = table.cellId.subarray(at, at + count);
    if (ids) {
      // Into the caller's arrays (a shared batch buffer): the table is rebuilt as reading moves on.
      ids.trainId.set(trainId);
      ids.pulseId.set(pulseId);
      ids.cellId.set(cellId);
      trainId = ids.trainId.subarray(0, count);
      pulseId = ids.pulseId.subarray(0, count);
      cellId = ids.cellId.subarray(0, count);
    }
    const out: FrameBatch = { start, nFrames: count, trainId, pulseId, cellId, modules: [] };
    this.modules.forEach((m, mi) => {
      const b = bufs[mi];
      const mf: ModuleFrames = {
        module: m.module,
        present: b.present.subarray(0, count),
        data: b.data.subarray(0, count * this.pixels),
        mask: b.mask?.subarray(0, count * this.pixels),
        gain: b.gain?.subarray(0, count * this.pixels),
      };
      this.readModule(table, mi, at, count, mf);
      out.modules.push(mf);
    });
    return out;
  }

  /** Iterate over all frames of the selection in batches. */
  *batches(): Generator<FrameBatch> {
    for (let s = 0; s < this.nFrames; s += this.framesPerBatch) yield this.read(s, this.framesPerBatch);
  }

  /** Frames [start, start + count) of the table `table` (not of the run) of module mi. */
  private readModule(table: FrameTable, mi: number, start: number, count: number, out: ModuleFrames): void {
    const m = this.modules[mi];
    const file = table.file[mi];
    const row = table.row[mi];
    const cell = table.cell[mi];
    const px = this.pixels;
    let i = 0;
    while (i < count) {
      const fi = file[start + i];
      if (fi < 0) {
        out.present[i] = 0;
        out.data.fill(NaN, i * px, (i + 1) * px);
        out.mask?.fill(0, i * px, (i + 1) * px);
        out.gain?.fill(0, i * px, (i + 1) * px);
        i++;
        continue;
      }
      // A run of frames stored in consecutive rows (or consecutive cells of one row) of one file.
      let n = 1;
      const jf = this.detector.cellsPerEntry > 1;
      while (
        i + n < count && file[start + i + n] === fi &&
        (jf
          ? row[start + i + n] === row[start + i] && cell[start + i + n] === cell[start + i] + n
          : row[start + i + n] === row[start + i] + n)
      ) n++;
      out.present.fill(1, i, i + n);
      this.readRun(m.files[fi], row[start + i], cell[start + i], n, out, i);
      i += n;
    }
  }

  private readRun(mf: ModuleFile, row: number, cell: number, n: number, out: ModuleFrames, at: number): void {
    const det = this.detector;
    const px = this.pixels;
    const [ss, fs] = det.imageShape;
    const es = det.entryShape;
    // Hyperslab over the stored entry shape: frames along axis 0 (or the cell axis for JUNGFRAU).
    let offset: number[], countArr: number[];
    if (det.cellsPerEntry > 1) {
      offset = [row, cell, 0, 0];
      countArr = [1, n, ss, fs];
    } else {
      offset = [row, ...es.map(() => 0)];
      countArr = [n, ...es.slice(0, -2).map(() => 1), ss, fs];
    }
    const h5 = mf.file.h5;
    if (det.dtype === "float32") {
      readSlab(h5, mf.dataPath, offset, countArr, out.data, at * px);
    } else {
      const need = n * px;
      if (!this.scratch || this.scratch.length < need || !sameType(this.scratch, det.dtype)) {
        this.scratch = arrayFor(det.dtype, this.framesPerBatch * px);
      }
      readSlab(h5, mf.dataPath, offset, countArr, this.scratch, 0);
      const src = this.scratch as unknown as ArrayLike<number>;
      const dst = out.data;
      const base = at * px;
      for (let k = 0; k < need; k++) dst[base + k] = Number(src[k]);
    }
    if (out.mask) this.readAux(mf, "mask", "uint32", offset, countArr, out.mask, at * px);
    if (out.gain) this.readAux(mf, "gain", "uint8", offset, countArr, out.gain, at * px);
  }

  private readAux(
    mf: ModuleFile,
    key: string,
    want: string,
    offset: number[],
    count: number[],
    out: Uint32Array | Uint8Array,
    at: number,
  ): void {
    const p = `${mf.groupPath}/${key}`;
    // Looked up once per file and key (a lookup opens the dataset: ~0.1 ms, per module and batch).
    let known = this.auxInfo.get(mf);
    if (!known) this.auxInfo.set(mf, known = new Map());
    let info = known.get(key);
    if (info === undefined) {
      known.set(key, info = has(mf, key) ? dsInfo(mf.file.h5.get(p) as H5Dataset) : null);
    }
    if (!info) {
      out.fill(0, at, at + count.reduce((a, b) => a * b, 1));
      return;
    }
    // The mask/gain of CORR data is (N, ss, fs); RAW gain sits on axis 1 of data and is not read here.
    const off = info.shape.length === offset.length ? offset : [offset[0], ...offset.slice(-2)];
    const cnt = info.shape.length === count.length ? count : [count[0], ...count.slice(-2)];
    if (info.dtype === want) {
      readSlab(mf.file.h5, p, off, cnt, out, at);
    } else {
      const tmp = arrayFor(info.dtype, cnt.reduce((a, b) => a * b, 1));
      readSlab(mf.file.h5, p, off, cnt, tmp, 0);
      for (let k = 0; k < tmp.length; k++) out[at + k] = Number(tmp[k]);
    }
  }
}

function sameType(a: NumericArray, dtype: string): boolean {
  return a.constructor === arrayFor(dtype, 0).constructor;
}
