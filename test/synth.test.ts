/**
 * The synthetic run generator (fixtures/synth.ts, fixtures/make-run.ts): determinism, every layout variant
 * (AGIPD/LPD/DSSC/JUNGFRAU, RAW/CORR, formats 0.5/1.0/1.2, xtdf/output naming, legacy index), shapes and
 * dtypes as in shared/docs/exdf.md, INDEX validity, truth consistent with the pixels and with the bunch
 * pattern (decoded here straight from exdf.md's bit rules), the committed sample, and one generated file
 * read back with an independent reader (h5py).
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  dsInfo,
  h5,
  type H5Dataset,
  type H5File,
  type H5Group,
  openH5,
  readAll,
  readRows,
} from "../src/exdf/h5.ts";
import { asicOf, geometry } from "../src/exdf/detectors.ts";
import {
  hash32,
  makeRun,
  planTruth,
  Rng,
  SAMPLE_OPTIONS,
  type SynthOptions,
  type Truth,
} from "../fixtures/synth.ts";
import { main as makeRunCli, parseList } from "../fixtures/make-run.ts";
import { independentAvailable, readIndependent } from "./helpers/independent-h5.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-synth-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let counter = 0;
async function gen(opts: Partial<SynthOptions>): Promise<{ dir: string; truth: Truth }> {
  const dir = path.join(tmp, `run${counter++}`);
  const truth = await makeRun(dir, opts);
  return { dir, truth };
}

/** Small-run defaults so the whole file stays fast. */
const SMALL: Partial<SynthOptions> = { trains: 3, framesPerTrain: 6, modules: [0, 2], litFraction: 0.5 };

// ---------------------------------------------------------------------------------------------------------
// Reading helpers (h5wasm through src/exdf/h5.ts)

function isGroup(e: unknown): e is H5Group {
  return !!e && (e as any).type === "Group";
}
function isDataset(e: unknown): e is H5Dataset {
  return !!e && (e as any).type === "Dataset";
}

function nums(f: H5File, p: string): number[] {
  return Array.from(readAll(f, p) as ArrayLike<number | bigint>, Number);
}

function strs(f: H5File, p: string): string[] {
  const v = (f.get(p) as H5Dataset).value as unknown;
  return (Array.isArray(v) ? v : [v]).map(String);
}

function has(f: H5File, p: string): boolean {
  try {
    return f.get(p) != null;
  } catch {
    return false;
  }
}

function shape(f: H5File, p: string): number[] {
  return dsInfo(f.get(p) as H5Dataset).shape;
}

function dtype(f: H5File, p: string): string {
  return dsInfo(f.get(p) as H5Dataset).dtype;
}

/** Datasets below a group, recursively (relative paths). */
function datasetsUnder(f: H5File, p: string): string[] {
  const out: string[] = [];
  const rec = (g: H5Group, rel: string) => {
    for (const k of g.keys()) {
      const c = g.get(k);
      const r = rel ? `${rel}/${k}` : k;
      if (isDataset(c)) out.push(r);
      else if (isGroup(c)) rec(c, r);
    }
  };
  const g = f.get(p);
  if (isGroup(g)) rec(g, "");
  return out;
}

/** Index groups (holding `first`) under INDEX, as paths relative to INDEX. */
function indexGroups(f: H5File): string[] {
  const out: string[] = [];
  const rec = (g: H5Group, rel: string) => {
    const ks = g.keys();
    if (ks.includes("first")) {
      out.push(rel);
      return;
    }
    for (const k of ks) {
      const c = g.get(k);
      if (isGroup(c)) rec(c, rel ? `${rel}/${k}` : k);
    }
  };
  rec(f.get("INDEX") as H5Group, "");
  return out;
}

/** The validity rules of exdf.md; returns the problems found. */
function validate(file: string, f: H5File): string[] {
  const bad: string[] = [];
  const tidAll = nums(f, "INDEX/trainId");
  let n = tidAll.length;
  while (n > 0 && tidAll[n - 1] === 0) n--;
  const tids = tidAll.slice(0, n);
  if (tids.some((t) => t === 0)) bad.push(`${file}: zero train ID inside`);
  for (let i = 1; i < n; i++) if (!(tids[i] > tids[i - 1])) bad.push(`${file}: train IDs not increasing`);
  for (const ig of indexGroups(f)) {
    const first = nums(f, `INDEX/${ig}/first`);
    let count: number[];
    if (has(f, `INDEX/${ig}/count`)) count = nums(f, `INDEX/${ig}/count`);
    else {
      const last = nums(f, `INDEX/${ig}/last`);
      const status = nums(f, `INDEX/${ig}/status`);
      count = first.map((x, i) => (last[i] - x + 1) * status[i]);
    }
    if (first.length < n || count.length !== first.length) bad.push(`${ig}: index length`);
    if (n > 0 && first[0] !== 0) bad.push(`${ig}: first[0] != 0`);
    for (let i = 0; i + 1 < n; i++) if (first[i + 1] !== first[i] + count[i]) bad.push(`${ig}: gap at ${i}`);
    const end = n > 0 ? first[n - 1] + count[n - 1] : 0;
    const data = has(f, `INSTRUMENT/${ig}`) ? `INSTRUMENT/${ig}` : `CONTROL/${ig}`;
    const ds = datasetsUnder(f, data);
    if (!ds.length) bad.push(`${ig}: no data for the index`);
    for (const d of ds) if (shape(f, `${data}/${d}`)[0] < end) bad.push(`${ig}: ${d} shorter than index`);
    if (data.startsWith("CONTROL")) {
      for (const d of ds.filter((x) => x.endsWith("timestamp"))) {
        const ts = nums(f, `${data}/${d}`);
        for (let i = 1; i < ts.length; i++) if (ts[i] < ts[i - 1]) bad.push(`${d}: timestamps decrease`);
      }
    }
  }
  return bad;
}

