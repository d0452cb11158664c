/**
 * Direct chunk reads: rows of a chunked (or contiguous) dataset read from the file with `fs.readSync` and,
 * when deflated, inflated by Node's native zlib, instead of through h5wasm's hyperslab read. On CORR files
 * (image.data float32 in 1-frame chunks, image.mask gzip per frame) this costs 0.04 instead of 0.19 ms per
 * AGIPD module frame of data and 0.16 instead of 0.48 ms of mask (bench/RESULTS.md).
 *
 * Spec (HDF5 file format specification 3.0, the parts CORR and RAW files use):
 * - The dataset's object header address is h5wasm's object reference to it (an `hobj_ref_t` is the header's
 *   address, relative to the superblock's base address). The superblock (versions 0-3, at 0 or a power of two
 *   from 512) gives the sizes of offsets and lengths and the base address.
 * - Object header version 1 or 2 ("OHDR", continuation blocks "OCHK"), continuation messages (0x10) followed;
 *   the data layout message (0x08) of version 3: contiguous (address, size) or chunked with a version 1
 *   B-tree ("TREE", node type 1) whose keys give each chunk's stored size, filter mask and offsets.
 * - Used only when every condition holds, else the caller reads through h5wasm (same values, slower): the file
 *   is open read-only; the type is a little-endian number; the filters are none or deflate only; a chunk spans
 *   whole rows (all axes but the first); every chunk asked for is allocated. Layout version 4 (files written with
 *   libver "latest": fixed and extensible arrays, version 2 B-trees) is not parsed.
 * - A chunk whose filter mask skips deflate is stored raw. An inflated chunk must have the chunk's byte size,
 *   else the read is an InputError naming the file.
 * - Adjacent raw chunks that lie back to back in the file are read with one call.
 */
import * as fs from "node:fs";
import * as zlib from "node:zlib";
import process from "node:process";
import { InputError } from "../errors.ts";
import type { Wasm } from "./wasm.ts";

/** Where a dataset's rows lie in its file. */
export interface ChunkPlan {
  /** Bytes per row (one entry along axis 0). */
  rowBytes: number;
  /** Rows per chunk (axis 0 of the chunk shape); the dataset's row count for a contiguous dataset. */
  chunkRows: number;
  /** Absolute file address of chunk k (rows [k * chunkRows, ...)), -1 when not allocated. */
  address: Float64Array;
  /** Stored bytes of chunk k. */
  stored: Float64Array;
  /** Whether chunk k is deflated. */
  deflated: Uint8Array;
}

interface FileState {
  fd: number;
  /** The superblock's base address: every address in the file is relative to it. */
  base: number;
  /** The file's identity (device, inode, size, modification time): plans are cached under it. */
  key: string;
}

/**
 * Plans by file identity and dataset path, across reopenings of a file (readers reopen files as they go):
 * the most recently used, up to PLAN_CACHE_CHUNKS chunks in all (17 bytes each), and always the last
 * PLAN_CACHE_MIN plans whatever their size (a sequence file's data and mask, and the next file's when a
 * batch straddles two). A plan's size follows its file's row count, not the run's: a thread's plans stay
 * within max(PLAN_CACHE_CHUNKS, PLAN_CACHE_MIN plans) however many sequence files it reads (with 2^19 chunks
 * they grew to 2.2 MB a thread over 1,000 trains of 4 files a module, 0.3 MB over 125 trains). At most
 * PLAN_CACHE_PLANS plans: the small datasets of each file (train and pulse IDs, cells) have a plan each, ~2 kB
 * with its key, and a long run has thousands of files.
 */
const plans = new Map<string, ChunkPlan | null>();
const PLAN_CACHE_CHUNKS = 1 << 16;
const PLAN_CACHE_MIN = 4;
const PLAN_CACHE_PLANS = 256;
let cachedChunks = 0;

