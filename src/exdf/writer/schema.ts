/**
 * The writer's schema side: public types (schema, options, data input, errors), file name templates, the
 * resolution of a schema against parameters into sources and datasets, and the checks of data against
 * the declaration (dtype, entry shape, whole entries). Used by src/exdf/writer/writer.ts; import from there.
 */
import * as nodePath from "node:path";
import type { NumericArray } from "../h5.ts";

/** Element types a dataset can be declared with. */
export type DType =
  | "uint8"
  | "int8"
  | "uint16"
  | "int16"
  | "uint32"
  | "int32"
  | "uint64"
  | "int64"
  | "float32"
  | "float64";

/** One dataset of the schema. */
export interface DatasetSpec {
  /** `@alias` (from `WriterSchema.aliases`) or a full source name; `device:channel` is an instrument source. */
  source: string;
  /** Dotted key, e.g. `geom.fragmentVectors`; defaults to the dataset's name in the schema. */
  key?: string;
  /** Shape of one entry (without the entry axis); strings are parameter names. `[]` for scalars. */
  shape: readonly (number | string)[];
  dtype: DType;
  /** Entries per chunk, or the full chunk shape `[entries, ...entryChunk]`. Default: about 1 MiB chunks. */
  chunks?: number | readonly number[];
  /** HDF5 compression: `"gzip"` or a filter id known to h5wasm. */
  compression?: "gzip" | number;
  /** Filter options, e.g. the gzip level (default 4). */
  compressionOpts?: number | readonly number[];
  /**
   * Entries are tables whose rows (first entry axis) hold values up to a count and zeros after (a frame's peaks):
   * a write stores only the rows of the first axis up to its entries' last non-zero byte, rounded up to the
   * chunk's extent along that axis; the chunks past it are not written and read as 0, the fill value (a table
   * of 256 peaks a frame holding a few costs the deflate of those chunks only). Needs entries of at least one
   * axis.
   */
  zeroTail?: boolean;
}

export interface WriterSchema {
  /** Parameter names the writer must be opened with (checked when given). */
  parameters?: readonly string[];
  /** Source name templates over parameters, e.g. `{ prm: "{det_name}/x/y" }`, used as `@prm`. */
  aliases?: Readonly<Record<string, string>>;
  /** Datasets by name; `addData`/`writeTrain`/`setConstant` take these names. */
  datasets: Readonly<Record<string, DatasetSpec>>;
}

export interface WriterOptions {
  /** Values for the schema's parameters (shape dimensions, alias templates, file name template). */
  params?: Readonly<Record<string, string | number>>;
  /** Run number: `{run}` in the file name template and METADATA/runNumber. */
  run?: number;
  /** `{prefix}` in the file name template (default "REDU"). */
  prefix?: string;
  /** `{aggregator}` in the file name template (default "REDU00"). */
  aggregator?: string;
  /** METADATA/proposalNumber. */
  proposal?: number;
  /** Start a new sequence file after this many trains. */
  maxTrainsPerFile?: number;
  /** Start a new sequence file before the data (uncompressed bytes) would exceed this. */
  maxBytesPerFile?: number;
  /** Collect small writes into chunk-sized blocks (default true); false writes every call through. */
  buffering?: boolean;
  /** Upper bound of buffered bytes, all datasets together (default 64 MiB). */
  bufferBytes?: number;
  /** Largest block handed to HDF5 in one call (default 32 MiB). */
  sliceBytes?: number;
  /** HDF5 files kept open at once (default 8). */
  maxOpenFiles?: number;
  /** Replace existing files with the final names (default false: an error before anything is written). */
  overwrite?: boolean;
  /** METADATA/dataFormatVersion, "1.2" (default) or later. */
  formatVersion?: string;
  /** METADATA/daqLibrary (default "xfel-redu"). */
  daqLibrary?: string;
}

/**
 * Data for a dataset: a typed array of the declared dtype (flat, C order, any number of whole entries),
 * optionally with its shape (`[entries, ...entryShape]` or `entryShape` for one entry); plain numbers,
 * bigints or flat arrays of them are converted to the declared dtype (integers must be exact).
 */
