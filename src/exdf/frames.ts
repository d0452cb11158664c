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
 */
import { InputError } from "../errors.ts";
import { arrayFor, type DsInfo, dsInfo, type H5Dataset, type NumericArray, readAll, readSlab } from "./h5.ts";
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
}

export interface ModuleFrames {
  module: number;
  /** 1 where this module recorded the frame. */
  present: Uint8Array;
  data: Float32Array;
  mask?: Uint32Array;
  gain?: Uint8Array;
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

function ids(arr: NumericArray | undefined, n: number): number[] {
  if (!arr) return new Array(n).fill(0);
  return Array.from(arr, Number);
}

function has(mf: ModuleFile, key: string): boolean {
  try {
    return mf.file.h5.get(`${mf.groupPath}/${key}`) !== null;
  } catch {
    return false;
  }
}

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
 * All frames of the selection, aligned across modules. Typed columns throughout (memory ~50 bytes per
 * module frame while building, not a JS object and a string key each: 64,000 frames took +54 MB of RSS).
 */
function buildTable(det: Detector, modules: DetectorModule[], first: number, last: number): FrameTable {
  const cells = det.cellsPerEntry;
  const jf = det.type === "JUNGFRAU";
  // All modules' locations in one set of columns, module after module (g: global location index).
  const T = new Column(new Float64Array(0)),
    P = new Column(new Float64Array(0)),
    C = new Column(new Float64Array(0));
  const F = new Column(new Int32Array(0)),
    R = new Column(new Int32Array(0)),
    L = new Column(new Int32Array(0));
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
      const tIds = jf ? undefined : ids(readAll(mf.file.h5, `${mf.groupPath}/trainId`), n);
      const pIds = jf
        ? undefined
        : ids(has(mf, "pulseId") ? readAll(mf.file.h5, `${mf.groupPath}/pulseId`) : undefined, n);
      const cIds = ids(
        jf
          ? (has(mf, "memoryCell") ? readAll(mf.file.h5, `${mf.groupPath}/memoryCell`) : undefined)
          : (has(mf, "cellId") ? readAll(mf.file.h5, `${mf.groupPath}/cellId`) : undefined),
        n * cells,
      );
      const trains = mf.file.trainIds;
      for (let i = 0; i < trains.length; i++) {
        const tid = trains[i];
        if (tid < first || tid > last) continue;
        const f0 = mf.index.first[i];
        const cnt = mf.index.count[i];
        for (let r = f0; r < f0 + cnt && r < n; r++) {
          if (jf) {
            for (let c = 0; c < cells; c++) push(tid, c, cIds[r * cells + c] ?? c, fi, r, c);
          } else {
            // The per-frame trainId must agree with the index; a frame that disagrees is not this train's.
            if (tIds && tIds[r] !== 0 && tIds[r] !== tid) continue;
            push(tid, pIds![r], cIds[r], fi, r, 0);
          }
        }
      }
    });
    moduleEnd.push(T.n);
  }
  // Union of (trainId, pulseId), sorted; ties in location order (the first module's, first location wins).
  const t = T.a, p = P.a;
  const order = new Uint32Array(T.n);
  for (let g = 0; g < order.length; g++) order[g] = g;
  order.sort((x, y) => t[x] - t[y] || p[x] - p[y] || x - y);
  // Equal as the keys `${t}:${p}` were (NaN equals NaN).
  const eq = (a: number, b: number) => a === b || (a !== a && b !== b);
  const same = (x: number, y: number) => eq(t[x], t[y]) && eq(p[x], p[y]);
  let n = 0;
  for (let k = 0; k < order.length; k++) if (k === 0 || !same(order[k], order[k - 1])) n++;
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
    if (k === 0 || !same(g, order[k - 1])) {
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

/** Aligned frames of a detector, read in batches. */
export class FrameReader {
  readonly modules: DetectorModule[];
  readonly nFrames: number;
  readonly framesPerBatch: number;
  readonly pixels: number;
  private table: FrameTable;
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
    this.table = buildTable(
      detector,
      this.modules,
      options.firstTrain ?? -Infinity,
      options.lastTrain ?? Infinity,
    );
    this.nFrames = this.table.trainId.length;
    const bytesPerFrame = this.pixels * (4 + (options.mask ? 4 : 0) + (options.gain ? 1 : 0));
    this.framesPerBatch = Math.max(1, Math.floor((options.batchBytes ?? 64 * 2 ** 20) / bytesPerFrame));
  }

  /** trainId / pulseId / cellId of every aligned frame. */
  get frameIds(): { trainId: Float64Array; pulseId: Float64Array; cellId: Int32Array } {
    return { trainId: this.table.trainId, pulseId: this.table.pulseId, cellId: this.table.cellId };
  }

  /** Which modules recorded each frame: present[moduleIndex][frame]. */
  presence(): Uint8Array[] {
    return this.table.file.map((f) => Uint8Array.from(f, (x) => (x >= 0 ? 1 : 0)));
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
  readInto(start: number, count: number, bufs: ModuleFrames[]): FrameBatch {
    count = Math.min(count, this.framesPerBatch, this.nFrames - start);
    const out: FrameBatch = {
      start,
      nFrames: count,
      trainId: this.table.trainId.subarray(start, start + count),
      pulseId: this.table.pulseId.subarray(start, start + count),
      cellId: this.table.cellId.subarray(start, start + count),
      modules: [],
    };
    this.modules.forEach((m, mi) => {
      const b = bufs[mi];
      const mf: ModuleFrames = {
        module: m.module,
        present: b.present.subarray(0, count),
        data: b.data.subarray(0, count * this.pixels),
        mask: b.mask?.subarray(0, count * this.pixels),
        gain: b.gain?.subarray(0, count * this.pixels),
      };
      this.readModule(mi, start, count, mf);
      out.modules.push(mf);
    });
    return out;
  }

  /** Iterate over all frames of the selection in batches. */
  *batches(): Generator<FrameBatch> {
    for (let s = 0; s < this.nFrames; s += this.framesPerBatch) yield this.read(s, this.framesPerBatch);
  }

  private readModule(mi: number, start: number, count: number, out: ModuleFrames): void {
    const m = this.modules[mi];
    const file = this.table.file[mi];
    const row = this.table.row[mi];
    const cell = this.table.cell[mi];
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