async function open(dir: string, name: string): Promise<H5File> {
  await h5();
  return openH5(path.join(dir, name));
}

// ---------------------------------------------------------------------------------------------------------
// Bunch pattern decoding, straight from exdf.md

const DEST = 0xf << 18;
function saseSlots(table: ArrayLike<number>, sase: 1 | 2 | 3): number[] {
  const out: number[] = [];
  for (let s = 0; s < table.length; s++) {
    const bp = table[s] >>> 0;
    const ok = sase === 1
      ? ((bp & ((1 << 27) | DEST)) >>> 0) === 4 << 18
      : sase === 2
      ? ((bp & DEST) >>> 0) === 2 << 18
      : ((bp & ((1 << 27) | DEST)) >>> 0) === (((1 << 27) | (4 << 18)) >>> 0);
    if (ok) out.push(s);
  }
  return out;
}
const STRIDES: Record<string, number> = { "4.5": 1, "2.2": 2, "1.1": 4, "0.5": 8 };

// ---------------------------------------------------------------------------------------------------------

describe("PRNG", () => {
  test("same seed, same stream; samplers have the right moments", () => {
    const a = new Rng(42), b = new Rng(42), c = new Rng(43);
    const xa = Array.from({ length: 5 }, () => a.uint32());
    expect(Array.from({ length: 5 }, () => b.uint32())).toEqual(xa);
    expect(Array.from({ length: 5 }, () => c.uint32())).not.toEqual(xa);
    expect(hash32(1, 2, 3)).toBe(hash32(1, 2, 3));
    expect(hash32(1, 2, 3)).not.toBe(hash32(1, 3, 2));
    const r = new Rng(7);
    const N = 20000;
    const g = Array.from({ length: N }, () => r.normal());
    const mean = g.reduce((s, x) => s + x, 0) / N;
    const sd = Math.sqrt(g.reduce((s, x) => s + (x - mean) ** 2, 0) / N);
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(sd - 1)).toBeLessThan(0.03);
    for (const lam of [0.01, 3, 80]) {
      const p = Array.from({ length: N }, () => r.poisson(lam));
      const m = p.reduce((s, x) => s + x, 0) / N;
      const v = p.reduce((s, x) => s + (x - m) ** 2, 0) / N;
      expect(Math.abs(m - lam)).toBeLessThan(0.05 * lam + 0.01);
      expect(Math.abs(v - lam)).toBeLessThan(0.1 * lam + 0.01);
    }
  });
});

describe("determinism", () => {
  test("same seed -> same truth and identical data arrays; another seed -> other data", async () => {
    const opts: Partial<SynthOptions> = { ...SMALL, seed: 5, trains: 2, trainsPerFile: 1 };
    const a = await gen(opts);
    const b = await gen(opts);
    const c = await gen({ ...opts, seed: 6 });
    expect(b.truth).toEqual(a.truth);
    expect(fs.readFileSync(path.join(b.dir, "truth.json"), "utf8")).toBe(
      fs.readFileSync(path.join(a.dir, "truth.json"), "utf8"),
    );
    expect(b.truth.files).toEqual(a.truth.files);
    for (const name of a.truth.files) {
      const m = Number(/AGIPD(\d\d)/.exec(name)?.[1] ?? -1);
      const src = a.truth.sources.modules.find((x) => x.module === m)?.source;
      const fa = await open(a.dir, name), fb = await open(b.dir, name), fc = await open(c.dir, name);
      const paths = name.includes("DA01")
        ? [`INSTRUMENT/${a.truth.sources.timeServer}/data/bunchPatternTable`]
        : ["data", "mask", "gain", "pulseId"].map((k) => `INSTRUMENT/${src}/image/${k}`);
      for (const p of paths) {
        const da = readAll(fa, p), db = readAll(fb, p);
        expect(
          Buffer.from(db.buffer, db.byteOffset, db.byteLength).equals(
            Buffer.from(da.buffer, da.byteOffset, da.byteLength),
          ),
        ).toBe(true);
      }
      if (!name.includes("DA01")) {
        const p = paths[0];
        const da = readAll(fa, p) as Float32Array, dc = readAll(fc, p) as Float32Array;
        expect(Buffer.from(dc.buffer).equals(Buffer.from(da.buffer))).toBe(false);
      }
      fa.close(), fb.close(), fc.close();
    }
    // The plan alone gives the same truth (spot photon draws aside).
    const plan = planTruth(opts);
    expect(plan.frames).toEqual(a.truth.frames);
    expect(plan.spots.map((s) => ({ ...s, counted: 0 }))).toEqual(
      a.truth.spots.map((s) => ({ ...s, counted: 0 })),
    );
  });
});

