/**
 * h5wasm access shared by the reader, the writer and the fixtures.
 *
 * - `h5()` loads h5wasm's Node build once (it reads and writes files on disk directly, under Node and Deno).
 * - `readSlab()` is the fast read path: whole rows of a plainly chunked or contiguous dataset straight from the
 *   file (chunks.ts); anything else through HDF5, which decodes a hyperslab into a buffer malloc'ed on the
 *   wasm heap (reused between calls, grown only when a larger batch is asked for), then copied into the
 *   caller's typed array (2-3 GB/s against ~0.5-1 GB/s for `Dataset.slice`).
 * - `openH5()` turns h5wasm's failures (missing, not HDF5, truncated) into one-line InputErrors.
 */
import type h5wasm from "h5wasm/node";
import * as fs from "node:fs";
import { InputError } from "../errors.ts";
import type { Wasm } from "./wasm.ts";
import { readRowsDirect, releaseDirect, signatureAt } from "./chunks.ts";

export type H5 = typeof h5wasm;
export type H5File = InstanceType<H5["File"]>;
export type H5Group = InstanceType<H5["Group"]>;
export type H5Dataset = InstanceType<H5["Dataset"]>;

let ready: Promise<H5> | undefined;
let wasm: Wasm | undefined;
let loaded: H5 | undefined;

/**
 * h5wasm, initialised once per process (or worker). Loaded on first use, not when this module is imported:
 * importing h5wasm instantiates HDF5 (~0.3 s of a 2-core machine's CPU: its 4 MB module parsed, the wasm
 * decoded and compiled, HDF5 initialised), which a command that stops before reading a file (--help, an
 * output refused, a bad option) does not need.
 */
export function h5(): Promise<H5> {
  ready ??= import("h5wasm/node").then(({ default: lib }) =>
    lib.ready.then((mod) => {
      wasm = mod;
      // HDF5 errors become JS exceptions carrying HDF5's error stack, instead of a print on stderr.
      mod.activate_throwing_error_handler();
      loaded = lib;
      return lib;
    })
  );
  return ready;
}

/** Open an HDF5 file read-only, with one-line errors for the usual ways this fails. */
export async function openH5(path: string): Promise<H5File> {
  const lib = await h5();
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch {
    throw new InputError(path, "no such file");
  }
  if (!st.isFile()) throw new InputError(path, "not a file");
  const fd = fs.openSync(path, "r");
  let at: number;
  try {
    at = signatureAt(fd, st.size);
  } finally {
    fs.closeSync(fd);
  }
  if (at < 0) throw new InputError(path, "not an HDF5 file");
  let file: H5File;
  try {
    file = new lib.File(path, "r");
  } catch (e) {
    throw new InputError(path, `cannot open HDF5 file (truncated or damaged): ${firstLine(e)}`);
  }
  if (!file.file_id || file.file_id < 0n) {
    throw new InputError(path, "cannot open HDF5 file (truncated or damaged)");
  }
  return closingDirect(file);
}

/**
 * Open a file read-only that openH5 has opened before (a reader reopening it to drop HDF5's caches): no
 * checks, the same close hook.
 */
export function reopenH5(lib: H5, path: string): H5File {
  return closingDirect(new lib.File(path, "r"));
}

/**
 * The files a thread's runs read are opened when read and kept open up to OPEN_FILES of them (least recently
 * read closed first), not all at once: HDF5 allocates ~0.3 MB of wasm heap per open file (its metadata
 * cache's hash table, ~256 kB with 32-bit pointers, and buffers), and that heap never shrinks. A run of 120
 * files opened at once took the heap from 18 to 55 MB in each thread that opened it; a long AGIPD-1M run
 * has thousands. Reopening a file costs 0.2-0.5 ms (measured), and the direct reads' chunk plans survive it
 * (chunks.ts caches them by file).
 */
export const OPEN_FILES = 16;
const openFiles = new Map<string, H5File>();

/**
 * The open handle of run file `path` (read-only), opened again if it was closed. Valid until this thread
 * asks for OPEN_FILES other files or closes it (closeRunFile): use it at once, never keep it. h5() must have
 * loaded h5wasm.
 */
export function runFileHandle(path: string): H5File {
  let file = openFiles.get(path);
  if (file) {
    openFiles.delete(path); // most recent last
    openFiles.set(path, file);
    return file;
  }
  if (!loaded) throw new Error("h5wasm is not loaded (await h5() first)");
  try {
    file = reopenH5(loaded, path);
  } catch (e) {
    throw new InputError(path, `cannot open HDF5 file: ${firstLine(e)}`);
  }
  keepOpen(path, file);
  return file;
}

