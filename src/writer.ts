/**
 * EuXFEL-format (EXDF) file writer: declared datasets, aliases over parameters, trains in bulk or one by
 * one, buffering, sequence splitting, and the checks that keep every file valid.
 *
 * Model. A schema declares datasets (source, key, entry shape, dtype). Trains are added with their
 * number of entries per source (`addTrains`); data then arrives per dataset in any number of calls, each
 * covering whole trains (`addData`). `writeTrain` does both for one train. Every call checks its input
 * completely before it changes anything, so a rejected call leaves the writer as it was.
 *
 * Files. Trains are assigned to sequence files as they are added (at most `maxTrainsPerFile` trains or
 * `maxBytesPerFile` data bytes each). A file is written under a temporary name (`.<name>.tmp-<pid>-<n>`)
 * and renamed to its final name once its trains are closed (a later train went to the next file, or
 * `close()`) and every dataset holds the data of all its trains. An error, `abort()`, process exit,
 * SIGINT/SIGTERM/SIGHUP remove the temporary files: no partial file ever carries a final name.
 *
 * Layout written (format 1.2): METADATA/{dataFormatVersion, creationDate, updateDate, daqLibrary,
 * sequenceNumber, [runNumber, proposalNumber], dataSources/{dataSourceId, root, deviceId}};
 * INDEX/{trainId, timestamp, flag, origin}; control sources: CONTROL/<src>/<key path>/{value, timestamp}
 * (one row per train), RUN/<src>/<key path>/{value, timestamp} (one row per file), INDEX/<src>/{first,count};
 * instrument sources (`device:channel`): INSTRUMENT/<src>/<group>/<rest of key>, INDEX/<src>/<group>/
 * {first,count} where the group is the key's first component.
 *
 * Memory. h5wasm works through a wasm heap (max 2 GiB, never shrinks): data goes to HDF5 in slices of at
 * most `sliceBytes`; buffered rows are kept in staging arrays bounded by `bufferBytes` in total; at most
 * `maxOpenFiles` HDF5 files are open at once (others are closed and reopened when needed).
 */
import * as fs from "node:fs";
import * as nodePath from "node:path";
import process from "node:process";
import { ensureGroup, firstLine, type H5, h5, type H5Dataset, type H5File, type NumericArray } from "./h5.ts";

// ---------------------------------------------------------------------------------------------------
// Public types

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

// ---------------------------------------------------------------------------------------------------
// Internal state

type Ctor = { new (n: number): NumericArray; new (a: ArrayLike<any>): NumericArray; name: string };

interface DTypeInfo {
  h5: string;
  ctor: Ctor;
  bytes: number;
  big: boolean;
  int: boolean;
  min: number;
  max: number;
}

