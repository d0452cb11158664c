/**
 * The compression stage of `reduce --compress <method>` (docs/compression.md): what happens to each
 * detector dataset, and the record of ratio, quality and speed.
 *
 * Methods (`parseCompress`):
 * - `lossless:<filter>`: image-shaped per-frame datasets (data, mask, gain; ROI crops) written with the
 *   filter (src/compress/filters.ts), values bit for bit.
 * - `round:<m>[,<p>]`: float32 image datasets rounded (src/compress/round.ts), then the lossless filter
 *   (`--compress-filter`, default zstd); other image datasets: the filter only.
 * - `sz:<eb>`: float32 image datasets SZ-coded (src/compress/sz.ts) into the layout of
 *   src/compress/layout.ts, the final stage being the filter of the stream dataset (default zstd); other
 *   image datasets: the filter only.
 *
 * Measured per dataset and aggregated per module and dataset key: bytes in (uncompressed kept frames),
 * bytes out (the file's growth while the dataset is written: chunks and their index), compress throughput
 * (bytes in / seconds spent transforming, encoding and writing), and on a sample of `qualityFrames` frames
 * per module file (evenly spaced), read back from the finished output file: decompress throughput (sample
 * bytes / seconds reading and decoding) and quality (src/compress/quality.ts) against the source frames.
 */
import type { Box } from "../exdf/detectors.ts";
import { InputError } from "../errors.ts";
import { getGpuDevice, gpuHardwarePresent } from "../gpu/device.ts";
import {
  arrayFor,
  dsInfo,
  h5,
  type H5Dataset,
  type H5File,
  readSlab,
  reopenH5,
  rowRuns,
  shapeSize,
} from "../exdf/h5.ts";
import { type FilterSpec, h5wasmFilter, parseFilter, registerPlugins } from "./filters.ts";
import { SzDatasetReader, SzDatasetWriter, szNames } from "./layout.ts";
import { QualityAccumulator, type QualityStats } from "./quality.ts";
import { checkRoundParams, roundBits, type RoundParams } from "./round.ts";
import { szCodesCpu, type SzConstants, szConstants, SzFrameEncoder } from "./sz.ts";
import { createSzKernel, type SzKernel } from "./webgpu.ts";
import { checkpoint } from "../app/outdir.ts";
import { fileSize, MB } from "../app/format.ts";

export type CompressMethod =
  | { kind: "lossless"; filter: FilterSpec }
  | { kind: "round"; round: RoundParams; filter: FilterSpec }
  | { kind: "sz"; errorBound: number; filter: FilterSpec };

export const DEFAULT_ROUND_FILTER = "zstd";
export const DEFAULT_SZ_FILTER = "zstd";

/**
 * Parse `--compress` (and `--compress-filter`, the lossless stage of round and sz). Throws an InputError
 * naming the problem.
 */
export function parseCompress(spec: string, filter?: string): CompressMethod {
  const i = spec.indexOf(":");
  const kind = (i < 0 ? spec : spec.slice(0, i)).trim().toLowerCase();
  const arg = i < 0 ? "" : spec.slice(i + 1).trim();
  const bad = (why: string) => new InputError(undefined, `--compress ${spec}: ${why}`);
  const wrap = <T>(f: () => T): T => {
    try {
      return f();
    } catch (e) {
      throw bad(e instanceof Error ? e.message : String(e));
    }
  };
  if (kind === "lossless") {
    if (filter !== undefined) {
      throw bad("--compress-filter is for round and sz; name the filter in lossless:<filter>");
    }
    if (!arg) throw bad("name a filter: lossless:<filter>");
    return { kind, filter: wrap(() => parseFilter(arg)) };
  }
  if (kind === "round") {
    const parts = arg.split(",").map((s) => s.trim());
    if (!arg || parts.length > 2 || parts.some((s) => s === "" || !/^-?\d+$/.test(s))) {
      throw bad("expected round:<mantissa bits>[,<abs power>] with integers, e.g. round:10 or round:10,-2");
    }
    const round = wrap(() =>
      checkRoundParams({
        mantissaBits: Number(parts[0]),
        absPower: parts.length > 1 ? Number(parts[1]) : null,
      })
    );
    return { kind, round, filter: wrap(() => parseFilter(filter ?? DEFAULT_ROUND_FILTER)) };
  }
  if (kind === "sz") {
    const eb = Number(arg);
    if (!arg || !Number.isFinite(eb) || eb <= 0) {
      throw bad("expected sz:<abs error bound>, a positive number");
    }
    wrap(() => szConstants(eb));
    return { kind, errorBound: eb, filter: wrap(() => parseFilter(filter ?? DEFAULT_SZ_FILTER)) };
  }
  throw bad("the method must be lossless:<filter>, round:<m>[,<p>] or sz:<error bound>");
}

