/**
 * `reduce RUN --from LOCALISE_OUT --out DIR`: delete the dark frames of a run. See docs/dark-frames.md.
 *
 * Spec:
 * - The decision: `data.frameLit` of the localise REDU file (`<DET>/REDU/LOCALISE:output`), per
 *   (trainId, pulseId); module selection and ROIs from its summary.json. A selection found on a CORR run
 *   applies to the RAW run of the same frames (matched on trainId, pulseId). A frame the selection does not
 *   list counts as dark (and is reported as unmatched).
 * - Every `*.h5` file of RUN gets an output file of the same name in DIR:
 *   - files holding modules of the selected detector: each module source keeps only its lit frames (plus
 *     every Nth dark frame with `keepDark`), in every per-frame dataset (the datasets of the module's
 *     `image` group, JUNGFRAU `data`, whose first axis is the rows of the image data), bit-identical, with
 *     the source's dtype, chunk shape and deflate filter; `INDEX/<src>/<group>/{first,count}` (or legacy
 *     first/last/status) recomputed; everything else (METADATA, INDEX/trainId, per-train groups, CONTROL,
 *     RUN, attributes) copied as is, soft links (the legacy `DET/<m>CH0:xtdf` links of newer CORR files)
 *     recreated as links. JUNGFRAU stores a train's memory cells in one entry: an entry is kept when one of
 *     its cells is.
 *   - other files are copied byte for byte.
 *   - `modules: "selected"`: module files of modules localise did not select are left out.
 *   - `roi`: the image-shaped per-frame datasets (data, mask, gain) are replaced, per ROI box k of the module,
 *     by `<group>/roi<k>/<name>` of shape (N, ..., ss1 - ss0, fs1 - fs0), with attribute `box` =
 *     [ss0, fs0, ss1, fs1] on the dataset and on the roi<k> group.
 * - Bounded memory: data move through one reused wasm-heap buffer of at most `sliceBytes`, a run of
 *   consecutive kept rows at a time; no image dataset is ever read whole.
 * - Safety: RUN is opened read-only and never written; DIR inside RUN (or holding RUN or the localise output)
 *   is refused, an existing DIR without `force` too. Everything is written into a temporary directory beside
 *   DIR (each file under a temporary name until complete), renamed to DIR at the end; an error or a signal
 *   removes it: an interrupted reduce leaves no file under a final name.
 * - DIR/reduction.json records bytes in / out, the ratio, frames kept per module, options and notes.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { InputError } from "../errors.ts";
import {
  type CompressionRecord,
  Compressor,
  type CompressorOptions,
  formatCompression,
  parseCompress,
  type RowsHook,
} from "../compress/compressor.ts";
import {
  ensureGroup,
  firstLine,
  type H5,
  h5,
  type H5File,
  type H5Group,
  openH5,
  readAll,
  rowRuns,
  shapeSize,
} from "../exdf/h5.ts";
import { type Detector, type ModuleFile, readNumbers, Run, type RunFile } from "../exdf/run.ts";
import { buildDir, checkOut, checkpoint, copyFile, realPath, releaseOut } from "../app/outdir.ts";

export interface ReduceOptions {
  /** "selected": leave out the module files of modules localise did not select. */
  modules?: "all" | "selected";
  /** Keep only the ROI boxes of each module. */
  roi?: boolean;
  /** Keep every Nth dark frame of each module (0: none). */
  keepDark?: number;
  /** Replace an existing DIR. */
  force?: boolean;
  /** The run is a copy of the one localise ran on (another path, same run): apply the selection anyway. */
  runCopy?: boolean;
  /**
   * Frames of the run that the selection does not list (localise ran on a train range or a copy that
   * grew): "keep" them or "delete" them. Unset: such a selection is refused.
   */
  unlisted?: "keep" | "delete";
  /** Accept a result that keeps no frame at all (else refused). */
  allowEmpty?: boolean;
  /** Largest block of data moved at once (default 32 MiB). */
  sliceBytes?: number;
  /** Called as files and datasets are done; may return a promise (awaited). */
  progress?: (ev: ReduceProgress) => void | Promise<void>;
  /**
   * Compress the detector datasets (docs/compression.md): "lossless:<filter>", "round:<m>[,<p>]" or
   * "sz:<error bound>".
   */
  compress?: string;
  /** The lossless stage of round and sz (default zstd). */
  compressFilter?: string;
  /** Backend of the SZ integer stage (default auto) and the quality sample size. */
  compressBackend?: CompressorOptions["backend"];
  qualityFrames?: number;
}

export interface ReduceProgress {
  file: string;
  phase: "start" | "dataset" | "done";
  dataset?: string;
}

export interface ModuleReduction {
  module: number;
  source: string;
  files: string[];
  /** Files left out (--modules selected). */
  dropped: boolean;
  selected: boolean;
  framesIn: number;
  framesKept: number;
  litKept: number;
  darkKept: number;
  /** Frames the selection does not list (refused unless `unlisted` says keep or delete). */
  unmatched: number;
  /** Of those, kept (`unlisted: "keep"`). */
  unlistedKept: number;
  /** Rows left out because they belong to no train of the index (or disagree with it). */
  unindexed: number;
  rois: [number, number, number, number][];
}

export interface FileReduction {
  name: string;
  action: "reduced" | "copied" | "dropped";
  bytesIn: number;
  bytesOut: number;
}

export interface ReductionRecord {
  run: string;
  from: string;
  out: string;
  detector: string;
  level: "raw" | "corr";
  options: { modules: "all" | "selected"; roi: boolean; keepDark: number };
  bytesIn: number;
  bytesOut: number;
  /** bytesIn / bytesOut. */
  ratio: number;
  framesIn: number;
  framesKept: number;
  modules: ModuleReduction[];
  files: FileReduction[];
  notes: string[];
  seconds: number;
  /** With `compress`: ratio, quality and speed of the compressed datasets. */
  compression?: CompressionRecord;
}

type Box = [number, number, number, number];

interface LocaliseSummary {
  /** The run localise ran on (absolute path). */
  run?: string;
  detector?: { name?: string; modules?: number[] };
  modules?: { module: number; selected: boolean; rois?: Box[]; files?: string[] }[];
}

// -----------------------------------------------------------------------------------------------------
// The selection (localise output)

/** frameLit per (trainId, pulseId), from the localise REDU file(s). */
export class Selection {
  private readonly byTrain = new Map<number, Map<number, number>>();
  frames = 0;
  lit = 0;

  add(trainId: number, pulseId: number, lit: number): void {
    let m = this.byTrain.get(trainId);
    if (!m) this.byTrain.set(trainId, m = new Map());
    if (!m.has(pulseId)) {
      this.frames++;
      if (lit) this.lit++;
    }
    m.set(pulseId, lit ? 1 : 0);
  }

  /** 1 lit, 0 dark, -1 not listed. */
  lookup(trainId: number, pulseId: number): number {
    return this.byTrain.get(trainId)?.get(pulseId) ?? -1;
  }
}

const LOCALISE_RE = /\/REDU\/LOCALISE:output$/;

