/**
 * Spill files: per-frame results of a part appended to a file instead of memory, read back sequentially
 * when the parts are merged and written, so that memory stays bounded by the batch size whatever the run
 * length.
 *
 * Where: `$XFEL_REDU_SPILL_DIR` (the SLURM task scripts set it to the job's work directory, which the merge
 * job sees too), else the system's temporary directory. A file being written is removed by the process
 * cleanup on error or signal (src/app/cleanup.ts; those of worker threads by the main thread's
 * `removeSpillsIfStopped`); once closed it belongs to whoever merges it, which
 * removes it after writing (`removeSpill`) and tracks it meanwhile. The SLURM merge (`merge-parts`) runs
 * inside `keepSpills(WORK)`: the spill files in the job's work directory (where the task scripts put them)
 * are outputs of the part tasks, kept with the part files, neither removed after writing nor on error, so
 * that the merge can be rerun and gives the same output.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { track } from "../app/cleanup.ts";

let counter = 0;

/** Where spill files go: `$XFEL_REDU_SPILL_DIR`, else the system's temporary directory. */
function spillDir(): string {
  return process.env.XFEL_REDU_SPILL_DIR || os.tmpdir();
}

/** A spill file's name: `.xfel-redu-<label>-<pid>-<counter>-<uuid>.spill`; group 1 is the pid. */
const SPILL_NAME =
  /^\.xfel-redu-.+-(\d+)-\d+-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.spill$/;

/**
 * From the start of a run's parts (src/framework/algorithm.ts `runAlgorithm`, main thread) until they are all
 * complete: when the process ends meanwhile (SIGINT, SIGTERM, SIGHUP, or its exit after a part failed),
 * remove every spill file this process named in the spill directory. A worker thread's own cleanup does not
 * run then (the main thread's handler ends the process, or terminates the workers after a failure), and a
 * part's closed files belong to no one until the merge takes them, so they were left in the temporary
 * directory. Returns the function that ends the watch (the parts are complete: the merge owns their files).
 * A failed run's watch stays until the process ends: spill files are per process, never kept past it but by
 * SLURM part tasks, which end after one run.
 */
export function removeSpillsIfStopped(): () => void {
  const dir = spillDir();
  const c = {
    abort: () => {
      let names: string[] = [];
      try {
        names = fs.readdirSync(dir);
      } catch {
        return;
      }
      for (const n of names) {
        const m = SPILL_NAME.exec(n);
        if (m && Number(m[1]) === process.pid) fs.rmSync(path.join(dir, n), { force: true });
      }
    },
  };
  track(c, true);
  return () => track(c, false);
}

export class SpillWriter {
  readonly path: string;
  private fd: number;
  private cleanup: { abort: () => void };
  records = 0;

  constructor(readonly recordBytes: number, label: string) {
    const dir = spillDir();
    // Unique across processes and the worker threads of one process (each has its own counter).
    this.path = path.join(
      dir,
      `.xfel-redu-${label}-${process.pid}-${counter++}-${crypto.randomUUID()}.spill`,
    );
    this.fd = fs.openSync(this.path, "w");
    this.cleanup = { abort: () => fs.rmSync(this.path, { force: true }) };
    track(this.cleanup, true);
  }

  /** Append whole records (a multiple of recordBytes). */
  append(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.length) off += fs.writeSync(this.fd, bytes, off, bytes.length - off);
    this.records += bytes.length / this.recordBytes;
  }

  /** Close; the file now belongs to the merge. */
  close(): string {
    fs.closeSync(this.fd);
    track(this.cleanup, false);
    return this.path;
  }
}

/** Reads a spill file's records in order. */
export class SpillReader {
  private fd: number;
  private pos = 0;
  constructor(readonly path: string, readonly recordBytes: number) {
    this.fd = fs.openSync(path, "r");
  }
  /** The next n records, in a new buffer. */
  read(n: number): Uint8Array {
    return this.readInto(new Uint8Array(n * this.recordBytes));
  }
  /** The next out.length bytes (whole records), into out. */
  readInto(out: Uint8Array): Uint8Array {
    let got = 0;
    while (got < out.length) {
      const k = fs.readSync(this.fd, out, got, out.length - got, this.pos + got);
      if (k === 0) throw new Error(`${this.path}: spill file ends early`);
      got += k;
    }
    this.pos += out.length;
    return out;
  }
  close(): void {
    fs.closeSync(this.fd);
  }
}

/** Track closed spill files (removed on error or signal) until `removeSpill`. */
const owned = new Map<string, { abort: () => void }>();

/** Inside `keepSpills(dir, ...)`: spill files in these directories are left where they are. */
const kept: string[] = [];
const isKept = (p: string) => kept.some((d) => path.dirname(path.resolve(p)) === d);

/**
 * Run f with the spill files in `dir` kept: neither removed after writing nor on error (they are the
 * outputs of the SLURM part tasks, in the job's work directory). Spill files elsewhere behave as usual.
 */
