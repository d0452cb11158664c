/**
 * How SZ-compressed frames are stored in an EuXFEL file (docs/compression.md, "Storage layout").
 *
 * A float32 per-frame dataset `<group>/<name>` of shape (N, ..., H, W) (CORR `image/data`) is replaced by
 * two per-frame datasets in the same group, so the group's INDEX stays valid and EXtra-data opens the file
 * (it lists the new keys; it cannot decode them):
 *
 * - `<name>Sz`: u8 (N, L), chunks (1, SZ_CHUNK_BYTES), the HDF5 filter of the final stage (zstd by default):
 *   row k holds the XSZ1 stream of frame k (docs/compression.md), zero padded to L = the longest stream
 *   rounded up to whole chunks. Chunks past a row's stream are never written (HDF5 reads them as zeros).
 * - `<name>SzBytes`: u32 (N,): the stream length of each frame.
 *
 * Attributes of `<name>Sz` (what `decompress` needs to restore the dataset as it was):
 *   szCodec "xfel-redu-sz", szVersion 1, szErrorBound (f64, the bound asked for), szBinWidth, szEb32 (f64),
 *   szShape (i32[]: the original entry shape, without N), szDtype "float32", szName (the original name),
 *   szChunks (i32[]: the original chunk shape, [] when contiguous), szFilter (JSON: the original filter
 *   {id, opts} or null), plus the original dataset's own attributes.
 *
 * A frame is the entry reshaped to (prod(shape[:-1]), shape[-1]), row-major, as the codec sees it.
 */
import { ensureGroup, type H5Dataset, type H5File, type H5Group, readSlab } from "../exdf/h5.ts";
import { type FilterSpec, h5wasmFilter } from "./filters.ts";
import { type SzConstants, SzFrameDecoder } from "./sz.ts";

export const SZ_CODEC = "xfel-redu-sz";
export const SZ_VERSION = 1;
export const SZ_CHUNK_BYTES = 32768;

export function szNames(name: string): { stream: string; bytes: string } {
  return { stream: `${name}Sz`, bytes: `${name}SzBytes` };
}

export interface SzDatasetMeta {
  codec: string;
  version: number;
  errorBound: number;
  binWidth: number;
  eb32: number;
  /** Entry shape of the original dataset (without the frame axis). */
  shape: number[];
  dtype: string;
  /** Original dataset name (in the same group). */
  name: string;
  chunks: number[] | null;
  filter: { id: number; opts: number[] } | null;
  /** Frames. */
  frames: number;
  /** Width of the stream dataset (bytes per row). */
  rowBytes: number;
}

/** The frame shape (height, width) the codec uses for an entry shape. */
export function frameShapeOf(entry: readonly number[]): [number, number] {
  if (entry.length === 0) return [1, 1];
  const W = entry[entry.length - 1];
  const H = entry.slice(0, -1).reduce((a, b) => a * b, 1);
  return [H, W];
}

type Attrs = Record<string, { value: unknown }>;

function attrsOf(e: unknown): Attrs {
  return ((e as { attrs?: Attrs }).attrs ?? {}) as Attrs;
}

function setAttr(
  e: unknown,
  name: string,
  value: unknown,
  shape?: number[] | null,
  dtype?: string | null,
): void {
  (e as { create_attribute(n: string, v: unknown, s?: number[] | null, d?: string | null): void })
    .create_attribute(name, value, shape, dtype);
}

/** Stream dataset paths (`.../<name>Sz`) under a group path that carry the SZ codec attribute. */
export function isSzDataset(ds: unknown): boolean {
  const a = attrsOf(ds);
  return "szCodec" in a && a.szCodec.value === SZ_CODEC;
}

/** Read the layout attributes of a stream dataset. */
export function readSzMeta(f: H5File, p: string): SzDatasetMeta {
  const ds = f.get(p) as H5Dataset | null;
  if (!ds || !isSzDataset(ds)) throw new Error(`${p}: not an ${SZ_CODEC} stream dataset`);
  const a = attrsOf(ds);
  const num = (k: string) => Number(a[k]?.value);
  const arr = (k: string) => Array.from((a[k]?.value ?? []) as ArrayLike<number | bigint>, Number);
  const version = num("szVersion");
  if (version !== SZ_VERSION) throw new Error(`${p}: ${SZ_CODEC} version ${version} not supported`);
  const shape = (ds.shape ?? []) as number[];
  const chunks = arr("szChunks");
  return {
    codec: SZ_CODEC,
    version,
    errorBound: num("szErrorBound"),
    binWidth: num("szBinWidth"),
    eb32: num("szEb32"),
    shape: arr("szShape"),
    dtype: String(a.szDtype?.value ?? "float32"),
    name: String(a.szName?.value),
    chunks: chunks.length ? chunks : null,
    filter: JSON.parse(String(a.szFilter?.value ?? "null")),
    frames: shape[0] ?? 0,
    rowBytes: shape[1] ?? 0,
  };
}

/** Names of the layout attributes (not copied back by decompress). */
export const SZ_ATTRS = [
  "szCodec",
  "szVersion",
  "szErrorBound",
  "szBinWidth",
  "szEb32",
  "szShape",
  "szDtype",
  "szName",
  "szChunks",
  "szFilter",
];