/** The method as text (normalised). */
export function methodSpec(m: CompressMethod): string {
  if (m.kind === "lossless") return `lossless:${m.filter.name}`;
  if (m.kind === "round") {
    return `round:${m.round.mantissaBits}${m.round.absPower === null ? "" : `,${m.round.absPower}`}`;
  }
  return `sz:${m.errorBound}`;
}

/** What reduce's copy calls for each block of rows it writes (lossless and round). */
export interface RowsHook {
  /** The filter to write with (instead of the source's). */
  filter: { compression: number; compression_opts: number[] };
  /** Called on each block of rows (heap bytes) just before it is written; may change them in place. */
  beforeWrite?: (heap: Uint8Array, ptr: number, rows: number, rowBytes: number) => void;
  /** Time spent in beforeWrite and in the writes, and the bytes written (uncompressed). */
  stats: { seconds: number; bytes: number };
}

export interface DatasetMeta {
  /** HDF5 type class (0 integer, 1 float). */
  type: number;
  /** Bytes per element. */
  size: number;
  signed?: boolean;
  /** Shape, frame axis first. */
  shape: number[];
}

/** One dataset the compressor handled in the current file. */
export interface DatasetEntry {
  module: number;
  file: string;
  /** Source dataset path. */
  path: string;
  /** Key of the dataset within its source: "image.data". */
  key: string;
  dtype: string;
  /** Rows of the source kept, in output order. */
  kept: Int32Array;
  entry: number[];
  kind: "rows" | "sz";
  /** Outputs: path in the output file, and the ROI box cropped (last two axes) if any. */
  outputs: { path: string; box?: Box }[];
  hook?: RowsHook;
  bytesIn: number;
  bytesOut: number;
  seconds: number;
  /** After measure(): */
  quality?: QualityStats;
  sampleBytes?: number;
  readSeconds?: number;
}

export interface CompressionModuleRecord {
  module: number;
  /** Dataset key within the module source ("image.data"). */
  dataset: string;
  dtype: string;
  frames: number;
  bytesIn: number;
  bytesOut: number;
  ratio: number;
  compressMBps: number;
  decompressMBps: number;
  sampledFrames: number;
  /** Quality of the sample (PSNR in dB: Infinity, written as null in JSON, when exact; see `exact`). */
  maxAbsError: number;
  /** Max error over every finite pixel, masked ones included. */
  maxAbsErrorAll: number;
  psnr: number | null;
  ssim: number | null;
  mse: number;
  dataRange: number;
  nonFiniteChanged: number;
  exact: boolean;
}

export interface CompressionRecord {
  method: CompressMethod["kind"];
  spec: string;
  /** The lossless stage (the filter of the compressed datasets / of the SZ stream datasets). */
  filter: string;
  params: Record<string, number | null>;
  backend: "cpu" | "webgpu";
  adapter: string | null;
  qualityFrames: number;
  bytesIn: number;
  bytesOut: number;
  ratio: number;
  compressMBps: number;
  decompressMBps: number;
  /** Over every sampled frame of every module (valid pixels; all finite pixels). */
  maxAbsError: number;
  maxAbsErrorAll: number;
  psnr: number | null;
  ssim: number | null;
  exact: boolean;
  modules: CompressionModuleRecord[];
  notes: string[];
}