/** Read the localise output directory: the frame selection and summary.json. */
export async function readLocaliseOutput(
  dir: string,
): Promise<{ selection: Selection; summary: LocaliseSummary; detector: string | null }> {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new InputError(dir, "localise output directory not found");
  }
  let summary: LocaliseSummary = {};
  const sp = path.join(dir, "summary.json");
  if (fs.existsSync(sp)) {
    try {
      summary = JSON.parse(fs.readFileSync(sp, "utf8"));
    } catch (e) {
      throw new InputError(sp, `cannot read: ${firstLine(e)}`);
    }
  }
  const run = await Run.open(dir);
  try {
    const sel = new Selection();
    let source: string | null = null;
    const files = [...run.files].sort((a, b) => (a.trainIds[0] ?? 0) - (b.trainIds[0] ?? 0));
    for (const f of files) {
      for (const s of f.sources.values()) {
        if (!LOCALISE_RE.test(s.name)) continue;
        source = s.name;
        const ix = s.index.get("data");
        if (!ix) continue;
        const base = `INSTRUMENT/${s.name}/data`;
        const tid = readAll(f.h5, `${base}/trainId`);
        const pid = readAll(f.h5, `${base}/pulseId`);
        const lit = readAll(f.h5, `${base}/frameLit`);
        f.trainIds.forEach((t, i) => {
          for (let r = ix.first[i]; r < ix.first[i] + ix.count[i] && r < lit.length; r++) {
            const rt = Number(tid[r]);
            sel.add(rt === 0 ? t : rt, Number(pid[r]), Number(lit[r]));
          }
        });
      }
    }
    if (!source) throw new InputError(dir, "no localise REDU file (source <DET>/REDU/LOCALISE:output) found");
    const detector = summary.detector?.name ?? source.replace(LOCALISE_RE, "");
    return { selection: sel, summary, detector };
  } finally {
    run.close();
  }
}

// -----------------------------------------------------------------------------------------------------
// Low-level copying through the wasm heap

interface Meta {
  type: number;
  size: number;
  signed: boolean;
  vlen: boolean;
  littleEndian: boolean;
  cset?: number;
  shape: number[] | null;
  maxshape: number[] | null;
  chunks: number[] | null;
  compound_type?: unknown;
  enum_type?: unknown;
}

interface Filter {
  id: number;
  name: string;
  cd_values: number[];
}

interface Mod {
  HEAPU8: Uint8Array;
  _malloc(n: number): number;
  _free(p: number): void;
  get_dataset_data(
    fid: bigint,
    p: string,
    c: bigint[] | null,
    o: bigint[] | null,
    s: bigint[] | null,
    ptr: bigint,
  ): number;
  set_dataset_data(
    fid: bigint,
    p: string,
    c: bigint[] | null,
    o: bigint[] | null,
    s: bigint[] | null,
    ptr: bigint,
  ): number;
  resize_dataset(fid: bigint, p: string, shape: bigint[]): number;
  create_dataset(fid: bigint, p: string, ptr: bigint, meta: unknown): number;
  get_dataset_metadata(fid: bigint, p: string): Meta;
  get_dataset_filters(fid: bigint, p: string): Filter[];
  reclaim_vlen_memory(fid: bigint, p: string, attr: string, ptr: bigint): number;
}

const UNLIMITED = 18446744073709551615n;

class Copier {
  private readonly bufs = [{ ptr: 0, bytes: 0 }, { ptr: 0, bytes: 0 }];
  readonly notes = new Set<string>();

  constructor(private readonly lib: H5, private readonly mod: Mod, private readonly sliceBytes: number) {}

  dispose(): void {
    for (const b of this.bufs) {
      if (b.ptr) this.mod._free(b.ptr);
      b.ptr = 0;
      b.bytes = 0;
    }
  }

  /** A heap buffer of at least n bytes (reused; contents not kept on growth); two slots. */
  private buffer(n: number, slot = 0): number {
    const b = this.bufs[slot];
    if (n > b.bytes) {
      if (b.ptr) this.mod._free(b.ptr);
      b.bytes = Math.max(n, 1 << 20);
      b.ptr = this.mod._malloc(b.bytes);
      if (!b.ptr) {
        b.bytes = 0;
        throw new Error(`wasm heap: cannot allocate ${n} bytes`);
      }
    }
    return b.ptr;
  }

  /** An HDF5 call; a failure reading the source (`input`) is bad input: a damaged or truncated file. */
  private call(what: string, file: string, f: () => number, input = false): void {
    let st: number;
    let why: string;
    try {
      st = f();
      if (st >= 0) return;
      why = `HDF5 status ${st}`;
    } catch (e) {
      why = firstLine(e);
    }
    if (input) throw new InputError(file, `${what} (damaged or truncated file): ${why}`);
    throw new Error(`${file}: ${what}: ${why}`);
  }

  private read(src: H5File, p: string, count: number[], offset: number[], ptr: number): void {
    this.call(
      `cannot read ${p}`,
      src.filename,
      () =>
        this.mod.get_dataset_data(
          src.file_id,
          "/" + p,
          count.map(BigInt),
          offset.map(BigInt),
          count.map(() => 1n),
          BigInt(ptr),
        ),
      true,
    );
  }

  private write(dst: H5File, p: string, count: number[], offset: number[], ptr: number): void {
    this.call(
      `cannot write ${p}`,
      dst.filename,
      () =>
        this.mod.set_dataset_data(
          dst.file_id,
          "/" + p,
          count.map(BigInt),
          offset.map(BigInt),
          count.map(() => 1n),
          BigInt(ptr),
        ),
    );
  }

  meta(src: H5File, p: string): Meta {
    return this.mod.get_dataset_metadata(src.file_id, "/" + p);
  }

  /** The filter to write with: deflate as in the source; others noted. */
  private filterOf(src: H5File, p: string): { compression: number; compression_opts: number[] } {
    let filters: Filter[] = [];
    try {
      filters = this.mod.get_dataset_filters(src.file_id, "/" + p);
    } catch {
      filters = [];
    }
    let out = { compression: 0, compression_opts: [] as number[] };
    for (const f of filters) {
      if (f.id === 1) out = { compression: 1, compression_opts: [...f.cd_values] };
      else if (f.id === 2 || f.id === 3) this.notes.add(`filter ${f.name} (id ${f.id}) not reproduced`);
      else {
        this.notes.add(`filter ${f.name} (id ${f.id}) replaced by deflate level 1`);
        if (out.compression === 0) out = { compression: 1, compression_opts: [1] };
      }
    }
    return out;
  }

  private writeMeta(
    m: Meta,
    shape: number[],
    maxshape: (number | null)[],
    chunks: number[] | null,
    filter: { compression: number; compression_opts: number[] },
  ): unknown {
    const base: Record<string, unknown> = {
      type: m.type,
      size: m.size,
      signed: m.signed,
      vlen: false,
      littleEndian: true,
    };
    if (m.cset !== undefined) base.cset = m.cset;
    if (m.compound_type !== undefined) base.compound_type = m.compound_type;
    if (m.type === 8) base.type = 0; // enum: written as its integer base type (same bytes)
    return {
      ...base,
      shape: shape.map(BigInt),
      maxshape: maxshape.map((d) => (d === null ? UNLIMITED : BigInt(d))),
      chunks: chunks ? chunks.map(BigInt) : null,
      compression: chunks ? filter.compression : 0,
      compression_opts: chunks ? filter.compression_opts : [],
      track_order: false,
    };
  }

  private create(dst: H5File, p: string, ptr: number, meta: unknown): void {
    const k = p.lastIndexOf("/");
    if (k > 0) ensureGroup(dst, p.slice(0, k));
    this.call(
      `cannot create ${p}`,
      dst.filename,
      () => this.mod.create_dataset(dst.file_id, "/" + p, BigInt(ptr), meta),
    );
  }

