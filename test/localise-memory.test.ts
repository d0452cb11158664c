/**
 * localise's memory is bounded by batch and block sizes, not by the run length: the per-frame results go
 * to spill files (src/framework/spill.ts) as batches finish and are read back in bounded blocks of whole trains; what
 * stays in memory is fixed per module (ROI persistence counts, hot pixels) or a few bytes per frame.
 * No timing and no RSS here (bench/ measures those): sizes and the spill files themselves.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun } from "../fixtures/synth.ts";
import { blockBounds, largestBlock, MAX_LISTED_ANOMALIES } from "../src/localise/merge.ts";
import { have } from "./helpers/tools.ts";
import { runPython } from "./helpers/python-refs.ts";
import { PEAK_BYTES, SpillStream } from "../src/localise/records.ts";
import { SpillWriter } from "../src/framework/spill.ts";
import { localise } from "../src/localise/algorithm.ts";
import { type LocaliseResult } from "../src/localise/result.ts";
import { geometry } from "../src/exdf/detectors.ts";
import { FileRecycler } from "../src/framework/prefetch.ts";
import { FrameReader } from "../src/exdf/frames.ts";
import { writeLocaliseDir } from "../src/localise/output.ts";
import { h5 } from "../src/exdf/h5.ts";
import { Run } from "../src/exdf/run.ts";
import { openWriter } from "../src/exdf/writer/writer.ts";
import { resolveSchema } from "../src/exdf/writer/schema.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-localise-memory-"));
const spillDir = path.join(tmp, "spill");
const savedSpillDir = process.env.XFEL_REDU_SPILL_DIR;
const results: Record<string, LocaliseResult> = {};

beforeAll(async () => {
  fs.mkdirSync(spillDir);
  process.env.XFEL_REDU_SPILL_DIR = spillDir;
  for (const trains of [2, 8]) {
    const run = path.join(tmp, `t${trains}`);
    await makeRun(run, { seed: 5, modules: [0, 1], trains, framesPerTrain: 32, trainsPerFile: 4 });
    // Two workers: two parts (one module each), merged frame by frame from two spill files.
    results[trains] = await localise(run, { backend: "cpu", workers: 2 });
  }
}, 300_000);

afterAll(() => {
  for (const r of Object.values(results)) r.dispose();
  if (savedSpillDir === undefined) delete process.env.XFEL_REDU_SPILL_DIR;
  else process.env.XFEL_REDU_SPILL_DIR = savedSpillDir;
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe("localise memory, 2 vs 8 trains", () => {
  test("the accumulators have the same size whatever the run length (fixed per module)", () => {
    const g = geometry("AGIPD");
    const a = results[2].memory, b = results[8].memory;
    expect(results[8].frames).toBe(4 * results[2].frames);
    // ROI persistence counts (u32 per pixel) and hot pixels (u8 per pixel), 2 modules.
    expect(a.accumulatorBytes).toBe(2 * g.pixels * 5);
    expect(b.accumulatorBytes).toBe(a.accumulatorBytes);
    // Nothing per frame in memory (until a test asks for the whole-run columns): the merged frames' ids are
    // streamed from the parts' id spill files in every pass; per train its counts, per block its bound.
    expect(a.frameBytes).toBe(0);
    expect(b.frameBytes).toBe(0);
    for (const t of [2, 8]) {
      const m = results[t].memory;
      expect(m.trainBytes).toBe(24 * t + 8 * results[t].blockBounds().length);
      expect(results[t].perTrain.frames).toEqual(Array(t).fill(32));
    }
  });

  test("per-frame results and frame ids are in spill files (two per part), growing with the run", () => {
    for (const trains of [2, 8]) {
      const files = results[trains].memory.spillFiles;
      expect(files.length).toBe(4);
      for (const f of files) expect(path.dirname(f)).toBe(spillDir);
      // The id files: each part's frames (every frame of the run here: both parts see every train), 16 bytes
      // each, sorted by (trainId, pulseId), the merged frames' ids.
      const ids = files.filter((f) => f.includes("-ids-"));
      expect(ids.length).toBe(2);
      for (const f of ids) {
        const d = new Float64Array(new Uint8Array(fs.readFileSync(f)).buffer);
        expect(d.length).toBe(2 * results[trains].frames);
        expect(Array.from(d.filter((_, i) => i % 2 === 0))).toEqual(Array.from(results[trains].trainId));
        expect(Array.from(d.filter((_, i) => i % 2 === 1))).toEqual(Array.from(results[trains].pulseId));
      }
    }
    const bytes = (t: number) =>
      results[t].memory.spillFiles.filter((f) => !f.includes("-ids-")).reduce(
        (a, f) => a + fs.statSync(f).size,
        0,
      );
    // Records hold at least the four ASIC counters of every module frame (16 ASICs x 4 x 4 bytes).
    expect(bytes(2)).toBeGreaterThanOrEqual(results[2].frames * 2 * 16 * 16);
    expect(bytes(8)).toBeGreaterThan(3 * bytes(2));
  });

  test("blocks read back in any bounds equal the whole run read at once (merge across parts)", () => {
    const r = results[8];
    const all = r.perFrame;
    // One block per train: the cursors of both spill files advance across blocks.
    const bounds = [0];
    for (let f = 1; f <= r.frames; f++) {
      if (f === r.frames || r.trainId[f] !== r.trainId[f - 1]) bounds.push(f);
    }
    expect(bounds.length).toBe(9);
    const keys = ["litPixels", "litIntensity", "unmaskedPixels", "filteredLit", "asicLit"] as const;
    for (const { f0, f1, per } of r.frameBlocks(bounds)) {
      const k = 2 * r.nAsics;
      for (const key of keys) {
        expect(Array.from(per[key]), key).toEqual(Array.from(all[key].subarray(f0 * k, f1 * k)));
      }
      expect(Array.from(per.frameLit)).toEqual(Array.from(all.frameLit.subarray(f0, f1)));
      expect(Array.from(per.nPeaks)).toEqual(Array.from(all.nPeaks.subarray(f0, f1)));
      expect(per.peaks).toEqual(all.peaks.slice(f0, f1));
    }
    expect(all.frameLit.reduce((a, x) => a + x, 0)).toBe(r.litFrames);
    expect(Array.from(all.frameLit)).toEqual(Array.from(r.frameLit));
  });

  test("dispose removes the spill files", async () => {
    const r = await localise(path.join(tmp, "t2"), { backend: "cpu", workers: 1 });
    const files = r.memory.spillFiles;
    expect(files.every((f) => fs.existsSync(f))).toBe(true);
    r.dispose();
    expect(files.some((f) => fs.existsSync(f))).toBe(false);
    expect(() => [...r.frameBlocks([0, 1])]).toThrow(/dispose/);
  });
});

describe("the merge's spill stream", () => {
  test("records across the 1 MB reads come back whole; every read reuses one buffer", () => {
    // Records of 8-byte multiples (a header, then 0-40 peaks of 80 bytes), 3.5 MB in all: several refills,
    // records across them. Each record's float64 words count up from its first word's index.
    const sizes: number[] = [];
    let rnd = 7, total = 0;
    while (total < 3.5 * 2 ** 20) {
      rnd = (rnd * 1103515245 + 12345) % 2 ** 31;
      const n = sizes.length % 2 === 0 ? 136 : (rnd % 41) * PEAK_BYTES;
      sizes.push(n);
      total += n;
    }
    const words = new Float64Array(total / 8).map((_, i) => i);
    const w = new SpillWriter(1, "stream-test");
    w.append(new Uint8Array(words.buffer));
    const file = w.close();
    try {
      const s = new SpillStream(file);
      const readBuffers = new Set<ArrayBufferLike>();
      let at = 0;
      for (const n of sizes) {
        const v = s.take(n);
        expect(v.length).toBe(n);
        expect(v.byteOffset % 8).toBe(0);
        const d = new Float64Array(v.buffer, v.byteOffset, n / 8);
        for (let k = 0; k < d.length; k++) if (d[k] !== at + k) expect(d[k]).toBe(at + k);
        at += n / 8;
        // A view of the read buffer (not a record's copy across two reads).
        if (v.buffer.byteLength > n) readBuffers.add(v.buffer);
      }
      expect(at).toBe(words.length);
      expect(() => s.take(8)).toThrow(/ends early/);
      s.close();
      expect(readBuffers.size).toBe(1);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });
});

describe("the reader's open files", () => {
  // HDF5 keeps the chunk-index nodes it visited in each open file's metadata cache (wasm heap, which never
  // shrinks): the reader worker closes a file every `limit` module frames read from it (it opens again when
  // read), so what a file holds is bounded by `limit`, not by the run. Reopened files must read the same
  // frames.
  test("frames read since a file was opened stay below limit + one batch; the data are unchanged", async () => {
    const read = async (trains: number, limit: number) => {
      const run = await Run.open(path.join(tmp, `t${trains}`));
      try {
        const r = new FrameReader(run.detector(), { mask: true, batchBytes: 4 * 2 ** 20 });
        const rec = new FileRecycler(r.modules, limit);
        let sum = 0, most = 0;
        for (const b of r.batches()) {
          for (const m of b.modules) {
            for (let i = 0; i < m.data.length; i += 97) sum += m.mask![i] + (m.data[i] || 0);
          }
          rec.afterBatch(b.trainId, b.modules.map((m) => m.present));
          most = Math.max(most, ...rec.sinceOpen.values());
        }
        return { sum, most, closed: rec.closed, perBatch: r.framesPerBatch, frames: r.nFrames };
      } finally {
        run.close();
      }
    };
    const plain = await read(8, Infinity);
    // No frame limit: only the files the reading left behind are closed (2 modules x 2 files of 4 trains).
    expect(plain.closed).toBe(2);
    for (const trains of [2, 8]) {
      const x = await read(trains, 40);
      // 2 modules x 32 frames x trains, closed every 40 frames of a file: the bound does not grow.
      expect(x.most).toBeLessThan(40 + x.perBatch);
      expect(x.closed).toBeGreaterThanOrEqual(Math.floor((x.frames * 2) / (40 + x.perBatch)));
      if (trains === 8) expect(x.sum).toBe(plain.sum);
    }
  });
});

describe("the beam annotation", () => {
  // Streamed: the merge and the REDU writer ask for the trains of each block; one window of trains is held.
  test("one window of trains held (2 here); the REDU file's data the same as with one window for the run", async () => {
    const write = async (window: string) => {
      process.env.XFEL_REDU_BEAM_WINDOW = window;
      try {
        const r = await localise(path.join(tmp, "t8"), { backend: "cpu", workers: 2 });
        const out = path.join(tmp, `beam-${window}`);
        // Written after finalize: the blocks (and their trains' annotation) are read now.
        await writeLocaliseDir(r, out);
        const held = r.beam!.held();
        r.dispose();
        const lib = await h5();
        const f = new lib.File(path.join(out, fs.readdirSync(out).find((n) => n.includes("REDU"))!), "r");
        const data: Record<string, unknown> = {};
        const walk = (g: string) => {
          for (const k of (f.get(g) as unknown as { keys(): string[] }).keys()) {
            const p = `${g}/${k}`;
            const e = f.get(p) as unknown as { type: string; value: unknown };
            if (e.type === "Group") walk(p);
            else if (!/timestamp|Date/.test(p)) data[p] = e.value;
          }
        };
        walk("INSTRUMENT");
        walk("INDEX");
        f.close();
        return { held, data, trains: r.trains };
      } finally {
        delete process.env.XFEL_REDU_BEAM_WINDOW;
      }
    };
    const two = await write("2"), whole = await write("1000");
    expect(two.trains).toBe(8);
    expect(two.held).toBe(2);
    expect(whole.held).toBe(8);
    expect(Object.keys(two.data).some((k) => k.includes("LITFRM"))).toBe(true);
    expect(two.data).toEqual(whole.data);
  });
});

describe("anomalies in summary.json", () => {
  // A bunch pattern that says no pulse in every train but the first, on a run whose images have hits in all:
  // every hit after the first train is an anomaly (signal, no pulse), as when a run's bunch pattern is misread.
  test.skipIf(!have("h5py"))(
    "a bunch pattern that says no pulse where the images say signal: every anomaly counted, the first 1,000 listed",
    async () => {
      const run = path.join(tmp, "anomalies");
      await makeRun(run, { seed: 3, modules: [0], trains: 48, framesPerTrain: 64, litFraction: 0.8 });
      const da = fs.readdirSync(run).find((n) => n.includes("-DA01-"))!;
      runPython(
        `import sys, json, h5py
a = json.loads(sys.argv[1])
with h5py.File(a["file"], "r+") as h:
    d = h["INSTRUMENT/SPB_RR_SYS/TSYS/TIMESERVER:outputBunchPattern/data/bunchPatternTable"]
    t = d[()]
    t[1:] = 0
    d[...] = t
print(json.dumps(int(t.shape[0])))`,
        { file: path.join(run, da) },
      );
      const r = await localise(run, { backend: "cpu", workers: 1 });
      const out = path.join(tmp, "anomalies-out");
      await writeLocaliseDir(r, out);
      const first = r.trainId[0], lit = r.frameLit, tid = r.trainId, pid = r.pulseId;
      const expected: { trainId: number; pulseId: number }[] = [];
      for (let f = 0; f < r.frames; f++) {
        if (lit[f] && tid[f] !== first) expected.push({ trainId: tid[f], pulseId: pid[f] });
      }
      r.dispose();
      const s = JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8"));
      expect(expected.length).toBeGreaterThan(MAX_LISTED_ANOMALIES);
      expect(s.anomalyCount).toBe(expected.length);
      expect(s.anomalies).toEqual(expected.slice(0, MAX_LISTED_ANOMALIES));
      expect(s.notes.join("\n")).toContain(
        `${expected.length} frames with signal in the images but no X-ray pulse`,
      );
    },
    120_000,
  );
});

describe("the reader's frame table", () => {
  // The alignment of (trainId, pulseId) over modules is built per window of trains as reading moves on, not
  // for the whole run at open: the largest table held is the same for 2 and 8 trains.
  test("the largest frame table held does not grow with the run; batches equal one whole-run table", async () => {
    const read = async (trains: number, windowFrames: number) => {
      const run = await Run.open(path.join(tmp, `t${trains}`));
      try {
        // 5 frames a batch: batches cross trains (32 frames) and windows (one train each).
        const r = new FrameReader(run.detector(), {
          mask: true,
          batchBytes: 5 * 512 * 128 * 8,
          windowFrames,
        });
        const ids: number[] = [];
        let sum = 0;
        // The pre-pass's jumps first (as localise reads), then every frame in order.
        const ranges: [number, number][] = [[r.nFrames - 5, 5], [0, 5], [40, 5]];
        for (let s = 0; s < r.nFrames; s += 5) ranges.push([s, Math.min(5, r.nFrames - s)]);
        for (const [s, n] of ranges) {
          const b = r.read(s, n);
          ids.push(...b.trainId, ...b.pulseId, ...b.cellId);
          for (const m of b.modules) {
            for (let i = 0; i < m.data.length; i += 97) {
              sum += m.mask![i] + (m.data[i] || 0) + m.present[i % n];
            }
          }
        }
        return { ids, sum, frames: r.nFrames, bytes: r.tableBytes };
      } finally {
        run.close();
      }
    };
    for (const trains of [2, 8]) {
      const windowed = await read(trains, 32), whole = await read(trains, Infinity);
      expect(windowed.frames).toBe(trains * 32);
      expect(whole.bytes.windows).toBe(1);
      expect(windowed.bytes.windows).toBe(trains);
      expect(windowed.ids).toEqual(whole.ids);
      expect(windowed.sum).toBe(whole.sum);
    }
    const a = (await read(2, 32)).bytes, b = (await read(8, 32)).bytes;
    // At most two windows (a batch across a train boundary) of 32 frames: ids 20 bytes, per module 12.
    expect(a.maxTable).toBe(2 * 32 * (20 + 2 * 12));
    expect(b.maxTable).toBe(a.maxTable);
    // The whole-run table (the reader before windows) grows with the run.
    expect((await read(8, Infinity)).bytes.maxTable).toBe(4 * (await read(2, Infinity)).bytes.maxTable);
  });
});

describe("blockBounds", () => {
  /** Frames sorted by train: `frames` per train. */
  const trainIds = (trains: number, frames: number) =>
    Float64Array.from({ length: trains * frames }, (_, i) => 1000 + Math.floor(i / frames));

  test("whole trains, the largest block the same for 125 and 1,000 trains", () => {
    const largest = (ids: Float64Array, nMod: number) => {
      const b = blockBounds(ids, nMod);
      expect(b[0]).toBe(0);
      expect(b[b.length - 1]).toBe(ids.length);
      for (let i = 1; i < b.length - 1; i++) expect(ids[b[i]]).not.toBe(ids[b[i] - 1]);
      return Math.max(...b.slice(1).map((x, i) => x - b[i]));
    };
    // 2 modules x 64 frames: 512 frames (8 trains, 1,024 module frames) per block.
    expect(largest(trainIds(125, 64), 2)).toBe(512);
    expect(largest(trainIds(1000, 64), 2)).toBe(512);
    // A train larger than the bound is one block (AGIPD-1M: 16 modules x 352 frames).
    expect(largest(trainIds(20, 352), 16)).toBe(352);
    expect(blockBounds(new Float64Array(0), 2)).toEqual([0]);
  });

  test("the largest block of a run with more blocks than a call takes arguments (an hour of AGIPD-1M)", () => {
    // 1,000,000 module frames a block of 4 frames here; Math.max(...) of 250,000 sizes overflows the stack.
    const b = blockBounds(trainIds(250_000, 4), 256);
    expect(b.length).toBe(250_001);
    expect(largestBlock(b)).toBe(4);
    expect(largestBlock([0])).toBe(0);
  });
});

