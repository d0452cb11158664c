/**
 * The cpu backend's main pass does not read the hot-pixel sample's frames again (issue #14): each module
 * frame is read once, and the results equal those of the path that reads the sample twice.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun } from "../fixtures/synth.ts";
import { hotSampleSize, localise, LocaliseAlgorithm, sampleReuse } from "../src/localise/algorithm.ts";
import type { LocaliseOptions, LocaliseResult } from "../src/localise/result.ts";
import { runAlgorithm } from "../src/framework/algorithm.ts";
import type { FrameBatch } from "../src/exdf/frames.ts";
import type { LocalisePart } from "../src/localise/result.ts";
import { rangesExcept } from "../src/framework/prefetch.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-localise-reuse-"));
let run: string;
const FRAMES = 6 * 24;

/** LocaliseAlgorithm counting the reads of each (module, frame) by both passes. */
class Counting extends LocaliseAlgorithm {
  reads = new Map<string, number>();
  private count(b: FrameBatch) {
    for (const mf of b.modules) {
      for (let f = 0; f < b.nFrames; f++) {
        const k = `${mf.module}:${b.start + f}`;
        this.reads.set(k, (this.reads.get(k) ?? 0) + 1);
      }
    }
  }
  override prepassBatch(b: FrameBatch): Promise<void> {
    this.count(b);
    return super.prepassBatch(b);
  }
  override processBatch(b: FrameBatch): Promise<void> {
    this.count(b);
    return super.processBatch(b);
  }
}

async function localiseCounting(
  reuse: boolean,
  opt: Partial<LocaliseOptions> = {},
): Promise<{ r: LocaliseResult; reads: Map<string, number> }> {
  const algo = new Counting();
  sampleReuse.enabled = reuse;
  try {
    const r = await runAlgorithm<LocalisePart, LocaliseResult>(
      algo,
      run,
      { ...opt, backend: "cpu" } as Record<string, unknown>,
      { workers: 1 },
    );
    return { r, reads: algo.reads };
  } finally {
    sampleReuse.enabled = true;
  }
}

/** What the two paths must agree on: everything but timing (and the functions). */
function outcome(r: LocaliseResult) {
  const p = r.perFrame;
  return {
    frames: r.frames,
    litFrames: r.litFrames,
    modules: r.modules,
    selectedFiles: r.selectedFiles,
    notes: r.notes,
    anomalies: r.anomalies,
    per: {
      trainId: p.trainId,
      pulseId: p.pulseId,
      frameLit: p.frameLit,
      litPixels: p.litPixels,
      litIntensity: p.litIntensity,
      unmaskedPixels: p.unmaskedPixels,
      filteredLit: p.filteredLit,
      asicLit: p.asicLit,
      score: p.score,
      nPeaks: p.nPeaks,
      peaks: p.peaks,
    },
  };
}

beforeAll(async () => {
  run = path.join(tmp, "sfx");
  // 2 modules, 144 frames (a sample of 64 in 4 blocks), hot pixels, a train missing on module 1, a dead ASIC.
  await makeRun(run, {
    seed: 23,
    modules: [0, 1],
    trains: 6,
    framesPerTrain: 24,
    trainsPerFile: 3,
    missingTrains: [{ module: 1, trains: [2] }],
    deadAsics: [{ module: 0, asic: 3, mode: "zero" }],
  });
}, 300_000);

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe("hot-pixel sample read once (cpu backend)", () => {
  test("rangesExcept: the frames outside the skipped ranges, in batches that span none", () => {
    expect(rangesExcept(10, 4, [])).toEqual([[0, 4], [4, 4], [8, 2]]);
    expect(rangesExcept(20, 4, [[2, 3], [12, 2], [3, 4]])).toEqual([[0, 2], [7, 4], [11, 1], [14, 4], [
      18,
      2,
    ]]);
    expect(rangesExcept(8, 4, [[0, 8]])).toEqual([]);
  });

  for (const [name, opt] of [["tiles", { bgBinWidth: 0 }], ["radius bins", { bgBinWidth: 4 }]] as const) {
    test(
      `${name}: every module frame read once; results equal the path reading the sample twice`,
      async () => {
        const once = await localiseCounting(true, opt);
        const twice = await localiseCounting(false, opt);
        try {
          const sampled = hotSampleSize(FRAMES, once.r.params.hotSample);
          expect(sampled).toBe(64);
          // Reusing: each of the 2 x 144 module frames read exactly once.
          expect(once.reads.size).toBe(2 * FRAMES);
          for (const [k, n] of once.reads) expect(n, k).toBe(1);
          // Not reusing: the sample's frames read twice (so the count above can fail).
          expect([...twice.reads.values()].filter((n) => n === 2).length).toBe(2 * sampled);
          expect(once.r.modules.some((m) => m.hotPixels.length > 0)).toBe(true);
          expect(once.r.litFrames).toBeGreaterThan(10);
          expect(outcome(once.r)).toEqual(outcome(twice.r));
        } finally {
          once.r.dispose();
          twice.r.dispose();
        }
      },
      300_000,
    );
  }
});

describe("progress with the sample kept", () => {
  test("reaches every frame when the sample is the whole run (no main-pass batch)", async () => {
    // fixtures/sample: 24 frames a module, all of them the hot-pixel sample.
    const calls: [number, number][] = [];
    const r = await localise("fixtures/sample", { backend: "cpu", workers: 1 }, (d, t) => calls.push([d, t]));
    expect(r.frames).toBeGreaterThan(0);
    expect(calls.length).toBeGreaterThan(0);
    const [done, total] = calls[calls.length - 1];
    expect(total).toBeGreaterThan(0);
    expect(done).toBe(total);
  });
});