/** Keep `file` as run file `path`'s open handle (most recent), closing the least recently used past OPEN_FILES. */
function keepOpen(path: string, file: H5File): void {
  const old = openFiles.get(path);
  if (old && old !== file) old.close();
  openFiles.delete(path);
  openFiles.set(path, file);
  for (const [p, f] of openFiles) {
    if (openFiles.size <= OPEN_FILES) break;
    openFiles.delete(p);
    f.close();
  }
}

/** Whether run file `path` is open in this thread (a pass that reads each file once closes what it opened). */
export function isRunFileOpen(path: string): boolean {
  return openFiles.has(path);
}

/** Close run file `path`'s handle if open (its HDF5 caches freed); it opens again when next read. */
export function closeRunFile(path: string): void {
  const f = openFiles.get(path);
  if (!f) return;
  openFiles.delete(path);
  f.close();
}

/** The direct chunk reads (chunks.ts) keep a file descriptor per file: closed with the file. */
function closingDirect(file: H5File): H5File {
  const close = file.close.bind(file);
  file.close = () => {
    releaseDirect(file);
    return close();
  };
  return file;
}

/** One line out of an exception: for HDF5 error stacks, the innermost "minor:" description. */
export function firstLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const minors = [...msg.matchAll(/minor: (.*)/g)].map((m) => m[1].trim());
  return minors.length ? minors[minors.length - 1] : msg.split("\n")[0];
}

/** Elements of a shape (1 for a scalar). */
export const shapeSize = (shape: readonly number[]): number => shape.reduce((x, y) => x * y, 1);

/** Runs [start, end) of consecutive values in a sorted list of rows: one hyperslab each. */
export function rowRuns(rows: ArrayLike<number>): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < rows.length;) {
    let j = i + 1;
    while (j < rows.length && rows[j] === rows[j - 1] + 1) j++;
    out.push([rows[i], rows[j - 1] + 1]);
    i = j;
  }
  return out;
}

/** Size of h5wasm's WebAssembly heap (it grows, never shrinks, and is capped at 2 GiB). */
export function wasmHeapBytes(): number {
  return wasm ? wasm.HEAPU8.length : 0;
}

/** Create every missing group along `path` (h5wasm's create_group makes one level only). */
export function ensureGroup(root: H5Group, path: string): H5Group {
  let g = root;
  for (const part of path.split("/").filter(Boolean)) {
    const next = g.keys().includes(part) ? g.get(part) : g.create_group(part);
    g = next as H5Group;
  }
  return g;
}

/** Typed-array constructors by HDF5 metadata (the dtypes EuXFEL files use). */
export type NumericArray =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array;

export interface DsInfo {
  shape: number[];
  /** numpy-style dtype name: uint16, float32, ... */
  dtype: string;
  bytesPerElement: number;
}

/** Shape and dtype of a dataset, without reading it. */
export function dsInfo(ds: H5Dataset): DsInfo {
  const m = ds.metadata as any;
  const size: number = m.size;
  let dtype: string;
  if (m.type === 1) dtype = `float${size * 8}`; // H5T_FLOAT
  else if (m.type === 0) dtype = `${m.signed ? "int" : "uint"}${size * 8}`; // H5T_INTEGER
  else if (m.type === 3) dtype = "string";
  else if (m.type === 8) dtype = `enum${size * 8}`;
  else dtype = `type${m.type}`;
  return { shape: (ds.shape ?? []) as number[], dtype, bytesPerElement: size };
}

export function arrayFor(dtype: string, n: number): NumericArray {
  switch (dtype) {
    case "uint8":
    case "enum8":
      return new Uint8Array(n);
    case "int8":
      return new Int8Array(n);
    case "uint16":
      return new Uint16Array(n);
    case "int16":
      return new Int16Array(n);
    case "uint32":
      return new Uint32Array(n);
    case "int32":
      return new Int32Array(n);
    case "float32":
      return new Float32Array(n);
    case "float64":
      return new Float64Array(n);
    case "uint64":
      return new BigUint64Array(n);
    case "int64":
      return new BigInt64Array(n);
  }
  throw new Error(`unsupported dtype ${dtype}`);
}

