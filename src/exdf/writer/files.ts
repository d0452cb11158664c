/**
 * The writer's sequence files. Each file is created under a temporary name (`.<name>.tmp-<pid>-<n>`)
 * when its first train is assigned, receives its datasets' rows (staged into chunk-sized blocks when
 * buffering, bounded by `bufferBytes` in total; handed to HDF5 in slices of at most `sliceBytes` through
 * one reused wasm-heap buffer), and is finalized (constants, control timestamps, RUN, INDEX, METADATA)
 * and renamed to its final name once it is complete. At most `maxOpenFiles` HDF5 files are open; others
 * are closed and reopened in append mode. Every HDF5 status is checked.
 *
 * The process-level cleanup (src/app/cleanup.ts) removes the temporary files of writers still open. Used by
 * src/exdf/writer/writer.ts.
 */
import type { Wasm } from "../wasm.ts";
import * as fs from "node:fs";
import * as nodePath from "node:path";
import { ensureGroup, firstLine, type H5, type H5File, type H5Group, type NumericArray } from "../h5.ts";
import { type Ds, formatTemplate, type Opts, type Src, WriterError } from "./schema.ts";
import { tmpName } from "../../app/outdir.ts";

interface Stage {
  buf: NumericArray;
  n: number;
  bytes: number;
}

interface FileDs {
  /** Rows written to the HDF5 dataset. */
  written: number;
  stage?: Stage;
  /** Control: first entry of this file (RUN section). */
  first?: NumericArray;
}

export interface Seg {
  seq: number;
  start: number;
  end: number;
  bytes: number;
  closed: boolean;
  final: string;
  tmp: string;
  created: boolean;
  creationDate: string;
  file?: H5File;
  per: Map<Ds, FileDs>;
}

function utcStamp(d: Date): string {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
}

/** The trains and sources of a run, shared with the FileWriter. */
export interface Run {
  srcs: Src[];
  datasets: Ds[];
  tids: bigint[];
  tss: bigint[];
}

let tmpCounter = 0;

/** The sequence files of one writer. */
export class SeqFiles {
  readonly segs: Seg[] = [];
  /** Final paths of the completed files. */
  readonly done: string[] = [];
  /** Index of the first segment not finalized. */
  nextFinal = 0;
  private stagedBytes = 0;
  private readonly openSegs: Seg[] = [];
  /** Reused wasm-heap buffer for writes (at most sliceBytes, or one entry). */
  private scratch = { ptr: 0, bytes: 0 };

  constructor(
    private readonly lib: H5,
    private readonly wasm: Wasm,
    private readonly opt: Opts,
    private readonly template: string,
    private readonly names: Readonly<Record<string, string | number>>,
    private readonly run: Run,
  ) {}

  finalName(seq: number): string {
    return formatTemplate(this.template, { ...this.names, seq });
  }

  private newSeg(start: number): Seg {
    const seq = this.segs.length;
    const final = this.finalName(seq);
    const tmp = tmpName(final, ++tmpCounter);
    return {
      seq,
      start,
      end: start,
      bytes: 0,
      closed: false,
      final,
      tmp,
      created: false,
      creationDate: utcStamp(new Date()),
      per: new Map(),
    };
  }

  /** Assign the next train (global index t, b data bytes) to a file; a new file when a limit is reached. */
  assignTrain(t: number, b: number): void {
    let seg = this.segs[this.segs.length - 1];
    if (!seg || this.splitBefore(seg.end - seg.start, seg.bytes, b)) {
      if (seg) seg.closed = true;
      seg = this.newSeg(t);
      this.segs.push(seg);
      this.ensureOpen(seg); // create the file now: a file per started sequence, errors surface early
    }
    seg.end = t + 1;
    seg.bytes += b;
  }

  splitBefore(nTrains: number, bytes: number, add: number): boolean {
    const { maxTrainsPerFile, maxBytesPerFile } = this.opt;
    if (maxTrainsPerFile !== undefined && nTrains >= maxTrainsPerFile) return true;
    return maxBytesPerFile !== undefined && nTrains > 0 && bytes + add > maxBytesPerFile;
  }

  /** Finalize all remaining files (one empty file when there were no trains). */
  closeAll(fillMissing: boolean): void {
    if (!this.segs.length) this.segs.push(this.newSeg(0));
    this.segs[this.segs.length - 1].closed = true;
    for (const seg of this.segs.slice(this.nextFinal)) this.finalize(seg, fillMissing);
    this.nextFinal = this.segs.length;
    this.freeScratch();
  }