  private supported(src: H5File, p: string, m: Meta): boolean {
    if (m.type === 3 || m.type === 9) return true; // strings (fixed or variable length)
    if ([0, 1, 6, 8].includes(m.type)) return true; // integer, float, compound, enum
    this.notes.add(
      `${p}: HDF5 type class ${m.type} not supported, dataset left out (${path.basename(src.filename)})`,
    );
    return false;
  }

  /** Copy a whole dataset. */
  async copyWhole(src: H5File, dst: H5File, p: string): Promise<void> {
    const m = this.meta(src, p);
    if (!this.supported(src, p, m)) return;
    const shape = m.shape ?? [];
    if (m.vlen || m.type === 9) {
      if (m.type !== 3) {
        this.notes.add(`${p}: variable-length data other than strings not supported, left out`);
        return;
      }
      this.copyVlenStrings(src, dst, p, m);
      return;
    }
    const all = shape.length ? Int32Array.from({ length: shape[0] }, (_, i) => i) : null;
    await this.copyRows(src, dst, p, p, all, m);
  }

  /**
   * A variable-length string dataset, copied as HDF5 holds it: the string pointers are read into the heap
   * and written back as they are, so a NULL entry (the DAQ's and EXtra-data's METADATA padding) stays NULL
   * and an empty string stays empty (h5wasm's `.value` would read a NULL pointer as the bytes at heap
   * address 0, "emsc"). Shape, maxshape (unlimited included), chunks and character set are kept.
   */
  private copyVlenStrings(src: H5File, dst: H5File, p: string, m: Meta): void {
    const shape = m.shape ?? [];
    const n = Math.max(1, shapeSize(shape));
    const ptr = this.malloc(n * 4);
    try {
      this.mod.HEAPU8.fill(0, ptr, ptr + n * 4);
      this.call(
        `cannot read ${p}`,
        src.filename,
        () => this.mod.get_dataset_data(src.file_id, "/" + p, null, null, null, BigInt(ptr)),
      );
      try {
        const maxshape = (m.maxshape ?? shape).map((d) => (d >= 2 ** 63 ? UNLIMITED : BigInt(d)));
        const meta = {
          type: 3,
          size: 4,
          signed: false,
          vlen: true,
          littleEndian: true,
          cset: m.cset ?? 0,
          shape: shape.map(BigInt),
          maxshape,
          chunks: m.chunks ? m.chunks.map(BigInt) : null,
          compression: 0,
          compression_opts: [],
          track_order: false,
        };
        this.create(dst, p, ptr, meta);
      } finally {
        this.mod.reclaim_vlen_memory(src.file_id, "/" + p, "", BigInt(ptr));
      }
    } finally {
      this.free(ptr);
    }
  }

  /**
   * Call `cb(ptr, n)` for the kept rows `rows` of src:p, a batch of consecutive kept rows at a time (their
   * bytes at ptr on the heap, valid until the next call). Sources chunked by one row: each run of kept rows
   * is read as it is. Sources with larger chunks: each block of whole chunks holding kept rows is read once
   * (from its first to its last kept row), so no chunk is decompressed twice.
   */
  private async readKept(
    src: H5File,
    p: string,
    rows: Int32Array,
    entry: number[],
    rowBytes: number,
    srcChunk0: number,
    cb: (ptr: number, n: number) => void,
  ): Promise<void> {
    const zeros = entry.map(() => 0);
    const runs = rowRuns(rows);
    if (srcChunk0 <= 1) {
      const step = Math.max(1, Math.floor(this.sliceBytes / Math.max(1, rowBytes)));
      for (const [a, b] of runs) {
        for (let s = a; s < b; s += step) {
          const n = Math.min(step, b - s);
          await checkpoint();
          const ptr = this.buffer(n * rowBytes, 0);
          this.read(src, p, [n, ...entry], [s, ...zeros], ptr);
          cb(ptr, n);
        }
      }
      return;
    }
    const block = srcChunk0 * Math.max(1, Math.floor(this.sliceBytes / Math.max(1, rowBytes * srcChunk0)));
    let i = 0;
    while (i < runs.length) {
      const b0 = Math.floor(runs[i][0] / block) * block;
      const b1 = b0 + block;
      // Runs (cut at the block end) inside this block.
      const inBlock: [number, number][] = [];
      while (i < runs.length && runs[i][0] < b1) {
        const [a, b] = runs[i];
        inBlock.push([a, Math.min(b, b1)]);
        if (b > b1) {
          runs[i] = [b1, b];
          break;
        }
        i++;
      }
      const lo = inBlock[0][0], hi = inBlock[inBlock.length - 1][1];
      await checkpoint();
      const ptr = this.buffer((hi - lo) * rowBytes, 0);
      this.read(src, p, [hi - lo, ...entry], [lo, ...zeros], ptr);
      for (const [a, b] of inBlock) cb(ptr + (a - lo) * rowBytes, b - a);
    }
  }

  /**
   * Copy rows `rows` (ascending; null: the whole of a scalar dataset) of src:p into dst:q. With a
   * compression hook: written chunked (the source's chunks, else one row per chunk) with the hook's filter,
   * each block of rows passed through the hook before it is written.
   */
  async copyRows(
    src: H5File,
    dst: H5File,
    p: string,
    q: string,
    rows: Int32Array | null,
    m: Meta = this.meta(src, p),
    hook?: RowsHook,
  ): Promise<void> {
    if (!this.supported(src, p, m)) return;
    const shape = m.shape ?? [];
    if (rows === null || shape.length === 0) {
      const ptr = this.buffer(Math.max(1, shapeSize(shape)) * m.size);
      this.call(
        `cannot read ${p}`,
        src.filename,
        () => this.mod.get_dataset_data(src.file_id, "/" + p, null, null, null, BigInt(ptr)),
        true,
      );
      this.create(
        dst,
        q,
        ptr,
        this.writeMeta(m, shape, shape, null, { compression: 0, compression_opts: [] }),
      );
      return;
    }
    const entry = shape.slice(1);
    const zeros = entry.map(() => 0);
    const rowBytes = shapeSize(entry) * m.size;
    const K = rows.length;
    const filter = hook ? hook.filter : this.filterOf(src, p);
    let chunks = m.chunks ? [...m.chunks] : null;
    if (!chunks && hook) chunks = [1, ...entry];
    if (!chunks && K * rowBytes > 2 * this.sliceBytes) {
      chunks = [1, ...entry];
      this.notes.add(`${p}: contiguous in the source, written chunked (one entry per chunk)`);
    }
    if (!chunks) {
      // Contiguous and small: gather the rows, create in one go.
      const ptr = this.buffer(Math.max(1, K * rowBytes), 1);
      let k = 0;
      for (const [a, b] of rowRuns(rows)) {
        this.read(src, p, [b - a, ...entry], [a, ...zeros], ptr + k * rowBytes);
        k += b - a;
      }
      if (K * rowBytes >= 2 ** 16 && allZero(this.mod.HEAPU8, ptr, ptr + K * rowBytes)) {
        // All zeros (typically a dataset the input never wrote, as mask and gain of many CORR files): chunked
        // and left unallocated, read as the fill value 0 -- the same bytes, no space. (Created empty, then
        // resized: create_dataset writes its whole initial shape from the buffer.)
        const c0 = Math.max(1, Math.min(K, Math.floor(2 ** 20 / rowBytes)));
        this.create(
          dst,
          q,
          this.buffer(8),
          this.writeMeta(m, [0, ...entry], [K, ...entry], [c0, ...entry], filter),
        );
        this.resize(dst, q, [K, ...entry]);
        this.notes.add(`${p}: all zeros, written unallocated (chunked; reads as zeros)`);
        return;
      }
      this.create(dst, q, ptr, this.writeMeta(m, [K, ...entry], [K, ...entry], null, filter));
      return;
    }
    const srcMax0 = m.maxshape?.[0];
    const max0 = srcMax0 === undefined || srcMax0 >= 2 ** 63 ? null : Math.max(K, chunks[0]);
    this.create(dst, q, this.buffer(8), this.writeMeta(m, [0, ...entry], [max0, ...entry], chunks, filter));
    if (K === 0) return;
    this.resize(dst, q, [K, ...entry]);
    const sink = new Sink(this, dst, q, entry, rowBytes, chunks[0], this.sliceBytes, hook);
    try {
      await this.readKept(src, p, rows, entry, rowBytes, m.chunks?.[0] ?? 1, (ptr, n) => sink.append(ptr, n));
      sink.flush();
    } finally {
      sink.dispose();
    }
  }