const DTYPES: Record<DType, DTypeInfo> = {
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

interface Src {
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

interface Ds {
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
  /** Rows the staging buffer holds (0: no staging). */
  stageRows: number;
  /** Rows received so far (all files). */
  rows: number;
  /** Index of the segment the next row goes to. */
  segCursor: number;
  constant?: NumericArray;
}

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

interface Seg {
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
  handles: Map<Ds, H5Dataset>;
  per: Map<Ds, FileDs>;
}

interface TrainPlan {
  ids: bigint[];
  ts: bigint[];
  counts: Map<Src, number[]>;
}

type Parsed = { arr: NumericArray; n: number };

const MiB = 1 << 20;
let tmpCounter = 0;

// ---------------------------------------------------------------------------------------------------
// Process-level cleanup: temporary files of writers still open when the process exits or is signalled.

const liveWriters = new Set<FileWriter<string>>();
const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
const signalHandlers = new Map<string, () => void>();

function onExit(): void {
  for (const w of liveWriters) w.abort("process exit");
  liveWriters.clear();
}

// Deno does not emit process "exit" when an uncaught error ends the process; it dispatches these events
// on globalThis instead (Node has no globalThis.addEventListener).
const UNCAUGHT = ["error", "unhandledrejection"] as const;
const onUncaught = (e: Event) => {
  if (!e.defaultPrevented) onExit();
};
const eventTarget = globalThis as unknown as Partial<EventTarget>;

function installCleanup(): void {
  if (signalHandlers.size) return;
  process.on("exit", onExit);
  if (typeof eventTarget.addEventListener === "function") {
    for (const ev of UNCAUGHT) eventTarget.addEventListener(ev, onUncaught);
  }
  for (const sig of SIGNALS) {
    const handler = () => {
      for (const w of liveWriters) w.abort(sig);
      liveWriters.clear();
      uninstallCleanup();
      // Nobody else handles this signal: die of it, as without our handler.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    signalHandlers.set(sig, handler);
    process.on(sig, handler);
  }
}

function uninstallCleanup(): void {
  if (!signalHandlers.size) return;
  process.off("exit", onExit);
  if (typeof eventTarget.removeEventListener === "function") {
    for (const ev of UNCAUGHT) eventTarget.removeEventListener(ev, onUncaught);
  }
  for (const [sig, handler] of signalHandlers) process.off(sig, handler);
  signalHandlers.clear();
}

function track(w: FileWriter<string>, live: boolean): void {
  if (live) {
    liveWriters.add(w);
    installCleanup();
  } else {
    liveWriters.delete(w);
    if (!liveWriters.size) uninstallCleanup();
  }
}

// ---------------------------------------------------------------------------------------------------

const prod = (a: readonly number[]) => a.reduce((x, y) => x * y, 1);
const fmtShape = (a: readonly number[]) => `[${a.join(", ")}]`;

function utcStamp(d: Date): string {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
}

function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

function autoChunks(entryShape: number[], itemBytes: number, cap?: number): number[] {
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

/**
 * Writes EuXFEL HDF5 files. Create with `FileWriter.open(template, schema, options)`; feed trains and
 * data; `close()` (or `abort()`).
 */
export class FileWriter<N extends string = string> {
  private readonly srcs: Src[];
  private readonly ds: Map<string, Ds>;
  private readonly tids: bigint[] = [];
  private readonly tss: bigint[] = [];
  private readonly segs: Seg[] = [];
  private readonly done: string[] = [];
  private nextFinal = 0;
  private stagedBytes = 0;
  private readonly openSegs: Seg[] = [];
  private state: "open" | "closed" | "aborted" = "open";
  private abortReason = "";

  private constructor(
    private readonly lib: H5,
    private readonly template: string,
    private readonly names: Readonly<Record<string, string | number>>,
    private readonly opt:
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
      & WriterOptions,
    srcs: Src[],
  ) {
    this.srcs = srcs;
    this.ds = new Map(srcs.flatMap((s) => s.datasets.map((d) => [d.name, d] as [string, Ds])));
  }

  /** Check schema and options, resolve aliases and shapes; files are created as data arrives. */
  static async open<const S extends WriterSchema>(
    pathTemplate: string,
    schema: S,
    options: WriterOptions = {},
  ): Promise<FileWriter<DatasetNames<S>>> {
    const lib = await h5();
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
    const opt = {
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
      // Staging: a multiple of the chunk rows, about 4 MiB, within the buffer budget.
      let stageRows = 0;
      if (opt.buffering && entryBytes <= opt.bufferBytes) {
        const chunkBytes = chunks[0] * entryBytes;
        const target = Math.min(4 * MiB, opt.bufferBytes);
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
    const w = new FileWriter<DatasetNames<S>>(lib, pathTemplate, names, opt, srcs);
    track(w, true);
    return w;
  }

  // -------------------------------------------------------------------------------------------------
  // Inspection

  /** Resolved sources. */
  get sources(): SourceInfo[] {
    return this.srcs.map((s) => ({
      name: s.name,
      aliases: [...s.aliases],
      kind: s.kind,
      groups: [...s.groups],
      datasets: s.datasets.map((d) => d.name),
    }));
  }

  /** Trains added so far. */
  get trainCount(): number {
    return this.tids.length;
  }

  /** Final paths of the files completed so far (all of them after `close()`). */
  get files(): string[] {
    return [...this.done];
  }

  // -------------------------------------------------------------------------------------------------
  // Adding trains and data

  /**
   * Add trains: IDs non-zero and strictly increasing (also across calls); `counts` gives the entries
   * per train of each source (`@alias` or full name; a number for all trains or one per train).
   * Instrument sources left out have 0 entries; control sources have 1 (0 or 1 allowed).
   * `timestamps` (ns since the epoch, non-decreasing) default to now.
   */
  addTrains(
    trainIds: ArrayLike<number | bigint>,
    counts: Readonly<Record<string, number | ArrayLike<number>>> = {},
    options: { timestamps?: ArrayLike<number | bigint> } = {},
  ): void {
    this.checkOpen();
    const plan = this.planTrains(trainIds, counts, options.timestamps);
    this.guard(() => {
      this.applyTrains(plan);
      this.advance();
    });
  }

  /**
   * Add data to datasets, each call covering whole trains following the trains its dataset already has
   * data for. `addData(name, data)` or `addData({ name: data, ... })` (all checked before any is taken).
   */
  addData(name: N, data: DataInput): void;
  addData(data: Partial<Record<N, DataInput>>): void;
  addData(a: N | Partial<Record<N, DataInput>>, b?: DataInput): void {
    this.checkOpen();
    const items: [Ds, DataInput][] = typeof a === "string"
      ? [[this.dataset(a), b as DataInput]]
      : Object.entries(a).map(([k, v]) => [this.dataset(k), v as DataInput]);
    const parsed = items.map(([ds, v]) => {
      if (ds.constant) throw new WriterError(`${ds.label}: has a constant value (setConstant)`, ds.name);
      const p = this.parse(ds, v);
      this.checkRows(ds, p.n);
      return [ds, p] as const;
    });
    this.guard(() => {
      for (const [ds, p] of parsed) this.writeRows(ds, p.arr, p.n);
      this.advance();
    });
  }

  /** A control dataset's value for every train of the run (also its RUN value). */
  setConstant(name: N, value: DataInput): void {
    this.checkOpen();
    const ds = this.dataset(name);
    const bad = (p: string) => new WriterError(`${ds.label}: ${p}`, ds.name);
    if (ds.src.kind !== "control") throw bad("setConstant is for control sources only");
    if (ds.constant) throw bad("constant already set");
    if (ds.rows > 0) throw bad("already has data for some trains");
    const p = this.parse(ds, value);
    if (p.n !== 1) {
      throw bad(`a constant is one entry of shape ${fmtShape(ds.entryShape)}, got ${p.n} entries`);
    }
    ds.constant = p.arr.slice(0, ds.entryElems) as NumericArray;
    this.guard(() => this.advance());
  }

  /**
   * Add one train and its data: instrument sources get as many entries as their data has (0 when none
   * of their datasets is given; all of them otherwise), control sources one entry.
   */
  writeTrain(
    trainId: number | bigint,
    data: Partial<Record<N, DataInput>>,
    options: { timestamp?: number | bigint } = {},
  ): void {
    this.checkOpen();
    const given = new Map<Ds, Parsed>();
    for (const [k, v] of Object.entries(data)) {
      if (v === undefined) continue;
      const ds = this.dataset(k);
      if (ds.constant) throw new WriterError(`${ds.label}: has a constant value (setConstant)`, ds.name);
      given.set(ds, this.parse(ds, v as DataInput, true));
    }
    const counts: Record<string, number> = {};
    for (const src of this.srcs) {
      const needed = src.datasets.filter((d) => !d.constant);
      const have = needed.filter((d) => given.has(d));
      const ns = new Set(have.map((d) => given.get(d)!.n));
      if (ns.size > 1) {
        throw new WriterError(
          `train ${trainId}: source ${src.name}: datasets differ in entries (${
            have.map((d) => `${d.name}: ${given.get(d)!.n}`).join(", ")
          })`,
        );
      }
      const n = have.length ? [...ns][0] : 0;
      if (src.kind === "control") {
        const missing = needed.filter((d) => !given.has(d));
        if (missing.length) {
          throw new WriterError(
            `train ${trainId}: no data for ${missing[0].label} (control sources have one entry per train;` +
              ` give it, or setConstant)`,
            missing[0].name,
          );
        }
        if (have.length && n !== 1) {
          throw new WriterError(
            `train ${trainId}: ${have[0].label}: control data has one entry per train, got ${n}`,
          );
        }
        counts[src.name] = 1;
      } else {
        if (have.length && have.length < needed.length) {
          const missing = needed.find((d) => !given.has(d))!;
          throw new WriterError(
            `train ${trainId}: no data for ${missing.label} (the source's other datasets have ${n} entries)`,
            missing.name,
          );
        }
        counts[src.name] = n;
      }
    }
    const ts = options.timestamp === undefined ? undefined : [options.timestamp];
    const plan = this.planTrains([trainId], counts, ts);
    this.guard(() => {
      this.applyTrains(plan);
      for (const [ds, p] of given) this.writeRows(ds, p.arr, p.n);
      this.advance();
    });
  }

  // -------------------------------------------------------------------------------------------------
  // Closing

  /**
   * Write out everything and rename the remaining files to their final names; returns all final paths.
   * Datasets must hold data for all trains: otherwise a WriterError lists them and the writer stays open
   * (add the data, or `abort()`), unless `fillMissing` writes zeros for the missing entries.
   */
  close(options: { fillMissing?: boolean } = {}): string[] {
    if (this.state === "closed") return this.files;
    this.checkOpen();
    if (!options.fillMissing) {
      const missing: string[] = [];
      for (const src of this.srcs) {
        const total = src.cum[this.tids.length];
        for (const ds of src.datasets) {
          if (!ds.constant && ds.rows < total) missing.push(`${ds.label}: ${ds.rows} of ${total} entries`);
        }
      }
      if (missing.length) {
        throw new WriterError(`cannot close: data missing for ${missing.join("; ")}`, undefined);
      }
    }
    this.guard(() => {
      if (!this.segs.length) this.segs.push(this.newSeg(0));
      this.segs[this.segs.length - 1].closed = true;
      for (const seg of this.segs.slice(this.nextFinal)) this.finalize(seg, options.fillMissing ?? false);
      this.nextFinal = this.segs.length;
    });
    this.state = "closed";
    track(this, false);
    return this.files;
  }

  /**
   * Stop writing: close open HDF5 files and remove the temporary files. Files already completed keep
   * their final names (they are complete and valid). Safe to call any time, also after `close()`.
   */
  abort(reason = "aborted"): void {
    if (this.state !== "open") return;
    this.state = "aborted";
    this.abortReason = reason;
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
    track(this, false);
  }

  // -------------------------------------------------------------------------------------------------
  // Checks

  private checkOpen(): void {
    if (this.state === "closed") throw new WriterError("the writer is closed");
    if (this.state === "aborted") throw new WriterError(`the writer was aborted (${this.abortReason})`);
  }

  private dataset(name: string): Ds {
    const ds = this.ds.get(name);
    if (!ds) {
      throw new WriterError(`unknown dataset "${name}" (declared: ${[...this.ds.keys()].join(", ")})`, name);
    }
    return ds;
  }

  private source(ref: string): Src {
    const src = ref.startsWith("@")
      ? this.srcs.find((s) => s.aliases.includes(ref.slice(1)))
      : this.srcs.find((s) => s.name === ref);
    if (!src) {
      throw new WriterError(
        `unknown source "${ref}" (sources: ${
          this.srcs.map((s) => [...s.aliases.map((a) => "@" + a), s.name].join(" = ")).join(", ")
        })`,
      );
    }
    return src;
  }

  /** Convert and check one data input: dtype, entry shape, whole entries. */
  private parse(ds: Ds, input: DataInput, single = false): Parsed {
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
          `shape mismatch: ${arr.length} elements are not whole entries of shape ${
            fmtShape(ds.entryShape)
          } ` +
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

  /** `n` more rows must end on a train boundary, within the trains added. */
  private checkRows(ds: Ds, n: number): void {
    const cum = ds.src.cum;
    const ntr = this.tids.length;
    const total = cum[ntr];
    const end = ds.rows + n;
    if (end > total) {
      const t0 = this.trainAtRow(cum, ds.rows);
      throw new WriterError(
        `${ds.label}: ${n} entries given, but the ${ntr - t0} trains added after its data so far ` +
          `hold ${total - ds.rows} entries of ${ds.src.name} (add the trains first, with their counts)`,
        ds.name,
      );
    }
    // Smallest t with cum[t] >= end: the data must end exactly there.
    const t = this.trainAtRow(cum, end);
    if (cum[t] !== end) {
      throw new WriterError(
        `${ds.label}: ${n} entries end inside train ${this.tids[t - 1]} (${end - cum[t - 1]} of its ` +
          `${cum[t] - cum[t - 1]} entries): data must cover whole trains`,
        ds.name,
      );
    }
  }

  private trainAtRow(cum: number[], row: number): number {
    let lo = 0;
    let hi = cum.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cum[mid] >= row) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  private planTrains(
    trainIds: ArrayLike<number | bigint>,
    counts: Readonly<Record<string, number | ArrayLike<number>>>,
    timestamps?: ArrayLike<number | bigint>,
  ): TrainPlan {
    const n = trainIds.length;
    const ids: bigint[] = new Array(n);
    let prev = this.tids.length ? this.tids[this.tids.length - 1] : 0n;
    for (let i = 0; i < n; i++) {
      const v = trainIds[i];
      if (typeof v === "number" && !Number.isSafeInteger(v)) {
        throw new WriterError(`train ID ${v} is not an integer`);
      }
      const id = BigInt(v);
      if (id <= 0n || id >= 1n << 64n) {
        throw new WriterError(`train ID ${id} at position ${i}: must be > 0 (u64)`);
      }
      if (id <= prev) {
        throw new WriterError(
          `train IDs must increase strictly: ${id} at position ${i} follows ${prev}${
            i === 0 ? " (the last train added)" : ""
          }`,
        );
      }
      ids[i] = prev = id;
    }
    let prevTs = this.tss.length ? this.tss[this.tss.length - 1] : 0n;
    const ts: bigint[] = new Array(n);
    if (timestamps !== undefined) {
      if (timestamps.length !== n) {
        throw new WriterError(`${timestamps.length} timestamps given for ${n} trains`);
      }
      for (let i = 0; i < n; i++) {
        const v = timestamps[i];
        if (typeof v === "number" && !Number.isSafeInteger(v)) {
          throw new WriterError(`timestamp ${v} is not an integer (ns since the epoch)`);
        }
        const t = BigInt(v);
        if (t < 0n || t >= 1n << 64n) throw new WriterError(`timestamp ${t} at position ${i}: not a u64`);
        if (t < prevTs) {
          throw new WriterError(`timestamps must not decrease: ${t} at position ${i} follows ${prevTs}`);
        }
        ts[i] = prevTs = t;
      }
    } else {
      const now = nowNs();
      for (let i = 0; i < n; i++) ts[i] = prevTs = now > prevTs ? now : prevTs;
    }
    const per = new Map<Src, number[]>();
    for (const [ref, c] of Object.entries(counts)) {
      const src = this.source(ref);
      if (per.has(src)) throw new WriterError(`counts for source ${src.name} given twice`);
      let arr: number[];
      if (typeof c === "number") arr = new Array(n).fill(c);
      else {
        if (c.length !== n) throw new WriterError(`counts of ${ref}: ${c.length} values for ${n} trains`);
        arr = Array.from(c);
      }
      for (let i = 0; i < n; i++) {
        const v = arr[i];
        if (!Number.isSafeInteger(v) || v < 0) {
          throw new WriterError(`counts of ${ref}: ${v} for train ${ids[i]} is not an integer >= 0`);
        }
        if (src.kind === "control" && v > 1) {
          throw new WriterError(
            `counts of ${ref}: ${v} for train ${ids[i]}: control sources have 0 or 1 entries`,
          );
        }
      }
      per.set(src, arr);
    }
    for (const src of this.srcs) {
      if (!per.has(src)) per.set(src, new Array(n).fill(src.kind === "control" ? 1 : 0));
    }
    // New sequence files must not overwrite existing files.
    if (!this.opt.overwrite) {
      let seg = this.segs[this.segs.length - 1];
      let nt = seg ? seg.end - seg.start : 0;
      let bytes = seg ? seg.bytes : 0;
      let seq = this.segs.length;
      for (let i = 0; i < n; i++) {
        const b = this.trainBytes(per, i);
        if (!seg || this.splitBefore(nt, bytes, b)) {
          const final = this.finalName(seq++);
          if (fs.existsSync(final)) {
            throw new WriterError(`${final} exists (open the writer with overwrite: true to replace it)`);
          }
          seg = {} as Seg;
          nt = 0;
          bytes = 0;
        }
        nt++;
        bytes += b;
      }
    }
    return { ids, ts, counts: per };
  }

  private trainBytes(per: Map<Src, number[]>, i: number): number {
    let b = 0;
    for (const [src, c] of per) b += c[i] * src.rowBytes;
    return b;
  }

  private splitBefore(nTrains: number, bytes: number, add: number): boolean {
    const { maxTrainsPerFile, maxBytesPerFile } = this.opt;
    if (maxTrainsPerFile !== undefined && nTrains >= maxTrainsPerFile) return true;
    return maxBytesPerFile !== undefined && nTrains > 0 && bytes + add > maxBytesPerFile;
  }

  // -------------------------------------------------------------------------------------------------
  // Applying (after all checks passed)

  private finalName(seq: number): string {
    return formatTemplate(this.template, { ...this.names, seq });
  }

  private newSeg(start: number): Seg {
    const seq = this.segs.length;
    const final = this.finalName(seq);
    const tmp = nodePath.join(
      nodePath.dirname(final),
      `.${nodePath.basename(final)}.tmp-${process.pid}-${++tmpCounter}`,
    );
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
      handles: new Map(),
      per: new Map(),
    };
  }

  private applyTrains(plan: TrainPlan): void {
    for (let i = 0; i < plan.ids.length; i++) {
      const t = this.tids.length;
      const b = this.trainBytes(plan.counts, i);
      let seg = this.segs[this.segs.length - 1];
      if (!seg || this.splitBefore(seg.end - seg.start, seg.bytes, b)) {
        if (seg) seg.closed = true;
        seg = this.newSeg(t);
        this.segs.push(seg);
        this.ensureOpen(seg); // create the file now: a file per started sequence, errors surface early
      }
      seg.end = t + 1;
      seg.bytes += b;
      this.tids.push(plan.ids[i]);
      this.tss.push(plan.ts[i]);
      for (const [src, c] of plan.counts) src.cum.push(src.cum[t] + c[i]);
    }
  }

  /** Distribute rows (checked) over the sequence files. */
  private writeRows(ds: Ds, arr: NumericArray, n: number): void {
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
    const h = seg.handles.get(ds)!;
    const E = ds.entryElems;
    const start = f.written;
    h.resize([start + m, ...ds.entryShape]);
    const rest = ds.entryShape.map(() => [] as []);
    const step = Math.max(1, Math.floor(this.opt.sliceBytes / ds.entryBytes));
    for (let a = 0; a < m; a += step) {
      const b = Math.min(m, a + step);
      h.write_slice([[start + a, start + b], ...rest], arr.subarray((off + a) * E, (off + b) * E));
    }
    f.written = start + m;
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
      for (const ds of this.ds.values()) {
        const slash = ds.h5path.lastIndexOf("/");
        const parent = ensureGroup(file, ds.h5path.slice(0, slash));
        const h = parent.create_dataset({
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
        seg.handles.set(ds, h);
      }
    } else {
      for (const ds of this.ds.values()) seg.handles.set(ds, file.get(ds.h5path) as H5Dataset);
    }
  }

  /** Flush the file's buffers and close it (it may be reopened). */
  private closeSeg(seg: Seg): void {
    for (const ds of [...seg.per.keys()]) this.flushStage(seg, ds, true);
    const i = this.openSegs.indexOf(seg);
    if (i >= 0) this.openSegs.splice(i, 1);
    seg.handles.clear();
    const file = seg.file;
    seg.file = undefined;
    file?.close();
  }

  /** Finalize the closed files whose datasets all hold their data. */
  private advance(): void {
    while (this.nextFinal < this.segs.length) {
      const seg = this.segs[this.nextFinal];
      if (!seg.closed) break;
      const complete = this.srcs.every((s) =>
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
    const put = (
      g: ReturnType<typeof ensureGroup>,
      name: string,
      data: NumericArray | string[],
      dtype?: string,
    ) => g.create_dataset({ name, data, ...(dtype ? { dtype } : {}) });

    for (const src of this.srcs) {
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
          seg.handles.get(ds)!.resize([rows, ...ds.entryShape]);
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
        for (let t = seg.start; t < seg.end; t++) if (src.cum[t + 1] > src.cum[t]) ts.push(this.tss[t]);
        for (const ds of src.datasets) {
          put(ensureGroup(file, ds.keyGroup), "timestamp", u64(ts), "<Q");
          const run = ensureGroup(file, "RUN/" + ds.keyGroup.slice("CONTROL/".length));
          const value = this.fileDs(seg, ds).first ?? ds.constant ?? new ds.info.ctor(ds.entryElems);
          run.create_dataset({ name: "value", data: value, shape: [1, ...ds.entryShape], dtype: ds.info.h5 });
          put(run, "timestamp", u64([ts.length ? ts[0] : 0n]), "<Q");
        }
      }
    }
    ensureGroup(file, "RUN");
    const index = ensureGroup(file, "INDEX");
    put(index, "trainId", u64(this.tids.slice(seg.start, seg.end)), "<Q");
    put(index, "timestamp", u64(this.tss.slice(seg.start, seg.end)), "<Q");
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
    for (const src of this.srcs) {
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

  /** Run a state-changing step; an internal failure aborts the writer (no partial file keeps a final name). */
  private guard(step: () => void): void {
    try {
      step();
    } catch (e) {
      const msg = e instanceof WriterError ? e.message : firstLine(e);
      this.abort(`write failed: ${msg}`);
      throw new WriterError(`write failed, writer aborted and temporary files removed: ${msg}`);
    }
  }
}

/** `FileWriter.open` as a function. */
export function openWriter<const S extends WriterSchema>(
  pathTemplate: string,
  schema: S,
  options?: WriterOptions,
): Promise<FileWriter<DatasetNames<S>>> {
  return FileWriter.open(pathTemplate, schema, options);
}