// ---------------------------------------------------------------------------------------------------------
// Layout variants

interface Variant {
  name: string;
  opts: Partial<SynthOptions>;
  /** Image data entry shape (without the row axis) and dtype. */
  entry: number[];
  dtype: string;
  idShape: (rows: number) => number[];
}

const XTDF_VARIANTS: Variant[] = [
  {
    name: "AGIPD raw",
    opts: { detector: "AGIPD", level: "raw" },
    entry: [2, 512, 128],
    dtype: "uint16",
    idShape: (n) => [n, 1],
  },
  {
    name: "AGIPD corr xtdf",
    opts: { detector: "AGIPD", level: "corr" },
    entry: [512, 128],
    dtype: "float32",
    idShape: (n) => [n],
  },
  {
    name: "AGIPD corr output",
    opts: { detector: "AGIPD", level: "corr", naming: "output" },
    entry: [512, 128],
    dtype: "float32",
    idShape: (n) => [n],
  },
  {
    name: "LPD raw",
    opts: { detector: "LPD", level: "raw" },
    entry: [1, 256, 256],
    dtype: "uint16",
    idShape: (n) => [n, 1],
  },
  {
    name: "LPD corr output",
    opts: { detector: "LPD", level: "corr", naming: "output" },
    entry: [256, 256],
    dtype: "float32",
    idShape: (n) => [n],
  },
  {
    name: "DSSC raw",
    opts: { detector: "DSSC", level: "raw" },
    entry: [1, 128, 512],
    dtype: "uint16",
    idShape: (n) => [n, 1],
  },
  {
    name: "DSSC corr xtdf",
    opts: { detector: "DSSC", level: "corr" },
    entry: [128, 512],
    dtype: "float32",
    idShape: (n) => [n],
  },
];

describe("XTDF layouts", () => {
  for (const v of XTDF_VARIANTS) {
    test(v.name, async () => {
      const { dir, truth } = await gen({
        ...SMALL,
        ...v.opts,
        trains: 3,
        trainsPerFile: 2,
        framesPerTrain: [5, 4],
        shortFrames: [{ module: 2, train: 2, frames: 2 }],
        missingTrains: [{ module: 0, trains: [1] }],
      });
      const o = truth.options;
      const g = geometry(o.detector);
      const det = o.detectorName;
      const agg = o.detector;
      const prefix = o.level === "raw" ? "RAW" : "CORR";
      expect(truth.files).toEqual([
        `${prefix}-R0001-${agg}00-S00000.h5`,
        `${prefix}-R0001-${agg}00-S00001.h5`,
        `${prefix}-R0001-${agg}02-S00000.h5`,
        `${prefix}-R0001-${agg}02-S00001.h5`,
        "RAW-R0001-DA01-S00000.h5",
        "RAW-R0001-DA01-S00001.h5",
      ].sort());
      for (const m of [0, 2]) {
        const output = o.level === "corr" && o.naming === "output";
        const src = output ? `${det}/CORR/${m}CH0:output` : `${det}/DET/${m}CH0:xtdf`;
        expect(truth.sources.modules.find((x) => x.module === m)!.source).toBe(src);
        const tidsSeen: number[] = [];
        for (const seq of [0, 1]) {
          const f = await open(dir, `${prefix}-R0001-${agg}0${m}-S0000${seq}.h5`);
          expect(validate(`${m}/${seq}`, f)).toEqual([]);
          const fileTrains = nums(f, "INDEX/trainId");
          const count = nums(f, `INDEX/${src}/image/count`);
          const rows = count.reduce((a, b) => a + b, 0);
          const img = `INSTRUMENT/${src}/image`;
          expect(shape(f, `${img}/data`)).toEqual([rows, ...v.entry]);
          expect(dtype(f, `${img}/data`)).toBe(v.dtype);
          for (const k of ["trainId", "pulseId"]) {
            expect(shape(f, `${img}/${k}`)).toEqual(v.idShape(rows));
            expect(dtype(f, `${img}/${k}`)).toBe("uint64");
          }
          expect(dtype(f, `${img}/cellId`)).toBe("uint16");
          if (o.level === "raw") {
            expect(shape(f, `${img}/length`)).toEqual([rows, 1]);
            expect(shape(f, `${img}/status`)).toEqual([rows, 1]);
            expect(has(f, `${img}/mask`)).toBe(false);
          } else {
            expect(shape(f, `${img}/mask`)).toEqual([rows, g.moduleSs, g.moduleFs]);
            expect(dtype(f, `${img}/mask`)).toBe("uint32");
            expect(dtype(f, `${img}/gain`)).toBe("uint8");
          }
          // Per-train groups next to the per-frame image group.
          for (const gr of ["header", "detector", "trailer"]) {
            const c = nums(f, `INDEX/${src}/${gr}/count`);
            expect(c).toEqual(count.map((x) => (x > 0 ? 1 : 0)));
            expect(nums(f, `INSTRUMENT/${src}/${gr}/trainId`)).toEqual(
              fileTrains.filter((_, i) => count[i] > 0),
            );
          }
          expect(nums(f, `INSTRUMENT/${src}/header/pulseCount`)).toEqual(count.filter((x) => x > 0));
          // Frames as in the truth.
          const tid = nums(f, `${img}/trainId`),
            pid = nums(f, `${img}/pulseId`),
            cid = nums(f, `${img}/cellId`);
          const expected = truth.frames.filter((x) =>
            x.modules.includes(m) && fileTrains.includes(x.trainId)
          );
          expect(tid).toEqual(expected.map((x) => x.trainId));
          expect(pid).toEqual(expected.map((x) => x.pulseId));
          expect(cid).toEqual(expected.map((x) => x.cellId));
          // Sources listed in METADATA; the legacy link for "output" naming.
          const ids = strs(f, "METADATA/dataSources/dataSourceId");
          expect(ids).toContain(`INSTRUMENT/${src}/image`);
          const legacy = `${det}/DET/${m}CH0:xtdf`;
          if (output) {
            expect(ids).toContain(`INSTRUMENT/${legacy}/image`);
            expect((f as any).get_link(`/INSTRUMENT/${legacy}`)).toBe(`/INSTRUMENT/${src}`);
            expect((f as any).get_link(`/INDEX/${legacy}`)).toBe(`/INDEX/${src}`);
            expect(shape(f, `INSTRUMENT/${legacy}/image/data`)).toEqual([rows, ...v.entry]);
          } else {
            expect(has(f, `INSTRUMENT/${det}/CORR`)).toBe(false);
          }
          tidsSeen.push(...fileTrains);
          f.close();
        }
        // Module 0 misses train 1 (count 0), module 2 records 2 frames of train 2.
        expect(tidsSeen).toEqual(truth.trains);
      }
      expect(truth.frames.filter((x) => x.trainId === truth.trains[1]).every((x) => !x.modules.includes(0)))
        .toBe(true);
      expect(truth.frames.filter((x) => x.trainId === truth.trains[2] && x.modules.includes(2)).length).toBe(
        2,
      );
    });
  }

  test("JUNGFRAU raw and corr (output naming)", async () => {
    for (const level of ["raw", "corr"] as const) {
      const { dir, truth } = await gen({
        detector: "JUNGFRAU",
        level,
        naming: "output",
        modules: [1],
        trains: 2,
        framesPerTrain: 2,
        missingTrains: [{ module: 1, trains: [0] }],
      });
      const det = "SPB_IRDA_JF4M";
      const src = level === "raw" ? `${det}/DET/JNGFR01:daqOutput` : `${det}/CORR/JNGFR01:output`;
      const name = `${level === "raw" ? "RAW" : "CORR"}-R0001-JNGFR01-S00000.h5`;
      expect(truth.files).toContain(name);
      const f = await open(dir, name);
      expect(validate(name, f)).toEqual([]);
      expect(nums(f, `INDEX/${src}/data/count`)).toEqual([0, 1]);
      expect(shape(f, `INSTRUMENT/${src}/data/adc`)).toEqual([1, 2, 512, 1024]);
      expect(dtype(f, `INSTRUMENT/${src}/data/adc`)).toBe(level === "raw" ? "uint16" : "float32");
      expect(shape(f, `INSTRUMENT/${src}/data/memoryCell`)).toEqual([1, 2]);
      expect(nums(f, `INSTRUMENT/${src}/data/trainId`)).toEqual([truth.trains[1]]);
      if (level === "corr") {
        expect(dtype(f, `INSTRUMENT/${src}/data/mask`)).toBe("uint32");
        expect((f as any).get_link(`/INSTRUMENT/${det}/DET/JNGFR01:daqOutput`)).toBe(`/INSTRUMENT/${src}`);
      }
      f.close();
    }
  });
});

