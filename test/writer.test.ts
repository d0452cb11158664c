/**
 * FileWriter: the azimuthal-integration example of the docs, round trips (control and instrument sources,
 * several sequence files, bulk and per-train writing, buffering on and off), every check's error, and no
 * partial file under a final name after errors, aborts, signals and SIGKILL. Every file written is checked
 * with the EXDF validity rules (test/helpers/exdf-validate.ts) and read back with h5py and h5dump.
 */
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import h5wasm from "h5wasm/node";
import {
  DEFAULT_TEMPLATE,
  defineSchema,
  FileWriter,
  formatTemplate,
  openWriter,
  WriterError,
  type WriterOptions,
} from "../src/exdf/writer/writer.ts";
import { ensureGroup, h5 } from "../src/exdf/h5.ts";
import { zeroWidth } from "../src/exdf/writer/files.ts";
import { PYTHON } from "./helpers/tools.ts";
import { validateExdf } from "./helpers/exdf-validate.ts";
import { h5dump, h5pyExdfView, h5pyRead, readerAvailability } from "./helpers/h5py.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-redu-writer-"));
let tmpN = 0;
const tmpDir = () => {
  const d = path.join(tmpRoot, `t${++tmpN}`);
  fs.mkdirSync(d);
  return d;
};
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

const readers = readerAvailability();
const withH5py = it.skipIf(!readers.h5py);

/** Every file: valid EXDF, readable by h5dump and (as EXtra-data opens it) by h5py. */
async function expectValid(files: string[]): Promise<void> {
  for (const f of files) {
    expect(await validateExdf(f), f).toEqual([]);
    if (readers.h5dump) expect(h5dump(["-H", f]).status, `h5dump ${f}`).toBe(0);
    if (readers.h5py) expect(h5pyExdfView(f).version).toBe("1.2");
  }
}

const listDir = (d: string) => fs.readdirSync(d).sort();

// ---------------------------------------------------------------------------------------------------
// The example of docs/writer.md and the README.

describe("azimuthal-integration example", () => {
  it("writes 99 trains x 3 entries in one call, split into valid sequence files", async () => {
    const dir = tmpDir();
    // --- example start ---
    const schema = defineSchema({
      parameters: ["det_name", "nmod", "nfrag", "nbins"],
      aliases: { prm: "{det_name}/x/y", res: "{det_name}/x/y:output" },
      datasets: {
        "geom.fragmentVectors": { source: "@prm", shape: ["nmod", "nfrag", 3, 3], dtype: "float64" },
        "param.numberOfBins": { source: "@prm", shape: [], dtype: "uint64" },
        "azimuthal.radial": { source: "@res", shape: ["nbins"], dtype: "float64" },
        "azimuthal.intensity": { source: "@res", shape: ["nbins"], dtype: "float64" },
      },
    });
    const nmod = 16, nfrag = 8, nbins = 1000;
    const writer = await FileWriter.open(path.join(dir, "az-{seq:02d}.h5"), schema, {
      params: { det_name: "MID_DET_AGIPD1M-1", nmod, nfrag, nbins },
      maxTrainsPerFile: 40,
    });
    try {
      // Control data: one value for the whole run.
      writer.setConstant("geom.fragmentVectors", new Float64Array(nmod * nfrag * 3 * 3).fill(0.5));
      writer.setConstant("param.numberOfBins", nbins);
      // 99 trains, 3 entries each for @res; then all their data in one call per dataset.
      const trainIds = Array.from({ length: 99 }, (_, i) => 10_000 + i);
      writer.addTrains(trainIds, { "@res": 3 });
      const radial = new Float64Array(297 * nbins).map((_, i) => (i % nbins) * 0.01);
      const intensity = new Float64Array(297 * nbins).map((_, i) => Math.sin(i));
      writer.addData("azimuthal.radial", { data: radial, shape: [297, nbins] });
      writer.addData("azimuthal.intensity", { data: intensity, shape: [297, nbins] });
      const files = writer.close(); // az-00.h5 (40 trains), az-01.h5 (40), az-02.h5 (19)
      // --- example end ---
      expect(files.map((f) => path.basename(f))).toEqual(["az-00.h5", "az-01.h5", "az-02.h5"]);
      expect(listDir(dir)).toEqual(["az-00.h5", "az-01.h5", "az-02.h5"]);
      await expectValid(files);
      if (!readers.h5py) return;
      const res = "MID_DET_AGIPD1M-1/x/y:output";
      const prm = "MID_DET_AGIPD1M-1/x/y";
      let row = 0;
      const ntrains = [40, 40, 19];
      for (const [i, f] of files.entries()) {
        const v = h5pyExdfView(f);
        expect(v.trainIds).toEqual(trainIds.slice(i * 40, i * 40 + ntrains[i]));
        expect(v.flag).toEqual(new Array(ntrains[i]).fill(1));
        expect(Object.keys(v.control)).toEqual([prm]);
        expect(v.control[prm].keys).toEqual([
          "geom.fragmentVectors.timestamp",
          "geom.fragmentVectors.value",
          "param.numberOfBins.timestamp",
          "param.numberOfBins.value",
        ]);
        expect(v.control[prm].runKeys).toEqual(v.control[prm].keys);
        expect(v.control[prm].count).toEqual(new Array(ntrains[i]).fill(1));
        expect(v.instrument[res].keys).toEqual(["azimuthal.intensity", "azimuthal.radial"]);
        expect(v.instrument[res].groups.azimuthal.count).toEqual(new Array(ntrains[i]).fill(3));
        expect(v.instrument[res].groups.azimuthal.first).toEqual(
          Array.from({ length: ntrains[i] }, (_, t) => 3 * t),
        );
        const d = h5pyRead(f, [
          `INSTRUMENT/${res}/azimuthal/intensity`,
          `CONTROL/${prm}/param/numberOfBins/value`,
          `RUN/${prm}/param/numberOfBins/value`,
          `CONTROL/${prm}/geom/fragmentVectors/value`,
          "METADATA/dataSources/dataSourceId",
          "METADATA/dataSources/root",
          "METADATA/dataSources/deviceId",
          "METADATA/sequenceNumber",
        ]);
        const inten = d[`INSTRUMENT/${res}/azimuthal/intensity`];
        expect(inten.shape).toEqual([3 * ntrains[i], nbins]);
        expect(inten.dtype).toBe("<f8");
        const n = 3 * ntrains[i] * nbins;
        expect(inten.values).toEqual(Array.from(intensity.subarray(row * nbins, row * nbins + n)));
        row += 3 * ntrains[i];
        expect(d[`CONTROL/${prm}/param/numberOfBins/value`].values).toEqual(new Array(ntrains[i]).fill(1000));
        expect(d[`RUN/${prm}/param/numberOfBins/value`].values).toEqual([1000]);
        expect(d[`CONTROL/${prm}/geom/fragmentVectors/value`].shape).toEqual([ntrains[i], 16, 8, 3, 3]);
        expect(d["METADATA/dataSources/dataSourceId"].values).toEqual([
          `CONTROL/${prm}`,
          `INSTRUMENT/${res}/azimuthal`,
        ]);
        expect(d["METADATA/dataSources/root"].values).toEqual(["CONTROL", "INSTRUMENT"]);
        expect(d["METADATA/dataSources/deviceId"].values).toEqual([prm, `${res}/azimuthal`]);
        expect(d["METADATA/sequenceNumber"].values).toEqual([i]);
      }
    } finally {
      writer.abort();
    }
  });

  it("docs/writer.md shows the same code", () => {
    const lines = (text: string) => {
      const a = text.indexOf("// --- example start ---");
      const b = text.indexOf("// --- example end ---");
      return text.slice(a, b).split("\n").map((l) => l.trim()).filter((l) => l && l !== "try {");
    };
    const doc = fs.readFileSync(path.join(ROOT, "docs/writer.md"), "utf8");
    const test = fs.readFileSync(fileURLToPath(import.meta.url), "utf8");
    expect(lines(doc).length).toBeGreaterThan(20);
    expect(lines(doc)).toEqual(lines(test));
  });
});

