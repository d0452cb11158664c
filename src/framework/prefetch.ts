/**
 * Double-buffered reading: a reader worker fills one of two SharedArrayBuffers with the next batch of
 * aligned frames while the consumer works on the other.
 *
 * Spec:
 * - The reader worker owns the run (its own h5wasm instance) and a FrameReader over the selected modules.
 * - Two shared buffers, each holding one batch (the frames' trainId f64, pulseId f64, cellId i32; every
 *   selected module: data f32, mask u32 when asked, presence u8). Memory is bounded by 2 x the batch size
 *   whatever the run size: the frame IDs come with each batch, not as whole-run arrays.
 * - `batches(ranges)` yields the frame ranges in order; batch k+2 is read into the buffer of batch k only
 *   when the consumer asks for batch k+1 (the consumer is done with batch k then): backpressure.
 */
import type { Worker } from "node:worker_threads";
import type { FrameBatch, FrameIds, FrameOptions, ModuleFrames } from "../exdf/frames.ts";
import { fromWire, type WireError } from "../errors.ts";
import { closeRunFile } from "../exdf/h5.ts";
import type { DetectorModule, RunFile, RunIndex } from "../exdf/run.ts";
import { nextMessage, startWorker } from "./threads.ts";

export interface PrefetchInit {
  runPath: string;
  /** The run as the parent opened it (Run.index): the worker reopens its files only. Default: opens runPath. */
  index?: RunIndex;
  detector?: string;
  options: FrameOptions;
  /** Shared buffers to read into (a fan-in reader's ring, allocated by its first reader); default: own. */
  buffers?: SharedArrayBuffer[];
  /** How many buffers to allocate when none are given (default 2). */
  depth?: number;
}

/** What the reader worker reports after opening the run. */
export interface ReaderInfo {
  nFrames: number;
  framesPerBatch: number;
  pixels: number;
  modules: number[];
  buffers: SharedArrayBuffer[];
}

export type ReaderReply =
  | ({ type: "open" } & ReaderInfo)
  | { type: "read"; buffer: number; start: number; count: number }
  | ({ type: "error" } & WireError);

/**
 * Byte layout of one shared batch buffer: the frames' IDs (trainId, pulseId f64, cellId i32), then per
 * module data, mask, presence (8-byte aligned).
 */
export function bufferLayout(modules: number, frames: number, pixels: number, mask: boolean) {
  const ids = frames * 16 + Math.ceil(frames / 2) * 8;
  const data = frames * pixels * 4;
  const maskBytes = mask ? frames * pixels * 4 : 0;
  const present = Math.ceil(frames / 8) * 8;
  const perModule = data + maskBytes + present;
  return { ids, perModule, total: ids + perModule * modules, data, mask: maskBytes };
}

/** Views of one shared buffer's frame IDs (full capacity). */
export function idViews(buf: SharedArrayBuffer, frames: number): FrameIds {
  return {
    trainId: new Float64Array(buf, 0, frames),
    pulseId: new Float64Array(buf, frames * 8, frames),
    cellId: new Int32Array(buf, frames * 16, frames),
  };
}

/** Views of one shared buffer as ModuleFrames (full capacity). */
export function moduleViews(
  buf: SharedArrayBuffer,
  modules: number[],
  frames: number,
  pixels: number,
  mask: boolean,
): ModuleFrames[] {
  const l = bufferLayout(modules.length, frames, pixels, mask);
  return modules.map((module, i) => {
    const o = l.ids + i * l.perModule;
    return {
      module,
      data: new Float32Array(buf, o, frames * pixels),
      mask: mask ? new Uint32Array(buf, o + l.data, frames * pixels) : undefined,
      present: new Uint8Array(buf, o + l.data + l.mask, frames),
    };
  });
}

/** Consecutive frame ranges [start, count] of at most framesPerBatch frames over nFrames frames. */
export function consecutiveRanges(nFrames: number, framesPerBatch: number): [number, number][] {
  return rangesExcept(nFrames, framesPerBatch, []);
}

/**
 * Batches of at most framesPerBatch consecutive frames, in order, over the frames of [0, nFrames) outside
 * the `skip` ranges ([start, count]); no batch spans a skipped range.
 */
export function rangesExcept(
  nFrames: number,
  framesPerBatch: number,
  skip: [number, number][],
): [number, number][] {
  const out: [number, number][] = [];
  const holes = [...skip].sort((a, b) => a[0] - b[0]);
  let s = 0;
  const fill = (end: number) => {
    for (; s < end; s += Math.min(framesPerBatch, end - s)) out.push([s, Math.min(framesPerBatch, end - s)]);
  };
  for (const [start, count] of holes) {
    fill(Math.min(start, nFrames));
    s = Math.max(s, start + count);
  }
  fill(nFrames);
  return out;
}