export async function keepSpills<T>(dir: string, f: () => Promise<T>): Promise<T> {
  const d = path.resolve(dir);
  kept.push(d);
  try {
    return await f();
  } finally {
    kept.splice(kept.lastIndexOf(d), 1);
  }
}

export function ownSpill(p: string): void {
  if (isKept(p) || owned.has(p)) return;
  const c = { abort: () => fs.rmSync(p, { force: true }) };
  owned.set(p, c);
  track(c, true);
}

export function removeSpill(p: string): void {
  if (isKept(p)) return;
  fs.rmSync(p, { force: true });
  const c = owned.get(p);
  if (c) {
    track(c, false);
    owned.delete(p);
  }
}

/** Bytes of a frame's ids in an id spill file: trainId, pulseId as float64. */
export const ID_BYTES = 16;

/** A part's frames as the merge reads them: their ids in an id spill file, sorted by trainId then pulseId. */
export interface IdSpill {
  /** The id spill file. */
  ids: string;
  /** How many frames it holds. */
  frames: number;
}

/**
 * The ids of a part's frames appended to an id spill file as they come (in the order of the part's records),
 * instead of 16 bytes a frame in memory: every part of a run holds every frame (frames are aligned across
 * modules), ~2 million for a 10-minute AGIPD run.
 */
export class IdWriter {
  private spill?: SpillWriter;
  frames = 0;
  constructor(private label: string) {}
  append(trainId: ArrayLike<number>, pulseId: ArrayLike<number>): void {
    const n = trainId.length;
    if (!n) return;
    const d = new Float64Array(2 * n);
    for (let i = 0; i < n; i++) {
      d[2 * i] = trainId[i];
      d[2 * i + 1] = pulseId[i];
    }
    this.spill ??= new SpillWriter(ID_BYTES, this.label);
    this.spill.append(new Uint8Array(d.buffer));
    this.frames += n;
  }
  /** Close (an empty file where no frame came); the file now belongs to the merge. */
  close(): IdSpill {
    this.spill ??= new SpillWriter(ID_BYTES, this.label);
    return { ids: this.spill.close(), frames: this.frames };
  }
}

/** Frames of an id spill file read at a time (64 kB): a merge holds one such buffer per part. */
const ID_BLOCK = 4096;

/**
 * An id spill file read in order, one frame at a time through a reused buffer: `trainId`, `pulseId` of the
 * current frame while `more`; `next()` moves on.
 */
export class IdCursor {
  private reader: SpillReader;
  private left: number;
  private buf = new Float64Array(0);
  private n = 0;
  private at = 0;
  trainId = NaN;
  pulseId = NaN;
  more = true;
  constructor(part: IdSpill) {
    this.reader = new SpillReader(part.ids, ID_BYTES);
    this.left = part.frames;
    this.next();
  }
  next(): void {
    if (++this.at >= this.n) {
      const k = Math.min(this.left, ID_BLOCK);
      if (k === 0) {
        this.more = false;
        this.trainId = this.pulseId = NaN;
        return;
      }
      if (this.buf.length < 2 * k) this.buf = new Float64Array(2 * k);
      this.reader.readInto(new Uint8Array(this.buf.buffer, 0, k * ID_BYTES));
      this.left -= k;
      this.n = k;
      this.at = 0;
    }
    this.trainId = this.buf[2 * this.at];
    this.pulseId = this.buf[2 * this.at + 1];
  }
  private places = new Int32Array(0);
  /**
   * This part's frames among merged frames [f0, f1), the cursor moved past them: their places f - f0, in
   * order (a view valid until the next call). `merged` is the union of the parts' frames, sorted (mergeIds),
   * and the cursor at its first frame not before f0: blocks taken in order.
   */
  within(merged: { trainId: Float64Array; pulseId: Float64Array }, f0: number, f1: number): Int32Array {
    if (this.places.length < f1 - f0) this.places = new Int32Array(f1 - f0);
    let n = 0;
    for (let f = f0; f < f1 && this.more; f++) {
      // The part's frames are a sorted subset of the merged ones: its next frame is f or a later one.
      while (this.more && this.trainId === merged.trainId[f] && this.pulseId === merged.pulseId[f]) {
        if (n === this.places.length) {
          const grown = new Int32Array(2 * n);
          grown.set(this.places);
          this.places = grown;
        }
        this.places[n++] = f - f0;
        this.next();
      }
    }
    return this.places.subarray(0, n);
  }
  close(): void {
    this.reader.close();
  }
}

/**
 * The union of the parts' frames, sorted by trainId then pulseId (each part's ids are), streamed from their id
 * spill files: `trainId`, `pulseId` of the current merged frame while `more`; `next()` moves on. Memory: one
 * IdCursor buffer per part, nothing per frame; every pass over the merged frames makes a new one.
 */