// ---------------------------------------------------------------------------------------------------
// Round trips: the same content written in bulk and train by train, buffered and direct.

const RT = defineSchema({
  aliases: { mot: "SPB_XTD9/MOTOR/{m}", det: "SPB_DET/x/{m}:output" },
  datasets: {
    pos: { source: "@mot", key: "actualPosition", shape: [], dtype: "float64" },
    vec: { source: "@mot", key: "state.vector", shape: [4], dtype: "uint16" },
    image: { source: "@det", key: "data.image", shape: [8, 4], dtype: "float32" },
    pulse: { source: "@det", key: "data.pulseId", shape: [], dtype: "uint64" },
    energy: { source: "@det", key: "meta.energy", shape: [2], dtype: "int32" },
  },
});
const NT = 30;
const TIDS = Array.from({ length: NT }, (_, i) => 5000 + 2 * i);
const COUNTS = Array.from({ length: NT }, (_, i) => [2, 0, 3, 1, 5][i % 5]);
const NROWS = COUNTS.reduce((a, b) => a + b, 0);
const TS = TIDS.map((_, i) => 1_700_000_000_000_000_000n + BigInt(i) * 100_000_000n);
const gen = {
  pos: (r: number, n: number) => Float64Array.from({ length: n }, (_, i) => (r + i) * 0.25),
  vec: (r: number, n: number) => Uint16Array.from({ length: 4 * n }, (_, i) => (4 * r + i) % 65536),
  image: (r: number, n: number) => Float32Array.from({ length: 32 * n }, (_, i) => 32 * r + i),
  pulse: (r: number, n: number) => BigUint64Array.from({ length: n }, (_, i) => BigInt(r + i)),
  energy: (r: number, n: number) => Int32Array.from({ length: 2 * n }, (_, i) => -(2 * r + i)),
};
const rowsBefore = (t: number) => COUNTS.slice(0, t).reduce((a, b) => a + b, 0);

async function writeRoundTrip(
  dir: string,
  mode: "bulk" | "perTrain" | "mixed",
  options: WriterOptions,
): Promise<string[]> {
  const w = await openWriter(path.join(dir, "rt-S{seq:03d}.h5"), RT, { params: { m: "M1" }, ...options });
  if (mode === "bulk") {
    // All trains first, then each dataset in pieces of whole trains (the pieces differ per dataset).
    w.addTrains(TIDS, { "@det": COUNTS }, { timestamps: TS });
    for (
      const [name, cuts] of [["pos", [0, 30]], ["vec", [0, 7, 8, 30]], ["image", [
        0,
        13,
        14,
        29,
        30,
      ]]] as const
    ) {
      for (let k = 0; k + 1 < cuts.length; k++) {
        const r = cuts[k] === 0 ? 0 : cuts[k];
        const [a, b] = [cuts[k], cuts[k + 1]];
        const [ra, rb] = name === "image" ? [rowsBefore(a), rowsBefore(b)] : [r, b];
        w.addData(name, gen[name](ra, rb - ra));
      }
    }
    w.addData({ pulse: gen.pulse(0, NROWS), energy: { data: gen.energy(0, NROWS), shape: [NROWS, 2] } });
  } else if (mode === "perTrain") {
    for (let t = 0; t < NT; t++) {
      const r = rowsBefore(t);
      const c = COUNTS[t];
      const det = c ? { image: gen.image(r, c), pulse: gen.pulse(r, c), energy: gen.energy(r, c) } : {};
      w.writeTrain(TIDS[t], { pos: gen.pos(t, 1)[0], vec: gen.vec(t, 1), ...det }, { timestamp: TS[t] });
    }
  } else {
    // Trains in batches, data lagging behind by a batch: files complete as the data arrives.
    for (let b = 0; b < NT; b += 6) {
      w.addTrains(TIDS.slice(b, b + 6), { "@det": COUNTS.slice(b, b + 6) }, {
        timestamps: TS.slice(b, b + 6),
      });
      if (b >= 6) {
        const [ra, rb] = [rowsBefore(b - 6), rowsBefore(b)];
        w.addData({ pos: gen.pos(b - 6, 6), vec: gen.vec(b - 6, 6) });
        w.addData({
          image: gen.image(ra, rb - ra),
          pulse: gen.pulse(ra, rb - ra),
          energy: gen.energy(ra, rb - ra),
        });
      }
    }
    const [ra, rb] = [rowsBefore(NT - 6), NROWS];
    w.addData({ pos: gen.pos(NT - 6, 6), vec: gen.vec(NT - 6, 6) });
    w.addData({
      image: gen.image(ra, rb - ra),
      pulse: gen.pulse(ra, rb - ra),
      energy: gen.energy(ra, rb - ra),
    });
  }
  return w.close();
}