/** Bytes per element of a numpy-style dtype name (uint16 -> 2). */
export function bytesPerElement(dtype: string): number {
  return arrayFor(dtype, 0).BYTES_PER_ELEMENT;
}

let scratchPtr = 0;
let scratchBytes = 0;

/**
 * Read rows [start, start+count) along axis 0 of a dataset into `out` (typed array of the dataset's dtype,
 * at least count * rowElements long). Uses one reused malloc'ed scratch buffer on the wasm heap.
 */
export function readRows(
  file: H5File,
  path: string,
  shape: number[],
  start: number,
  count: number,
  out: NumericArray,
  outOffset = 0,
): void {
  readSlab(file, path, [start, ...shape.slice(1).map(() => 0)], [count, ...shape.slice(1)], out, outOffset);
}

/**
 * Read the hyperslab [offset, offset+count) of a dataset into `out` starting at element `outOffset`.
 */
export function readSlab(
  file: H5File,
  path: string,
  offset: number[],
  count: number[],
  out: NumericArray,
  outOffset = 0,
): void {
  const elems = count.reduce((a, b) => a * b, 1);
  if (elems === 0) return;
  const mod = wasm;
  if (!mod) throw new Error("h5wasm not initialised: await h5() first");
  const nbytes = elems * out.BYTES_PER_ELEMENT;
  if (outOffset + elems > out.length) throw new Error(`readSlab: output too small for ${path}`);
  const dst = new Uint8Array(out.buffer, out.byteOffset + outOffset * out.BYTES_PER_ELEMENT, nbytes);
  // Whole rows of a plainly chunked or deflated dataset: straight from the file (chunks.ts), else h5wasm.
  if (
    offset.every((o, i) => i === 0 || o === 0) && readRowsDirect(mod, file, path, offset[0], count[0], dst)
  ) {
    return;
  }
  readHdf5(mod, file, path, offset, count, dst);
}

/** readSlab through HDF5: into the reused scratch buffer on the wasm heap, then copied into dst. */
function readHdf5(
  mod: Wasm,
  file: H5File,
  path: string,
  offset: number[],
  count: number[],
  dst: Uint8Array,
): void {
  const nbytes = dst.length;
  if (nbytes > scratchBytes) {
    if (scratchPtr) mod._free(scratchPtr);
    scratchBytes = Math.max(nbytes, 1 << 20);
    scratchPtr = mod._malloc(scratchBytes);
    if (!scratchPtr) throw new Error(`wasm heap: could not allocate ${scratchBytes} bytes`);
  }
  const countArr = count.map(BigInt);
  const offsetArr = offset.map(BigInt);
  const strides = countArr.map(() => 1n);
  let status: number;
  try {
    status = mod.get_dataset_data(file.file_id, path, countArr, offsetArr, strides, BigInt(scratchPtr));
  } catch (e) {
    throw new InputError(file.filename, `cannot read ${path} at ${offset.join(",")}: ${firstLine(e)}`);
  }
  if (status < 0) throw new InputError(file.filename, `cannot read ${path} at ${offset.join(",")}`);
  // Views on the heap die when it grows: take the view now, copy at once.
  dst.set(new Uint8Array(mod.HEAPU8.buffer, scratchPtr, nbytes));
}

/**
 * Datasets smaller than this are read whole through HDF5, not the direct path (INDEX first/count, METADATA):
 * a direct read opens a descriptor and makes a chunk plan per dataset, which cost more than the read when
 * `Run.open` reads a few hundred bytes from each of a run's datasets, and the plans of thousands of small
 * datasets filled the plan cache's map.
 */
const SMALL_BYTES = 1 << 20;

/** Read a whole (small) dataset (`ds`: the dataset at `path` when the caller has it already). */
export function readAll(file: H5File, path: string, ds = file.get(path) as H5Dataset): NumericArray {
  const info = dsInfo(ds);
  const n = info.shape.reduce((a, b) => a * b, 1);
  const out = arrayFor(info.dtype, n);
  if (info.shape.length === 0) {
    const v = ds.value as any;
    (out as any)[0] = v;
    return out;
  }
  const bytes = n * out.BYTES_PER_ELEMENT;
  if (n > 0 && bytes < SMALL_BYTES && wasm) {
    readHdf5(wasm, file, path, info.shape.map(() => 0), info.shape, new Uint8Array(out.buffer, 0, bytes));
  } else readRows(file, path, info.shape, 0, info.shape[0], out);
  return out;
}
