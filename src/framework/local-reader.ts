/**
 * Reading in the consumer's own thread: the batches of a FrameReader over the run the consumer already has
 * open, no reader worker. The module groups of `workers` > 1 read this way (src/framework/algorithm.ts):
 * their threads already keep the cores busy, one reading while another computes, and a reader worker per
 * group would cost a thread, a second h5wasm instance and a second open of the run each, for no gain when
 * reading is CPU-bound (files in the page cache). Same batches and the same memory bound (FrameReader's two
 * batch buffers) as PrefetchReader; files are closed as the reader worker does (FileRecycler), so the wasm
 * heap stays bounded. (Decoding straight into buffers on the wasm heap, without FrameReader's copy, was tried:
 * no gain on the SFX run, 10 % more CPU on an uncompressed one.)
 */
import type { FrameBatch, FrameOptions } from "../exdf/frames.ts";
import { FrameReader } from "../exdf/frames.ts";
import type { Detector } from "../exdf/run.ts";
import { FileRecycler } from "./prefetch.ts";

export class LocalReader {
  private constructor(private reader: FrameReader, private recycler: FileRecycler) {}

  static open(det: Detector, options: FrameOptions): LocalReader {
    const reader = new FrameReader(det, options);
    return new LocalReader(reader, new FileRecycler(reader.modules));
  }

  get nFrames(): number {
    return this.reader.nFrames;
  }

  get framesPerBatch(): number {
    return this.reader.framesPerBatch;
  }

  /** The batches of the given frame ranges ([start, count], count <= framesPerBatch), in order. */
  async *batches(ranges: [number, number][]): AsyncGenerator<FrameBatch> {
    for (const [start, count] of ranges) {
      const b = this.reader.read(start, count);
      // This thread's event loop runs between batches (the messages of the other groups' workers).
      await new Promise((r) => setImmediate(r));
      yield b;
      // The consumer is done with the batch: its files may be reopened now.
      this.recycler.afterBatch(b.trainId, b.modules.map((mf) => mf.present));
    }
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