/** Read a run back (with h5wasm: runs without h5py too) and compare with the generators. */
async function checkRoundTrip(files: string[], perFile: number): Promise<void> {
  await expectValid(files);
  const lib = await h5();
  const mot = "SPB_XTD9/MOTOR/M1";
  const det = "SPB_DET/x/M1:output";
  const cat = (parts: ArrayLike<any>[]) => parts.flatMap((p) => Array.from(p));
  const got: Record<string, any[][]> = {};
  const add = (k: string, v: any) => (got[k] ??= []).push(v);
  for (const [i, f] of files.entries()) {
    const h = new lib.File(f, "r");
    try {
      const nt = Math.min(perFile, NT - i * perFile);
      const tid = h.get("INDEX/trainId") as any;
      expect(Array.from(tid.value as BigUint64Array, Number)).toEqual(
        TIDS.slice(i * perFile, i * perFile + nt),
      );
      add("ts", (h.get("INDEX/timestamp") as any).value);
      add("mts", (h.get(`CONTROL/${mot}/actualPosition/timestamp`) as any).value);
      add("pos", (h.get(`CONTROL/${mot}/actualPosition/value`) as any).value);
      add("vec", (h.get(`CONTROL/${mot}/state/vector/value`) as any).value);
      add("image", (h.get(`INSTRUMENT/${det}/data/image`) as any).value);
      add("pulse", (h.get(`INSTRUMENT/${det}/data/pulseId`) as any).value);
      add("energy", (h.get(`INSTRUMENT/${det}/meta/energy`) as any).value);
      for (const g of ["data", "meta"]) add(`count.${g}`, (h.get(`INDEX/${det}/${g}/count`) as any).value);
      add("mcount", (h.get(`INDEX/${mot}/count`) as any).value);
      expect(Array.from((h.get(`RUN/${mot}/actualPosition/value`) as any).value)).toEqual([
        i * perFile * 0.25,
      ]);
    } finally {
      h.close();
    }
  }
  expect(cat(got.ts)).toEqual(TS);
  expect(cat(got.mts)).toEqual(TS);
  expect(cat(got.pos)).toEqual(Array.from(gen.pos(0, NT)));
  expect(cat(got.vec)).toEqual(Array.from(gen.vec(0, NT)));
  expect(cat(got.image)).toEqual(Array.from(gen.image(0, NROWS)));
  expect(cat(got.pulse)).toEqual(Array.from(gen.pulse(0, NROWS)));
  expect(cat(got.energy)).toEqual(Array.from(gen.energy(0, NROWS)));
  expect(cat(got["count.data"]).map(Number)).toEqual(COUNTS);
  expect(cat(got["count.meta"]).map(Number)).toEqual(COUNTS);
  expect(cat(got.mcount).map(Number)).toEqual(new Array(NT).fill(1));
}

describe("round trips", () => {
  for (const mode of ["bulk", "perTrain", "mixed"] as const) {
    for (const buffering of [true, false]) {
      it(`${mode} writing, buffering ${buffering ? "on" : "off"}, 7 trains per file`, async () => {
        const dir = tmpDir();
        const files = await writeRoundTrip(dir, mode, { maxTrainsPerFile: 7, buffering, bufferBytes: 4096 });
        expect(files.map((f) => path.basename(f))).toEqual(
          ["rt-S000.h5", "rt-S001.h5", "rt-S002.h5", "rt-S003.h5", "rt-S004.h5"],
        );
        expect(listDir(dir)).toEqual(files.map((f) => path.basename(f)));
        await checkRoundTrip(files, 7);
      });
    }
  }

  it("one file without splitting; tiny slices and a single open file", async () => {
    const dir = tmpDir();
    const files = await writeRoundTrip(dir, "bulk", { sliceBytes: 64, maxOpenFiles: 1 });
    expect(files.map((f) => path.basename(f))).toEqual(["rt-S000.h5"]);
    await checkRoundTrip(files, NT);
  });

  it("many files open at once through a small LRU (data ahead of the other datasets)", async () => {
    const dir = tmpDir();
    const w = await openWriter(path.join(dir, "lru-{seq}.h5"), RT, {
      params: { m: "M1" },
      maxTrainsPerFile: 2,
      maxOpenFiles: 2,
      bufferBytes: 1000,
    });
    w.addTrains(TIDS, { "@det": COUNTS }, { timestamps: TS });
    // image for all trains first: 15 files receive data before any can complete.
    w.addData("image", gen.image(0, NROWS));
    expect(w.files).toEqual([]);
    for (let t = 0; t < NT; t++) w.addData({ pos: gen.pos(t, 1), vec: gen.vec(t, 1) });
    w.addData({ pulse: gen.pulse(0, NROWS), energy: gen.energy(0, NROWS) });
    expect(w.files.length).toBe(14); // the last file stays open until close()
    const files = w.close();
    expect(files.length).toBe(15);
    await checkRoundTrip(files, 2);
  });

  withH5py("control sources with trains missing (count 0): index, timestamps and RUN values", async () => {
    const dir = tmpDir();
    const w = await openWriter(path.join(dir, "m-{seq}.h5"), RT, {
      params: { m: "M1" },
      maxTrainsPerFile: 3,
    });
    const mc = [0, 1, 0, 1, 1, 0];
    w.addTrains([1, 2, 3, 4, 5, 6], { "@mot": mc }, { timestamps: [10, 20, 30, 40, 50, 60] });
    w.addData({ pos: [0.5, 1.5, 2.5], vec: gen.vec(0, 3) });
    const files = w.close();
    expect(files.length).toBe(2);
    await expectValid(files);
    const mot = "SPB_XTD9/MOTOR/M1";
    const v0 = h5pyExdfView(files[0]);
    expect(v0.control[mot].count).toEqual([0, 1, 0]);
    expect(v0.control[mot].first).toEqual([0, 0, 1]);
    const d0 = h5pyRead(files[0], [
      `CONTROL/${mot}/actualPosition/value`,
      `CONTROL/${mot}/actualPosition/timestamp`,
      `RUN/${mot}/actualPosition/value`,
      `RUN/${mot}/actualPosition/timestamp`,
    ]);
    expect(d0[`CONTROL/${mot}/actualPosition/value`].values).toEqual([0.5]);
    expect(d0[`CONTROL/${mot}/actualPosition/timestamp`].values).toEqual([20]);
    expect(d0[`RUN/${mot}/actualPosition/value`].values).toEqual([0.5]);
    expect(d0[`RUN/${mot}/actualPosition/timestamp`].values).toEqual([20]);
    const d1 = h5pyRead(files[1], [
      `CONTROL/${mot}/actualPosition/value`,
      `CONTROL/${mot}/actualPosition/timestamp`,
    ]);
    expect(d1[`CONTROL/${mot}/actualPosition/value`].values).toEqual([1.5, 2.5]);
    expect(d1[`CONTROL/${mot}/actualPosition/timestamp`].values).toEqual([40, 50]);
    expect(h5pyExdfView(files[1]).control[mot].count).toEqual([1, 1, 0]);
  });

  it("splits by bytes", async () => {
    const dir = tmpDir();
    // Per entry: image 128 B + pulse 8 B + energy 8 B = 144 B; control: 8+8 + 8+8 B per train.
    const limit = 1000;
    const files = await writeRoundTrip(dir, "bulk", { maxBytesPerFile: limit });
    expect(files.length).toBeGreaterThan(3);
    await expectValid(files);
    let total = 0;
    const lib = await h5();
    for (const f of files) {
      const h = new lib.File(f, "r");
      const counts = Array.from(
        (h.get("INDEX/SPB_DET/x/M1:output/data/count") as any).value as BigUint64Array,
        Number,
      );
      h.close();
      const bytes = counts.reduce((a, c) => a + 144 * c + 32, 0);
      // Within the limit, unless one train alone exceeds it.
      if (counts.length > 1) expect(bytes).toBeLessThanOrEqual(limit);
      total += counts.length;
    }
    expect(total).toBe(NT);
  });

  it.skipIf(!readers.h5py || !readers.h5dump)(
    "chunking and gzip compression per dataset; h5py and h5dump read the values",
    async () => {
      const dir = tmpDir();
      const schema = defineSchema({
        datasets: {
          "data.image": {
            source: "DET/CORR/0CH0:output",
            shape: [16, 16],
            dtype: "float32",
            chunks: 4,
            compression: "gzip",
            compressionOpts: 6,
          },
          "data.mask": {
            source: "DET/CORR/0CH0:output",
            shape: [16, 16],
            dtype: "uint8",
            chunks: [8, 8, 16],
          },
        },
      });
      const w = await FileWriter.open(path.join(dir, "c.h5"), schema);
      w.addTrains([1, 2, 3], { "DET/CORR/0CH0:output": [10, 0, 6] });
      const img = Float32Array.from({ length: 16 * 256 }, (_, i) => i % 7);
      const mask = Uint8Array.from({ length: 16 * 256 }, (_, i) => i % 3);
      w.addData({ "data.image": img, "data.mask": mask });
      const files = w.close();
      await expectValid(files);
      const d = h5pyRead(files[0], [
        "INSTRUMENT/DET/CORR/0CH0:output/data/image",
        "INSTRUMENT/DET/CORR/0CH0:output/data/mask",
      ]);
      const im = d["INSTRUMENT/DET/CORR/0CH0:output/data/image"];
      expect(im.compression).toBe("gzip");
      expect(im.chunks).toEqual([4, 16, 16]);
      expect(im.values).toEqual(Array.from(img));
      expect(d["INSTRUMENT/DET/CORR/0CH0:output/data/mask"].chunks).toEqual([8, 8, 16]);
      expect(d["INSTRUMENT/DET/CORR/0CH0:output/data/mask"].values).toEqual(Array.from(mask));
      const dump = h5dump(["-d", "/INDEX/DET/CORR/0CH0:output/data/count", files[0]]);
      expect(dump.status).toBe(0);
      expect(dump.stdout).toMatch(/10, 0, 6/);
    },
  );

  it("default file names; METADATA; an empty run still gives one valid file", async () => {
    const dir = tmpDir();
    expect(formatTemplate(DEFAULT_TEMPLATE, { prefix: "CORR", run: 7, aggregator: "AGIPD00", seq: 3 }))
      .toBe("CORR-R0007-AGIPD00-S00003.h5");
    const w = await FileWriter.open(path.join(dir, DEFAULT_TEMPLATE), RT, {
      params: { m: "M2" },
      run: 12,
      proposal: 900001,
    });
    const files = w.close();
    expect(files.map((f) => path.basename(f))).toEqual(["REDU-R0012-REDU00-S00000.h5"]);
    await expectValid(files);
    const lib = await h5();
    const h = new lib.File(files[0], "r");
    try {
      expect((h.get("METADATA/dataFormatVersion") as any).value).toEqual(["1.2"]);
      expect((h.get("METADATA/creationDate") as any).value[0]).toMatch(/^\d{8}T\d{6}Z$/);
      expect((h.get("METADATA/updateDate") as any).value[0]).toMatch(/^\d{8}T\d{6}Z$/);
      expect(Number((h.get("METADATA/runNumber") as any).value)).toBe(12);
      expect(Number((h.get("METADATA/proposalNumber") as any).value)).toBe(900001);
      expect((h.get("INDEX/trainId") as any).shape).toEqual([0]);
    } finally {
      h.close();
    }
  });

  it("formatTemplate: widths, braces, errors", () => {
    expect(formatTemplate("{a}-{b:03d}-{{x}}-{c:4d}", { a: "A", b: 5, c: 12 })).toBe("A-005-{x}-  12");
    expect(formatTemplate("{n:03d}", { n: -5 })).toBe("-05");
    expect(() => formatTemplate("{zz}", { a: 1 })).toThrow(/no value for \{zz\}/);
    expect(() => formatTemplate("{a:x}", { a: 1 })).toThrow(/unsupported format/);
    expect(() => formatTemplate("{a:02d}", { a: "abc" })).toThrow(/needs an integer/);
    expect(() => formatTemplate("a}b", { a: 1 })).toThrow(/unmatched/);
  });
});