export interface CompressorOptions {
  /** SZ integer stage: "auto" (a hardware WebGPU adapter, else the CPU), "cpu", "webgpu" (any adapter). */
  backend?: "auto" | "cpu" | "webgpu";
  /** Frames per module file sampled for quality and read speed (default 8). */
  qualityFrames?: number;
  /** Largest batch of frames encoded at once, in bytes (default 16 MiB). */
  batchBytes?: number;
}

function dtypeName(m: DatasetMeta): string {
  if (m.type === 1) return `float${m.size * 8}`;
  if (m.type === 0) return `${m.signed === false ? "uint" : "int"}${m.size * 8}`;
  return `type${m.type}`;
}

/** Evenly spaced sample of n indices out of K (all when K <= n). */
export function sampleIndices(K: number, n: number): number[] {
  if (K <= n) return Array.from({ length: K }, (_, i) => i);
  return Array.from({ length: n }, (_, i) => Math.floor(((i + 0.5) * K) / n));
}

export class Compressor {
  readonly spec: string;
  readonly notes = new Set<string>();
  private pending: DatasetEntry[] = [];
  private readonly done: DatasetEntry[] = [];
  private readonly szConst: SzConstants | null;
  private readonly kernels = new Map<string, SzKernel>();
  private readonly encoder: SzFrameEncoder | null;
  private readonly qualityFrames: number;
  private readonly batchBytes: number;
  /** Per (module, key) and overall quality. */
  private readonly acc = new Map<string, QualityAccumulator>();
  private readonly overall = new QualityAccumulator();

  private constructor(
    readonly method: CompressMethod,
    readonly backend: "cpu" | "webgpu",
    readonly adapter: string | null,
    opts: CompressorOptions,
  ) {
    this.spec = methodSpec(method);
    this.szConst = method.kind === "sz" ? szConstants(method.errorBound) : null;
    this.encoder = this.szConst ? new SzFrameEncoder(this.szConst) : null;
    this.qualityFrames = Math.max(1, Math.floor(opts.qualityFrames ?? 8));
    this.batchBytes = Math.max(1, opts.batchBytes ?? 16 * 2 ** 20);
  }

  static async create(method: CompressMethod, opts: CompressorOptions = {}): Promise<Compressor> {
    if (method.filter.plugin) await registerPlugins();
    let backend: "cpu" | "webgpu" = "cpu";
    let adapter: string | null = null;
    const want = opts.backend ?? "auto";
    if (!["auto", "cpu", "webgpu"].includes(want)) {
      throw new InputError(undefined, `--compress-backend must be auto, cpu or webgpu, not ${want}`);
    }
    if (method.kind === "sz" && want !== "cpu" && (want === "webgpu" || gpuHardwarePresent())) {
      const gpu = await getGpuDevice();
      if (gpu && (want === "webgpu" || !gpu.software)) {
        backend = "webgpu";
        adapter = gpu.adapterName;
      } else if (want === "webgpu") {
        throw new InputError(undefined, "--compress-backend webgpu: no WebGPU adapter found");
      }
    }
    return new Compressor(method, backend, adapter, opts);
  }

  /** Whether a dataset is SZ-coded (float32 under sz:). */
  usesSz(m: DatasetMeta): boolean {
    return this.method.kind === "sz" && m.type === 1 && m.size === 4;
  }

  /** Start an entry for an image-shaped per-frame dataset of the current file. */
  begin(
    module: number,
    file: string,
    p: string,
    groupPath: string,
    m: DatasetMeta,
    kept: Int32Array,
    outputs: { path: string; box?: Box }[],
  ): DatasetEntry {
    const entry = m.shape.slice(1);
    const source = groupPath.slice(0, groupPath.lastIndexOf("/") + 1);
    const key = (p.startsWith(source) ? p.slice(source.length) : p).replaceAll("/", ".");
    const rowBytes = outputs.reduce(
      (a, o) =>
        a +
        (o.box
          ? shapeSize(entry.slice(0, -2)) * (o.box[2] - o.box[0]) * (o.box[3] - o.box[1])
          : shapeSize(entry)),
      0,
    ) * m.size;
    const e: DatasetEntry = {
      module,
      file,
      path: p,
      key,
      dtype: dtypeName(m),
      kept,
      entry,
      kind: this.usesSz(m) ? "sz" : "rows",
      outputs,
      bytesIn: kept.length * rowBytes,
      bytesOut: 0,
      seconds: 0,
    };
    if (e.kind === "rows") e.hook = this.rowsHook(m);
    else {e.outputs = [{
        path: p.slice(0, p.lastIndexOf("/") + 1) + szNames(p.slice(p.lastIndexOf("/") + 1)).stream,
      }];}
    this.pending.push(e);
    return e;
  }