describe("format versions", () => {
  test("0.5, 0.5 with legacy index, 1.0, 1.2; padding", async () => {
    for (
      const [format, legacyIndex, pad] of [["0.5", false, 0], ["0.5", true, 3], ["1.0", false, 2], [
        "1.2",
        false,
        0,
      ]] as const
    ) {
      const { dir, truth } = await gen({
        ...SMALL,
        modules: [1],
        format,
        legacyIndex,
        indexPadding: pad,
        metadataPadding: pad,
        instrumentPadding: pad,
        missingTrains: [{ module: 1, trains: [1] }],
      });
      for (const name of truth.files) {
        const f = await open(dir, name);
        expect(validate(name, f)).toEqual([]);
        const meta = format === "0.5" ? "METADATA" : "METADATA/dataSources";
        const ids = strs(f, `${meta}/dataSourceId`);
        expect(ids.length).toBe(strs(f, `${meta}/root`).length);
        expect(ids.slice(ids.length - pad).every((s) => s === "")).toBe(true);
        expect(has(f, "METADATA/dataFormatVersion")).toBe(format !== "0.5");
        if (format !== "0.5") expect(strs(f, "METADATA/dataFormatVersion")).toEqual([format]);
        expect(has(f, "METADATA/dataSources")).toBe(format !== "0.5");
        expect(has(f, "INDEX/timestamp")).toBe(format !== "0.5");
        expect(has(f, "INDEX/flag")).toBe(format !== "0.5");
        expect(has(f, "INDEX/origin")).toBe(format === "1.2");
        const tids = nums(f, "INDEX/trainId");
        expect(tids.slice(0, truth.trains.length)).toEqual(truth.trains);
        expect(tids.slice(truth.trains.length)).toEqual(Array(pad).fill(0));
        if (!name.includes("DA01")) {
          const ig = `INDEX/${truth.sources.modules[0].source}/image`;
          expect(has(f, `${ig}/count`)).toBe(!legacyIndex);
          expect(has(f, `${ig}/last`)).toBe(legacyIndex);
          expect(has(f, `${ig}/status`)).toBe(legacyIndex);
          if (legacyIndex) expect(nums(f, `${ig}/status`).slice(0, 3)).toEqual([1, 0, 1]);
        }
        f.close();
      }
    }
  });

  test("missing trains left out of the module's INDEX", async () => {
    const { dir, truth } = await gen({
      ...SMALL,
      modules: [3],
      writeDa: false,
      missingAsZeroCount: false,
      missingTrains: [{ module: 3, trains: [0, 2] }],
    });
    expect(truth.files).toEqual(["CORR-R0001-AGIPD03-S00000.h5"]);
    const f = await open(dir, truth.files[0]);
    expect(validate("absent", f)).toEqual([]);
    expect(nums(f, "INDEX/trainId")).toEqual([truth.trains[1]]);
    f.close();
  });
});