/** Writes the frames of one dataset as SZ streams, frame by frame, in the layout above. */
export class SzDatasetWriter {
  private readonly ds: H5Dataset;
  private readonly lengths: Uint32Array;
  private width = 0;
  private k = 0;
  private pad = new Uint8Array(SZ_CHUNK_BYTES);
  /** Bytes of all streams. */
  streamBytes = 0;

  constructor(
    private readonly dst: H5File,
    private readonly group: string,
    private readonly name: string,
    private readonly frames: number,
    c: SzConstants,
    original: {
      entry: number[];
      chunks: number[] | null;
      filter: { id: number; opts: number[] } | null;
      attrs?: Record<string, { value: unknown; shape: number[] | null; dtype: unknown }>;
    },
    filter: FilterSpec,
  ) {
    const g = ensureGroup(dst as unknown as H5Group, group);
    const { stream } = szNames(name);
    const f = filter.id ? h5wasmFilter(filter) : {};
    this.ds = g.create_dataset({
      name: stream,
      data: new Uint8Array(0),
      shape: [frames, 0],
      maxshape: [Math.max(1, frames), null],
      chunks: [1, SZ_CHUNK_BYTES],
      dtype: "<B",
      ...f,
    });
    this.lengths = new Uint32Array(frames);
    // The original's own attributes first, then the layout's (which win on a clash).
    for (const [k, a] of Object.entries(original.attrs ?? {})) {
      if (SZ_ATTRS.includes(k)) continue;
      try {
        setAttr(this.ds, k, a.value, a.shape, typeof a.dtype === "string" ? a.dtype : null);
      } catch {
        // an attribute h5wasm cannot write back: left out
      }
    }
    setAttr(this.ds, "szCodec", SZ_CODEC);
    setAttr(this.ds, "szVersion", SZ_VERSION, null, "<i");
    setAttr(this.ds, "szErrorBound", c.errorBound, null, "<d");
    setAttr(this.ds, "szBinWidth", c.binWidth, null, "<d");
    setAttr(this.ds, "szEb32", c.eb32, null, "<d");
    setAttr(this.ds, "szShape", Int32Array.from(original.entry), [original.entry.length], "<i");
    setAttr(this.ds, "szDtype", "float32");
    setAttr(this.ds, "szName", name);
    const ch = original.chunks ?? [];
    setAttr(this.ds, "szChunks", Int32Array.from(ch), [ch.length], "<i");
    setAttr(this.ds, "szFilter", JSON.stringify(original.filter));
  }

  /** Append the streams of the next frames. */
  append(streams: Uint8Array[]): void {
    for (const s of streams) {
      if (this.k >= this.frames) throw new Error(`${this.group}/${this.name}: more frames than declared`);
      const padded = Math.ceil(s.length / SZ_CHUNK_BYTES) * SZ_CHUNK_BYTES;
      if (padded > this.width) {
        this.width = padded;
        this.ds.resize([this.frames, this.width]);
      }
      if (padded > 0) {
        if (this.pad.length < padded) this.pad = new Uint8Array(padded);
        this.pad.set(s);
        this.pad.fill(0, s.length, padded);
        this.ds.write_slice([[this.k, this.k + 1], [0, padded]], this.pad.subarray(0, padded));
      }
      this.lengths[this.k++] = s.length;
      this.streamBytes += s.length;
    }
  }

  /** Write the lengths dataset; all frames must have been appended. */
  close(): void {
    if (this.k !== this.frames) {
      throw new Error(`${this.group}/${this.name}: ${this.k} of ${this.frames} frames written`);
    }
    const g = this.dst.get(this.group) as unknown as H5Group;
    g.create_dataset({
      name: szNames(this.name).bytes,
      data: this.lengths,
      shape: [this.frames],
      dtype: "<I",
    });
  }
}

/** Reads frames back from a stream dataset. */
export class SzDatasetReader {
  readonly meta: SzDatasetMeta;
  readonly height: number;
  readonly width: number;
  private readonly lengths: Uint32Array;
  private readonly dec = new SzFrameDecoder();
  private buf = new Uint8Array(0);

  constructor(private readonly f: H5File, private readonly streamPath: string) {
    this.meta = readSzMeta(f, streamPath);
    [this.height, this.width] = frameShapeOf(this.meta.shape);
    const bytesPath = streamPath + "Bytes";
    this.lengths = new Uint32Array(this.meta.frames);
    if (this.meta.frames) readSlab(f, bytesPath, [0], [this.meta.frames], this.lengths);
  }

  get pixels(): number {
    return this.height * this.width;
  }

  /** The stream of frame k. */
  stream(k: number): Uint8Array {
    const n = this.lengths[k];
    if (n === undefined) throw new RangeError(`frame ${k} out of range`);
    if (n > this.meta.rowBytes) throw new Error(`${this.streamPath}: frame ${k} longer than its row`);
    if (this.buf.length < n) this.buf = new Uint8Array(n);
    const out = this.buf.subarray(0, n);
    if (n) readSlab(this.f, this.streamPath, [k, 0], [1, n], out);
    return out;
  }

  /** Decode frame k into out (pixels values). */
  decode(k: number, out: Float32Array): void {
    const info = this.dec.decode(this.stream(k), out);
    if (info.height !== this.height || info.width !== this.width) {
      throw new Error(
        `${this.streamPath}: frame ${k} is ${info.height} x ${info.width}, expected ${this.height} x ${this.width}`,
      );
    }
  }
}