  private rowsHook(m: DatasetMeta): RowsHook {
    const hook: RowsHook = {
      filter: this.method.filter.id
        ? h5wasmFilter(this.method.filter)
        : { compression: 0, compression_opts: [] },
      stats: { seconds: 0, bytes: 0 },
    };
    if (this.method.kind === "round" && m.type === 1 && m.size === 4) {
      const { mantissaBits: mb, absPower: p } = this.method.round;
      if (!(mb === 23 && p === null)) {
        hook.beforeWrite = (heap, ptr, rows, rowBytes) => {
          const u = new Uint32Array(heap.buffer, heap.byteOffset + ptr, (rows * rowBytes) / 4);
          for (let i = 0; i < u.length; i++) u[i] = roundBits(u[i], mb, p);
        };
      }
    } else if (this.method.kind === "round" && m.type === 1) {
      this.notes.add(
        `round: only float32 datasets are rounded; float${m.size * 8} datasets get the filter only`,
      );
    }
    return hook;
  }

  /**
   * Run `write` (which writes entry e into dst) and take the file's growth as the entry's bytes out, and
   * the time spent transforming, encoding and writing (not reading the source) as its compress time.
   */
  async measureWrite(e: DatasetEntry, dst: H5File, dstPath: string, write: () => void | Promise<void>) {
    dst.flush();
    const before = fileSize(dstPath);
    const t0 = performance.now();
    await write();
    const t1 = performance.now();
    dst.flush();
    e.bytesOut = Math.max(0, fileSize(dstPath) - before);
    e.seconds = e.hook ? e.hook.stats.seconds : e.kind === "sz" ? e.seconds : (t1 - t0) / 1000;
  }

  private async kernel(H: number, W: number): Promise<SzKernel | undefined> {
    const k = `${H}x${W}`;
    let kern = this.kernels.get(k);
    if (!kern) {
      kern = await createSzKernel(
        this.szConst!,
        H,
        W,
        Math.max(1, Math.floor(this.batchBytes / (4 * H * W))),
      );
      if (!kern) return undefined;
      this.kernels.set(k, kern);
    }
    return kern;
  }

  /** Encode frames (nFrames of H x W) into streams, with the compressor's backend. */
  async encodeFrames(data: Float32Array, nFrames: number, H: number, W: number): Promise<Uint8Array[]> {
    const P = H * W;
    const codes = new Uint16Array(nFrames * P);
    const kern = this.backend === "webgpu" ? await this.kernel(H, W) : undefined;
    if (kern) await kern.codes(data, nFrames, H, W, codes);
    else szCodesCpu(data, nFrames, H, W, this.szConst!, codes);
    const out: Uint8Array[] = [];
    for (let f = 0; f < nFrames; f++) {
      out.push(
        this.encoder!.encode(codes.subarray(f * P, (f + 1) * P), data.subarray(f * P, (f + 1) * P), H, W),
      );
    }
    return out;
  }