// ---------------------------------------------------------------------------------------------------
// Checks: every one raises a WriterError naming the dataset and the mismatch, before anything changes.

describe("checks", () => {
  const open = (dir: string, options: WriterOptions = {}) =>
    openWriter(path.join(dir, "chk-{seq}.h5"), RT, { params: { m: "M1" }, maxTrainsPerFile: 4, ...options });
  const err = (f: () => unknown, re: RegExp) => {
    let e: unknown;
    try {
      f();
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(WriterError);
    expect((e as Error).message).toMatch(re);
    return e as WriterError;
  };

  it("train IDs non-zero and strictly increasing; timestamps non-decreasing; counts", async () => {
    const dir = tmpDir();
    const w = await open(dir);
    err(() => w.addTrains([0, 1]), /train ID 0 at position 0: must be > 0/);
    err(() => w.addTrains([5, 5]), /train IDs must increase strictly: 5 at position 1 follows 5/);
    err(() => w.addTrains([5, 4]), /4 at position 1 follows 5/);
    err(() => w.addTrains([1.5]), /not an integer/);
    w.addTrains([10, 11], {}, { timestamps: [100, 200] });
    err(() => w.addTrains([11]), /11 at position 0 follows 11 \(the last train added\)/);
    err(
      () => w.addTrains([12], {}, { timestamps: [150] }),
      /timestamps must not decrease: 150 at position 0 follows 200/,
    );
    err(() => w.addTrains([12, 13], {}, { timestamps: [300] }), /1 timestamps given for 2 trains/);
    err(() => w.addTrains([12], { "@nope": 1 }), /unknown source "@nope"/);
    err(() => w.addTrains([12], { "@mot": 2 }), /control sources have 0 or 1 entries/);
    err(() => w.addTrains([12], { "@det": -1 }), /-1 for train 12 is not an integer >= 0/);
    err(() => w.addTrains([12, 13], { "@det": [1] }), /counts of @det: 1 values for 2 trains/);
    expect(w.trainCount).toBe(2); // the rejected calls changed nothing
    w.abort();
  });

  it("data length equals the sum of counts of whole trains", async () => {
    const dir = tmpDir();
    const w = await open(dir);
    w.addTrains([1, 2, 3], { "SPB_DET/x/M1:output": [2, 0, 3] });
    const e = err(
      () => w.addData("image", gen.image(0, 6)),
      /6 entries given, but the 3 trains added .* hold 5 entries/,
    );
    expect(e.dataset).toBe("image");
    expect(e.message).toContain(`dataset "image" (SPB_DET/x/M1:output data.image)`);
    err(
      () => w.addData("image", gen.image(0, 1)),
      /1 entries end inside train 1 \(1 of its 2 entries\): data must cover whole trains/,
    );
    err(() => w.addData("image", gen.image(0, 4)), /end inside train 3/);
    w.addData("image", gen.image(0, 2)); // trains 1 and 2 (the latter empty)
    err(() => w.addData("image", gen.image(2, 2)), /end inside train 3/);
    err(
      () => w.addData("pos", gen.pos(0, 4)),
      /4 entries given, but the 3 trains .* hold 3 entries of SPB_XTD9\/MOTOR\/M1/,
    );
    w.abort();
  });

  it("shapes and dtypes match the declaration", async () => {
    const dir = tmpDir();
    const w = await open(dir);
    w.addTrains([1, 2], { "@det": 1 });
    err(
      () => w.addData("image", new Float64Array(64)),
      /"image" .*dtype mismatch: declared float32 \(Float32Array\), got Float64Array/,
    );
    err(
      () => w.addData("image", new Float32Array(33)),
      /shape mismatch: 33 elements are not whole entries of shape \[8, 4\]/,
    );
    err(
      () => w.addData("image", { data: new Float32Array(64), shape: [2, 4, 8] }),
      /shape mismatch: declared entry shape \[8, 4\], got \[2, 4, 8\]/,
    );
    err(
      () => w.addData("image", { data: new Float32Array(64), shape: [2, 8, 5] }),
      /shape \[2, 8, 5\] does not match the data's 64 elements/,
    );
    err(() => w.addData("pulse", [1, 2.5]), /element 1 = 2.5 is not a uint64/);
    err(() => w.addData("vec", [70000, 0, 0, 0, 1, 2, 3, 4]), /element 0 = 70000 is not a uint16/);
    err(() => w.addData("energy", [[1, 2]] as any), /nested arrays/);
    err(
      () => w.addData("nope" as any, [1]),
      /unknown dataset "nope" \(declared: pos, vec, image, pulse, energy\)/,
    );
    err(
      () => w.writeTrain(3, { pos: 1, vec: [1, 2, 3, 4], image: gen.image(0, 2), pulse: gen.pulse(0, 1) }),
      /datasets differ in entries/,
    );
    err(
      () => w.writeTrain(3, { pos: 1, vec: [1, 2, 3, 4], image: gen.image(0, 1) }),
      /no data for dataset "pulse"/,
    );
    err(
      () => w.writeTrain(3, { vec: [1, 2, 3, 4] }),
      /no data for dataset "pos" .*control sources have one entry per train/,
    );
    err(
      () => w.writeTrain(3, { pos: [1, 2], vec: [1, 2, 3, 4] }),
      /control data has one entry per train, got 2/,
    );
    err(() => w.setConstant("image", gen.image(0, 1)), /setConstant is for control sources only/);
    err(
      () => w.setConstant("vec", [1, 2, 3, 4, 5, 6, 7, 8]),
      /a constant is one entry of shape \[4\], got 2 entries/,
    );
    // Plain numbers are converted to the declared dtype.
    w.addData({
      image: gen.image(0, 2),
      pulse: [0, 1],
      energy: [0, -1, -2, -3],
      pos: [0, 0.25],
      vec: gen.vec(0, 2),
    });
    const files = w.close();
    await expectValid(files);
  });

  it("schema and option errors at open", async () => {
    const dir = tmpDir();
    const p = path.join(dir, "x-{seq}.h5");
    const ds = (spec: object) =>
      ({ datasets: { d: { source: "A/B:out", key: "g.k", shape: [2], dtype: "float32", ...spec } } }) as any;
    await expect(openWriter(p, ds({ source: "@a" }))).rejects.toThrow(/dataset "d": unknown alias @a/);
    await expect(openWriter(p, ds({ shape: ["n"] }))).rejects.toThrow(
      /shape dimension "n" is not a parameter/,
    );
    await expect(openWriter(p, ds({ shape: [0] }))).rejects.toThrow(
      /shape dimension 0 is not an integer >= 1/,
    );
    await expect(openWriter(p, ds({ key: "k" }))).rejects.toThrow(/instrument keys need a group/);
    await expect(openWriter(p, ds({ dtype: "float16" }))).rejects.toThrow(/unknown dtype "float16"/);
    await expect(openWriter(p, ds({ chunks: [4, 3] }))).rejects.toThrow(
      /chunks \[4, 3\] do not fit entries of shape \[2\]/,
    );
    await expect(openWriter(p, ds({ source: "A//B" }))).rejects.toThrow(/invalid source name/);
    await expect(openWriter(p, ds({}), { params: { seq: 1 } })).rejects.toThrow(/reserved/);
    await expect(openWriter(p, { ...RT, parameters: ["m"] })).rejects.toThrow(/missing parameters: m/);
    await expect(openWriter(p, { ...RT, parameters: ["m"] }, { params: { m: 1, q: 2 } })).rejects.toThrow(
      /unknown parameters: q/,
    );
    await expect(openWriter(path.join(dir, "x.h5"), ds({}), { maxTrainsPerFile: 5 })).rejects.toThrow(
      /needs \{seq\}/,
    );
    await expect(openWriter(path.join(dir, DEFAULT_TEMPLATE), ds({}))).rejects.toThrow(
      /no value for \{run\}/,
    );
    await expect(openWriter(p, ds({}), { formatVersion: "1.0" })).rejects.toThrow(/formatVersion/);
    await expect(
      openWriter(p, {
        datasets: {
          a: { source: "S", key: "x", shape: [], dtype: "uint8" },
          b: { source: "S", key: "x.y", shape: [], dtype: "uint8" },
        },
      }),
    ).resolves.toBeDefined();
    await expect(
      openWriter(p, {
        datasets: {
          a: { source: "S:o", key: "g.x", shape: [], dtype: "uint8" },
          b: { source: "S:o", key: "g.x.y", shape: [], dtype: "uint8" },
        },
      }),
    ).rejects.toThrow(/both a dataset and a group/);
    await expect(
      openWriter(p, {
        datasets: {
          a: { source: "S", key: "x", shape: [], dtype: "uint8" },
          b: { source: "S", key: "x", shape: [], dtype: "uint8" },
        },
      }),
    ).rejects.toThrow(/declared twice/);
  });

  it("close lists missing data and keeps the writer open; fillMissing pads with zeros", async () => {
    const dir = tmpDir();
    const w = await open(dir);
    w.addTrains([1, 2, 3], { "@det": 1 });
    w.addData({ pos: gen.pos(0, 3), vec: gen.vec(0, 3), image: gen.image(0, 3), pulse: gen.pulse(0, 3) });
    err(
      () => w.close(),
      /cannot close: data missing for dataset "energy" \(SPB_DET\/x\/M1:output meta.energy\): 0 of 3 entries/,
    );
    w.addData("energy", gen.energy(0, 3));
    await expectValid(w.close());

    const dir2 = tmpDir();
    const w2 = await open(dir2);
    w2.addTrains([1, 2, 3, 4, 5], { "@det": 2 });
    w2.addData({ pos: gen.pos(0, 5), vec: gen.vec(0, 5), image: gen.image(0, 10), pulse: gen.pulse(0, 10) });
    const files = w2.close({ fillMissing: true });
    expect(files.length).toBe(2);
    await expectValid(files);
  });

  it("refuses to overwrite existing files unless asked", async () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "chk-1.h5"), "old");
    const w = await open(dir);
    w.addTrains([1, 2, 3, 4]);
    err(() => w.addTrains([5]), /chk-1.h5 exists \(open the writer with overwrite: true/);
    expect(w.trainCount).toBe(4);
    w.abort();
    expect(listDir(dir)).toEqual(["chk-1.h5"]);
    const w2 = await open(dir, { overwrite: true });
    w2.addTrains([1, 2, 3, 4, 5]);
    w2.setConstant("pos", 1.5);
    w2.setConstant("vec", [1, 2, 3, 4]);
    const files = w2.close();
    expect(listDir(dir)).toEqual(["chk-0.h5", "chk-1.h5"]);
    await expectValid(files);
  });

  it("after a rejected call the writer goes on; after close or abort it refuses", async () => {
    const dir = tmpDir();
    const w = await open(dir);
    w.writeTrain(1, { pos: 1, vec: [1, 2, 3, 4] });
    err(() => w.writeTrain(1, { pos: 1, vec: [1, 2, 3, 4] }), /follows 1/);
    w.writeTrain(2, { pos: 2, vec: [1, 2, 3, 4], image: gen.image(0, 1), pulse: 7n, energy: [1, 2] });
    const files = w.close();
    expect(w.close()).toEqual(files);
    err(() => w.addTrains([3]), /the writer is closed/);
    await expectValid(files);
    const w2 = await open(tmpDir());
    w2.abort();
    err(() => w2.addTrains([3]), /the writer was aborted/);
  });
});

