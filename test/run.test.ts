/**
 * The run reader and the aligned frame iterator on synthetic runs of every layout variant: what is read
 * must equal what the files hold (checked with h5wasm's own high-level slice, not the fast path under test),
 * and frames must be aligned on (trainId, pulseId) when modules miss trains or record fewer frames.
 */
import { afterAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun, type SynthOptions, type Truth } from "../fixtures/synth.ts";
import { FrameReader } from "../src/exdf/frames.ts";
import { type H5Dataset, OPEN_FILES } from "../src/exdf/h5.ts";
import { Run } from "../src/exdf/run.ts";
import { geometry } from "../src/exdf/detectors.ts";
import { directStats } from "../src/exdf/chunks.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-run-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let n = 0;
async function synth(opts: Partial<SynthOptions>): Promise<{ dir: string; truth: Truth }> {
  const dir = path.join(tmp, `run${n++}`);
  const truth = await makeRun(dir, {
    trains: 3,
    framesPerTrain: 4,
    modules: [0, 1],
    trainsPerFile: 2,
    ...opts,
  });
  return { dir, truth };
}

/** One module frame as the file holds it, through h5wasm's high-level slice. */
function sliceFrame(run: Run, moduleNo: number, trainId: number, pulseId: number): Float32Array | undefined {
  const det = run.detector();
  const mod = det.modules.find((m) => m.module === moduleNo)!;
  const [ss, fs_] = det.imageShape;
  for (const mf of mod.files) {
    const h5 = mf.file.h5;
    if (det.cellsPerEntry > 1) {
      const tids = (h5.get(`${mf.groupPath}/trainId`) as H5Dataset).value as BigUint64Array;
      const row = Array.from(tids, Number).indexOf(trainId);
      if (row < 0) continue;
      const v = (h5.get(mf.dataPath) as H5Dataset).slice([[row, row + 1], [
        pulseId,
        pulseId + 1,
      ]]) as ArrayLike<number>;
      return Float32Array.from(v);
    }
    const tids = Array.from(
      (h5.get(`${mf.groupPath}/trainId`) as H5Dataset).value as ArrayLike<bigint>,
      Number,
    );
    const pids = Array.from(
      (h5.get(`${mf.groupPath}/pulseId`) as H5Dataset).value as ArrayLike<bigint>,
      Number,
    );
    for (let r = 0; r < Math.min(tids.length, mf.rows); r++) {
      if (tids[r] !== trainId || pids[r] !== pulseId) continue;
      const ds = h5.get(mf.dataPath) as H5Dataset;
      const sel: [number, number][] = [[r, r + 1]];
      if (det.entryShape.length === 3) sel.push([0, 1]);
      const v = ds.slice(sel) as ArrayLike<number>;
      expect(v.length).toBe(ss * fs_);
      return Float32Array.from(v);
    }
  }
  return undefined;
}

function checkAllFrames(run: Run, batchBytes?: number, windowFrames?: number): number {
  const det = run.detector();
  const reader = new FrameReader(det, { batchBytes, mask: !det.raw, windowFrames });
  const px = reader.pixels;
  let checked = 0;
  for (const b of reader.batches()) {
    for (let i = 0; i < b.nFrames; i++) {
      b.modules.forEach((mf) => {
        const want = sliceFrame(run, mf.module, b.trainId[i], b.pulseId[i]);
        expect(mf.present[i]).toBe(want ? 1 : 0);
        const got = mf.data.subarray(i * px, (i + 1) * px);
        if (want) {
          // NaN-aware equality, element by element.
          for (let k = 0; k < px; k += 97) {
            expect(Object.is(got[k], want[k]) || got[k] === want[k]).toBe(true);
          }
          expect(Array.from(got.subarray(0, 64))).toEqual(Array.from(want.subarray(0, 64)));
        } else {
          expect(Number.isNaN(got[0])).toBe(true);
        }
        checked++;
      });
    }
  }
  return checked;
}

const variants: [string, Partial<SynthOptions>][] = [
  ["AGIPD RAW 1.2", { detector: "AGIPD", level: "raw" }],
  ["AGIPD CORR 1.2 newer naming with legacy link", {
    detector: "AGIPD",
    level: "corr",
    naming: "output",
    legacyLink: true,
  }],
  ["AGIPD CORR 1.0 xtdf naming", { detector: "AGIPD", level: "corr", naming: "xtdf", format: "1.0" }],
  ["AGIPD CORR 0.5 legacy index", {
    detector: "AGIPD",
    level: "corr",
    naming: "xtdf",
    format: "0.5",
    legacyIndex: true,
  }],
  ["LPD RAW", { detector: "LPD", level: "raw" }],
  ["LPD CORR", { detector: "LPD", level: "corr" }],
  ["DSSC RAW", { detector: "DSSC", level: "raw" }],
  ["DSSC CORR", { detector: "DSSC", level: "corr" }],
  ["JUNGFRAU RAW", { detector: "JUNGFRAU", level: "raw", framesPerTrain: 2, modules: [1, 2] }],
  ["JUNGFRAU CORR", { detector: "JUNGFRAU", level: "corr", framesPerTrain: 2, modules: [1, 2] }],
];