  /**
   * Per box k, rows `rows` of src:p cropped to the box (last two axes) into dst:names[k], chunked (the
   * source's chunk shape clipped to the box), with the source's filter (or the compression hook's, the
   * hook seeing each block of rows before it is written). Frames are read once for all boxes.
   */
  async copyRois(
    src: H5File,
    dst: H5File,
    p: string,
    rows: Int32Array,
    boxes: Box[],
    names: string[],
    hook?: RowsHook,
  ): Promise<void> {
    const m = this.meta(src, p);
    if (!this.supported(src, p, m)) return;
    const shape = m.shape ?? [];
    const entry = shape.slice(1);
    const mid = entry.slice(0, -2);
    const [SS, FS] = entry.slice(-2);
    const planes = shapeSize(mid);
    const E = m.size;
    const rowBytes = shapeSize(entry) * E;
    const K = rows.length;
    const filter = hook ? hook.filter : this.filterOf(src, p);
    const outEntries = boxes.map((b) => [...mid, b[2] - b[0], b[3] - b[1]]);
    const chunk0s: number[] = [];
    boxes.forEach((_b, i) => {
      const oe = outEntries[i];
      const chunks = m.chunks
        ? m.chunks.map((c, j) => (j === 0 ? c : Math.max(1, Math.min(c, oe[j - 1]))))
        : [1, ...oe];
      chunk0s.push(chunks[0]);
      this.create(
        dst,
        names[i],
        this.buffer(8),
        this.writeMeta(m, [0, ...oe], [null, ...oe], chunks, filter),
      );
      if (K > 0) this.resize(dst, names[i], [K, ...oe]);
    });
    if (K === 0 || !boxes.length) return;
    const per = Math.max(1, Math.floor(this.sliceBytes / boxes.length));
    const sinks = boxes.map((_b, i) =>
      new Sink(this, dst, names[i], outEntries[i], shapeSize(outEntries[i]) * E, chunk0s[i], per, hook)
    );
    try {
      await this.readKept(src, p, rows, entry, rowBytes, m.chunks?.[0] ?? 1, (inPtr, n) => {
        boxes.forEach((box, i) => {
          const w = (box[3] - box[1]) * E;
          const sink = sinks[i];
          for (let r = 0; r < n;) {
            const [outPtr, take] = sink.reserve(n - r);
            const heap = this.mod.HEAPU8; // after any allocation: views die when the heap grows
            let o = outPtr;
            for (let f = r; f < r + take; f++) {
              for (let pl = 0; pl < planes; pl++) {
                const base = inPtr + (f * planes + pl) * SS * FS * E;
                for (let y = box[0]; y < box[2]; y++) {
                  const from = base + (y * FS + box[1]) * E;
                  heap.copyWithin(o, from, from + w);
                  o += w;
                }
              }
            }
            sink.commit(take);
            r += take;
          }
        });
      });
      for (const s of sinks) s.flush();
    } finally {
      for (const s of sinks) s.dispose();
    }
  }

  resize(dst: H5File, q: string, shape: number[]): void {
    this.call(
      `cannot resize ${q}`,
      dst.filename,
      () => this.mod.resize_dataset(dst.file_id, "/" + q, shape.map(BigInt)),
    );
  }

  /** Write n rows at ptr into dst:q from row k. */
  writeRows(dst: H5File, q: string, entry: number[], k: number, n: number, ptr: number): void {
    this.write(dst, q, [n, ...entry], [k, ...entry.map(() => 0)], ptr);
  }

  malloc(n: number): number {
    const p = this.mod._malloc(n);
    if (!p) throw new Error(`wasm heap: cannot allocate ${n} bytes`);
    return p;
  }

  free(p: number): void {
    this.mod._free(p);
  }

  get heap(): Uint8Array {
    return this.mod.HEAPU8;
  }

  /** Create a small numeric dataset with given values and the source's type and shape. */
  createLike(
    src: H5File,
    dst: H5File,
    p: string,
    values: BigUint64Array | Uint8Array | ArrayBufferView,
  ): void {
    const m = this.meta(src, p);
    const shape = m.shape ?? [];
    const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    const ptr = this.buffer(Math.max(8, bytes.length));
    this.mod.HEAPU8.set(bytes, ptr);
    const maxshape = (m.maxshape ?? shape).map((d) => (d >= 2 ** 63 ? null : d));
    this.create(dst, p, ptr, this.writeMeta(m, shape, maxshape, m.chunks, this.filterOf(src, p)));
  }

  copyAttrs(src: H5File, dst: H5File, p: string): void {
    const s = (p ? src.get(p) : src) as unknown as {
      attrs: Record<string, { value: unknown; shape: number[] | null; dtype: unknown }>;
    } | null;
    if (!s) return;
    const names = Object.keys(s.attrs);
    if (!names.length) return;
    const d = (p ? dst.get(p) : dst) as unknown as {
      create_attribute(n: string, v: unknown, shape?: number[] | null, dtype?: unknown): void;
    };
    for (const n of names) {
      try {
        const a = s.attrs[n];
        d.create_attribute(n, a.value, a.shape, typeof a.dtype === "string" ? a.dtype : null);
      } catch (e) {
        this.notes.add(`attribute ${p}@${n} not copied: ${firstLine(e)}`);
      }
    }
  }

  /** The lib, for callers that create files. */
  get h5lib(): H5 {
    return this.lib;
  }
}

/** Whether heap bytes [from, to) are all zero (4 bytes at a time where aligned; stops at the first non-zero). */
function allZero(heap: Uint8Array, from: number, to: number): boolean {
  let i = from;
  while (i < to && i & 3) if (heap[i++]) return false;
  const n4 = (to - i) >> 2;
  if (n4 > 0) {
    const u = new Uint32Array(heap.buffer, heap.byteOffset + i, n4);
    for (let j = 0; j < n4; j += 1024) {
      let acc = 0;
      const e = Math.min(n4, j + 1024);
      for (let t = j; t < e; t++) acc |= u[t];
      if (acc) return false;
    }
    i += n4 * 4;
  }
  while (i < to) if (heap[i++]) return false;
  return true;
}

/**
 * Rows appended to a dataset, written in blocks of whole output chunks (no partial chunk is written twice,
 * so compressed chunks are not rewritten), through its own heap buffer of at most maxBytes (at least one
 * chunk of rows).
 */
class Sink {
  private readonly ptr: number;
  private readonly cap: number;
  private fill = 0;
  private k = 0;
  private readonly chunk0: number;