function cachedPlan(key: string): ChunkPlan | null | undefined {
  const p = plans.get(key);
  if (p !== undefined) {
    plans.delete(key); // most recent last
    plans.set(key, p);
  }
  return p;
}

function cachePlan(key: string, p: ChunkPlan | null): void {
  plans.set(key, p);
  cachedChunks += p ? p.address.length : 0;
  for (const [k, old] of plans) {
    if (
      (cachedChunks <= PLAN_CACHE_CHUNKS && plans.size <= PLAN_CACHE_PLANS) || plans.size <= PLAN_CACHE_MIN
    ) {
      break;
    }
    plans.delete(k);
    cachedChunks -= old ? old.address.length : 0;
    if (old) spare(old);
  }
}

/**
 * The arrays of plans evicted from the cache, for the next plans (emptyPlan): a thread makes a plan per dataset
 * of each file it reads (the data's and the mask's of a 250-train AGIPD file: 16,000 chunks, 272 kB each).
 * Allocated anew, the evicted ones piled up in the malloc heap until collected, and the heap keeps its
 * high-water mark: it grew with the number of files a thread read (bench/RESULTS.md).
 */
const spares: { address: Float64Array; stored: Float64Array; deflated: Uint8Array }[] = [];
const SPARE_PLANS = 4;
/** Plans of fewer chunks (contiguous IDs, small keys) are not kept: they would push the large ones out. */
const SPARE_MIN_CHUNKS = 1024;

function spare(p: ChunkPlan): void {
  if (p.address.buffer.byteLength < SPARE_MIN_CHUNKS * 8) return;
  const whole = {
    address: new Float64Array(p.address.buffer),
    stored: new Float64Array(p.stored.buffer),
    deflated: new Uint8Array(p.deflated.buffer),
  };
  spares.push(whole);
  if (spares.length > SPARE_PLANS) spares.shift();
}

/** The chunks of the cached plans, and how many plans (tests: the cache's bound). */
export function planCacheSize(): { chunks: number; plans: number } {
  return { chunks: cachedChunks, plans: plans.size };
}

const states = new WeakMap<object, FileState | null>();
let enabled = process.env.XFEL_REDU_DIRECT !== "0";
/**
 * How many row reads went the direct way, how many plans were made, how many of them in an evicted plan's
 * arrays (tests check the path, the cache and the reuse).
 */
export const directStats = { reads: 0, plans: 0, reused: 0 };

/**
 * Turn direct reads on or off (tests and the bench compare both; env XFEL_REDU_DIRECT=0 turns them off);
 * `zlibHandle: false` inflates with inflateSync as where Node's zlib handle is missing (tests).
 */
export function setDirectReads(on: boolean, { zlibHandle = true } = {}): void {
  enabled = on;
  inflater = zlibHandle ? undefined : null;
}

/** The file as chunks.ts needs it: h5wasm's file object. */
export interface DirectFile {
  filename: string;
  mode: string;
  file_id: bigint;
}

/** Close the file descriptor kept for `file` (h5.ts calls it when the file closes). */
export function releaseDirect(file: object): void {
  const st = states.get(file);
  if (st) fs.closeSync(st.fd);
  states.delete(file);
}

/**
 * Rows [row, row + n) of dataset `path` into `dst` (n * rowBytes bytes) read directly from the file; false
 * (nothing read) when the dataset does not qualify (see the spec above) and the caller must use h5wasm.
 */