describe("layout variants", () => {
  for (const [name, opts] of variants) {
    test(name, async () => {
      const { dir, truth } = await synth(opts);
      const run = await Run.open(dir);
      try {
        expect(run.trainIds).toEqual(truth.trains);
        expect(run.detectors).toHaveLength(1);
        const det = run.detector();
        const g = geometry(truth.options.detector);
        expect(det.type).toBe(truth.options.detector);
        expect(det.name).toBe(truth.options.detectorName);
        expect(det.raw).toBe(truth.options.level === "raw");
        expect(det.modules.map((m) => m.module)).toEqual(truth.options.modules);
        expect(det.imageShape).toEqual([g.moduleSs, g.moduleFs]);
        for (const m of det.modules) {
          expect(m.frames).toBe(truth.frames.filter((f) => f.modules.includes(m.module)).length);
        }
        const reader = new FrameReader(det);
        expect(reader.nFrames).toBe(truth.frames.length);
        expect(Array.from(reader.frameIds.trainId)).toEqual(truth.frames.map((f) => f.trainId));
        // JUNGFRAU frames have no pulse ID in the data: the memory-cell slot within the train stands for it.
        const jf = truth.options.detector === "JUNGFRAU";
        expect(Array.from(reader.frameIds.pulseId)).toEqual(
          truth.frames.map((f) => (jf ? f.frame : f.pulseId)),
        );
        expect(checkAllFrames(run)).toBe(truth.frames.length * truth.options.modules.length);
        // The frame table streamed one train at a time (a window per train): the same frames.
        const one = new FrameReader(det, { windowFrames: 1 });
        expect(one.tableBytes.windows).toBe(truth.trains.length);
        expect(Array.from(one.frameIds.trainId)).toEqual(truth.frames.map((f) => f.trainId));
        expect(Array.from(one.frameIds.pulseId)).toEqual(Array.from(reader.frameIds.pulseId));
        expect(Array.from(one.frameIds.cellId)).toEqual(Array.from(reader.frameIds.cellId));
      } finally {
        run.close();
      }
    });
  }
});

