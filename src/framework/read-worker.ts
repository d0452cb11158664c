/**
 * The reader worker of PrefetchReader: opens the run (its files, from the parent's index), aligns the frames
 * of the selected modules (window by window of trains: FrameReader), and reads the requested frame ranges,
 * their IDs included, into the shared batch buffers.
 *
 * Memory: HDF5 keeps the chunk-index nodes it has visited in each open file's metadata cache (on the wasm
 * heap, which never shrinks): ~600 bytes per 1-frame chunk read, so a run read through grows the heap by
 * ~40 MB per 250-train AGIPD sequence file of 64 frames/train (data + mask). `FileRecycler` closes a file
 * after every REOPEN_FRAMES module frames read from it, and once reading moved past it
 * (src/framework/prefetch.ts), which empties its cache; a thread holds at most OPEN_FILES files open
 * (src/exdf/h5.ts): the heap stays bounded whatever the run length (measured: bench/RESULTS.md).
 */
import { parentPort } from "node:worker_threads";
import { toWire } from "../errors.ts";
import { h5 } from "../exdf/h5.ts";
import { FrameReader } from "../exdf/frames.ts";
import { Run } from "../exdf/run.ts";
import {
  bufferLayout,
  FileRecycler,
  idViews,
  moduleViews,
  type PrefetchInit,
  type ReaderReply,
} from "./prefetch.ts";

const port = parentPort!;
// Load h5wasm while the parent prepares; the run to read comes with the first message.
const ready = h5();
const init = await new Promise<PrefetchInit>((resolve) => port.once("message", resolve));

function fail(e: unknown): void {
  port.postMessage({ type: "error", ...toWire(e) } satisfies ReaderReply);
}

try {
  await ready;
  const run = init.index ? await Run.fromIndex(init.index) : await Run.open(init.runPath);
  const reader = new FrameReader(run.detector(init.detector), init.options);
  const mask = !!init.options.mask;
  const modules = reader.modules.map((m) => m.module);
  const layout = bufferLayout(modules.length, reader.framesPerBatch, reader.pixels, mask);
  // Buffers of a fan-in reader's ring are shared by all its readers (given); else this reader's own.
  const buffers = init.buffers ??
    Array.from({ length: init.depth ?? 2 }, () => new SharedArrayBuffer(layout.total));
  if (buffers.some((b) => b.byteLength < layout.total)) {
    throw new Error("reader worker: shared buffer too small");
  }
  const views = buffers.map((b) => moduleViews(b, modules, reader.framesPerBatch, reader.pixels, mask));
  const ids = buffers.map((b) => idViews(b, reader.framesPerBatch));
  const recycler = new FileRecycler(reader.modules);
  const open: ReaderReply = {
    type: "open",
    nFrames: reader.nFrames,
    framesPerBatch: reader.framesPerBatch,
    pixels: reader.pixels,
    modules,
    buffers,
  };
  port.postMessage(open);
  const px = reader.pixels;
  port.on("message", (m: { type: "read"; buffer: number; start: number; count: number; at?: number }) => {
    try {
      // `at`: the first frame slot of the buffer to fill (a fan-in reader's share of one batch).
      const at = m.at ?? 0;
      const into = at === 0 ? views[m.buffer] : views[m.buffer].map((v) => ({
        module: v.module,
        present: v.present.subarray(at),
        data: v.data.subarray(at * px),
        mask: v.mask?.subarray(at * px),
      }));
      const id = ids[m.buffer];
      const b = reader.readInto(m.start, m.count, into, {
        trainId: id.trainId.subarray(at),
        pulseId: id.pulseId.subarray(at),
        cellId: id.cellId.subarray(at),
      });
      recycler.afterBatch(b.trainId, b.modules.map((mf) => mf.present));
      port.postMessage(
        { type: "read", buffer: m.buffer, start: m.start, count: b.nFrames } satisfies ReaderReply,
      );
    } catch (e) {
      fail(e);
    }
  });
} catch (e) {
  fail(e);
}