// ---------------------------------------------------------------------------------------------------
// No partial file under a final name.

describe("temporary names", () => {
  it("abort removes the temporary files and keeps completed sequence files", async () => {
    const dir = tmpDir();
    const w = await openWriter(path.join(dir, "ab-{seq}.h5"), RT, {
      params: { m: "M1" },
      maxTrainsPerFile: 3,
    });
    w.addTrains([1, 2, 3, 4, 5], { "@det": 1 });
    w.addData({
      pos: gen.pos(0, 5),
      vec: gen.vec(0, 5),
      image: gen.image(0, 5),
      pulse: gen.pulse(0, 5),
      energy: gen.energy(0, 5),
    });
    const names = listDir(dir);
    expect(names).toContain("ab-0.h5");
    expect(names.filter((n) => n.startsWith(".ab-1.h5.tmp-"))).toHaveLength(1);
    w.abort();
    expect(listDir(dir)).toEqual(["ab-0.h5"]);
    await expectValid([path.join(dir, "ab-0.h5")]);
  });

  it("a failing write aborts the writer and leaves no temporary file", async () => {
    const dir = tmpDir();
    const w = await openWriter(path.join(dir, "f-{seq}.h5"), RT, {
      params: { m: "M1" },
      maxTrainsPerFile: 3,
    });
    w.addTrains([1, 2], { "@det": 1 });
    w.addData("image", gen.image(0, 2));
    const tmp = listDir(dir).find((n) => n.startsWith(".f-0.h5.tmp-"))!;
    // Sabotage: the temporary file's directory entry becomes a directory, so the rename must fail.
    w.addData({ pos: gen.pos(0, 2), vec: gen.vec(0, 2), pulse: gen.pulse(0, 2), energy: gen.energy(0, 2) });
    fs.mkdirSync(path.join(dir, "f-0.h5"));
    fs.writeFileSync(path.join(dir, "f-0.h5", "x"), "");
    expect(() => w.close()).toThrow(/write failed, writer aborted/);
    expect(listDir(dir)).toEqual(["f-0.h5"]);
    expect(fs.statSync(path.join(dir, "f-0.h5")).isDirectory()).toBe(true);
    expect(tmp).toBeDefined();
  });

  it("an HDF5 error during a write (status < 0) aborts the writer", async () => {
    const dir = tmpDir();
    const w = await openWriter(path.join(dir, "e-{seq}.h5"), RT, { params: { m: "M1" }, buffering: false });
    w.addTrains([1, 2], { "@det": 1 });
    w.addData("image", gen.image(0, 1));
    // Pull the HDF5 file from under the writer: the next write gets a failing status from HDF5.
    (w as any).files_.segs[0].file.close();
    expect(() => w.addData("pos", gen.pos(0, 2))).toThrow(
      /write failed, writer aborted and temporary files removed: cannot (resize|write) CONTROL\/SPB_XTD9\/MOTOR\/M1\/actualPosition\/value/,
    );
    expect(listDir(dir)).toEqual([]);
    expect(() => w.addTrains([3])).toThrow(/the writer was aborted/);
  });

  const child = (writerUrl: string, dir: string, then: string) => `
import { FileWriter } from ${JSON.stringify(writerUrl)};
const w = await FileWriter.open(${JSON.stringify(path.join(dir, "k-{seq:02d}.h5"))}, {
  datasets: { "data.x": { source: "D/X:out", shape: [1000], dtype: "float32" } },
}, { maxTrainsPerFile: 5 });
for (let t = 1; t <= 12; t++) w.writeTrain(t, { "data.x": new Float32Array(1000 * (t % 3)) });
console.log("READY");
${then}
`;

  const runChild = (cmd: string[], signal: NodeJS.Signals | "throw") =>
    new Promise<{ code: number | null; signal: string | null; stderr: string }>((resolve, reject) => {
      const p = spawn(cmd[0], cmd.slice(1), { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      let stderr = "";
      p.stderr.on("data", (b) => (stderr += b));
      p.stdout.on("data", (b) => {
        out += b;
        if (out.includes("READY") && signal !== "throw") p.kill(signal);
      });
      p.on("error", reject);
      p.on("exit", (code, sig) => resolve({ code, signal: sig, stderr }));
    });

  const runtimes: [string, (script: string) => string[], boolean][] = [
    [
      "deno",
      (
        s,
      ) => [
        path.join(ROOT, "node_modules/.bin/deno"),
        "run",
        "-A",
        "--config",
        path.join(ROOT, "deno.json"),
        s,
      ],
      true,
    ],
    [
      "node (dist/)",
      (s) => [process.execPath, s],
      fs.existsSync(path.join(ROOT, "dist/src/exdf/writer/writer.js")) &&
      fs.statSync(path.join(ROOT, "dist/src/exdf/writer/writer.js")).mtimeMs >=
        fs.statSync(path.join(ROOT, "src/exdf/writer/writer.ts")).mtimeMs,
    ],
  ];

  for (const [rt, cmd, available] of runtimes) {
    const url = rt === "deno"
      ? "file://" + path.join(ROOT, "src/exdf/writer/writer.ts")
      : "file://" + path.join(ROOT, "dist/src/exdf/writer/writer.js");
    const ext = rt === "deno" ? "ts" : "mjs";

    it.skipIf(!available)(`${rt}: a SIGKILLed writer leaves no file under a final name`, async () => {
      const dir = tmpDir();
      const script = path.join(dir, `child.${ext}`);
      fs.writeFileSync(script, child(url, dir, "setInterval(() => {}, 1000);"));
      const r = await runChild(cmd(script), "SIGKILL");
      expect(r.signal, r.stderr).toBe("SIGKILL");
      const names = listDir(dir).filter((n) => n !== `child.${ext}`);
      // Two complete sequence files; the third only under its temporary name.
      expect(names.filter((n) => !n.startsWith("."))).toEqual(["k-00.h5", "k-01.h5"]);
      expect(names.filter((n) => n.startsWith(".k-02.h5.tmp-"))).toHaveLength(1);
      await expectValid([path.join(dir, "k-00.h5"), path.join(dir, "k-01.h5")]);
    });

    for (const sig of ["SIGTERM", "SIGINT"] as const) {
      it.skipIf(!available)(
        `${rt}: ${sig} removes the temporary files and still ends the process`,
        async () => {
          const dir = tmpDir();
          const script = path.join(dir, `child.${ext}`);
          fs.writeFileSync(script, child(url, dir, "setInterval(() => {}, 1000);"));
          const r = await runChild(cmd(script), sig);
          expect(r.signal, r.stderr).toBe(sig); // dies of the signal, as without the cleanup handler
          expect(listDir(dir)).toEqual([`child.${ext}`, "k-00.h5", "k-01.h5"]);
        },
      );
    }

    it.skipIf(!available)(`${rt}: an uncaught error removes the temporary files`, async () => {
      const dir = tmpDir();
      const script = path.join(dir, `child.${ext}`);
      fs.writeFileSync(script, child(url, dir, `throw new Error("boom");`));
      const r = await runChild(cmd(script), "throw");
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/boom/);
      expect(listDir(dir)).toEqual([`child.${ext}`, "k-00.h5", "k-01.h5"]);
    });
  }
});

// ---------------------------------------------------------------------------------------------------
// The validity helper must be able to fail.

describe("validateExdf", () => {
  type File = InstanceType<typeof h5wasm.File>;
  interface Variant {
    tids?: bigint[];
    instFirst?: bigint[];
    instCount?: bigint[];
    ctrlFirst?: BigUint64Array | Int32Array;
    ctrlTs?: bigint[];
    flagLength?: number;
    noVersion?: boolean;
    sources?: [string, string, string][];
    extra?: (f: File) => void;
  }
  /** A small valid file (a control and an instrument source), changed as the variant says. */
  async function broken(name: string, v: Variant = {}): Promise<string> {
    await h5();
    const p = path.join(tmpRoot, `broken-${name}.h5`);
    const f = new h5wasm.File(p, "w");
    const tids = v.tids ?? [10n, 11n, 12n];
    const n = tids.length;
    const u64 = (a: bigint[]) => BigUint64Array.from(a);
    const group = (g: string) => ensureGroup(f, g);
    if (!v.noVersion) group("METADATA").create_dataset({ name: "dataFormatVersion", data: ["1.2"] });
    const sources = v.sources ??
      [["CONTROL/C/D", "CONTROL", "C/D"], ["INSTRUMENT/I/J:out/data", "INSTRUMENT", "I/J:out/data"]];
    const src = group("METADATA/dataSources");
    src.create_dataset({ name: "dataSourceId", data: sources.map((s) => s[0]) });
    src.create_dataset({ name: "root", data: sources.map((s) => s[1]) });
    src.create_dataset({ name: "deviceId", data: sources.map((s) => s[2]) });
    const index = group("INDEX");
    index.create_dataset({ name: "trainId", data: u64(tids), dtype: "<Q" });
    index.create_dataset({ name: "timestamp", data: u64(tids.map((t) => t * 100n)), dtype: "<Q" });
    index.create_dataset({ name: "flag", data: new Int32Array(v.flagLength ?? n).fill(1) });
    index.create_dataset({ name: "origin", data: new Int32Array(n).fill(-1) });
    group("INDEX/C/D").create_dataset({ name: "first", data: v.ctrlFirst ?? u64([0n, 1n, 2n]) });
    group("INDEX/C/D").create_dataset({ name: "count", data: u64([1n, 1n, 1n]), dtype: "<Q" });
    const ii = group("INDEX/I/J:out/data");
    ii.create_dataset({ name: "first", data: u64(v.instFirst ?? [0n, 2n, 2n]), dtype: "<Q" });
    ii.create_dataset({ name: "count", data: u64(v.instCount ?? [2n, 0n, 3n]), dtype: "<Q" });
    const k = group("CONTROL/C/D/k");
    k.create_dataset({ name: "value", data: new Float64Array([1, 2, 3]) });
    k.create_dataset({ name: "timestamp", data: u64(v.ctrlTs ?? [5n, 6n, 7n]), dtype: "<Q" });
    group("INSTRUMENT/I/J:out/data").create_dataset({ name: "x", data: new Float32Array(5) });
    v.extra?.(f);
    f.close();
    return p;
  }

  it("accepts the valid base file", async () => {
    expect(await validateExdf(await broken("none"))).toEqual([]);
  });

  const cases: [string, Variant, RegExp][] = [
    [
      "zero train ID",
      { tids: [10n, 0n, 12n] },
      /INDEX\/trainId: Zeroes in trainId index before last train ID/,
    ],
    [
      "train IDs not increasing",
      { tids: [10n, 11n, 11n] },
      /Train IDs are not strictly increasing, e.g. at 1 \(11 >= 11\)/,
    ],
    ["index not from 0", { instFirst: [1n, 3n, 3n] }, /INDEX\/I\/J:out\/data: Index doesn't start at 0/],
    ["index gap", { instFirst: [0n, 3n, 3n] }, /Gaps \(1\) in index, e.g. at 0 \(0 \+ 2 < 3\)/],
    ["index overlap", { instFirst: [0n, 1n, 1n] }, /Overlaps \(1\) in index, e.g. at 0 \(0 \+ 2 > 1\)/],
    [
      "instrument index beyond the data",
      { instCount: [2n, 0n, 4n] },
      /INSTRUMENT\/I\/J:out\/data\/x: Index referring to data \(6\) outside dataset \(5\)/,
    ],
    [
      "control index beyond the data",
      { ctrlFirst: BigUint64Array.from([0n, 1n, 3n]) },
      /CONTROL\/C\/D\/k\/(timestamp|value): Index referring to data \(4\) outside dataset \(3\)/,
    ],
    [
      "index with the wrong number of entries",
      { ctrlFirst: BigUint64Array.from([0n, 1n]) },
      /INDEX\/C\/D: Index first & count have different number of entries/,
    ],
    [
      "control timestamp decreasing",
      { ctrlTs: [5n, 7n, 6n] },
      /CONTROL\/C\/D\/k\/timestamp: Timestamp is decreasing, e.g. at 2 \(6 < 7\)/,
    ],
    ["zero control timestamp", { ctrlTs: [5n, 0n, 6n] }, /Zeroes in Timestamp before last train ID/],
    ["first not u64", { ctrlFirst: new Int32Array([0, 1, 2]) }, /INDEX\/C\/D: first is not uint64/],
    ["flag length", { flagLength: 2 }, /INDEX\/flag: length 2 differs from INDEX\/trainId \(3\)/],
    ["no dataFormatVersion", { noVersion: true }, /METADATA\/dataFormatVersion missing/],
    ["unlisted control data", {
      extra: (f) =>
        ensureGroup(f, "CONTROL/E/k").create_dataset({ name: "value", data: new Float64Array(3) }),
    }, /CONTROL\/E\/k\/value: data of a source not listed in METADATA/],
    ["unlisted index", {
      extra: (f) =>
        ensureGroup(f, "INDEX/Z").create_dataset({ name: "first", data: new BigUint64Array(3), dtype: "<Q" }),
    }, /INDEX\/Z: index of a source not listed in METADATA/],
    ["unlisted instrument data", {
      extra: (f) =>
        ensureGroup(f, "INSTRUMENT/Q/R:out/g").create_dataset({ name: "x", data: new Float32Array(1) }),
    }, /INSTRUMENT\/Q\/R:out\/g\/x: data of a source not listed in METADATA/],
    ["listed but missing", {
      sources: [
        ["CONTROL/C/D", "CONTROL", "C/D"],
        ["INSTRUMENT/I/J:out/data", "INSTRUMENT", "I/J:out/data"],
        ["CONTROL/G/H", "CONTROL", "G/X"],
      ],
    }, /CONTROL\/G\/H: listed in METADATA but CONTROL group missing/],
    ["root/deviceId inconsistent", {
      sources: [["CONTROL/C/D", "CONTROL", "C/D"], ["INSTRUMENT/I/J:out/data", "CONTROL", "I/J:out/data"]],
    }, /entry 1: root "CONTROL" \/ deviceId "I\/J:out\/data" do not match/],
  ];
  for (const [name, variant, re] of cases) {
    it(`reports: ${name}`, async () => {
      const problems = await validateExdf(await broken(name.replace(/\W+/g, "-"), variant));
      expect(problems.join("\n")).toMatch(re);
    });
  }

  it("reports: index shorter than the train IDs; unreadable file", async () => {
    const p = await broken("short", {
      extra: (f) => {
        const g = ensureGroup(f, "INDEX/I/J:out/other");
        g.create_dataset({ name: "first", data: BigUint64Array.from([0n, 1n]), dtype: "<Q" });
        g.create_dataset({ name: "count", data: BigUint64Array.from([1n, 1n]), dtype: "<Q" });
        ensureGroup(f, "INSTRUMENT/I/J:out/other").create_dataset({ name: "y", data: new Float32Array(2) });
      },
    });
    const problems = (await validateExdf(p)).join("\n");
    expect(problems).toMatch(/INDEX\/I\/J:out\/other: Index has wrong number of entries \(2, train IDs 3\)/);
    expect(problems).toMatch(/group "other" not listed in METADATA\/dataSources/);
    const junk = path.join(tmpRoot, "junk.h5");
    fs.writeFileSync(junk, "not hdf5");
    expect((await validateExdf(junk))[0]).toMatch(/Could not open file/);
  });
});

// ---------------------------------------------------------------------------------------------------
// Tables written only as wide as their non-zero entries (DatasetSpec.zeroTail).

describe("zero tails", () => {
  it("zeroWidth: the last non-zero byte, rounded up to the chunk; -0 and NaN count", () => {
    const f32 = (vals: number[], n: number, full: number) => {
      const a = new Float32Array(n * full);
      vals.forEach((v, i) => (a[i] = v));
      return new Uint8Array(a.buffer);
    };
    expect(zeroWidth(f32([], 3, 16), 3, 64, 16, 4)).toBe(0);
    expect(zeroWidth(f32([0, 1], 1, 16), 1, 64, 16, 4)).toBe(4); // column 1 -> 4
    expect(zeroWidth(f32(Object.assign(new Array(21).fill(0), { 20: 2 }), 2, 16), 2, 64, 16, 4)).toBe(8);
    expect(zeroWidth(f32(Object.assign(new Array(16).fill(0), { 15: -0 }), 1, 16), 1, 64, 16, 4)).toBe(16);
    expect(zeroWidth(f32(Object.assign(new Array(10).fill(0), { 9: NaN }), 1, 16), 1, 64, 16, 4)).toBe(12);
    // Columns of 4 uint16 (8 bytes): a non-zero last byte of column 2 needs 3 columns.
    const box = new Uint16Array(2 * 16 * 4);
    box[16 * 4 + 2 * 4 + 3] = 256;
    expect(zeroWidth(new Uint8Array(box.buffer), 2, 128, 16, 1)).toBe(3);
    expect(zeroWidth(new Uint8Array(box.buffer), 2, 128, 16, 16)).toBe(16);
  });

  it("a table written as wide as its entries reads back bit for bit, with fewer chunks", async () => {
    const dir = tmpDir();
    const schema = defineSchema({
      aliases: { out: "SPB_DET/REDU/TEST:output" },
      datasets: {
        tab: {
          source: "@out",
          key: "data.tab",
          shape: [64],
          dtype: "float32",
          chunks: [16, 8],
          compression: "gzip",
          compressionOpts: 1,
          zeroTail: true,
        },
        box: {
          source: "@out",
          key: "data.box",
          shape: [64, 4],
          dtype: "uint16",
          chunks: [16, 8, 4],
          zeroTail: true,
        },
      },
    });
    const n = 40;
    const tab = new Float32Array(n * 64), box = new Uint16Array(n * 64 * 4);
    for (let r = 0; r < n; r++) {
      if (r >= 10 && r < 26) continue; // a block of empty rows
      const w = (r % 5) * 3; // up to 12 columns: 2 of the 8 column chunks
      for (let c = 0; c < w; c++) tab[r * 64 + c] = r + c / 64;
      for (let c = 0; c < Math.min(w, 5); c++) box[(r * 64 + c) * 4 + (c % 4)] = r * 100 + c;
    }
    tab[5 * 64 + 63] = -0; // only the sign bit: a zero that is not the fill value (rows 0-15 written whole)
    tab[9 * 64 + 40] = NaN;
    const w = await openWriter(path.join(dir, "zt-{seq}.h5"), schema, { bufferBytes: 4096 });
    const tids = Array.from({ length: n }, (_, i) => 7000 + i);
    w.addTrains(tids, { "@out": new Array(n).fill(1) });
    w.addData({ tab, box });
    const [file] = w.close();
    await expectValid([file]);
    const lib = await h5();
    const f = new lib.File(file, "r");
    try {
      const t = (f.get("INSTRUMENT/SPB_DET/REDU/TEST:output/data/tab") as { value: Float32Array }).value;
      const b = (f.get("INSTRUMENT/SPB_DET/REDU/TEST:output/data/box") as { value: Uint16Array }).value;
      expect(Array.from(new Uint32Array(t.buffer, t.byteOffset, t.length))).toEqual(
        Array.from(new Uint32Array(tab.buffer)),
      );
      expect(Array.from(b)).toEqual(Array.from(box));
    } finally {
      f.close();
    }
    if (readers.h5py) {
      const py = spawnSync(PYTHON, [
        "-c",
        `import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    print(f["INSTRUMENT/SPB_DET/REDU/TEST:output/data/tab"].id.get_num_chunks())`,
        file,
      ], { encoding: "utf8" });
      const chunks = Number(py.stdout.trim());
      expect(chunks).toBeGreaterThan(0);
      expect(chunks).toBeLessThan(3 * 8); // 40 rows x 64 columns in [16, 8] chunks: 24 when written whole
    }
  });
});