  /** Close the open HDF5 files and remove the temporary files (completed files stay). */
  abort(): void {
    for (const seg of this.segs.slice(this.nextFinal)) {
      try {
        seg.file?.close();
      } catch {
        // closing is best effort here
      }
      seg.file = undefined;
      try {
        fs.rmSync(seg.tmp, { force: true });
      } catch {
        // best effort
      }
    }
    this.freeScratch();
  }

  /** Distribute rows (checked) over the sequence files. */
  writeRows(ds: Ds, arr: NumericArray, n: number): void {
    const cum = ds.src.cum;
    let r = ds.rows;
    let off = 0;
    while (off < n) {
      const seg = this.segs[ds.segCursor];
      const end = cum[seg.end];
      if (r >= end) {
        ds.segCursor++;
        continue;
      }
      const m = Math.min(n - off, end - r);
      this.writePiece(seg, ds, arr, off, m);
      r += m;
      off += m;
    }
    ds.rows = r;
  }

  private fileDs(seg: Seg, ds: Ds): FileDs {
    let f = seg.per.get(ds);
    if (!f) seg.per.set(ds, f = { written: 0 });
    return f;
  }

  private writePiece(seg: Seg, ds: Ds, arr: NumericArray, off: number, m: number): void {
    const f = this.fileDs(seg, ds);
    const E = ds.entryElems;
    if (ds.src.kind === "control" && !f.first && f.written === 0 && !(f.stage?.n)) {
      f.first = arr.slice(off * E, (off + 1) * E) as NumericArray;
    }
    if (!ds.stageRows) {
      this.writeDirect(seg, ds, arr, off, m);
      return;
    }
    while (m > 0) {
      const st = f.stage;
      if (!st || st.n === 0) {
        if (m >= ds.stageRows) {
          // Whole staging blocks go straight to the file.
          const k = m - (m % ds.stageRows);
          this.writeDirect(seg, ds, arr, off, k);
          off += k;
          m -= k;
          continue;
        }
      }
      const stage = st ?? this.allocStage(seg, ds);
      const k = Math.min(m, ds.stageRows - stage.n);
      stage.buf.set(arr.subarray(off * E, (off + k) * E) as any, stage.n * E);
      stage.n += k;
      off += k;
      m -= k;
      if (stage.n === ds.stageRows) this.flushStage(seg, ds);
    }
  }

  private allocStage(seg: Seg, ds: Ds): Stage {
    const bytes = ds.stageRows * ds.entryBytes;
    if (this.stagedBytes + bytes > this.opt.bufferBytes) this.flushAllStages();
    const stage = { buf: new ds.info.ctor(ds.stageRows * ds.entryElems), n: 0, bytes };
    this.stagedBytes += bytes;
    this.fileDs(seg, ds).stage = stage;
    return stage;
  }

  private flushStage(seg: Seg, ds: Ds, free = false): void {
    const f = seg.per.get(ds);
    const st = f?.stage;
    if (!f || !st) return;
    if (st.n) {
      const n = st.n;
      st.n = 0;
      this.writeDirect(seg, ds, st.buf, 0, n, false);
    }
    if (free) {
      f.stage = undefined;
      this.stagedBytes -= st.bytes;
    }
  }

  private flushAllStages(): void {
    for (const seg of this.segs.slice(this.nextFinal)) {
      for (const ds of [...seg.per.keys()]) this.flushStage(seg, ds, true);
    }
  }

  /** Append rows to the file's dataset, in slices of at most sliceBytes. */
  private writeDirect(seg: Seg, ds: Ds, arr: NumericArray, off: number, m: number, flushFirst = true): void {
    if (m === 0) return;
    if (flushFirst) this.flushStage(seg, ds);
    this.ensureOpen(seg);
    const f = this.fileDs(seg, ds);
    const start = f.written;
    this.resize(seg, ds, start + m);
    const step = Math.max(1, Math.floor(this.opt.sliceBytes / ds.entryBytes));
    for (let a = 0; a < m; a += step) {
      const b = Math.min(m, a + step);
      this.writeSlice(seg, ds, start + a, arr, off + a, b - a);
    }
    f.written = start + m;
  }

  private resize(seg: Seg, ds: Ds, rows: number): void {
    this.h5call(
      `cannot resize ${ds.h5path} to ${rows} entries in ${seg.tmp}`,
      ds,
      () => this.wasm.resize_dataset(seg.file!.file_id, ds.h5path, [rows, ...ds.entryShape].map(BigInt)),
    );
  }