/** The batch of frames [start, start + count) held in one shared buffer's views. */
function viewBatch(
  info: ReaderInfo,
  [ids, views]: [FrameIds, ModuleFrames[]],
  start: number,
  count: number,
): FrameBatch {
  const px = info.pixels;
  return {
    start,
    nFrames: count,
    trainId: ids.trainId.subarray(0, count),
    pulseId: ids.pulseId.subarray(0, count),
    cellId: ids.cellId.subarray(0, count),
    modules: views.map((v) => ({
      module: v.module,
      present: v.present.subarray(0, count),
      data: v.data.subarray(0, count * px),
      mask: v.mask?.subarray(0, count * px),
    })),
  };
}

/** A reader worker's reply of the expected type; its error, or another type, thrown. */
function expectReply<T extends ReaderReply["type"]>(
  reply: ReaderReply,
  type: T,
): Extract<ReaderReply, { type: T }> {
  if (reply.type === "error") throw fromWire(reply);
  if (reply.type !== type) throw new Error(`reader worker: unexpected ${reply.type}`);
  return reply as Extract<ReaderReply, { type: T }>;
}

export class PrefetchReader {
  private views: [FrameIds, ModuleFrames[]][];

  private constructor(private worker: Worker, readonly info: ReaderInfo, readonly mask: boolean) {
    this.views = info.buffers.map((b) => [
      idViews(b, info.framesPerBatch),
      moduleViews(b, info.modules, info.framesPerBatch, info.pixels, mask),
    ]);
  }

  /** Start a reader worker now (it loads h5wasm meanwhile); `open` it on a run later. */
  static boot(): Worker {
    return startWorker("read-worker", import.meta.url, undefined);
  }

  static async open(init: PrefetchInit, booted?: Worker): Promise<PrefetchReader> {
    const w = booted ?? PrefetchReader.boot();
    const replied = nextMessage<ReaderReply>(w);
    w.postMessage(init);
    let info;
    try {
      info = expectReply(await replied, "open");
    } catch (e) {
      await w.terminate();
      throw e;
    }
    return new PrefetchReader(w, info, !!init.options.mask);
  }

  get nFrames(): number {
    return this.info.nFrames;
  }

  get framesPerBatch(): number {
    return this.info.framesPerBatch;
  }

  private request(buffer: number, start: number, count: number): Promise<ReaderReply> {
    const p = nextMessage<ReaderReply>(this.worker);
    this.worker.postMessage({ type: "read", buffer, start, count });
    return p;
  }

  /** The batches of the given frame ranges ([start, count], count <= framesPerBatch), in order. */
  async *batches(ranges: [number, number][]): AsyncGenerator<FrameBatch> {
    const pending: (Promise<ReaderReply> | undefined)[] = [undefined, undefined];
    // One request in flight at a time on the worker (it reads sequentially); the second buffer is queued.
    let chain: Promise<unknown> = Promise.resolve();
    const ask = (k: number) => {
      const [start, count] = ranges[k];
      const p = chain.then(() => this.request(k % 2, start, count));
      chain = p.catch(() => undefined);
      pending[k % 2] = p;
    };
    if (ranges.length > 0) ask(0);
    if (ranges.length > 1) ask(1);
    for (let k = 0; k < ranges.length; k++) {
      const { start, count } = expectReply(await pending[k % 2]!, "read");
      yield viewBatch(this.info, this.views[k % 2], start, count);
      // The consumer is done with batch k: its buffer takes batch k + 2.
      if (k + 2 < ranges.length) ask(k + 2);
    }
  }

  /** Consecutive batches over all frames. */
  all(): AsyncGenerator<FrameBatch> {
    return this.batches(consecutiveRanges(this.nFrames, this.framesPerBatch));
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}

/**
 * N readers feeding one consumer (one GPU device): every reader worker aligns the frames of all the
 * selected modules (the same alignment), and each batch is read by all of them at once, reader r filling
 * frames [r * F / N, (r + 1) * F / N) of the batch into one ring of `depth` shared buffers. Batches come in
 * run order, `depth` of them in flight (being read, or held by the consumer): memory is depth x the batch
 * whatever N. Batch k + depth is read into the buffer of batch k once the consumer asks for batch k + 1.
 */
export class FanInReader {
  private views: [FrameIds, ModuleFrames[]][];
  /** Per worker: the last request (one at a time per worker; its replies come in order). */
  private chains: Promise<unknown>[];

  private constructor(private workers: Worker[], readonly info: ReaderInfo, readonly mask: boolean) {
    this.views = info.buffers.map((b) => [
      idViews(b, info.framesPerBatch),
      moduleViews(b, info.modules, info.framesPerBatch, info.pixels, mask),
    ]);
    this.chains = workers.map(() => Promise.resolve());
  }