export type DataInput =
  | NumericArray
  | number
  | bigint
  | readonly (number | bigint)[]
  | { readonly data: NumericArray | readonly (number | bigint)[]; readonly shape: readonly number[] };

/** A resolved source of an open writer. */
export interface SourceInfo {
  /** Full source name (`device` or `device:channel`). */
  name: string;
  /** Aliases naming it (without `@`). */
  aliases: string[];
  kind: "control" | "instrument";
  /** Instrument sources: the index groups (first key components). */
  groups: string[];
  /** Dataset names of this source. */
  datasets: string[];
}

/** Wrong use of the writer (bad schema, options or data) or a failed write. Names the dataset. */
export class WriterError extends Error {
  constructor(
    message: string,
    /** Schema name of the dataset concerned, if any. */
    readonly dataset?: string,
  ) {
    super(message);
    this.name = "WriterError";
  }
}

/** Default file name template, as the DAQ names files. */
export const DEFAULT_TEMPLATE = "{prefix}-R{run:04d}-{aggregator}-S{seq:05d}.h5";

/** Identity function that keeps the schema's literal types (dataset names) for `FileWriter.open`. */
export function defineSchema<const S extends WriterSchema>(schema: S): S {
  return schema;
}

/**
 * Python-format-like templates: `{name}`, `{name:05d}`, `{name:d}`, `{name:s}`; `{{`/`}}` are literal braces.
 */
export function formatTemplate(
  template: string,
  values: Readonly<Record<string, string | number | bigint>>,
): string {
  const re = /\{\{|\}\}|\{([A-Za-z_]\w*)(?::([^{}]*))?\}|[{}]/g;
  return template.replace(re, (m: string, name?: string, spec?: string) => {
    if (m === "{{") return "{";
    if (m === "}}") return "}";
    if (name === undefined) throw new WriterError(`template "${template}": unmatched "${m}"`);
    if (!Object.hasOwn(values, name)) {
      throw new WriterError(
        `template "${template}": no value for {${name}} (known: ${Object.keys(values).join(", ")})`,
      );
    }
    const v = values[name];
    if (spec === undefined || spec === "" || spec === "s") return String(v);
    const fm = /^(0?)(\d*)d$/.exec(spec);
    if (!fm) throw new WriterError(`template "${template}": unsupported format {${name}:${spec}}`);
    const s = String(v);
    if (!/^-?\d+$/.test(s)) {
      throw new WriterError(`template "${template}": {${name}:${spec}} needs an integer, got "${s}"`);
    }
    const width = fm[2] ? Number(fm[2]) : 0;
    const neg = s.startsWith("-");
    const digits = neg ? s.slice(1) : s;
    if (fm[1]) return (neg ? "-" : "") + digits.padStart(width - (neg ? 1 : 0), "0");
    return s.padStart(width, " ");
  });
}

/** Which dataset names a schema declares. */
export type DatasetNames<S extends WriterSchema> = keyof S["datasets"] & string;

type Ctor = { new (n: number): NumericArray; new (a: ArrayLike<any>): NumericArray; name: string };

export interface DTypeInfo {
  h5: string;
  ctor: Ctor;
  bytes: number;
  big: boolean;
  int: boolean;
  min: number;
  max: number;
}

export const DTYPES: Record<DType, DTypeInfo> = {
  uint8: { h5: "<B", ctor: Uint8Array, bytes: 1, big: false, int: true, min: 0, max: 0xff },
  int8: { h5: "<b", ctor: Int8Array, bytes: 1, big: false, int: true, min: -0x80, max: 0x7f },
  uint16: { h5: "<H", ctor: Uint16Array, bytes: 2, big: false, int: true, min: 0, max: 0xffff },
  int16: { h5: "<h", ctor: Int16Array, bytes: 2, big: false, int: true, min: -0x8000, max: 0x7fff },
  uint32: { h5: "<I", ctor: Uint32Array, bytes: 4, big: false, int: true, min: 0, max: 0xffffffff },
  int32: { h5: "<i", ctor: Int32Array, bytes: 4, big: false, int: true, min: -0x80000000, max: 0x7fffffff },
  uint64: { h5: "<Q", ctor: BigUint64Array as any, bytes: 8, big: true, int: true, min: 0, max: Infinity },
  int64: {
    h5: "<q",
    ctor: BigInt64Array as any,
    bytes: 8,
    big: true,
    int: true,
    min: -Infinity,
    max: Infinity,
  },
  float32: { h5: "<f", ctor: Float32Array, bytes: 4, big: false, int: false, min: -Infinity, max: Infinity },
  float64: { h5: "<d", ctor: Float64Array, bytes: 8, big: false, int: false, min: -Infinity, max: Infinity },
};

