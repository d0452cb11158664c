/**
 * The read ceiling of the framework: an algorithm that reads every frame (data and mask) of the selected
 * modules through the same driver, threads and readers as localise (src/framework/algorithm.ts) and computes
 * nothing. bench/run.ts runs it with 1 and N workers.
 */
import type { Algorithm, RunInfo } from "../src/framework/algorithm.ts";
import type { FrameBatch } from "../src/exdf/frames.ts";

export interface ReadOnlyPart {
  moduleFrames: number;
}

export class ReadOnlyAlgorithm implements Algorithm<ReadOnlyPart, ReadOnlyPart> {
  readonly id = "read-only";
  readonly source = { module: import.meta.url, name: "ReadOnlyAlgorithm" };
  readonly help = "reads every frame, computes nothing (the bench's read ceiling)";
  readonly options = [];
  private mask = true;
  private batchBytes = 128 * 2 ** 20;
  private moduleFrames = 0;

  configure(options: Record<string, unknown>): void {
    if (typeof options.mask === "boolean") this.mask = options.mask;
    if (typeof options.batchBytes === "number") this.batchBytes = options.batchBytes;
  }

  initialize(_info: RunInfo) {
    return { mask: this.mask, batchBytes: this.batchBytes };
  }

  processBatch(b: FrameBatch): void {
    for (const mf of b.modules) for (let i = 0; i < b.nFrames; i++) this.moduleFrames += mf.present[i];
  }

  finalizeChunk(): ReadOnlyPart {
    return { moduleFrames: this.moduleFrames };
  }

  finalize(parts: ReadOnlyPart[]): ReadOnlyPart {
    return { moduleFrames: parts.reduce((a, p) => a + p.moduleFrames, 0) };
  }

  writeOutput(): Promise<void> {
    return Promise.resolve();
  }
}