  static async open(init: PrefetchInit, readers: number, depth = 3): Promise<FanInReader> {
    const workers = Array.from({ length: Math.max(1, readers) }, () => PrefetchReader.boot());
    const openOne = async (w: Worker, i: PrefetchInit): Promise<ReaderInfo> => {
      const replied = nextMessage<ReaderReply>(w);
      w.postMessage(i);
      return expectReply(await replied, "open");
    };
    try {
      const first = await openOne(workers[0], { ...init, depth });
      await Promise.all(workers.slice(1).map((w) => openOne(w, { ...init, buffers: first.buffers })));
      return new FanInReader(workers, first, !!init.options.mask);
    } catch (e) {
      await Promise.all(workers.map((w) => w.terminate()));
      throw e;
    }
  }

  get nFrames(): number {
    return this.info.nFrames;
  }

  get framesPerBatch(): number {
    return this.info.framesPerBatch;
  }

  get readers(): number {
    return this.workers.length;
  }

  /** Read frames [start, start + count) into buffer `buffer`: every reader its share. */
  private request(buffer: number, start: number, count: number): Promise<void> {
    const n = this.workers.length;
    return Promise.all(this.workers.map((w, r) => {
      const a = Math.floor((r * count) / n), b = Math.floor(((r + 1) * count) / n);
      if (b === a) return Promise.resolve();
      const p = this.chains[r].then(async () => {
        const replied = nextMessage<ReaderReply>(w);
        w.postMessage({ type: "read", buffer, start: start + a, count: b - a, at: a });
        expectReply(await replied, "read");
      });
      this.chains[r] = p.catch(() => undefined);
      return p;
    })).then(() => undefined);
  }

  /** The batches of the given frame ranges ([start, count], count <= framesPerBatch), in order. */
  async *batches(ranges: [number, number][]): AsyncGenerator<FrameBatch> {
    const depth = this.info.buffers.length;
    const pending: Promise<void>[] = [];
    const ask = (k: number) => {
      pending[k % depth] = this.request(k % depth, ranges[k][0], ranges[k][1]);
      pending[k % depth].catch(() => undefined); // awaited below; no unhandled rejection meanwhile
    };
    for (let k = 0; k < Math.min(depth, ranges.length); k++) ask(k);
    for (let k = 0; k < ranges.length; k++) {
      await pending[k % depth];
      yield viewBatch(this.info, this.views[k % depth], ranges[k][0], ranges[k][1]);
      // The consumer is done with batch k: its buffer takes batch k + depth.
      if (k + depth < ranges.length) ask(k + depth);
    }
  }

  /** Consecutive batches over all frames. */
  all(): AsyncGenerator<FrameBatch> {
    return this.batches(consecutiveRanges(this.nFrames, this.framesPerBatch));
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** Module frames read from one file before it is closed (its metadata cache emptied; reopened when read). */
export const REOPEN_FRAMES = 1024;

/**
 * Counts the module frames read from each file and closes a file once REOPEN_FRAMES were read from it, or
 * once a batch read nothing from it after earlier ones did (reading moved on; h5.ts opens it again if it
 * is read again): what the files' caches hold does not add up over the run's sequence files.
 */
export class FileRecycler {
  /** Frames read since the file was last opened, per file. */
  readonly sinceOpen = new Map<RunFile, number>();
  closed = 0;
  constructor(private modules: DetectorModule[], private limit = REOPEN_FRAMES) {}

  /** After a batch: count its frames per file (by train ID), close the files past the limit. */
  afterBatch(trainId: Float64Array, present: Uint8Array[]): void {
    const touched = new Set<RunFile>();
    this.modules.forEach((m, mi) => {
      for (const mf of m.files) {
        const ids = mf.file.trainIds;
        if (!ids.length) continue;
        let lo = Infinity, hi = -Infinity;
        for (const t of ids) (lo = Math.min(lo, t)), (hi = Math.max(hi, t));
        let n = 0;
        for (let i = 0; i < trainId.length; i++) {
          if (present[mi][i] && trainId[i] >= lo && trainId[i] <= hi) n++;
        }
        if (n) {
          this.sinceOpen.set(mf.file, (this.sinceOpen.get(mf.file) ?? 0) + n);
          touched.add(mf.file);
        }
      }
    });
    for (const [f, n] of this.sinceOpen) {
      // A file read from since its open but not in this batch (reading moved on to the next sequence file,
      // or the pre-pass jumped): closed too, so that the caches of the files behind do not add up over a
      // long run.
      if (n < this.limit && (n === 0 || touched.has(f))) continue;
      closeRunFile(f.path);
      this.sinceOpen.set(f, 0);
      this.closed++;
    }
  }
}