export function readRowsDirect(
  mod: Wasm,
  file: DirectFile,
  path: string,
  row: number,
  n: number,
  dst: Uint8Array,
): boolean {
  if (!enabled || file.mode !== "r") return false;
  const st = fileState(file);
  if (!st) return false;
  const key = st.key + "\0" + path;
  let plan = cachedPlan(key);
  if (plan === undefined) {
    directStats.plans++;
    try {
      plan = makePlan(mod, file, path, st);
    } catch {
      plan = null; // a layout this parser does not follow: h5wasm reads it
    }
    cachePlan(key, plan);
  }
  if (!plan || dst.length !== n * plan.rowBytes) return false;
  const k0 = Math.floor(row / plan.chunkRows), k1 = Math.floor((row + n - 1) / plan.chunkRows);
  if (k1 >= plan.address.length) return false;
  for (let k = k0; k <= k1; k++) if (plan.address[k] < 0) return false;
  const chunkBytes = plan.chunkRows * plan.rowBytes;
  for (let k = k0; k <= k1;) {
    const r0 = Math.max(row, k * plan.chunkRows), r1 = Math.min(row + n, (k + 1) * plan.chunkRows);
    const skip = (r0 - k * plan.chunkRows) * plan.rowBytes;
    const at = (r0 - row) * plan.rowBytes;
    if (plan.deflated[k]) {
      if (packedScratch.length < plan.stored[k]) packedScratch = Buffer.allocUnsafe(plan.stored[k]);
      const packed = packedScratch.subarray(0, plan.stored[k]);
      readFully(st.fd, packed, plan.address[k], file.filename, path, row);
      // A chunk wholly asked for inflates straight into dst, else into scratch and its rows are copied.
      const whole = skip === 0 && r1 - r0 === plan.chunkRows;
      if (!whole && rawScratch.length < chunkBytes) rawScratch = new Uint8Array(chunkBytes);
      const target = whole ? dst.subarray(at, at + chunkBytes) : rawScratch.subarray(0, chunkBytes);
      const why = inflateInto(packed, target);
      if (why) throw cannotRead(file.filename, path, row, `chunk ${k} ${why}`);
      if (!whole) dst.set(target.subarray(skip, skip + (r1 - r0) * plan.rowBytes), at);
      k++;
      continue;
    }
    // Raw chunks: extend over the following chunks that lie right after this one's rows in the file.
    let k2 = k, end = r1;
    while (
      k2 + 1 <= k1 && !plan.deflated[k2 + 1] && plan.stored[k2] === chunkBytes &&
      plan.address[k2 + 1] === plan.address[k2] + chunkBytes
    ) {
      k2++;
      end = Math.min(row + n, (k2 + 1) * plan.chunkRows);
    }
    const part = dst.subarray(at, at + (end - r0) * plan.rowBytes);
    readFully(st.fd, part, plan.address[k] + skip, file.filename, path, row);
    k = k2 + 1;
  }
  directStats.reads++;
  return true;
}

/** The one-line error of a failed read, worded like readSlab's. */
function cannotRead(filename: string, path: string, row: number, why: string): InputError {
  return new InputError(filename, `cannot read ${path} at row ${row}: ${why}`);
}

let packedScratch = Buffer.alloc(0);
let rawScratch = new Uint8Array(0);

/** Node's zlib handle (internal API, present under Node 20 and Deno 2): it inflates into a given buffer. */
interface ZlibHandle {
  reset(): void;
  writeSync(
    flush: number,
    inp: Uint8Array,
    inOff: number,
    inLen: number,
    out: Uint8Array,
    outOff: number,
    outLen: number,
  ): void;
  onerror: (message: string, errno: number) => void;
}
let inflater: { handle: ZlibHandle; state: Uint32Array; error: string } | null | undefined;

/**
 * Inflate a zlib stream into exactly `out.length` bytes of `out`: null, else why not ("does not inflate
 * (...)", "inflates to more/fewer bytes than ..."). Through the zlib handle when Node exposes it (no buffer
 * allocated, no copy: 4-6x faster than inflateSync on a gzip mask), else inflateSync and a copy.
 */