  /** An h5wasm call that may return a negative status or throw HDF5's error stack. */
  private h5call(what: string, ds: Ds | undefined, call: () => number): void {
    let status: number;
    try {
      status = call();
    } catch (e) {
      throw new WriterError(`${what}: ${firstLine(e)}`, ds?.name);
    }
    if (status < 0) throw new WriterError(`${what}: HDF5 status ${status}`, ds?.name);
  }

  /**
   * Rows [row, row + n) of the file's dataset from entries [off, off + n) of arr, through the wasm heap. With
   * zeroTail, block by block of the chunk's rows, each block only as wide as its entries need (zeroWidth): one
   * wide entry widens its own block, not the slice.
   */
  private writeSlice(seg: Seg, ds: Ds, row: number, arr: NumericArray, off: number, n: number): void {
    const src = new Uint8Array(arr.buffer, arr.byteOffset + off * ds.entryBytes, n * ds.entryBytes);
    if (!ds.zeroTail) {
      this.writeBlock(seg, ds, row, src, n, ds.entryShape[0] ?? 1);
      return;
    }
    const full = ds.entryShape[0], rows = ds.chunks[0];
    for (let a = 0; a < n;) {
      const b = Math.min(n, (Math.floor((row + a) / rows) + 1) * rows - row); // the next chunk boundary
      const block = src.subarray(a * ds.entryBytes, b * ds.entryBytes);
      const width = zeroWidth(block, b - a, ds.entryBytes, full, ds.chunks[1]);
      // All zeros: nothing written, the fill value reads back.
      if (width > 0) this.writeBlock(seg, ds, row + a, block, b - a, width);
      a = b;
    }
  }

  /** Rows [row, row + n) from the n entries in src, the first `width` along the entries' first axis. */
  private writeBlock(seg: Seg, ds: Ds, row: number, src: Uint8Array, n: number, width: number): void {
    const w = this.wasm;
    const full = ds.entryShape[0] ?? 1;
    const rowBytes = ds.entryBytes / full * width;
    const nbytes = n * rowBytes;
    if (nbytes > this.scratch.bytes) {
      this.freeScratch();
      const ptr = w._malloc(nbytes);
      if (!ptr) {
        throw new WriterError(`wasm heap: cannot allocate ${nbytes} bytes (lower sliceBytes)`, ds.name);
      }
      this.scratch = { ptr, bytes: nbytes };
    }
    const { ptr } = this.scratch;
    // Views of the heap die when it grows: take HEAPU8 now.
    const heap = w.HEAPU8;
    if (width === full) heap.set(src, ptr);
    else {
      for (let r = 0; r < n; r++) {
        heap.set(src.subarray(r * ds.entryBytes, r * ds.entryBytes + rowBytes), ptr + r * rowBytes);
      }
    }
    const count = [n, ...ds.entryShape];
    if (width !== full) count[1] = width;
    this.h5call(
      `cannot write ${ds.h5path} entries ${row}..${row + n} in ${seg.tmp}`,
      ds,
      () =>
        w.set_dataset_data(
          seg.file!.file_id,
          ds.h5path,
          count.map(BigInt),
          [row, ...ds.entryShape.map(() => 0)].map(BigInt),
          count.map(() => 1n),
          BigInt(ptr),
        ),
    );
  }

  private freeScratch(): void {
    if (this.scratch.ptr) this.wasm._free(this.scratch.ptr);
    this.scratch = { ptr: 0, bytes: 0 };
  }

  /** Create a small dataset in one go, checking that HDF5 made it. */
  private put(
    seg: Seg,
    g: H5Group,
    name: string,
    data: NumericArray | string[],
    dtype?: string,
    shape?: number[],
  ): void {
    const d = g.create_dataset({ name, data, ...(dtype ? { dtype } : {}), ...(shape ? { shape } : {}) });
    const want = shape ?? [data.length];
    const got = (d as { shape?: number[] } | null)?.shape;
    if (!got || got.length !== want.length || got.some((x, i) => x !== want[i])) {
      throw new WriterError(`cannot create ${g.path}/${name} in ${seg.tmp}`);
    }
  }

  // -------------------------------------------------------------------------------------------------
  // Files