  /** Write the SZ layout of entry e (kind "sz") from src into dst. */
  async writeSz(e: DatasetEntry, src: H5File, dst: H5File): Promise<void> {
    const k = e.path.lastIndexOf("/");
    const group = e.path.slice(0, k), name = e.path.slice(k + 1);
    const ds = src.get(e.path) as H5Dataset;
    const meta = ds.metadata as unknown as { chunks: number[] | null };
    const filters = (ds.filters ?? []) as { id: number; cd_values: number[] }[];
    const attrs =
      (ds as unknown as { attrs: Record<string, { value: unknown; shape: number[] | null; dtype: unknown }> })
        .attrs;
    const orig = filters.find((f) => f.id === 1) ?? filters[0];
    const writer = new SzDatasetWriter(dst, group, name, e.kept.length, this.szConst!, {
      entry: e.entry,
      chunks: meta.chunks ? [...meta.chunks] : null,
      filter: orig ? { id: orig.id, opts: [...orig.cd_values] } : null,
      attrs,
    }, this.method.filter);
    const [H, W] = [shapeSize(e.entry.slice(0, -1)), e.entry[e.entry.length - 1] ?? 1];
    const P = H * W;
    const B = Math.max(1, Math.floor(this.batchBytes / Math.max(1, 4 * P)));
    const batch = new Float32Array(B * P);
    const zeros = e.entry.map(() => 0);
    // Timed: encoding and writing (not the reads of the source, as for the other methods).
    let sec = 0;
    for (const [a, b] of rowRuns(e.kept)) {
      for (let r = a; r < b; r += B) {
        const n = Math.min(B, b - r);
        await checkpoint();
        readSlab(src, e.path, [r, ...zeros], [n, ...e.entry], batch);
        const t0 = performance.now();
        writer.append(await this.encodeFrames(batch, n, H, W));
        sec += (performance.now() - t0) / 1000;
      }
    }
    const t0 = performance.now();
    writer.close();
    e.seconds = sec + (performance.now() - t0) / 1000;
  }

  /**
   * The output file of the pending entries is complete (renamed to `outPath`): read a sample of each back,
   * timed, and compare with the source frames.
   */
  async measure(src: H5File, outPath: string): Promise<void> {
    const entries = this.pending;
    this.pending = [];
    if (!entries.length) return;
    const lib = await h5();
    const out = reopenH5(lib, outPath);
    try {
      for (const e of entries) {
        this.measureEntry(e, src, out);
        this.done.push(e);
      }
    } finally {
      out.close();
    }
  }

  private measureEntry(e: DatasetEntry, src: H5File, out: H5File): void {
    const K = e.kept.length;
    const sample = sampleIndices(K, this.qualityFrames);
    const entry = e.entry;
    const zeros = entry.map(() => 0);
    const isF32 = e.dtype === "float32";
    const q = new QualityAccumulator();
    const modAcc = this.accFor(e.module, e.key);
    // Typed arrays of the dataset's own dtype: readSlab reads elements of the array's size.
    const dtype = dsInfo(src.get(e.path) as H5Dataset).dtype;
    const E = arrayFor(dtype, 0).BYTES_PER_ELEMENT;
    const whole = shapeSize(entry);
    const srcArr = arrayFor(dtype, whole);
    const srcBuf = new Uint8Array(srcArr.buffer);
    let readSeconds = 0, sampleBytes = 0;
    const reader = e.kind === "sz" ? new SzDatasetReader(out, e.outputs[0].path) : null;
    // The module's mask (same entry shape): masked pixels are left out of PSNR and SSIM.
    const maskPath = e.path.slice(0, e.path.lastIndexOf("/") + 1) + "mask";
    const maskDs = isF32 && maskPath !== e.path ? (src.get(maskPath) as H5Dataset | null) : null;
    const maskInfo = maskDs ? dsInfo(maskDs) : null;
    const useMask = !!maskInfo && maskInfo.shape.length === entry.length + 1 &&
      maskInfo.shape.slice(1).every((d, i) => d === entry[i]) && maskInfo.dtype !== "float32";
    const maskBuf = useMask ? arrayFor(maskInfo!.dtype, whole) : null;
    // One untimed read first (code paths warmed up), of a frame outside the sample when there is one.
    if (sample.length) {
      const o = e.outputs[0];
      const oe = o.box ? [...entry.slice(0, -2), o.box[2] - o.box[0], o.box[3] - o.box[1]] : entry;
      const warm = arrayFor(dtype, shapeSize(oe));
      const w = sample.includes(K - 1) ? sample[0] : K - 1;
      if (reader) reader.decode(w, warm as Float32Array);
      else readSlab(out, o.path, [w, ...oe.map(() => 0)], [1, ...oe], warm);
    }
    for (const j of sample) {
      readSlab(src, e.path, [e.kept[j], ...zeros], [1, ...entry], srcArr);
      let valid: Uint8Array | undefined;
      if (maskBuf) {
        readSlab(src, maskPath, [e.kept[j], ...zeros], [1, ...entry], maskBuf);
        valid = new Uint8Array(whole);
        for (let i = 0; i < whole; i++) valid[i] = Number(maskBuf[i]) === 0 ? 1 : 0;
      }
      for (const o of e.outputs) {
        const crop = o.box ? cropOf(srcBuf, entry, o.box, E) : srcBuf;
        const outEntry = o.box ? [...entry.slice(0, -2), o.box[2] - o.box[0], o.box[3] - o.box[1]] : entry;
        const gotArr = arrayFor(dtype, crop.length / E);
        const got = new Uint8Array(gotArr.buffer);
        const t0 = performance.now();
        if (reader) reader.decode(j, gotArr as Float32Array);
        else readSlab(out, o.path, [j, ...outEntry.map(() => 0)], [1, ...outEntry], gotArr);
        readSeconds += (performance.now() - t0) / 1000;
        sampleBytes += got.length;
        const [h, w] = [shapeSize(outEntry.slice(0, -1)), outEntry[outEntry.length - 1] ?? 1];
        if (isF32) {
          const a = new Float32Array(crop.buffer, crop.byteOffset, crop.length / 4);
          const b = new Float32Array(got.buffer);
          const v = valid && o.box ? cropOf(valid, entry, o.box, 1) : valid;
          q.add(a, b, h, w, v);
          modAcc.add(a, b, h, w, v);
          this.overall.add(a, b, h, w, v);
        } else {
          let same = true;
          for (let i = 0; i < got.length; i++) {
            if (got[i] !== crop[i]) {
              same = false;
              break;
            }
          }
          if (!same) throw new Error(`${o.path}: lossless compression changed the values (a bug)`);
          q.addExact(h * w);
          modAcc.addExact(h * w);
          this.overall.addExact(h * w);
        }
      }
    }
    e.quality = q.result();
    e.sampleBytes = sampleBytes;
    e.readSeconds = readSeconds;
  }