export interface Src {
  name: string;
  aliases: string[];
  kind: "control" | "instrument";
  datasets: Ds[];
  groups: string[];
  /** Cumulative entry counts: cum[t] = entries of trains 0..t-1 (global train index). */
  cum: number[];
  /** Data bytes of one entry of all datasets (control: + 8 bytes timestamp per dataset). */
  rowBytes: number;
}

export interface Ds {
  name: string;
  label: string;
  key: string;
  src: Src;
  /** Path of the data dataset inside a file. */
  h5path: string;
  /** Control: the key's group path (CONTROL/<src>/<key path>) holding value and timestamp. */
  keyGroup: string;
  entryShape: number[];
  entryElems: number;
  entryBytes: number;
  dtype: DType;
  info: DTypeInfo;
  chunks: number[];
  compression?: "gzip" | number;
  compressionOpts?: number[];
  /** DatasetSpec.zeroTail. */
  zeroTail: boolean;
  /** Rows the staging buffer holds (0: no staging). */
  stageRows: number;
  /** Rows received so far (all files). */
  rows: number;
  /** Index of the segment the next row goes to. */
  segCursor: number;
  constant?: NumericArray;
}

export type Parsed = { arr: NumericArray; n: number };

export const MiB = 1 << 20;
export const prod = (a: readonly number[]) => a.reduce((x, y) => x * y, 1);
export const fmtShape = (a: readonly number[]) => `[${a.join(", ")}]`;

/** Options with their defaults filled in. */
export type Opts =
  & Required<
    Pick<
      WriterOptions,
      | "buffering"
      | "bufferBytes"
      | "sliceBytes"
      | "maxOpenFiles"
      | "overwrite"
      | "formatVersion"
      | "daqLibrary"
    >
  >
  & WriterOptions;