function inflateInto(packed: Uint8Array, out: Uint8Array): string | null {
  if (inflater === undefined) {
    const z = new zlib.Inflate() as unknown as { _handle?: ZlibHandle; _writeState?: Uint32Array };
    inflater = typeof z._handle?.writeSync === "function" && z._writeState instanceof Uint32Array
      ? { handle: z._handle, state: z._writeState, error: "" }
      : null;
    if (inflater) inflater.handle.onerror = (message) => inflater && (inflater.error = message);
  }
  if (!inflater) {
    let raw: Buffer;
    try {
      raw = zlib.inflateSync(packed, { chunkSize: Math.max(out.length, 64) });
    } catch (e) {
      return `does not inflate (${(e as Error).message})`;
    }
    if (raw.length !== out.length) return `inflates to ${raw.length} bytes, not ${out.length}`;
    out.set(raw);
    return null;
  }
  const z = inflater;
  z.error = "";
  z.handle.reset();
  z.handle.writeSync(zlib.constants.Z_FINISH, packed, 0, packed.length, out, 0, out.length);
  if (z.error) {
    inflater = undefined; // a fresh handle for the next chunk
    return `does not inflate (${z.error})`;
  }
  const [availOut, availIn] = z.state;
  if (availOut > 0) return `inflates to ${out.length - availOut} bytes, not ${out.length}`;
  if (availIn > 0) return `inflates to more than ${out.length} bytes`;
  return null;
}

function readFully(
  fd: number,
  buf: Uint8Array,
  pos: number,
  filename: string,
  path: string,
  row: number,
): void {
  let done = 0;
  while (done < buf.length) {
    const got = fs.readSync(fd, buf, done, buf.length - done, pos + done);
    if (got <= 0) {
      throw cannotRead(filename, path, row, `file truncated (${buf.length - done} bytes missing)`);
    }
    done += got;
  }
}

function fileState(file: DirectFile): FileState | null {
  let st = states.get(file);
  if (st !== undefined) return st;
  st = null;
  let fd = -1;
  try {
    fd = fs.openSync(file.filename, "r");
    st = superblock(fd);
  } catch {
    st = null;
  }
  if (!st && fd >= 0) fs.closeSync(fd);
  states.set(file, st);
  return st;
}

const SIGNATURE = [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a];
/** The last place looked at for the superblock (openH5 accepts no file whose signature lies further). */
const SIGNATURE_LIMIT = 1 << 20;

/**
 * Where the HDF5 signature (the superblock) lies in a file of `size` bytes: at 0, or after a user block at
 * 512, 1024, ... bytes up to 1 MiB; -1 when nowhere (not an HDF5 file). openH5's check and the superblock
 * parse below.
 */
export function signatureAt(fd: number, size: number): number {
  const b = Buffer.alloc(8);
  for (let at = 0; at + 8 <= size && at <= SIGNATURE_LIMIT; at = at ? at * 2 : 512) {
    fs.readSync(fd, b, 0, 8, at);
    if (SIGNATURE.every((s, i) => b[i] === s)) return at;
  }
  return -1;
}

/** The superblock's base address (versions 0-3, 8-byte offsets and lengths), else null: h5wasm reads. */
function superblock(fd: number): FileState | null {
  const stat = fs.fstatSync(fd);
  const key = `${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeMs}`;
  const at = signatureAt(fd, stat.size);
  if (at < 0) return null;
  const b = Buffer.alloc(64);
  fs.readSync(fd, b, 0, 64, at);
  const version = b[8];
  // Sizes of offsets and lengths: bytes 13, 14 (versions 0, 1) or 9, 10 (2, 3); then the base address.
  const [sizes, base] = version <= 1 ? [13, version === 0 ? 24 : 28] : version <= 3 ? [9, 12] : [-1, -1];
  if (sizes < 0 || b[sizes] !== 8 || b[sizes + 1] !== 8) return null;
  return { fd, base: u64(b, base), key };
}

/** Bytes [pos, pos + n) of the file (pos absolute). */
function bytes(st: FileState, pos: number, n: number, into?: Buffer): Buffer {
  const b = into && into.length >= n ? into.subarray(0, n) : Buffer.alloc(n);
  const got = fs.readSync(st.fd, b, 0, n, pos);
  return got === n ? b : b.subarray(0, got);
}