  constructor(
    private readonly cp: Copier,
    private readonly dst: H5File,
    private readonly q: string,
    private readonly entry: number[],
    private readonly rowBytes: number,
    chunk0: number,
    maxBytes: number,
    private readonly hook?: RowsHook,
  ) {
    const c = Math.max(1, chunk0);
    this.chunk0 = c;
    this.cap = c * Math.max(1, Math.floor(maxBytes / Math.max(1, rowBytes * c)));
    this.ptr = cp.malloc(Math.max(8, this.cap * rowBytes));
  }

  /** Where the next rows go and how many of n fit before the buffer is full. */
  reserve(n: number): [number, number] {
    return [this.ptr + this.fill * this.rowBytes, Math.min(n, this.cap - this.fill)];
  }

  commit(n: number): void {
    this.fill += n;
    if (this.fill >= this.cap) this.flush();
  }

  /** Append n rows found at ptr. */
  append(ptr: number, n: number): void {
    for (let r = 0; r < n;) {
      const [to, take] = this.reserve(n - r);
      const from = ptr + r * this.rowBytes;
      this.cp.heap.copyWithin(to, from, from + take * this.rowBytes);
      this.commit(take);
      r += take;
    }
  }

  flush(): void {
    if (!this.fill) return;
    if (this.hook) {
      const t0 = performance.now();
      this.hook.beforeWrite?.(this.cp.heap, this.ptr, this.fill, this.rowBytes);
      this.cp.writeRows(this.dst, this.q, this.entry, this.k, this.fill, this.ptr);
      this.hook.stats.seconds += (performance.now() - t0) / 1000;
      this.hook.stats.bytes += this.fill * this.rowBytes;
      this.k += this.fill;
      this.fill = 0;
      return;
    }
    // Chunks of rows whose bytes are all zero are not written: HDF5 leaves them unallocated and reads them
    // as the fill value 0, the same bytes. A run whose input never wrote a dataset (mask, gain) stays small.
    // Blocks start at a multiple of chunk0 (every flush but the last is a whole number of chunks).
    const block = this.chunk0 * this.rowBytes;
    let a = 0;
    const writeRun = (r0: number, r1: number) => {
      if (r1 > r0) {
        this.cp.writeRows(this.dst, this.q, this.entry, this.k + r0, r1 - r0, this.ptr + r0 * this.rowBytes);
      }
    };
    for (let r = 0; r < this.fill; r += this.chunk0) {
      const n = Math.min(this.chunk0, this.fill - r);
      const from = this.ptr + r * this.rowBytes;
      // The heap view afresh each time: a write may grow the wasm heap, which detaches older views.
      if (allZero(this.cp.heap, from, from + (n === this.chunk0 ? block : n * this.rowBytes))) {
        writeRun(a, r);
        a = r + n;
      }
    }
    writeRun(a, this.fill);
    this.k += this.fill;
    this.fill = 0;
  }

  dispose(): void {
    this.cp.free(this.ptr);
  }
}

/**
 * Copy rows `rows` of src:p into dst (same path), or with `boxes` their crops into `names`: the per-frame copy
 * `reduce` uses, for callers and tests that work on datasets directly.
 */
export async function copyDatasetRows(
  src: H5File,
  dst: H5File,
  p: string,
  rows: Int32Array,
  opts: { sliceBytes?: number; boxes?: Box[]; names?: string[] } = {},
): Promise<string[]> {
  const lib = await h5();
  const cp = new Copier(lib, (await lib.ready) as unknown as Mod, opts.sliceBytes ?? 32 * 2 ** 20);
  try {
    if (opts.boxes) {
      await cp.copyRois(
        src,
        dst,
        p,
        rows,
        opts.boxes,
        opts.names ?? opts.boxes.map((_, i) => `${p}_roi${i}`),
      );
    } else await cp.copyRows(src, dst, p, p, rows);
    return [...cp.notes];
  } finally {
    cp.dispose();
  }
}

// -----------------------------------------------------------------------------------------------------
// Planning a module file

interface ModulePlanInFile {
  module: number;
  mf: ModuleFile;
  /** Rows of the image data. */
  rows: number;
  kept: Int32Array;
  /** New index counts per train of the file. */
  counts: number[];
  boxes: Box[];
}

interface ModuleState {
  rec: ModuleReduction;
  darkSeen: number;
}

function planModule(
  det: Detector,
  mf: ModuleFile,
  sel: Selection,
  keepDark: number,
  keepUnlisted: boolean,
  st: ModuleState,
  matched: Set<string>,
): { kept: Int32Array; counts: number[] } {
  const f = mf.file;
  const N = mf.rows;
  const jf = det.type === "JUNGFRAU";
  const cells = det.cellsPerEntry;
  const tids = jf ? null : readNumbers(f, `${mf.groupPath}/trainId`);
  const pids = jf ? null : readNumbers(f, `${mf.groupPath}/pulseId`);
  const kept: number[] = [];
  const counts: number[] = [];
  let inIndex = 0;
  for (let i = 0; i < f.trainIds.length; i++) {
    const t = f.trainIds[i];
    const a = mf.index.first[i];
    const c = mf.index.count[i];
    let n = 0;
    for (let r = a; r < a + c && r < N; r++) {
      inIndex++;
      // JUNGFRAU: one entry holds every memory cell (frames = cells); the entry is kept when a cell is lit.
      let lit: number;
      let litCells = 0, unlistedCells = 0;
      if (jf) {
        lit = -1;
        for (let k = 0; k < cells; k++) {
          const v = sel.lookup(t, k);
          if (v >= 0) matched.add(`${t}:${k}`);
          else unlistedCells++;
          if (v === 1) {
            lit = 1;
            litCells++;
          } else if (v === 0 && lit < 0) lit = 0;
        }
        if (lit !== 1 && unlistedCells) lit = -1;
        st.rec.framesIn += cells;
      } else {
        if (tids![r] !== 0 && tids![r] !== t) {
          st.rec.unindexed++;
          continue;
        }
        st.rec.framesIn++;
        lit = sel.lookup(t, pids![r]);
        if (lit >= 0) matched.add(`${t}:${pids![r]}`);
        unlistedCells = lit === -1 ? 1 : 0;
        litCells = lit === 1 ? 1 : 0;
      }
      const per = jf ? cells : 1;
      let keep = lit === 1;
      if (lit === 1) st.rec.litKept += litCells;
      else if (lit === -1 && keepUnlisted) {
        keep = true;
        st.rec.unmatched += unlistedCells;
        st.rec.unlistedKept += per;
      } else {
        if (lit === -1) st.rec.unmatched += unlistedCells;
        if (keepDark > 0 && st.darkSeen++ % keepDark === 0) {
          keep = true;
          st.rec.darkKept += per;
        }
      }
      if (keep) {
        kept.push(r);
        n++;
      }
    }
    counts.push(n);
  }
  st.rec.unindexed += Math.max(0, N - inIndex);
  st.rec.framesKept += kept.length * (jf ? cells : 1);
  return { kept: Int32Array.from(kept), counts };
}

// -----------------------------------------------------------------------------------------------------
// Writing a reduced file

function linkTarget(f: H5File, p: string): string | null {
  try {
    const t = f.get_link(p);
    return typeof t === "string" && t ? t : null;
  } catch {
    return null;
  }
}

function dsShape(f: H5File, p: string): number[] {
  return ((f.get(p) as unknown as { shape: number[] | null }).shape ?? []) as number[];
}