/** Check options and schema; resolve aliases, shapes, chunks, file name values. */
export function resolveSchema(
  pathTemplate: string,
  schema: WriterSchema,
  options: WriterOptions,
): { opt: Opts; names: Record<string, string | number>; srcs: Src[] } {
  const params = options.params ?? {};
  if (schema.parameters) {
    const missing = schema.parameters.filter((p) => !Object.hasOwn(params, p));
    const extra = Object.keys(params).filter((p) => !schema.parameters!.includes(p));
    if (missing.length) throw new WriterError(`missing parameters: ${missing.join(", ")}`);
    if (extra.length) throw new WriterError(`unknown parameters: ${extra.join(", ")}`);
  }
  for (const p of ["seq", "run", "prefix", "aggregator"]) {
    if (Object.hasOwn(params, p)) throw new WriterError(`parameter name "${p}" is reserved for file names`);
  }
  const opt: Opts = {
    ...options,
    buffering: options.buffering ?? true,
    bufferBytes: options.bufferBytes ?? 64 * MiB,
    sliceBytes: options.sliceBytes ?? 32 * MiB,
    maxOpenFiles: options.maxOpenFiles ?? 8,
    overwrite: options.overwrite ?? false,
    formatVersion: options.formatVersion ?? "1.2",
    daqLibrary: options.daqLibrary ?? "xfel-redu",
  };
  const posInt = (v: number | undefined, what: string, min = 1) => {
    if (v !== undefined && !(Number.isSafeInteger(v) && v >= min)) {
      throw new WriterError(`${what} must be an integer >= ${min}, got ${v}`);
    }
  };
  posInt(opt.maxTrainsPerFile, "maxTrainsPerFile");
  posInt(opt.maxBytesPerFile, "maxBytesPerFile");
  posInt(opt.bufferBytes, "bufferBytes", 0);
  posInt(opt.sliceBytes, "sliceBytes");
  posInt(opt.maxOpenFiles, "maxOpenFiles");
  posInt(opt.run, "run", 0);
  posInt(opt.proposal, "proposal", 0);
  const fv = /^(\d+)\.(\d+)$/.exec(opt.formatVersion);
  if (!fv || Number(fv[1]) < 1 || (Number(fv[1]) === 1 && Number(fv[2]) < 2)) {
    throw new WriterError(`formatVersion must be "1.2" or later, got "${opt.formatVersion}"`);
  }

  // File names: every placeholder must be known; splitting needs {seq}.
  const names: Record<string, string | number> = {
    ...params,
    prefix: opt.prefix ?? "REDU",
    aggregator: opt.aggregator ?? "REDU00",
  };
  if (opt.run !== undefined) names.run = opt.run;
  const f0 = formatTemplate(pathTemplate, { ...names, seq: 0 });
  if (
    (opt.maxTrainsPerFile !== undefined || opt.maxBytesPerFile !== undefined) &&
    formatTemplate(pathTemplate, { ...names, seq: 1 }) === f0
  ) {
    throw new WriterError(`file name template "${pathTemplate}" needs {seq} to split into sequence files`);
  }
  if (!nodePath.basename(f0)) throw new WriterError(`file name template "${pathTemplate}" names no file`);

  // Aliases and sources.
  const aliasNames = new Map<string, string>();
  for (const [alias, tpl] of Object.entries(schema.aliases ?? {})) {
    aliasNames.set(alias, formatTemplate(tpl, params));
  }
  const byName = new Map<string, Src>();
  const entries = Object.entries(schema.datasets);
  if (!entries.length) throw new WriterError("the schema declares no datasets");
  const srcs: Src[] = [];
  const seenKeys = new Set<string>();
  for (const [dsName, spec] of entries) {
    const key = spec.key ?? dsName;
    let srcName: string;
    let alias: string | undefined;
    if (spec.source.startsWith("@")) {
      alias = spec.source.slice(1);
      const resolved = aliasNames.get(alias);
      if (resolved === undefined) {
        throw new WriterError(`dataset "${dsName}": unknown alias ${spec.source}`, dsName);
      }
      srcName = resolved;
    } else {
      srcName = formatTemplate(spec.source, params);
    }
    const kind = srcName.includes(":") ? "instrument" : "control";
    const label = `dataset "${dsName}" (${srcName} ${key})`;
    const bad = (problem: string) => new WriterError(`${label}: ${problem}`, dsName);
    if (!/^[^/:]+(\/[^/:]+)*$/.test(srcName.split(":")[0]) || srcName.split(":").length > 2) {
      throw bad(`invalid source name "${srcName}"`);
    }
    if (kind === "instrument" && !/^[^/:]+$/.test(srcName.split(":")[1])) {
      throw bad(`invalid output channel in "${srcName}" (expected device:channel)`);
    }
    const parts = key.split(".");
    if (parts.some((p) => !p || p.includes("/"))) throw bad(`invalid key "${key}"`);
    if (kind === "instrument" && parts.length < 2) {
      throw bad(`instrument keys need a group: "group.name", got "${key}"`);
    }
    if (seenKeys.has(`${srcName}\n${key}`)) throw bad("declared twice");
    seenKeys.add(`${srcName}\n${key}`);

    const info = DTYPES[spec.dtype];
    if (!info) throw bad(`unknown dtype "${spec.dtype}" (known: ${Object.keys(DTYPES).join(", ")})`);
    const entryShape = spec.shape.map((d) => {
      const v = typeof d === "string" ? params[d] : d;
      if (typeof d === "string" && v === undefined) throw bad(`shape dimension "${d}" is not a parameter`);
      if (!(typeof v === "number" && Number.isSafeInteger(v) && v >= 1)) {
        throw bad(`shape dimension ${typeof d === "string" ? `"${d}" = ${v}` : d} is not an integer >= 1`);
      }
      return v;
    });
    const entryElems = prod(entryShape);
    const entryBytes = entryElems * info.bytes;
    let chunks: number[];
    if (spec.chunks === undefined) {
      chunks = autoChunks(entryShape, info.bytes, kind === "control" ? opt.maxTrainsPerFile : undefined);
    } else if (typeof spec.chunks === "number") {
      chunks = [spec.chunks, ...entryShape];
    } else {
      chunks = [...spec.chunks];
    }
    if (
      chunks.length !== entryShape.length + 1 ||
      chunks.some((c, i) => !Number.isSafeInteger(c) || c < 1 || (i > 0 && c > entryShape[i - 1]))
    ) {
      throw bad(`chunks ${fmtShape(chunks)} do not fit entries of shape ${fmtShape(entryShape)}`);
    }
    if (spec.zeroTail && entryShape.length === 0) throw bad("zeroTail needs entries of at least one axis");
    let src = byName.get(srcName);
    if (!src) {
      src = { name: srcName, aliases: [], kind, datasets: [], groups: [], cum: [0], rowBytes: 0 };
      byName.set(srcName, src);
      srcs.push(src);
    }
    if (alias && !src.aliases.includes(alias)) src.aliases.push(alias);
    const keyPath = parts.join("/");
    const h5path = kind === "control"
      ? `CONTROL/${srcName}/${keyPath}/value`
      : `INSTRUMENT/${srcName}/${keyPath}`;
    if (kind === "instrument" && !src.groups.includes(parts[0])) src.groups.push(parts[0]);
    src.rowBytes += entryBytes + (kind === "control" ? 8 : 0);
    // Staging: a multiple of the chunk rows, about 4 MiB, within the dataset's share of the buffer budget
    // (all datasets' stages together fit in bufferBytes: stages are reused, not dropped and reallocated
    // to make room for another dataset's, which left garbage arrays of up to 4 MiB each awaiting the GC).
    let stageRows = 0;
    const share = Math.floor(opt.bufferBytes / entries.length);
    if (opt.buffering && entryBytes <= share) {
      const chunkBytes = chunks[0] * entryBytes;
      const target = Math.min(4 * MiB, share);
      stageRows = chunkBytes <= target
        ? chunks[0] * Math.max(1, Math.floor(target / chunkBytes))
        : Math.max(1, Math.floor(target / entryBytes));
    }
    const compressionOpts = spec.compressionOpts === undefined
      ? undefined
      : typeof spec.compressionOpts === "number"
      ? [spec.compressionOpts]
      : [...spec.compressionOpts];
    src.datasets.push({
      name: dsName,
      label,
      key,
      src,
      h5path,
      keyGroup: `CONTROL/${srcName}/${keyPath}`,
      entryShape,
      entryElems,
      entryBytes,
      dtype: spec.dtype,
      info,
      chunks,
      compression: spec.compression,
      compressionOpts,
      zeroTail: spec.zeroTail === true,
      stageRows,
      rows: 0,
      segCursor: 0,
    });
  }
  // Key paths must not collide inside a source (a.b as dataset and as group of a.b.c).
  for (const src of srcs) {
    const paths = src.datasets.map((d) => d.h5path);
    for (const p of paths) {
      const clash = paths.find((q) => q.startsWith(p + "/"));
      if (clash) throw new WriterError(`source ${src.name}: ${p} is both a dataset and a group (${clash})`);
    }
  }
  return { opt, names, srcs };
}

