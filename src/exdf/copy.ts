/**
 * The HDF5 copy engine: bit-identical copies of datasets, groups, links and attributes between h5wasm files
 * through one reused wasm-heap buffer (bounded memory, no image dataset read whole), row selections of
 * per-frame datasets (runs of consecutive kept rows, each source chunk decompressed once), ROI crops,
 * variable-length strings pointer by pointer (NULL stays NULL), and an optional hook on the rows written
 * (compression). Used by `reduce` (src/reduce/) and `decompress` / `rewriteFile` (src/compress/).
 */
import * as path from "node:path";
import { InputError } from "../errors.ts";
import { type RowsHook } from "../compress/compressor.ts";
import { ensureGroup, firstLine, type H5, h5, type H5File, rowRuns, shapeSize } from "./h5.ts";
import { checkpoint } from "../app/outdir.ts";
import type { Box } from "./detectors.ts";
import { UNLIMITED, type Wasm, type WasmFilter, type WasmMeta } from "./wasm.ts";

// -----------------------------------------------------------------------------------------------------
// Low-level copying through the wasm heap

export class Copier {
  private readonly bufs = [{ ptr: 0, bytes: 0 }, { ptr: 0, bytes: 0 }];
  readonly notes = new Set<string>();

  constructor(private readonly lib: H5, private readonly mod: Wasm, private readonly sliceBytes: number) {}

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

  meta(src: H5File, p: string): WasmMeta {
    return this.mod.get_dataset_metadata(src.file_id, "/" + p);
  }

  /** The filter to write with: deflate as in the source; others noted. */
  private filterOf(src: H5File, p: string): { compression: number; compression_opts: number[] } {
    let filters: WasmFilter[] = [];
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
    m: WasmMeta,
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

  private supported(src: H5File, p: string, m: WasmMeta): boolean {
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
  private copyVlenStrings(src: H5File, dst: H5File, p: string, m: WasmMeta): void {
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
    m: WasmMeta = this.meta(src, p),
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
export class Sink {
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
  const cp = new Copier(lib, (await lib.ready) as unknown as Wasm, opts.sliceBytes ?? 32 * 2 ** 20);
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
// Writing a reduced file