/** Dataset paths under a group, through hard links only. */
function datasetsUnder(f: H5File, g: string): string[] {
  const out: string[] = [];
  const rec = (p: string) => {
    const e = f.get(p) as unknown as { type?: string; keys?: () => string[] } | null;
    if (!e) return;
    if (e.type === "Dataset") out.push(p);
    else if (e.type === "Group") {
      for (const k of e.keys!()) if (!linkTarget(f, `${p}/${k}`)) rec(`${p}/${k}`);
    }
  };
  rec(g);
  return out;
}

/** A dataset written another way than the plain copy (by the walk below); may be async. */
type Special = () => void | Promise<void>;

async function reduceFile(
  cp: Copier,
  src: RunFile,
  plans: ModulePlanInFile[],
  det: Detector,
  roi: boolean,
  tmpPath: string,
  progress: ReduceOptions["progress"],
  compressor?: Compressor,
): Promise<void> {
  const lib = cp.h5lib;
  const s = src.h5;
  const dst = new lib.File(tmpPath, "w");
  if (!dst.file_id || dst.file_id < 0n) throw new Error(`cannot create ${tmpPath}`);
  try {
    // Per-frame datasets and index rewrites.
    const special = new Map<string, Special>();
    const imageShape = det.imageShape;
    for (const pl of plans) {
      const g = pl.mf.groupPath;
      for (const p of datasetsUnder(s, g)) {
        const shape = dsShape(s, p);
        if (shape.length === 0 || shape[0] !== pl.rows) {
          cp.notes.add(`${p}: first axis is not the frame axis, copied unchanged`);
          continue;
        }
        const imageLike = shape.length >= 3 &&
          shape[shape.length - 2] === imageShape[0] && shape[shape.length - 1] === imageShape[1];
        // Compression (docs/compression.md): image-shaped per-frame datasets.
        const m = imageLike && compressor ? cp.meta(s, p) : null;
        const k = p.lastIndexOf("/");
        const parent = p.slice(0, k), name = p.slice(k + 1);
        const names = roi && imageLike ? pl.boxes.map((_, i) => `${parent}/roi${i}/${name}`) : [p];
        const ce = m && compressor
          ? compressor.begin(
            pl.module,
            src.name,
            p,
            g,
            { type: m.type, size: m.size, signed: m.signed, shape: m.shape ?? [] },
            pl.kept,
            roi ? names.map((q, i) => ({ path: q, box: pl.boxes[i] })) : [{ path: p }],
          )
          : null;
        if (ce && compressor && ce.kind === "sz") {
          special.set(
            p,
            () => compressor.measureWrite(ce, dst, tmpPath, () => compressor.writeSz(ce, s, dst)),
          );
        } else if (roi && imageLike) {
          const copy = async () => {
            await cp.copyRois(s, dst, p, pl.kept, pl.boxes, names, ce?.hook);
            pl.boxes.forEach((box, i) => {
              const boxArr = Int32Array.from(box);
              for (const q of [names[i], `${parent}/roi${i}`]) {
                const e = dst.get(q) as unknown as {
                  attrs: Record<string, unknown>;
                  create_attribute: (...a: unknown[]) => void;
                };
                if (!("box" in e.attrs)) e.create_attribute("box", boxArr, [4], "<i");
              }
            });
          };
          special.set(p, ce && compressor ? () => compressor.measureWrite(ce, dst, tmpPath, copy) : copy);
        } else if (ce && compressor) {
          special.set(
            p,
            () =>
              compressor.measureWrite(
                ce,
                dst,
                tmpPath,
                () => cp.copyRows(s, dst, p, p, pl.kept, m!, ce.hook),
              ),
          );
        } else {
          special.set(p, () => cp.copyRows(s, dst, p, p, pl.kept));
        }
      }
      // The index of the module's group.
      const ig = `INDEX/${g.slice("INSTRUMENT/".length)}`;
      const nT = src.trainIds.length;
      const first = new Array<number>(nT);
      let acc = 0;
      for (let i = 0; i < nT; i++) {
        first[i] = acc;
        acc += pl.counts[i];
      }
      const put = (key: string, vals: (i: number) => number) => {
        const p = `${ig}/${key}`;
        if (!s.get(p)) return;
        special.set(p, () => {
          const orig = readAll(s, p);
          const out = orig.slice();
          const big = orig instanceof BigUint64Array || orig instanceof BigInt64Array;
          for (let i = 0; i < nT && i < out.length; i++) {
            (out as unknown as (number | bigint)[])[i] = big ? BigInt(vals(i)) : vals(i);
          }
          cp.createLike(s, dst, p, out);
        });
      };
      put("first", (i) => first[i]);
      put("count", (i) => pl.counts[i]);
      put("last", (i) => (pl.counts[i] > 0 ? first[i] + pl.counts[i] - 1 : first[i]));
      put("status", (i) => (pl.counts[i] > 0 ? 1 : 0));
    }

    cp.copyAttrs(s, dst, "");
    await walkCopy(cp, s, dst, src.name, special, progress);
  } finally {
    dst.close();
  }
}

/** Copy every group, dataset, link and attribute of s into dst; `special` datasets are written by their function. */
async function walkCopy(
  cp: Copier,
  s: H5File,
  dst: H5File,
  srcName: string,
  special: Map<string, Special>,
  progress: ReduceOptions["progress"],
): Promise<void> {
  {
    const walk = async (g: string) => {
      const grp = (g ? s.get(g) : s) as unknown as H5Group;
      for (const name of grp.keys()) {
        const p = g ? `${g}/${name}` : name;
        const target = linkTarget(s, p);
        if (target) {
          const k = p.lastIndexOf("/");
          const parent = k > 0 ? ensureGroup(dst, p.slice(0, k)) : (dst as unknown as H5Group);
          parent.create_soft_link(target, p.slice(k + 1));
          continue;
        }
        const e = s.get(p) as unknown as { type?: string; filename?: string; obj_path?: string } | null;
        if (!e) continue;
        if (e.type === "Group") {
          ensureGroup(dst, p);
          cp.copyAttrs(s, dst, p);
          await walk(p);
        } else if (e.type === "Dataset") {
          const sp = special.get(p);
          if (sp) {
            await sp();
            await progress?.({ file: srcName, phase: "dataset", dataset: p });
          } else await cp.copyWhole(s, dst, p);
          await checkpoint();
          if (dst.get(p)) cp.copyAttrs(s, dst, p);
        } else if (e.type === "ExternalLink") {
          const k = p.lastIndexOf("/");
          const parent = k > 0 ? ensureGroup(dst, p.slice(0, k)) : (dst as unknown as H5Group);
          parent.create_external_link(e.filename!, e.obj_path!, p.slice(k + 1));
        } else {
          cp.notes.add(`${p}: ${e.type} not copied (${srcName})`);
        }
      }
    };
    await walk("");
  }
}

/** What `rewriteFile` does with a dataset: the plain copy (undefined), leave it out, or write it another way. */
export type RewriteAction = undefined | "skip" | ((dst: H5File) => void | Promise<void>);

/**
 * Copy one HDF5 file as `reduce` copies files (groups, datasets with their chunking and deflate filter,
 * soft and external links, attributes; other filters are replaced by deflate level 1 and noted), with
 * `decide(path)` choosing per dataset. Writes dstPath under a temporary name, renamed when complete.
 * Returns the notes. Used by `decompress` (src/compress/decompress.ts).
 */