describe("alignment", () => {
  test("a module missing a train and a module recording fewer frames: marked absent, never shifted", async () => {
    const { dir, truth } = await synth({
      trains: 4,
      framesPerTrain: 5,
      modules: [0, 1, 3],
      missingTrains: [{ module: 1, trains: [1, 2] }],
      shortFrames: [{ module: 3, train: 2, frames: 2 }],
    });
    const run = await Run.open(dir);
    try {
      const det = run.detector();
      const reader = new FrameReader(det);
      expect(reader.nFrames).toBe(truth.frames.length);
      const presence = reader.presence();
      det.modules.forEach((m, mi) => {
        const want = truth.frames.map((f) => (f.modules.includes(m.module) ? 1 : 0));
        expect(Array.from(presence[mi])).toEqual(want);
      });
      expect(presence[1].reduce((a, b) => a + b, 0)).toBe(10);
      expect(presence[2].reduce((a, b) => a + b, 0)).toBe(17);
      // Small batches (3 frames) cross train boundaries and absent runs; data must match frame by frame.
      expect(checkAllFrames(run, 3 * 512 * 128 * 8)).toBe(truth.frames.length * 3);
      // Windows of one train (batches of 3 frames cross them): the same frames, the same presence.
      expect(checkAllFrames(run, 3 * 512 * 128 * 8, 1)).toBe(truth.frames.length * 3);
      const one = new FrameReader(det, { windowFrames: 1 }).presence();
      expect(one.map((p) => Array.from(p))).toEqual(presence.map((p) => Array.from(p)));
    } finally {
      run.close();
    }
  });

  test("a train range selects frames of those trains only", async () => {
    const { dir, truth } = await synth({ trains: 5, framesPerTrain: 3 });
    const run = await Run.open(dir);
    try {
      const t = truth.trains;
      const reader = new FrameReader(run.detector(), { firstTrain: t[1], lastTrain: t[3] });
      expect(reader.nFrames).toBe(9);
      expect(new Set(reader.frameIds.trainId)).toEqual(new Set([t[1], t[2], t[3]]));
    } finally {
      run.close();
    }
  });

  test("trailing zero train IDs in INDEX are padding", async () => {
    const { dir, truth } = await synth({ indexPadding: 3 });
    const run = await Run.open(dir);
    try {
      expect(run.trainIds).toEqual(truth.trains);
      for (const f of run.files) expect(f.trainIds.every((t) => t > 0)).toBe(true);
    } finally {
      run.close();
    }
  });

  test("a run of 72 sequence files: at most OPEN_FILES of them open at once; every frame read right", async () => {
    // HDF5 takes ~0.3 MB of the wasm heap (which never shrinks) per open file: a long run's thousands of
    // sequence files were all open in every thread. Counted here by the descriptors open on the run's files
    // (HDF5's own, and the direct reads' one per open file).
    const { dir, truth } = await synth({ trains: 24, framesPerTrain: 2, trainsPerFile: 1 });
    const inRun = () =>
      fs.readdirSync("/proc/self/fd").filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(dir + path.sep);
        } catch {
          return false; // closed meanwhile (readdir's own descriptor)
        }
      }).length;
    const plans = directStats.plans;
    const run = await Run.open(dir);
    try {
      expect(run.files.length).toBe(72); // 2 modules x 24 files, 24 DA files
      // Run.open (and finding the detectors) closes each file it opened: none left open. Before, up to
      // OPEN_FILES stayed open, and the wasm heap kept their HDF5 state (~0.37 MB a file) as its high-water mark.
      expect(inRun()).toBe(0);
      // INDEX and METADATA are read through HDF5: no chunk plan (and descriptor) per small dataset.
      expect(directStats.plans).toBe(plans);
      // So does a reader's counting pass, which reads every file's train and pulse IDs.
      const counted = new FrameReader(run.detector(), { mask: true });
      expect(counted.nFrames).toBe(truth.frames.length);
      expect(inRun()).toBe(0);
      expect(checkAllFrames(run, 2 * 512 * 128 * 4)).toBe(truth.frames.length * 2);
      expect(inRun()).toBeLessThanOrEqual(2 * OPEN_FILES);
      // A worker's run (from the index) opens a file when it reads it, none before.
      run.close();
      expect(inRun()).toBe(0);
      const again = await Run.fromIndex(structuredClone(run.index()));
      expect(inRun()).toBe(0);
      expect(checkAllFrames(again, 2 * 512 * 128 * 4)).toBe(truth.frames.length * 2);
      expect(inRun()).toBeLessThanOrEqual(2 * OPEN_FILES);
      again.close();
      expect(inRun()).toBe(0);
    } finally {
      run.close();
    }
  });

  test("a run reopened from its index (sent to another thread) reads the same frames", async () => {
    const { dir, truth } = await synth({
      trains: 4,
      framesPerTrain: 5,
      modules: [0, 1, 3],
      missingTrains: [{ module: 1, trains: [1, 2] }],
    });
    const opened = await Run.open(dir);
    // As a worker thread receives it: a structured clone, without HDF5 handles.
    const ix = structuredClone(opened.index());
    opened.close();
    const run = await Run.fromIndex(ix);
    try {
      expect(run.trainIds).toEqual(truth.trains);
      const det = run.detector();
      expect(det.modules.map((m) => m.module)).toEqual([0, 1, 3]);
      // The detector's module files are the run's files (one object each), with open handles.
      for (const m of det.modules) for (const mf of m.files) expect(run.files).toContain(mf.file);
      const reader = new FrameReader(det);
      expect(reader.nFrames).toBe(truth.frames.length);
      // Every frame equals what the file holds (h5wasm's own slice), missing trains marked absent.
      expect(checkAllFrames(run, 3 * 512 * 128 * 8)).toBe(truth.frames.length * 3);
    } finally {
      run.close();
    }
  });

  test("a single file opens as a run", async () => {
    const { dir, truth } = await synth({});
    const file = path.join(dir, truth.files.find((f) => /AGIPD01/.test(f))!);
    const run = await Run.open(file);
    try {
      expect(run.detector().modules.map((m) => m.module)).toEqual([1]);
    } finally {
      run.close();
    }
  });
});

describe("bounded memory", () => {
  test("batches never exceed batchBytes per module and buffers are reused", async () => {
    const { dir } = await synth({ trains: 4, framesPerTrain: 6 });
    const run = await Run.open(dir);
    try {
      const budget = 5 * 512 * 128 * 8; // 5 frames of data + mask
      const reader = new FrameReader(run.detector(), { batchBytes: budget, mask: true });
      expect(reader.framesPerBatch).toBe(5);
      const buffers = new Set<ArrayBufferLike>();
      let frames = 0;
      for (const b of reader.batches()) {
        frames += b.nFrames;
        for (const m of b.modules) {
          expect(m.data.byteLength + m.mask!.byteLength).toBeLessThanOrEqual(budget);
          buffers.add(m.data.buffer);
        }
      }
      expect(frames).toBe(24);
      expect(buffers.size).toBe(2 * 2); // two alternating sets, two modules
    } finally {
      run.close();
    }
  });
});