// ---------------------------------------------------------------------------------------------------------
// Truth against the pixels

describe("truth consistent with the data", () => {
  let run: { dir: string; truth: Truth };
  beforeAll(async () => {
    run = await gen({
      seed: 11,
      modules: [0, 5],
      trains: 3,
      trainsPerFile: 3,
      framesPerTrain: 8,
      litFraction: 0.5,
      spotsPerFrame: [2, 4],
      deadAsics: [{ module: 5, asic: 9, mode: "zero" }, { module: 0, asic: 2, mode: "masked" }],
      darkTrains: [2],
    });
  });

  test("spots, dark frames, hot / masked / NaN pixels, dead ASICs", async () => {
    const { dir, truth } = run;
    const g = geometry("AGIPD");
    const n = g.pixels;
    expect(truth.frames.filter((x) => x.trainId === truth.trains[2]).every((x) => !x.lit)).toBe(true);
    expect(truth.spots.length).toBeGreaterThan(5);
    for (const s of truth.spots) {
      const fr = truth.frames.find((x) => x.trainId === s.trainId && x.frame === s.frame)!;
      expect(fr.lit).toBe(true);
      expect(fr.modules).toContain(s.module);
    }
    expect(truth.spots.some((s) => s.nearEdge)).toBe(true);
    for (const m of [0, 5]) {
      const src = truth.sources.modules.find((x) => x.module === m)!.source;
      const f = await open(dir, `CORR-R0001-AGIPD0${m}-S00000.h5`);
      const img = `INSTRUMENT/${src}/image`;
      const rows = shape(f, `${img}/data`)[0];
      const data = new Float32Array(rows * n), mask = new Uint32Array(rows * n);
      readRows(f, `${img}/data`, [rows, 512, 128], 0, rows, data);
      readRows(f, `${img}/mask`, [rows, 512, 128], 0, rows, mask);
      const tid = nums(f, `${img}/trainId`), fno = nums(f, `${img}/pulseId`).map((p) => p / truth.stride);
      // Pixel classes from the truth: 0 plain, 1 dead "zero", 2 dead "masked", 3 masked, 4 NaN, 5 hot.
      const cls = new Uint8Array(n);
      for (let i = 0; i < n; i++) {
        const a = asicOf(g, Math.floor(i / 128), i % 128);
        const d = truth.deadAsics.find((x) => x.module === m && x.asic === a);
        if (d) cls[i] = d.mode === "masked" ? 2 : 1;
      }
      const mp = truth.maskedPixels.find((x) => x.module === m)!;
      for (const [r, c] of mp.pixels) cls[r * 128 + c] = 3;
      for (const c of mp.columns) for (let r = 0; r < 512; r++) if (!cls[r * 128 + c]) cls[r * 128 + c] = 3;
      expect(mp.count).toBe(cls.filter((x) => x === 3).length);
      for (const h of truth.nanPixels.filter((h) => h.module === m)) cls[h.ss * 128 + h.fs] = 4;
      for (const h of truth.hotPixels.filter((h) => h.module === m)) cls[h.ss * 128 + h.fs] = 5;
      const plain = (i: number) => cls[i] === 0;
      let hotHigh = 0, hotAll = 0;
      const wrong = new Map<string, number>();
      const bad = (what: string) => wrong.set(what, (wrong.get(what) ?? 0) + 1);
      for (let r = 0; r < rows; r++) {
        const fr = truth.frames.find((x) => x.trainId === tid[r] && x.frame === fno[r])!;
        const base = r * n;
        let sum = 0, max = -Infinity;
        for (let i = 0; i < n; i++) {
          const v = data[base + i], mk = mask[base + i];
          switch (cls[i]) {
            case 1:
            case 2:
              if (v !== 0) bad("dead ASIC pixel not 0");
              if (mk !== (cls[i] === 2 ? 0x10 : 0)) bad("dead ASIC mask");
              break;
            case 3:
              if (mk === 0) bad("masked pixel with mask 0");
              if (!(v <= -1 || v >= 1e5)) bad("masked pixel without garbage");
              break;
            case 4:
              if (!Number.isNaN(v)) bad("NaN pixel not NaN");
              if (mk !== 0) bad("NaN pixel masked");
              break;
            default:
              if (mk !== 0) bad("plain pixel masked");
              if (Number.isNaN(v)) bad("plain pixel NaN");
              if (cls[i] === 5) {
                hotAll++;
                if (v >= 4) hotHigh++;
              } else {
                sum += v;
                if (v > max) max = v;
              }
          }
        }
        const spots = truth.spots.filter((s) => s.module === m && s.trainId === tid[r] && s.frame === fno[r]);
        if (!fr.lit) {
          // Dark frame: read noise only (no photon above 1).
          expect(spots).toEqual([]);
          expect(max).toBeLessThan(1);
          expect(Math.abs(sum / n)).toBeLessThan(0.01);
        } else {
          const counted = spots.reduce((a, s) => a + s.counted, 0);
          expect(sum).toBeGreaterThan(0.9 * counted);
          for (const s of spots) {
            expect(s.counted).toBeGreaterThan(0.5 * s.photons - 3 * Math.sqrt(s.photons));
            // Photons within 2 sigma (+1 px) of the centre: most of the spot.
            const w = Math.ceil(2 * s.sigma) + 1;
            let inWin = 0;
            for (
              let rr = Math.max(0, Math.round(s.ss) - w);
              rr <= Math.min(511, Math.round(s.ss) + w);
              rr++
            ) {
              for (
                let cc = Math.max(0, Math.round(s.fs) - w);
                cc <= Math.min(127, Math.round(s.fs) + w);
                cc++
              ) {
                const i = rr * 128 + cc;
                if (plain(i)) inWin += data[base + i];
              }
            }
            expect(inWin).toBeGreaterThan(0.6 * s.counted - 3);
          }
        }
      }
      expect(Object.fromEntries(wrong)).toEqual({});
      expect(hotHigh / hotAll).toBeGreaterThan(0.8);
      f.close();
    }
  });

  test("diffuse mode: extended signal on lit frames only, scaled by the pulse energy", async () => {
    const { dir, truth } = await gen({
      modules: [5],
      trains: 2,
      framesPerTrain: 6,
      litFraction: 0.5,
      diffuse: 0.5,
      spotsPerFrame: [0, 0],
      background: 0,
      writeDa: false,
    });
    expect(truth.diffuse).not.toBeNull();
    expect(truth.spots).toEqual([]);
    const f = await open(dir, truth.files[0]);
    const img = `INSTRUMENT/${truth.sources.modules[0].source}/image`;
    const rows = shape(f, `${img}/data`)[0];
    const data = new Float32Array(rows * 65536), mask = new Uint32Array(rows * 65536);
    readRows(f, `${img}/data`, [rows, 512, 128], 0, rows, data);
    readRows(f, `${img}/mask`, [rows, 512, 128], 0, rows, mask);
    const hot = new Set(truth.hotPixels.map((h) => h.ss * 128 + h.fs));
    const means: { lit: boolean; mean: number; energy: number }[] = [];
    for (let r = 0; r < rows; r++) {
      let sum = 0, k = 0;
      for (let i = 0; i < 65536; i++) {
        const v = data[r * 65536 + i];
        if (mask[r * 65536 + i] || Number.isNaN(v) || hot.has(i) || v === 0) continue;
        sum += v;
        k++;
      }
      means.push({ lit: truth.frames[r].lit, mean: sum / k, energy: truth.frames[r].energy });
    }
    const lit = means.filter((x) => x.lit), dark = means.filter((x) => !x.lit);
    expect(lit.length).toBeGreaterThan(1);
    for (const x of dark) expect(Math.abs(x.mean)).toBeLessThan(0.002);
    for (const x of lit) {
      expect(x.mean).toBeGreaterThan(0.005);
      // Mean photons per pixel per µJ: the same for every lit frame (Poisson noise aside).
      expect((x.mean / x.energy) / (lit[0].mean / lit[0].energy)).toBeCloseTo(1, 1);
    }
    f.close();
  });

  test("the bunch pattern decodes to the lit frames; XGM holds their energies", async () => {
    const cases: Partial<SynthOptions>[] = [
      { detectorName: "SPB_DET_AGIPD1M-1", repRate: 1.1 },
      { detectorName: "MID_DET_AGIPD1M-1", repRate: 2.2, referenceFrames: 2, firstPulseSlot: 300 },
      { detector: "DSSC", repRate: 4.5, timeServerMissing: [1], extraPulses: 2 },
      { detector: "LPD", repRate: 0.5, litPattern: "regular", litFraction: 0.34, firstPulseId: 3 },
    ];
    for (const c of cases) {
      const { dir, truth } = await gen({ ...SMALL, modules: [1], trains: 3, framesPerTrain: [7, 9], ...c });
      const o = truth.options;
      const sase = o.detectorName.startsWith("MID") ? 2 : o.detectorName.startsWith("SCS") ? 3 : 1;
      expect(o.sase).toBe(sase);
      const f = await open(dir, truth.files.find((x) => x.includes("DA01"))!);
      expect(validate("DA01", f)).toEqual([]);
      const ts = truth.sources.timeServer!;
      const inst = o.detectorName.split("_")[0];
      expect(ts).toBe(`${inst}_RR_SYS/TSYS/TIMESERVER:outputBunchPattern`);
      const count = nums(f, `INDEX/${ts}/data/count`);
      const first = nums(f, `INDEX/${ts}/data/first`);
      const table = readAll(f, `INSTRUMENT/${ts}/data/bunchPatternTable`) as Uint32Array;
      expect(shape(f, `INSTRUMENT/${ts}/data/bunchPatternTable`)[1]).toBe(2700);
      const xgm = truth.sources.xgm!;
      const inten = readAll(f, `INSTRUMENT/${xgm}/data/intensityTD`) as Float32Array;
      const L = shape(f, `INSTRUMENT/${xgm}/data/intensityTD`)[1];
      const stride = STRIDES[String(o.repRate)];
      truth.trains.forEach((t, i) => {
        const frames = truth.frames.filter((x) => x.trainId === t);
        const lit = frames.filter((x) => x.lit);
        const energies = Array.from(inten.subarray(i * L, (i + 1) * L));
        const nPulses = truth.pulses[i].slots.length;
        expect(nPulses).toBe(lit.length + (o.extraPulses ?? 0));
        expect(energies.slice(0, nPulses).every((e) => e > 0)).toBe(true);
        expect(energies.slice(nPulses).every((e) => e === 0)).toBe(true);
        lit.forEach((x, k) => expect(energies[k]).toBeCloseTo(x.energy, 2));
        if (o.timeServerMissing.includes(i)) {
          expect(count[i]).toBe(0);
          return;
        }
        expect(count[i]).toBe(1);
        const slots = saseSlots(table.subarray(first[i] * 2700, first[i] * 2700 + 2700), sase as 1 | 2 | 3);
        expect(slots).toEqual(truth.pulses[i].slots);
        for (const x of frames) {
          const slot = x.frame >= o.referenceFrames
            ? o.firstPulseSlot + (x.frame - o.referenceFrames) * stride
            : -1;
          expect(x.lit).toBe(slots.includes(slot));
          expect(x.pulseId).toBe(o.firstPulseId + x.frame * stride);
        }
        // The other SASEs have bunches too, never in a frame's slot.
        const others = ([1, 2, 3] as const).filter((s) => s !== sase).flatMap((s) =>
          saseSlots(table.subarray(first[i] * 2700, first[i] * 2700 + 2700), s)
        );
        expect(others.length).toBeGreaterThan(0);
        for (const x of frames) expect(others).not.toContain(x.pulseSlot);
      });
      f.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------------------

describe("the committed sample", () => {
  const sample = path.join(
    import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname),
    "..",
    "fixtures",
    "sample",
  );

  test("content as documented, and regenerated byte for byte in its data arrays", async () => {
    const truth = JSON.parse(fs.readFileSync(path.join(sample, "truth.json"), "utf8")) as Truth;
    const o = truth.options;
    expect(o.detector).toBe("AGIPD");
    expect(o.level).toBe("corr");
    expect(o.naming).toBe("output");
    expect(o.format).toBe("1.2");
    expect(o.modules.length).toBeGreaterThanOrEqual(2);
    expect(truth.frames.some((x) => x.lit)).toBe(true);
    expect(truth.spots.length).toBeGreaterThan(0);
    expect(truth.hotPixels.length).toBeGreaterThan(0);
    expect(truth.maskedPixels.every((x) => x.columns.length === 1)).toBe(true);
    expect(truth.nanPixels.length).toBeGreaterThan(0);
    expect(truth.deadAsics.length).toBe(1);
    expect(o.missingTrains.length).toBe(1);
    expect(truth.files.filter((x) => x.includes("DA01")).length).toBe(1);
    const bytes = fs.readdirSync(sample).reduce((a, x) => a + fs.statSync(path.join(sample, x)).size, 0);
    expect(bytes).toBeLessThan(5e6);
    expect(fs.readdirSync(sample).sort()).toEqual([...truth.files, "truth.json"].sort());

    const again = await gen(SAMPLE_OPTIONS);
    expect(JSON.parse(JSON.stringify(again.truth))).toEqual(truth);
    for (const name of truth.files) {
      const a = await open(sample, name), b = await open(again.dir, name);
      for (const grp of name.includes("DA01") ? ["INSTRUMENT", "CONTROL"] : ["INSTRUMENT"]) {
        for (const p of datasetsUnder(a, grp)) {
          const x = readAll(a, `${grp}/${p}`), y = readAll(b, `${grp}/${p}`);
          expect(
            Buffer.from(y.buffer, y.byteOffset, y.byteLength).equals(
              Buffer.from(x.buffer, x.byteOffset, x.byteLength),
            ),
          )
            .toBe(true);
        }
      }
      a.close(), b.close();
    }
  });
});

describe("independent reader (h5py)", () => {
  test.skipIf(!independentAvailable())(
    "a generated CORR file with the legacy link reads back the same",
    async () => {
      const { dir, truth } = await gen({
        ...SMALL,
        modules: [4],
        naming: "output",
        compression: 1,
        noiseQuantum: 1 / 64,
      });
      const name = truth.files.find((x) => x.includes("AGIPD04"))!;
      const src = "SPB_DET_AGIPD1M-1/CORR/4CH0:output";
      const legacy = "SPB_DET_AGIPD1M-1/DET/4CH0:xtdf";
      const img = `INSTRUMENT/${src}/image`;
      const ans = readIndependent(path.join(dir, name), {
        keys: [img, "INSTRUMENT/SPB_DET_AGIPD1M-1/DET"],
        info: [
          `${img}/data`,
          `${img}/mask`,
          `${img}/gain`,
          `${img}/trainId`,
          `${img}/cellId`,
          "INDEX/trainId",
        ],
        values: [
          { path: `${img}/data`, select: "3, 100:104, 7" },
          { path: `${img}/pulseId` },
          { path: "METADATA/dataSources/dataSourceId" },
          { path: "METADATA/dataFormatVersion" },
          { path: `INDEX/${legacy}/image/count` },
        ],
        links: [`INSTRUMENT/${legacy}`, `INDEX/${legacy}`, `INSTRUMENT/${src}`],
        walk: true,
      });
      const rows = truth.frames.length;
      expect(ans.keys[img]).toEqual(["cellId", "data", "gain", "mask", "pulseId", "trainId"]);
      expect(ans.keys["INSTRUMENT/SPB_DET_AGIPD1M-1/DET"]).toEqual(["4CH0:xtdf"]);
      expect(ans.info[`${img}/data`]).toMatchObject({
        shape: [rows, 512, 128],
        dtype: "<f4",
        compression: "gzip",
      });
      expect(ans.info[`${img}/mask`]).toMatchObject({ shape: [rows, 512, 128], dtype: "<u4" });
      expect(ans.info[`${img}/gain`].dtype).toBe("|u1");
      expect(ans.info[`${img}/trainId`]).toMatchObject({ shape: [rows], dtype: "<u8" });
      expect(ans.info[`${img}/cellId`].dtype).toBe("<u2");
      expect(ans.info["INDEX/trainId"].dtype).toBe("<u8");
      expect(ans.links[`INSTRUMENT/${legacy}`]).toBe(`/INSTRUMENT/${src}`);
      expect(ans.links[`INDEX/${legacy}`]).toBe(`/INDEX/${src}`);
      expect(ans.links[`INSTRUMENT/${src}`]).toBeNull();
      expect(ans.values[`INDEX/${legacy}/image/count`].data).toEqual([6, 6, 6]);
      expect(ans.values["METADATA/dataFormatVersion"].data).toEqual(["1.2"]);
      expect(ans.values["METADATA/dataSources/dataSourceId"].data).toContain(`INSTRUMENT/${src}/image`);
      expect(ans.values[`${img}/pulseId`].data).toEqual(truth.frames.map((x) => x.pulseId));
      // Walking hard links meets the module's data once; the legacy names are soft links.
      expect(ans.datasets.filter((p) => p.endsWith("image/data"))).toEqual([`${img}/data`]);
      expect(ans.softLinks[`INSTRUMENT/${legacy}`]).toBe(`/INSTRUMENT/${src}`);
      // Same values as h5wasm reads.
      const f = await open(dir, name);
      const row = new Float32Array(512 * 128);
      readRows(f, `${img}/data`, [rows, 512, 128], 3, 1, row);
      const mine = [100, 101, 102, 103].map((r) => row[r * 128 + 7]);
      const theirs = ans.values[`${img}/data[3, 100:104, 7]`].data;
      expect(theirs).toEqual(mine.map((x) => (Number.isNaN(x) ? null : x)));
      f.close();
    },
  );
});

describe("make-run CLI", () => {
  test("help, bad options, refusing a non-empty directory, a run", async () => {
    const err: string[] = [];
    const out: string[] = [];
    const w1 = process.stderr.write, w2 = process.stdout.write;
    (process.stderr as any).write = (s: string) => (err.push(String(s)), true);
    (process.stdout as any).write = (s: string) => (out.push(String(s)), true);
    try {
      expect(await makeRunCli(["--help"])).toBe(0);
      expect(out.join("")).toContain("--size-gb");
      expect(await makeRunCli(["--out", path.join(tmp, "cli"), "--frobnicate"])).toBe(2);
      expect(await makeRunCli(["--out", path.join(tmp, "cli"), "--detector", "XYZ"])).toBe(2);
      expect(await makeRunCli(["--out", path.join(tmp, "cli"), "--format", "0.5", "--trains", "0"])).toBe(2);
      expect(err.every((l) => l.startsWith("make-run: ") && l.trim().split("\n").length === 1)).toBe(true);
      const d = path.join(tmp, "cli");
      expect(
        await makeRunCli(["--out", d, "--modules", "1,3", "--trains", "2", "--frames", "3", "--seed", "9"]),
      ).toBe(0);
      expect(fs.readdirSync(d)).toContain("CORR-R0001-AGIPD03-S00000.h5");
      expect(await makeRunCli(["--out", d, "--trains", "1"])).toBe(2);
      expect(err[err.length - 1]).toMatch(/not empty/);
      expect(await makeRunCli(["--out", d, "--trains", "1", "--raw", "--modules", "0", "--force", "--quiet"]))
        .toBe(0);
      expect(fs.readdirSync(d).sort()).toEqual([
        "RAW-R0001-AGIPD00-S00000.h5",
        "RAW-R0001-DA01-S00000.h5",
        "truth.json",
      ]);
    } finally {
      (process.stderr as any).write = w1;
      (process.stdout as any).write = w2;
    }
    expect(parseList("0-3,5", "module")).toEqual([0, 1, 2, 3, 5]);
  });
});