export async function rewriteFile(
  srcPath: string,
  dstPath: string,
  decide: (p: string, src: H5File) => RewriteAction,
  opts: { sliceBytes?: number } = {},
): Promise<string[]> {
  const lib = await h5();
  const mod = (await lib.ready) as unknown as Mod;
  const s = await openH5(srcPath);
  const tmp = path.join(path.dirname(dstPath), `.${path.basename(dstPath)}.tmp-${process.pid}`);
  const cp = new Copier(lib, mod, opts.sliceBytes ?? 32 * 2 ** 20);
  let dst: H5File | undefined;
  try {
    dst = new lib.File(tmp, "w");
    if (!dst.file_id || dst.file_id < 0n) throw new Error(`cannot create ${tmp}`);
    const d = dst;
    const special = new Map<string, Special>();
    const rec = (g: string) => {
      const grp = (g ? s.get(g) : s) as unknown as H5Group;
      for (const name of grp.keys()) {
        const p = g ? `${g}/${name}` : name;
        if (linkTarget(s, p)) continue;
        const e = s.get(p) as unknown as { type?: string } | null;
        if (e?.type === "Group") rec(p);
        else if (e?.type === "Dataset") {
          const a = decide(p, s);
          if (a === "skip") special.set(p, () => {});
          else if (a) special.set(p, () => a(d));
        }
      }
    };
    rec("");
    cp.copyAttrs(s, d, "");
    await walkCopy(cp, s, d, path.basename(srcPath), special, undefined);
    d.close();
    dst = undefined;
    fs.renameSync(tmp, dstPath);
    return [...cp.notes];
  } catch (e) {
    try {
      dst?.close();
    } catch {
      // already failing
    }
    fs.rmSync(tmp, { force: true });
    throw e;
  } finally {
    cp.dispose();
    s.close();
  }
}

// -----------------------------------------------------------------------------------------------------
// reduce

/** ROI boxes clipped to the module image; empty ones left out. */
function clampBoxes(boxes: readonly Box[], [SS, FS]: [number, number]): Box[] {
  const out: Box[] = [];
  for (const b of boxes) {
    const c: Box = [Math.max(0, b[0]), Math.max(0, b[1]), Math.min(SS, b[2]), Math.min(FS, b[3])];
    if (c.every(Number.isInteger) && c[2] > c[0] && c[3] > c[1]) out.push(c);
  }
  return out;
}

/** Run numbers and data levels (RAW, CORR, ...) named by files `<LEVEL>-R<run>-...h5` of a run path. */
function namingOf(p: string): { runs: Set<number>; levels: Set<string> } {
  let names: string[] = [];
  try {
    names = fs.statSync(p).isDirectory() ? fs.readdirSync(p) : [path.basename(p)];
  } catch {
    names = [];
  }
  const runs = new Set<number>(), levels = new Set<string>();
  for (const n of names) {
    const m = /^([A-Za-z]+)-R(\d+)-.*\.h5$/.exec(n);
    if (!m || Number(m[2]) === 0) continue;
    levels.add(m[1].toUpperCase());
    runs.add(Number(m[2]));
  }
  return { runs, levels };
}

/**
 * The selection must come from this run: localise's summary.json names the run it ran on. Another run
 * number is refused. The same run at another data level (a CORR selection on the RAW run) is the point of
 * reducing RAW data and is accepted; another path at the same level (a copy) only with runCopy. The frames
 * are matched afterwards, one by one.
 */
function checkSameRun(runAbs: string, fromAbs: string, summary: LocaliseSummary, runCopy: boolean): void {
  if (!summary.run) return;
  if (realPath(summary.run) === realPath(runAbs)) return;
  const mine = namingOf(runAbs), theirs = namingOf(fromAbs);
  const sameRun = [...theirs.runs].some((r) => mine.runs.has(r));
  if (mine.runs.size && theirs.runs.size && !sameRun) {
    throw new InputError(
      fromAbs,
      `the selection was made on run ${[...theirs.runs].join(", ")} (${summary.run}), not on run ${
        [...mine.runs].join(", ")
      } (${runAbs})`,
    );
  }
  const otherLevel = sameRun && ![...theirs.levels].some((l) => mine.levels.has(l));
  if (!otherLevel && !runCopy) {
    throw new InputError(
      fromAbs,
      `the selection was made on ${summary.run}, not on ${runAbs}; if the run is a copy of it, say --run-copy`,
    );
  }
}

function fileSize(p: string): number {
  try {
    return fs.statSync(p).size;
  } catch {
    return 0;
  }
}