describe("the REDU writer's staging buffers", () => {
  // A schema shaped like localise's REDU file (src/localise/redu.ts): 38 datasets, per-frame scalars,
  // (modules x ASICs) counters and maxPeaks-long peak columns, written in blocks of whole trains.
  const N_DS = 38, MAX_PEAKS = 64;
  const shapes: [string, number[], "uint32" | "float32" | "uint16"][] = [];
  for (let i = 0; i < N_DS; i++) {
    shapes.push(
      i % 3 === 0
        ? [`s${i}`, [], "uint32"]
        : i % 3 === 1
        ? [`m${i}`, [2, 16], "uint32"]
        : [`p${i}`, [MAX_PEAKS], "float32"],
    );
  }
  const schema = {
    datasets: Object.fromEntries(
      shapes.map(([name, shape, dtype]) => [
        name,
        { source: "DET/REDU/X:output", key: `data.${name}`, shape, dtype, chunks: 256 },
      ]),
    ),
  };

  test("all datasets' stages together fit in bufferBytes (one stage each, never dropped to make room)", () => {
    for (const bufferBytes of [64 * 2 ** 20, 8 * 2 ** 20]) {
      const { srcs } = resolveSchema(path.join(tmp, "w-{seq}.h5"), schema, { bufferBytes });
      const ds = srcs.flatMap((s) => s.datasets);
      expect(ds.length).toBe(N_DS);
      const staged = ds.reduce((a, d) => a + d.stageRows * d.entryBytes, 0);
      // Before: about 4 MiB each whatever the budget, 152 MiB for 38 datasets.
      expect(staged).toBeLessThanOrEqual(bufferBytes);
      expect(ds.every((d) => d.stageRows > 0)).toBe(true);
    }
  });

  test("stage allocations do not grow with the number of blocks written", async () => {
    const allocations = async (blocks: number) => {
      const dir = fs.mkdtempSync(path.join(tmp, "w"));
      const w = await openWriter(path.join(dir, "w-{seq}.h5"), schema, { bufferBytes: 16 * 2 ** 20 });
      const files = (w as unknown as { files_: { allocStage: (...a: unknown[]) => unknown } }).files_;
      const alloc = files.allocStage.bind(files);
      let n = 0;
      files.allocStage = (...a: unknown[]) => (n++, alloc(...a));
      const frames = 640, perTrain = 64;
      let train = 1;
      for (let b = 0; b < blocks; b++) {
        w.addTrains(Array.from({ length: frames / perTrain }, () => train++), {
          "DET/REDU/X:output": perTrain,
        });
        w.addData(Object.fromEntries(shapes.map(([name, shape, dtype]) => {
          const k = frames * shape.reduce((x, y) => x * y, 1);
          return [name, dtype === "float32" ? new Float32Array(k).fill(b) : new Uint32Array(k).fill(b)];
        })));
      }
      w.close();
      return n;
    };
    const short = await allocations(4), long = await allocations(16);
    // One stage per dataset per file at most (before: dropped and reallocated to make room, ~N_DS per block).
    expect(short).toBeLessThanOrEqual(N_DS);
    expect(long).toBe(short);
  });
});