  private accFor(module: number, key: string): QualityAccumulator {
    const k = `${module}\u0000${key}`;
    let a = this.acc.get(k);
    if (!a) this.acc.set(k, a = new QualityAccumulator());
    return a;
  }

  /** The record of everything compressed so far. */
  record(): CompressionRecord {
    const groups = new Map<string, DatasetEntry[]>();
    for (const e of this.done) {
      const k = `${e.module}\u0000${e.key}`;
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k)!.push(e);
    }
    const modules: CompressionModuleRecord[] = [];
    for (const [k, es] of groups) {
      const qs = this.acc.get(k)!.result();
      const bytesIn = es.reduce((a, e) => a + e.bytesIn, 0);
      const bytesOut = es.reduce((a, e) => a + e.bytesOut, 0);
      const sec = es.reduce((a, e) => a + e.seconds, 0);
      const sb = es.reduce((a, e) => a + (e.sampleBytes ?? 0), 0);
      const rs = es.reduce((a, e) => a + (e.readSeconds ?? 0), 0);
      modules.push({
        module: es[0].module,
        dataset: es[0].key,
        dtype: es[0].dtype,
        frames: es.reduce((a, e) => a + e.kept.length, 0),
        bytesIn,
        bytesOut,
        ratio: bytesOut > 0 ? bytesIn / bytesOut : bytesIn > 0 ? Infinity : 1,
        compressMBps: sec > 0 ? bytesIn / 1e6 / sec : 0,
        decompressMBps: rs > 0 ? sb / 1e6 / rs : 0,
        sampledFrames: qs.frames,
        maxAbsError: qs.maxAbsError,
        maxAbsErrorAll: qs.maxAbsErrorAll,
        psnr: qs.psnr,
        ssim: qs.ssim,
        mse: qs.mse,
        dataRange: qs.dataRange,
        nonFiniteChanged: qs.nonFiniteChanged,
        exact: qs.maxAbsErrorAll === 0 && qs.nonFiniteChanged === 0,
      });
    }
    modules.sort((a, b) => a.module - b.module || a.dataset.localeCompare(b.dataset));
    const all = this.overall.result();
    const bytesIn = this.done.reduce((a, e) => a + e.bytesIn, 0);
    const bytesOut = this.done.reduce((a, e) => a + e.bytesOut, 0);
    const sec = this.done.reduce((a, e) => a + e.seconds, 0);
    const sb = this.done.reduce((a, e) => a + (e.sampleBytes ?? 0), 0);
    const rs = this.done.reduce((a, e) => a + (e.readSeconds ?? 0), 0);
    const m = this.method;
    const params: Record<string, number | null> = m.kind === "round"
      ? { mantissaBits: m.round.mantissaBits, absPower: m.round.absPower }
      : m.kind === "sz"
      ? { errorBound: m.errorBound, eb32: this.szConst!.eb32, binWidth: this.szConst!.binWidth }
      : {};
    return {
      method: m.kind,
      spec: this.spec,
      filter: m.filter.name,
      params,
      backend: this.backend,
      adapter: this.adapter,
      qualityFrames: this.qualityFrames,
      bytesIn,
      bytesOut,
      ratio: bytesOut > 0 ? bytesIn / bytesOut : bytesIn > 0 ? Infinity : 1,
      compressMBps: sec > 0 ? bytesIn / 1e6 / sec : 0,
      decompressMBps: rs > 0 ? sb / 1e6 / rs : 0,
      maxAbsError: all.maxAbsError,
      maxAbsErrorAll: all.maxAbsErrorAll,
      psnr: all.psnr,
      ssim: all.ssim,
      exact: all.maxAbsErrorAll === 0 && all.nonFiniteChanged === 0,
      modules,
      notes: [...this.notes],
    };
  }

  dispose(): void {
    for (const k of this.kernels.values()) k.dispose();
    this.kernels.clear();
  }
}