export function autoChunks(entryShape: number[], itemBytes: number, cap?: number): number[] {
  const entryBytes = prod(entryShape) * itemBytes;
  const target = entryShape.length === 0 ? 64 * 1024 : MiB;
  let rows = Math.max(1, Math.floor(target / entryBytes));
  if (cap !== undefined) rows = Math.max(1, Math.min(rows, cap));
  const inner = [...entryShape];
  // Entries above the target: split them along their leading axes.
  for (let i = 0; i < inner.length && prod(inner) * itemBytes > target; i++) {
    inner[i] = Math.max(1, Math.floor((inner[i] * target) / (prod(inner) * itemBytes)));
  }
  return [rows, ...inner];
}

/** Convert and check one data input: dtype, entry shape, whole entries. */
export function parseInput(ds: Ds, input: DataInput, single = false): Parsed {
  const bad = (p: string) => new WriterError(`${ds.label}: ${p}`, ds.name);
  const { ctor } = ds.info;
  let raw: unknown = input;
  let shape: readonly number[] | undefined;
  if (raw !== null && typeof raw === "object" && !ArrayBuffer.isView(raw) && !Array.isArray(raw)) {
    const o = raw as { data?: unknown; shape?: unknown };
    if (!Array.isArray(o.shape) || o.data === undefined) {
      throw bad("data must be a typed array, a number, an array of numbers or { data, shape }");
    }
    shape = o.shape as number[];
    raw = o.data;
  }
  let arr: NumericArray;
  if (ArrayBuffer.isView(raw)) {
    if (!(raw instanceof ctor)) {
      throw bad(`dtype mismatch: declared ${ds.dtype} (${ctor.name}), got ${raw.constructor.name}`);
    }
    arr = raw as NumericArray;
  } else if (typeof raw === "number" || typeof raw === "bigint" || Array.isArray(raw)) {
    const vals = (Array.isArray(raw) ? raw : [raw]) as unknown[];
    arr = new ctor(vals.length);
    for (let i = 0; i < vals.length; i++) {
      const v = vals[i];
      if (typeof v !== "number" && typeof v !== "bigint") {
        throw bad(
          `element ${i} is ${
            Array.isArray(v) ? "an array (nested arrays: pass flat data with its shape)" : typeof v
          }`,
        );
      }
      if (ds.info.int) {
        const ok = typeof v === "bigint" || Number.isSafeInteger(v);
        const num = Number(v);
        if (!ok || (!ds.info.big && (num < ds.info.min || num > ds.info.max))) {
          throw bad(`element ${i} = ${v} is not a ${ds.dtype}`);
        }
        if (ds.info.big) {
          const b = BigInt(v);
          if (ds.dtype === "uint64" ? b < 0n || b >= 1n << 64n : b < -(1n << 63n) || b >= 1n << 63n) {
            throw bad(`element ${i} = ${v} is not a ${ds.dtype}`);
          }
          (arr as BigUint64Array)[i] = b;
        } else {
          (arr as Uint32Array)[i] = num;
        }
      } else {
        (arr as Float64Array)[i] = Number(v);
      }
    }
  } else {
    throw bad(
      `data must be a typed array, a number, an array of numbers or { data, shape }, got ${typeof raw}`,
    );
  }
  const E = ds.entryElems;
  let n: number;
  if (shape) {
    if (shape.some((d) => !Number.isSafeInteger(d) || d < 0) || prod(shape) !== arr.length) {
      throw bad(`shape ${fmtShape(shape)} does not match the data's ${arr.length} elements`);
    }
    const es = ds.entryShape;
    if (shape.length === es.length && shape.every((d, i) => d === es[i])) n = 1;
    else if (shape.length === es.length + 1 && shape.slice(1).every((d, i) => d === es[i])) n = shape[0];
    else {
      throw bad(
        `shape mismatch: declared entry shape ${fmtShape(es)}, got ${fmtShape(shape)} ` +
          `(expected ${fmtShape(es)} or ${fmtShape(["n" as any, ...es])})`,
      );
    }
  } else {
    if (arr.length % E !== 0) {
      throw bad(
        `shape mismatch: ${arr.length} elements are not whole entries of shape ${fmtShape(ds.entryShape)} ` +
          `(${E} elements each)`,
      );
    }
    n = arr.length / E;
  }
  if (single && ds.src.kind === "control" && n !== 1) {
    throw bad(`control data has one entry per train, got ${n}`);
  }
  return { arr, n };
}