  private ensureOpen(seg: Seg): void {
    const i = this.openSegs.indexOf(seg);
    if (seg.file) {
      if (i !== this.openSegs.length - 1) {
        this.openSegs.splice(i, 1);
        this.openSegs.push(seg);
      }
      return;
    }
    while (this.openSegs.length >= this.opt.maxOpenFiles) this.closeSeg(this.openSegs[0]);
    fs.mkdirSync(nodePath.dirname(seg.tmp), { recursive: true });
    const file = new this.lib.File(seg.tmp, seg.created ? "a" : "w");
    if (!file.file_id || file.file_id < 0n) {
      throw new WriterError(`cannot ${seg.created ? "reopen" : "create"} ${seg.tmp}`);
    }
    seg.file = file;
    this.openSegs.push(seg);
    if (!seg.created) {
      seg.created = true;
      for (const ds of this.run.datasets) {
        const slash = ds.h5path.lastIndexOf("/");
        const parent = ensureGroup(file, ds.h5path.slice(0, slash));
        const created = parent.create_dataset({
          name: ds.h5path.slice(slash + 1),
          data: new ds.info.ctor(0),
          shape: [0, ...ds.entryShape],
          dtype: ds.info.h5,
          maxshape: [null, ...ds.entryShape],
          chunks: ds.chunks,
          ...(ds.compression !== undefined
            ? { compression: ds.compression, compression_opts: ds.compressionOpts }
            : {}),
        });
        if ((created as { shape?: number[] } | null)?.shape?.[0] !== 0) {
          throw new WriterError(`cannot create ${ds.h5path} in ${seg.tmp}`, ds.name);
        }
      }
    }
  }

  /** Flush the file's buffers and close it (it may be reopened). */
  private closeSeg(seg: Seg): void {
    for (const ds of [...seg.per.keys()]) this.flushStage(seg, ds, true);
    const i = this.openSegs.indexOf(seg);
    if (i >= 0) this.openSegs.splice(i, 1);
    const file = seg.file;
    seg.file = undefined;
    if (file) this.h5call(`cannot close ${seg.tmp}`, undefined, () => file.close());
  }

  /** Finalize the closed files whose datasets all hold their data. */
  advance(): void {
    while (this.nextFinal < this.segs.length) {
      const seg = this.segs[this.nextFinal];
      if (!seg.closed) break;
      const complete = this.run.srcs.every((s) =>
        s.datasets.every((d) => d.constant || d.rows >= s.cum[seg.end])
      );
      if (!complete) break;
      this.finalize(seg, false);
      this.nextFinal++;
    }
  }