function cropOf(buf: Uint8Array, entry: number[], box: Box, E: number): Uint8Array {
  const [SS, FS] = entry.slice(-2);
  const planes = shapeSize(entry.slice(0, -2));
  const h = box[2] - box[0], w = box[3] - box[1];
  const out = new Uint8Array(planes * h * w * E);
  let o = 0;
  for (let pl = 0; pl < planes; pl++) {
    for (let y = box[0]; y < box[2]; y++) {
      const from = ((pl * SS + y) * FS + box[1]) * E;
      out.set(buf.subarray(from, from + w * E), o);
      o += w * E;
    }
  }
  return out;
}

function fmt(x: number | null, digits: number): string {
  if (x === null) return "-";
  if (x === Infinity) return "inf";
  return x.toFixed(digits);
}

/** The printout of a compression record (reduce prints it). */
export function formatCompression(r: CompressionRecord): string {
  const lines = [
    `compression ${r.spec} (filter ${r.filter}${r.method === "sz" ? `, ${r.backend}` : ""}): ${
      (r.bytesIn / MB).toFixed(1)
    } MB -> ${(r.bytesOut / MB).toFixed(1)} MB, ratio ${fmt(r.ratio, 1)}x, PSNR ${fmt(r.psnr, 1)} dB, SSIM ${
      fmt(r.ssim, 4)
    }, max error ${r.maxAbsError.toPrecision(3)}, ${r.compressMBps.toFixed(0)} MB/s in, ${
      r.decompressMBps.toFixed(0)
    } MB/s out`,
    "module  dataset           ratio   PSNR/dB  SSIM     max error  MB/s in  MB/s out  sampled",
  ];
  for (const m of r.modules) {
    lines.push(
      `${String(m.module).padStart(6)}  ${m.dataset.padEnd(16)} ${fmt(m.ratio, 2).padStart(6)}  ${
        fmt(m.psnr, 1).padStart(7)
      }  ${fmt(m.ssim, 4).padStart(6)}  ${m.maxAbsError.toPrecision(3).padStart(9)}  ${
        m.compressMBps.toFixed(0).padStart(7)
      }  ${m.decompressMBps.toFixed(0).padStart(8)}  ${String(m.sampledFrames).padStart(7)}`,
    );
  }
  for (const n of r.notes) lines.push(`note: ${n}`);
  return lines.join("\n");
}