/**
 * The B-tree walk's read buffers, one per depth (a node's entries are read while its children are walked),
 * reused: a plan of 16,000 chunks reads ~250 nodes, and a fresh buffer each left ~0.8 MB of garbage outside
 * V8's heap per plan (48 plans: +33-38 MB of RSS before a collection).
 */
const nodeScratch: Buffer[] = [];

function nodeBuffer(depth: number, n: number): Buffer {
  let b = nodeScratch[depth];
  if (!b || b.length < n) nodeScratch[depth] = b = Buffer.allocUnsafe(Math.max(n, 4096));
  return b;
}

/** A little-endian 64-bit number (exact below 2^53; the undefined address 2^64 - 1 rounds to 2^64). */
const u64 = (b: Buffer, at: number): number => b.readUInt32LE(at) + b.readUInt32LE(at + 4) * 2 ** 32;
const UNDEFINED_ADDRESS = 2 ** 64 - 1;

function makePlan(mod: Wasm, file: DirectFile, path: string, st: FileState): ChunkPlan | null {
  const meta = mod.get_dataset_metadata(file.file_id, path);
  if (!meta.shape || meta.shape.length < 1 || meta.vlen || (meta.type !== 0 && meta.type !== 1)) return null;
  if (meta.size > 1 && !meta.littleEndian) return null;
  const filters = mod.get_dataset_filters(file.file_id, path);
  if (filters.some((f) => f.id !== 1)) return null;
  const ref = (mod as unknown as { create_object_reference(fid: bigint, p: string): ArrayLike<number> })
    .create_object_reference(file.file_id, path);
  if (!ref || ref.length !== 8) return null;
  const header = st.base + u64(Buffer.from(Uint8Array.from(ref)), 0);
  const layout = findMessage(st, header, 0x0008);
  if (!layout || layout[0] !== 3) return null;
  const shape = meta.shape as number[];
  const rowBytes = shape.slice(1).reduce((a, b) => a * b, 1) * meta.size;
  if (layout[1] === 1) {
    // Contiguous: one "chunk" of every row.
    const address = u64(layout, 2);
    if (filters.length || address === UNDEFINED_ADDRESS) return null;
    const p = emptyPlan(shape[0] || 1, rowBytes, 1);
    p.address[0] = st.base + address;
    p.stored[0] = shape[0] * rowBytes;
    return p;
  }
  if (layout[1] !== 2) return null;
  const ndims = layout[2];
  const btree = u64(layout, 3);
  const dims: number[] = [];
  for (let i = 0; i < ndims; i++) dims.push(layout.readUInt32LE(11 + 4 * i));
  if (ndims !== shape.length + 1 || dims[ndims - 1] !== meta.size) return null;
  for (let i = 1; i < shape.length; i++) if (dims[i] !== shape[i]) return null;
  const p = emptyPlan(dims[0], rowBytes, Math.ceil(shape[0] / dims[0]));
  if (btree !== UNDEFINED_ADDRESS) walkTree(st, st.base + btree, ndims, p, filters.length > 0, 0);
  return p;
}

function emptyPlan(chunkRows: number, rowBytes: number, nChunks: number): ChunkPlan {
  // The smallest spare that holds nChunks and is at most twice as long (not a large one for a small plan).
  let best = -1;
  for (let i = 0; i < spares.length; i++) {
    const n = spares[i].address.length;
    if (n >= nChunks && n <= 2 * nChunks && (best < 0 || n < spares[best].address.length)) best = i;
  }
  if (best >= 0) {
    const [s] = spares.splice(best, 1);
    directStats.reused++;
    return {
      rowBytes,
      chunkRows,
      address: s.address.subarray(0, nChunks).fill(-1),
      stored: s.stored.subarray(0, nChunks).fill(0),
      deflated: s.deflated.subarray(0, nChunks).fill(0),
    };
  }
  return {
    rowBytes,
    chunkRows,
    address: new Float64Array(nChunks).fill(-1),
    stored: new Float64Array(nChunks),
    deflated: new Uint8Array(nChunks),
  };
}