  private finalize(seg: Seg, fillMissing: boolean): void {
    this.ensureOpen(seg);
    const file = seg.file!;
    for (const ds of [...seg.per.keys()]) this.flushStage(seg, ds, true);
    const nt = seg.end - seg.start;
    const u64 = (a: bigint[] | BigUint64Array) => (a instanceof BigUint64Array ? a : BigUint64Array.from(a));
    const put = (g: H5Group, name: string, data: NumericArray | string[], dtype?: string) =>
      this.put(seg, g, name, data, dtype);

    for (const src of this.run.srcs) {
      const c0 = src.cum[seg.start];
      const rows = src.cum[seg.end] - c0;
      for (const ds of src.datasets) {
        const f = this.fileDs(seg, ds);
        if (ds.constant) {
          const rep = Math.min(rows, Math.max(1, Math.floor(this.opt.sliceBytes / ds.entryBytes)));
          const block = new ds.info.ctor(rep * ds.entryElems);
          for (let i = 0; i < rep; i++) block.set(ds.constant as any, i * ds.entryElems);
          for (let done = 0; done < rows; done += rep) {
            this.writeDirect(seg, ds, block, 0, Math.min(rep, rows - done), false);
          }
        } else if (f.written < rows) {
          if (!fillMissing) {
            throw new WriterError(`internal: ${ds.label} incomplete in ${seg.final}`, ds.name);
          }
          this.resize(seg, ds, rows);
          f.written = rows;
        }
      }
      // Index.
      const first = new BigUint64Array(nt);
      const count = new BigUint64Array(nt);
      for (let t = 0; t < nt; t++) {
        first[t] = BigInt(src.cum[seg.start + t] - c0);
        count[t] = BigInt(src.cum[seg.start + t + 1] - src.cum[seg.start + t]);
      }
      for (const g of src.kind === "control" ? [""] : src.groups) {
        const ig = ensureGroup(file, `INDEX/${src.name}${g ? "/" + g : ""}`);
        put(ig, "first", first, "<Q");
        put(ig, "count", count, "<Q");
      }
      if (src.kind === "control") {
        const ts: bigint[] = [];
        for (let t = seg.start; t < seg.end; t++) if (src.cum[t + 1] > src.cum[t]) ts.push(this.run.tss[t]);
        for (const ds of src.datasets) {
          put(ensureGroup(file, ds.keyGroup), "timestamp", u64(ts), "<Q");
          const run = ensureGroup(file, "RUN/" + ds.keyGroup.slice("CONTROL/".length));
          const value = this.fileDs(seg, ds).first ?? ds.constant ?? new ds.info.ctor(ds.entryElems);
          this.put(seg, run, "value", value, ds.info.h5, [1, ...ds.entryShape]);
          put(run, "timestamp", u64([ts.length ? ts[0] : 0n]), "<Q");
        }
      }
    }
    ensureGroup(file, "RUN");
    const index = ensureGroup(file, "INDEX");
    put(index, "trainId", u64(this.run.tids.slice(seg.start, seg.end)), "<Q");
    put(index, "timestamp", u64(this.run.tss.slice(seg.start, seg.end)), "<Q");
    put(index, "flag", new Int32Array(nt).fill(1), "<i");
    put(index, "origin", new Int32Array(nt).fill(-1), "<i");

    const meta = ensureGroup(file, "METADATA");
    put(meta, "dataFormatVersion", [this.opt.formatVersion]);
    put(meta, "creationDate", [seg.creationDate]);
    put(meta, "updateDate", [utcStamp(new Date())]);
    put(meta, "daqLibrary", [this.opt.daqLibrary]);
    put(meta, "sequenceNumber", new Uint32Array([seg.seq]), "<I");
    if (this.opt.run !== undefined) put(meta, "runNumber", new Uint32Array([this.opt.run]), "<I");
    if (this.opt.proposal !== undefined) {
      put(meta, "proposalNumber", new Uint32Array([this.opt.proposal]), "<I");
    }
    const roots: string[] = [];
    const devices: string[] = [];
    for (const src of this.run.srcs) {
      for (const g of src.kind === "control" ? [""] : src.groups) {
        roots.push(src.kind === "control" ? "CONTROL" : "INSTRUMENT");
        devices.push(g ? `${src.name}/${g}` : src.name);
      }
    }
    const dsg = ensureGroup(meta, "dataSources");
    put(dsg, "dataSourceId", roots.map((r, i) => `${r}/${devices[i]}`));
    put(dsg, "root", roots);
    put(dsg, "deviceId", devices);

    this.closeSeg(seg);
    if (!this.opt.overwrite && fs.existsSync(seg.final)) {
      throw new WriterError(`${seg.final} appeared while writing (open with overwrite: true to replace it)`);
    }
    fs.renameSync(seg.tmp, seg.final);
    this.done.push(seg.final);
    // Release per-file state.
    seg.per.clear();
  }
}

/**
 * The extent along the first entry axis that n entries of `entryBytes` bytes each (`full` along that axis) need
 * to hold every non-zero byte: the last non-zero position + 1, rounded up to a multiple of `chunk` (at most
 * `full`); 0 when every byte is zero. Bytes, not values: -0 and NaN are non-zero. Each entry's bytes past what
 * is needed so far are compared with zeros natively (Buffer.equals); only an entry that needs more is scanned.
 */
export function zeroWidth(
  src: Uint8Array,
  n: number,
  entryBytes: number,
  full: number,
  chunk: number,
): number {
  const colBytes = entryBytes / full;
  if (zeroBytes.length < entryBytes) zeroBytes = Buffer.alloc(entryBytes);
  const buf = Buffer.from(src.buffer, src.byteOffset, n * entryBytes);
  let used = 0; // bytes of an entry that hold a non-zero byte, at least
  for (let r = 0; r < n && used < entryBytes; r++) {
    const base = r * entryBytes;
    const tail = buf.subarray(base + used, base + entryBytes);
    if (tail.equals(zeroBytes.subarray(0, tail.length))) continue;
    for (let k = entryBytes - 1; k >= used; k--) {
      if (buf[base + k] !== 0) {
        used = k + 1;
        break;
      }
    }
  }
  if (used === 0) return 0;
  const cols = Math.ceil(used / colBytes);
  return Math.min(full, Math.ceil(cols / chunk) * chunk);
}

let zeroBytes = Buffer.alloc(0);