export class MergedIds {
  private cur: IdCursor[];
  trainId = NaN;
  pulseId = NaN;
  more = true;
  constructor(parts: IdSpill[]) {
    this.cur = parts.map((p) => new IdCursor(p));
    this.pick();
  }
  /** The smallest (trainId, pulseId) the parts' cursors are at: the current merged frame. */
  private pick(): void {
    let bt = Infinity, bp = Infinity;
    for (const c of this.cur) {
      if (c.more && (c.trainId < bt || (c.trainId === bt && c.pulseId < bp))) {
        bt = c.trainId;
        bp = c.pulseId;
      }
    }
    this.more = bt !== Infinity;
    this.trainId = this.more ? bt : NaN;
    this.pulseId = this.more ? bp : NaN;
  }
  next(): void {
    const bt = this.trainId, bp = this.pulseId;
    for (const c of this.cur) while (c.more && c.trainId === bt && c.pulseId === bp) c.next();
    this.pick();
  }
  /** The next (up to) n merged frames' ids into trainId[0, k), pulseId[0, k): k. */
  take(n: number, trainId: Float64Array, pulseId: Float64Array): number {
    let k = 0;
    for (; k < n && this.more; k++, this.next()) {
      trainId[k] = this.trainId;
      pulseId[k] = this.pulseId;
    }
    return k;
  }
  close(): void {
    for (const c of this.cur) c.close();
  }
}

/**
 * The parts' merged frames in the blocks [f0, f1) of `bounds` (from frame 0, increasing), in order: each
 * block's ids (in `into`'s buffers, reused from block to block, when given; else fresh arrays) and, per
 * part, the block's frames it holds (`within(pi)`: their places f - f0 in order, IdCursor.within; asked
 * once per part and block, the part's records being the next ones of its files).
 */
export function* mergedBlocks(
  parts: IdSpill[],
  bounds: number[],
  into?: { trainId: Float64Array; pulseId: Float64Array },
): Generator<{
  f0: number;
  f1: number;
  ids: { trainId: Float64Array; pulseId: Float64Array };
  within(pi: number): Int32Array;
}> {
  if (bounds[0] !== 0) throw new Error(`merged frames: blocks start at frame 0, not ${bounds[0]}`);
  const cursors = parts.map((p) => new IdCursor(p));
  const merged = new MergedIds(parts);
  try {
    for (let b = 0; b + 1 < bounds.length; b++) {
      const f0 = bounds[b], f1 = bounds[b + 1], n = f1 - f0;
      const ids = into
        ? { trainId: into.trainId.subarray(0, n), pulseId: into.pulseId.subarray(0, n) }
        : { trainId: new Float64Array(n), pulseId: new Float64Array(n) };
      if (merged.take(n, ids.trainId, ids.pulseId) < n) {
        throw new Error(`merged frames: block ${f0}-${f1} past the last frame`);
      }
      yield { f0, f1, ids, within: (pi) => cursors[pi].within(ids, 0, n) };
    }
  } finally {
    for (const c of cursors) c.close();
    merged.close();
  }
}

/** Per train, in train order: its trainId and frames. */
export interface TrainFrames {
  trainId: number[];
  frames: number[];
}

/**
 * One pass over the merged frames (`MergedIds`): how many, and the frames of each train; `each` sees every
 * merged frame's trainId in order. Memory: per train, nothing per frame.
 */
export function countMerged(
  parts: IdSpill[],
  each?: (trainId: number) => void,
): { frames: number; trains: TrainFrames } {
  const trains: TrainFrames = { trainId: [], frames: [] };
  let frames = 0;
  const m = new MergedIds(parts);
  try {
    for (; m.more; m.next(), frames++) {
      const k = trains.trainId.length - 1;
      if (k >= 0 && trains.trainId[k] === m.trainId) trains.frames[k]++;
      else {
        trains.trainId.push(m.trainId);
        trains.frames.push(1);
      }
      each?.(m.trainId);
    }
  } finally {
    m.close();
  }
  return { frames, trains };
}

/**
 * The union of the parts' frames as whole-run arrays (the roi and azint results' `trainId`, `pulseId` on first
 * access: tests; the merges stream `MergedIds`): one pass counts the merged frames, a second fills their ids.
 * Memory: the result, 16 bytes a merged frame.
 */
export function mergeIds(parts: IdSpill[]): { trainId: Float64Array; pulseId: Float64Array } {
  const pass = (trainId?: Float64Array, pulseId?: Float64Array): number => {
    const m = new MergedIds(parts);
    let n = 0;
    try {
      for (; m.more; m.next(), n++) {
        if (trainId && pulseId) {
          trainId[n] = m.trainId;
          pulseId[n] = m.pulseId;
        }
      }
    } finally {
      m.close();
    }
    return n;
  };
  const n = pass();
  const trainId = new Float64Array(n), pulseId = new Float64Array(n);
  pass(trainId, pulseId);
  return { trainId, pulseId };
}