/**
 * The chunks under a version 1 B-tree node (type 1) into the plan: each key gives the chunk's stored size,
 * filter mask and first element's offsets (the first axis's is its first row), each child its address.
 */
function walkTree(
  st: FileState,
  node: number,
  ndims: number,
  p: ChunkPlan,
  deflate: boolean,
  depth: number,
): void {
  if (depth > 32) throw new Error("B-tree too deep");
  const keyBytes = 8 + 8 * ndims;
  const head = bytes(st, node, 24, nodeBuffer(depth, 24));
  if (head.toString("latin1", 0, 4) !== "TREE" || head[4] !== 1) throw new Error("not a chunk B-tree node");
  const level = head[5], used = head.readUInt16LE(6);
  const n = used * (keyBytes + 8) + keyBytes;
  const b = bytes(st, node + 24, n, nodeBuffer(depth, n));
  for (let i = 0; i < used; i++) {
    const at = i * (keyBytes + 8);
    const child = u64(b, at + keyBytes);
    if (level > 0) {
      walkTree(st, st.base + child, ndims, p, deflate, depth + 1);
      continue;
    }
    const row0 = u64(b, at + 8), k = Math.floor(row0 / p.chunkRows);
    if (k >= p.address.length || row0 % p.chunkRows) continue;
    p.address[k] = st.base + child;
    p.stored[k] = b.readUInt32LE(at);
    p.deflated[k] = deflate && !(b.readUInt32LE(at + 4) & 1) ? 1 : 0;
  }
}

/** The body of the first message of `type` in the object header at `addr` (absolute), or null. */
function findMessage(st: FileState, addr: number, type: number): Buffer | null {
  const pre = bytes(st, addr, 16);
  if (pre.toString("latin1", 0, 4) === "OHDR") {
    if (pre[4] !== 2) return null;
    const flags = pre[5];
    let at = 6 + (flags & 0x20 ? 16 : 0) + (flags & 0x10 ? 4 : 0);
    const head = bytes(st, addr, at + 8);
    const sizeBytes = 1 << (flags & 3);
    let size = 0;
    for (let i = sizeBytes - 1; i >= 0; i--) size = size * 256 + head[at + i];
    at += sizeBytes;
    return scan(st, [[addr + at, size, true]], type, flags & 0x04 ? 2 : 0);
  }
  if (pre[0] !== 1) return null;
  return scan(st, [[addr + 16, pre.readUInt32LE(8), false]], type, 0);
}

/** The message blocks [absolute start, length, version 2], continuation blocks appended as they come. */
function scan(
  st: FileState,
  blocks: [number, number, boolean][],
  type: number,
  orderBytes: number,
): Buffer | null {
  for (let bi = 0; bi < blocks.length && bi < 64; bi++) {
    const [start, length, v2] = blocks[bi];
    const b = bytes(st, start, length);
    let at = 0;
    if (v2 && bi > 0) {
      if (b.toString("latin1", 0, 4) !== "OCHK") return null;
      at = 4;
    }
    const end = v2 ? b.length - (bi > 0 ? 4 : 0) : b.length;
    const headBytes = v2 ? 4 + orderBytes : 8;
    while (at + headBytes <= end) {
      const t = v2 ? b[at] : b.readUInt16LE(at);
      const size = v2 ? b.readUInt16LE(at + 1) : b.readUInt16LE(at + 2);
      const body = at + headBytes;
      if (body + size > b.length) break;
      if (t === type) return b.subarray(body, body + size);
      if (t === 0x0010) blocks.push([st.base + u64(b, body), u64(b, body + 8), v2]);
      at = body + size;
    }
  }
  return null;
}