/** Delete the dark frames of RUN as the localise output in fromDir says; write the reduced run into outDir. */
export async function reduce(
  runPath: string,
  fromDir: string,
  outDir: string,
  opts: ReduceOptions = {},
): Promise<ReductionRecord> {
  const t0 = performance.now();
  const modulesOpt = opts.modules ?? "all";
  if (modulesOpt !== "all" && modulesOpt !== "selected") {
    throw new InputError(undefined, `--modules must be all or selected, not ${modulesOpt}`);
  }
  const keepDark = opts.keepDark ?? 0;
  if (!Number.isInteger(keepDark) || keepDark < 0) {
    throw new InputError(undefined, `--keep-dark must be an integer >= 0, not ${keepDark}`);
  }
  const runAbs = path.resolve(runPath);
  const fromAbs = path.resolve(fromDir);
  const out = path.resolve(outDir);
  checkOut(out, {
    force: !!opts.force,
    inputs: [{ path: runAbs, what: "input run" }, { path: fromAbs, what: "localise output" }],
  });
  const method = opts.compress !== undefined
    ? parseCompress(opts.compress, opts.compressFilter)
    : opts.compressFilter !== undefined
    ? (() => {
      throw new InputError(undefined, "--compress-filter needs --compress round:... or sz:...");
    })()
    : undefined;
  if (method?.kind === "sz" && opts.roi) {
    throw new InputError(undefined, "--compress sz: is not supported with --roi (use round: or lossless:)");
  }

  const { selection, summary, detector: detName } = await readLocaliseOutput(fromAbs);
  if (opts.roi && !summary.modules) {
    throw new InputError(path.join(fromAbs, "summary.json"), "--roi needs the localise summary.json (ROIs)");
  }
  if (modulesOpt === "selected" && !summary.modules) {
    throw new InputError(
      path.join(fromAbs, "summary.json"),
      "--modules selected needs the localise summary.json",
    );
  }
  if (opts.unlisted !== undefined && opts.unlisted !== "keep" && opts.unlisted !== "delete") {
    throw new InputError(undefined, `--unlisted must be keep or delete, not ${opts.unlisted}`);
  }
  checkSameRun(runAbs, fromAbs, summary, !!opts.runCopy);
  const lib = await h5();
  const mod = (await lib.ready) as unknown as Mod;
  const run = await Run.open(runAbs);
  const cp = new Copier(lib, mod, opts.sliceBytes ?? 32 * 2 ** 20);
  let compressor: Compressor | undefined;
  try {
    // Never delete frames of a run whose INDEX cannot be trusted.
    const problems = run.indexProblems();
    if (problems.length) {
      throw new InputError(
        undefined,
        `${problems[0]}${
          problems.length > 1 ? ` (and ${problems.length - 1} more)` : ""
        }; reduce refuses an inconsistent INDEX`,
      );
    }
    if (method) {
      compressor = await Compressor.create(method, {
        backend: opts.compressBackend,
        qualityFrames: opts.qualityFrames,
      });
    }
    if (detName && !run.detectors.some((d) => d.name === detName)) {
      throw new InputError(
        fromAbs,
        `the selection is for detector ${detName}; ${runPath} has ${
          run.detectors.map((d) => d.name).join(", ") || "no detector"
        }`,
      );
    }
    const det = run.detector(detName ?? undefined);
    const notes: string[] = [];
    const sumMods = new Map((summary.modules ?? []).map((m) => [m.module, m]));
    const states = new Map<number, ModuleState>();
    for (const m of det.modules) {
      const sm = sumMods.get(m.module);
      const selected = summary.modules ? !!sm?.selected : true;
      states.set(m.module, {
        darkSeen: 0,
        rec: {
          module: m.module,
          source: m.source,
          files: m.files.map((f) => f.file.name),
          dropped: modulesOpt === "selected" && !selected,
          selected,
          // Dropped modules are not read: their frames as the index counts them.
          framesIn: modulesOpt === "selected" && !selected ? m.frames : 0,
          framesKept: 0,
          litKept: 0,
          darkKept: 0,
          unmatched: 0,
          unlistedKept: 0,
          unindexed: 0,
          rois: clampBoxes(sm?.rois ?? [], det.imageShape),
        },
      });
    }
    // Module files by run file.
    const byFile = new Map<RunFile, { module: number; mf: ModuleFile }[]>();
    for (const m of det.modules) {
      for (const mf of m.files) {
        if (!byFile.has(mf.file)) byFile.set(mf.file, []);
        byFile.get(mf.file)!.push({ module: m.module, mf });
      }
    }

    // Plan every module file first (frame IDs only): the guards below see the whole run before anything is
    // written.
    const matched = new Set<string>();
    const plansOf = new Map<RunFile, ModulePlanInFile[]>();
    for (const [f, mods] of byFile) {
      if (mods.every((m) => states.get(m.module)!.rec.dropped)) continue;
      plansOf.set(
        f,
        mods.map(({ module, mf }) => {
          const st = states.get(module)!;
          const { kept, counts } = planModule(
            det,
            mf,
            selection,
            keepDark,
            opts.unlisted === "keep",
            st,
            matched,
          );
          return { module, mf, rows: mf.rows, kept, counts, boxes: st.rec.rois };
        }),
      );
    }
    const planned = [...states.values()].map((s) => s.rec).filter((m) => !m.dropped);
    const unlisted = planned.reduce((a, m) => a + m.unmatched, 0);
    const framesIn = planned.reduce((a, m) => a + m.framesIn, 0);
    if (unlisted > 0 && opts.unlisted === undefined) {
      throw new InputError(
        fromAbs,
        `the selection does not list ${unlisted} of the run's ${framesIn} frames (localise ran on part of the run?); ` +
          "rerun localise on the whole run, or say --unlisted keep|delete",
      );
    }
    const absent = selection.frames - matched.size;
    if (absent > 0) {
      throw new InputError(
        fromAbs,
        `the selection lists ${absent} frames that ${runPath} does not have: it was made on another run`,
      );
    }
    const keptTotal = planned.reduce((a, m) => a + m.framesKept, 0);
    if (keptTotal === 0 && framesIn > 0 && !opts.allowEmpty) {
      throw new InputError(
        fromAbs,
        `the selection keeps none of the run's ${framesIn} frames; say --allow-empty to write a run without them`,
      );
    }

    return await buildDir(out, async (tmpDir) => {
      const files: FileReduction[] = [];
      const sorted = [...run.files].sort((a, b) => a.name.localeCompare(b.name));
      for (const f of sorted) {
        const bytesIn = fileSize(f.path);
        const final = path.join(tmpDir, f.name);
        const tmp = path.join(tmpDir, `.${f.name}.tmp-${process.pid}`);
        const mods = byFile.get(f);
        await opts.progress?.({ file: f.name, phase: "start" });
        if (!mods) {
          await copyFile(f.path, tmp);
          fs.renameSync(tmp, final);
          files.push({ name: f.name, action: "copied", bytesIn, bytesOut: fileSize(final) });
        } else if (mods.every((m) => states.get(m.module)!.rec.dropped)) {
          files.push({ name: f.name, action: "dropped", bytesIn, bytesOut: 0 });
        } else {
          const plans = plansOf.get(f)!;
          await reduceFile(cp, f, plans, det, !!opts.roi, tmp, opts.progress, compressor);
          fs.renameSync(tmp, final);
          await compressor?.measure(f.h5, final);
          files.push({ name: f.name, action: "reduced", bytesIn, bytesOut: fileSize(final) });
        }
        await opts.progress?.({ file: f.name, phase: "done" });
      }
      const modules = [...states.values()].map((s) => s.rec);
      const unmatched = modules.reduce((a, m) => a + m.unmatched, 0);
      if (unmatched) {
        notes.push(
          `${unmatched} frames are not in the selection: ${
            opts.unlisted === "keep" ? "kept" : "deleted (--unlisted delete)"
          }`,
        );
      }
      const unindexed = modules.reduce((a, m) => a + m.unindexed, 0);
      if (unindexed) notes.push(`${unindexed} rows belong to no train of the index (padding): left out`);
      notes.push(...cp.notes);
      const bytesIn = files.reduce((a, f) => a + f.bytesIn, 0);
      const bytesOut = files.reduce((a, f) => a + f.bytesOut, 0);
      const record: ReductionRecord = {
        run: runAbs,
        from: fromAbs,
        out,
        detector: det.name,
        level: det.raw ? "raw" : "corr",
        options: { modules: modulesOpt, roi: !!opts.roi, keepDark },
        bytesIn,
        bytesOut,
        ratio: bytesOut > 0 ? bytesIn / bytesOut : Infinity,
        framesIn: modules.reduce((a, m) => a + m.framesIn, 0),
        framesKept: modules.reduce((a, m) => a + (m.dropped ? 0 : m.framesKept), 0),
        modules,
        files,
        notes,
        seconds: (performance.now() - t0) / 1000,
      };
      if (compressor) record.compression = compressor.record();
      fs.writeFileSync(path.join(tmpDir, "reduction.json"), JSON.stringify(record, null, 2) + "\n");
      return record;
    });
  } finally {
    cp.dispose();
    compressor?.dispose();
    run.close();
    releaseOut(out);
  }
}

// -----------------------------------------------------------------------------------------------------
// Command

const MB = 1e6;

export function formatReduction(r: ReductionRecord): string {
  const lines = [
    `${r.run} -> ${r.out} (${r.detector}, ${r.level.toUpperCase()})`,
    `bytes in ${(r.bytesIn / MB).toFixed(1)} MB, out ${(r.bytesOut / MB).toFixed(1)} MB, ratio ${
      r.ratio.toFixed(1)
    }x; frames kept ${r.framesKept} of ${r.framesIn}`,
    "module  frames  kept  lit  dark  unmatched  files",
  ];
  for (const m of r.modules) {
    lines.push(
      `${String(m.module).padStart(6)}  ${String(m.framesIn).padStart(6)}  ${
        String(m.dropped ? 0 : m.framesKept).padStart(4)
      }  ${String(m.litKept).padStart(3)}  ${String(m.darkKept).padStart(4)}  ${
        String(m.unmatched).padStart(9)
      }  ${m.dropped ? "dropped" : "kept"}`,
    );
  }
  for (const n of r.notes) lines.push(`note: ${n}`);
  if (r.compression) lines.push(formatCompression(r.compression));
  lines.push(`written: ${r.out} (reduction.json)`);
  return lines.join("\n");
}
