/**
 * Beam annotation (src/beam/annotate.ts) against the synthetic runs' truth: bunch-pattern decoding, every
 * repetition rate, missing time-server trains, more pulses than frames, the 352-frame limit, no XGM, the
 * alignment modes, the LITFRM file (writer library, validity helper, read back with h5py), the schema piece
 * inside another writer (as the localise REDU writer uses it), the combination with the images, and the
 * command.
 */
import { afterAll, describe, expect, test, vi } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun, type SynthOptions, type Truth } from "../fixtures/synth.ts";
import { InputError } from "../src/errors.ts";
import {
  addLitframes,
  litframesCounts,
  litframesData,
  litframesSchema,
  writeLitframes,
} from "../src/beam/litfrm.ts";
import {
  annotateBeam,
  type BeamAnnotation,
  type BeamLookup,
  type BeamOptions,
  combineLit,
  streamBeam,
} from "../src/beam/annotate.ts";
import { decodeBunchPattern, saseForInstrument, strideForRate } from "../src/beam/bunch.ts";
import { litframesCommand } from "../src/cli/litframes.ts";
import { Run } from "../src/exdf/run.ts";
import { type FileWriter, openWriter } from "../src/exdf/writer/writer.ts";
import { validateExdf } from "./helpers/exdf-validate.ts";
import { independentAvailable, readIndependent } from "./helpers/independent-h5.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-litfrm-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let counter = 0;
async function gen(opts: Partial<SynthOptions>): Promise<{ dir: string; truth: Truth }> {
  const dir = path.join(tmp, `run${counter++}`);
  const truth = await makeRun(dir, {
    modules: [0],
    trains: 10,
    framesPerTrain: 12,
    hotPixels: 0,
    maskedPixels: 0,
    maskedColumns: 0,
    nanPixels: 0,
    spotsPerFrame: [0, 1],
    ...opts,
  });
  return { dir, truth };
}

async function annotate(dir: string, opts: BeamOptions = {}): Promise<BeamAnnotation> {
  const run = await Run.open(dir);
  try {
    const ann = annotateBeam(run, opts);
    // Every annotation here is also made in windows of 3 trains, eagerly and streamed (as localise uses it):
    // the same figures, warnings and trains (and so the same truth).
    expectSameAnnotation(annotateBeam(run, { ...opts, windowTrains: 3 }), ann, false);
    expectSameAnnotation(streamBeam(run, { ...opts, windowTrains: 3 }), ann, true);
    return ann;
  } finally {
    run.close();
  }
}

/** A windowed annotation (eager or streamed) equals the whole-run one; a streamed one holds one window. */
function expectSameAnnotation(got: BeamLookup, want: BeamAnnotation, streamed: boolean): void {
  const keys = [
    "instrument",
    "sase",
    "repRate",
    "stride",
    "repRateFrom",
    "referenceFrame",
    "align",
    "anchor",
    "sources",
    "warnings",
  ] as const;
  const head = (a: BeamLookup) => Object.fromEntries(keys.map((k) => [k, a[k]]));
  expect(head(got)).toEqual(head(want));
  expect(got.trainsWithBunchPattern).toBe(want.trains.filter((t) => t.hasBunchPattern).length);
  expect(got.dataFrames).toBe(want.trains.reduce((a, t) => a + t.dataFrames.length, 0));
  const ids = want.trains.map((t) => t.trainId);
  for (const t of want.trains) {
    expect(got.train(t.trainId)).toEqual(t);
    for (let f = -1; f <= t.nFrameTotal; f++) {
      expect(got.dataFrame(t.trainId, f)).toBe(want.dataFrame(t.trainId, f));
      expect(got.energy(t.trainId, f)).toEqual(want.energy(t.trainId, f));
    }
    for (const p of [...t.detectorPulseId, -5]) {
      expect(got.frameOfPulse(t.trainId, p)).toBe(want.frameOfPulse(t.trainId, p));
    }
    // Streamed: at most one window of trains in memory, whatever the run length.
    if (streamed) expect(got.held()).toBeLessThanOrEqual(3);
    else expect(got.held()).toBe(ids.length);
  }
  expect(got.train(-1)).toBeUndefined();
  expect(litframesData(got, ids)).toEqual(litframesData(want, ids));
  expect(litframesCounts(got, [...ids, 1])).toEqual(litframesCounts(want, [...ids, 1]));
  expect(want.held()).toBe(ids.length);
}

/** The annotation reproduces the truth exactly, frame by frame. */
function expectTruth(ann: BeamAnnotation, truth: Truth, opts: { xgm?: boolean } = {}): void {
  const xgm = opts.xgm ?? true;
  expect(ann.trains.map((t) => t.trainId)).toEqual(truth.trains);
  for (const tp of truth.pulses) {
    const a = ann.train(tp.trainId)!;
    const frames = truth.frames.filter((f) => f.trainId === tp.trainId);
    expect(a.hasBunchPattern).toBe(tp.inTimeServer);
    expect(a.nFrame).toBe(frames.length);
    expect(a.detectorPulseId).toEqual(frames.map((f) => f.pulseId));
    if (!tp.inTimeServer) {
      expect(Array.from(a.dataFramePattern)).toEqual(frames.map(() => 1));
      expect(a.nLitFrame).toBe(0);
      expect(a.nPulse).toBe(0);
      continue;
    }
    const lit = frames.filter((f) => f.lit);
    expect(a.nPulse).toBe(tp.slots.length);
    expect(Array.from(a.dataFramePattern)).toEqual(frames.map((f) => (f.lit ? 1 : 0)));
    expect(Array.from(a.nPulsePerFrame)).toEqual(frames.map((f) => (f.lit ? 1 : 0)));
    expect(a.litFrames).toEqual(lit.map((f) => f.frame));
    expect(a.dataFrames).toEqual(lit.map((f) => f.frame));
    expect(a.nLitFrame).toBe(lit.length);
    expect(a.nDataFrame).toBe(lit.length);
    expect(a.masterPulseId).toEqual(lit.map((f) => f.pulseSlot));
    // XGM index: the pulse's position among the SASE pulses of the train.
    expect(a.xgmPulseId).toEqual(lit.map((f) => tp.slots.indexOf(f.pulseSlot!)));
    expect(a.pulsesOutside).toBe(tp.slots.length - lit.length);
    for (const f of frames) {
      expect(ann.dataFrame(f.trainId, f.frame)).toBe(f.lit ? 1 : 0);
      const e = ann.energy(f.trainId, f.frame);
      if (!f.lit) expect(e).toBe(0);
      else if (!xgm) expect(e).toBeNaN();
      else {
        expect(Math.abs(e - f.energy)).toBeLessThan(1e-3 * f.energy + 1e-3);
        expect(Math.abs(a.energySigma[f.frame] - 0.05 * f.energy)).toBeLessThan(1e-3 * f.energy + 1e-3);
      }
    }
  }
}

describe("bunch pattern and instruments", () => {
  test("decodeBunchPattern follows exdf.md's bits per SASE", () => {
    const t = new Uint32Array(2700);
    const charge = 0x2 | 0x100;
    t[10] = (4 << 18) | charge; // SASE1
    t[11] = (1 << 27) | (4 << 18) | charge; // SASE3 (soft kick)
    t[12] = (2 << 18) | charge; // SASE2
    t[13] = (1 << 18) | charge; // dump
    t[2699] = (2 << 18) | (1 << 27); // SASE2 with the soft-kick bit
    t[500] = 4 << 18;
    expect(decodeBunchPattern(t, 1)).toEqual([10, 500]);
    expect(decodeBunchPattern(t, 2)).toEqual([12, 2699]);
    expect(decodeBunchPattern(t, 3)).toEqual([11]);
    expect(decodeBunchPattern(new Uint32Array(2700), 1)).toEqual([]);
  });

  test("instruments pick their SASE; repetition rates their stride", () => {
    expect(saseForInstrument("SPB")).toBe(1);
    expect(saseForInstrument("FXE_DET_LPD1M-1")).toBe(1);
    expect(saseForInstrument("MID_DET_AGIPD1M-1")).toBe(2);
    expect(saseForInstrument("hed")).toBe(2);
    expect(saseForInstrument("SQS")).toBe(3);
    expect(saseForInstrument("SCS_DET_DSSC1M-1")).toBe(3);
    expect(() => saseForInstrument("XYZ_DET")).toThrow(InputError);
    expect([4.5, 2.2, 2.25, 1.1, 1.128, 0.5, 0.564].map(strideForRate)).toEqual([1, 2, 2, 4, 4, 8, 8]);
    expect(() => strideForRate(3)).toThrow(InputError);
  });
});

describe("annotation reproduces the truth", () => {
  for (const repRate of [4.5, 2.2, 1.1, 0.5] as const) {
    test(`${repRate} MHz, random lit frames, other SASEs and dump bunches in the pattern`, async () => {
      const { dir, truth } = await gen({ repRate, seed: 11 + repRate * 10, litFraction: 0.4, trains: 12 });
      const ann = await annotate(dir);
      expect(ann.stride).toBe(truth.stride);
      expect(ann.repRateFrom).toBe("control");
      expect(ann.sase).toBe(1);
      expect(ann.instrument).toBe("SPB");
      expect(ann.anchor).toBe(truth.options.firstPulseSlot);
      expect(ann.sources.timeServer).toBe(truth.sources.timeServer);
      expect(ann.sources.xgm).toBe(truth.sources.xgm);
      expectTruth(ann, truth);
      // Without the detector control: the rate is inferred from the bunch pattern.
      const inferred = await annotate(dir, { control: null });
      expect(inferred.repRateFrom).toBe("bunch pattern");
      expect(inferred.stride).toBe(truth.stride);
      expectTruth(inferred, truth);
    });
  }

  test("SASE2 and SASE3 instruments, several modules, a module missing trains and recording fewer frames", async () => {
    for (const [name, sase] of [["MID_DET_AGIPD1M-1", 2], ["SQS_DET_DSSC1M-1", 3]] as const) {
      const { dir, truth } = await gen({
        detector: name.includes("DSSC") ? "DSSC" : "AGIPD",
        detectorName: name,
        modules: [0, 3],
        missingTrains: [{ module: 3, trains: [1] }],
        shortFrames: [{ module: 0, train: 2, frames: 5 }],
        trains: 8,
        seed: sase,
      });
      const ann = await annotate(dir);
      expect(ann.sase).toBe(sase);
      expectTruth(ann, truth);
    }
  });

  test("trains missing from the time server: all their frames are data frames, with a warning", async () => {
    const { dir, truth } = await gen({ timeServerMissing: [2, 5], seed: 5, trains: 10 });
    const ann = await annotate(dir);
    expectTruth(ann, truth);
    expect(ann.train(truth.trains[2])!.hasBunchPattern).toBe(false);
    expect(Array.from(ann.train(truth.trains[5])!.energyPerFrame).every(Number.isNaN)).toBe(true);
    expect(ann.dataFrame(truth.trains[2], 0)).toBe(1);
    expect(ann.warnings.join("\n")).toMatch(/2 of 10 trains have no bunch pattern/);
  });

  test("fewer frames than pulses: the pulses after the last frame are counted, seen by none", async () => {
    const { dir, truth } = await gen({ extraPulses: 4, seed: 7, litPattern: "regular", litFraction: 0.5 });
    const ann = await annotate(dir);
    expectTruth(ann, truth);
    for (const t of ann.trains) expect(t.pulsesOutside).toBe(4);
    expect(ann.warnings.join("\n")).toMatch(/40 pulses fell outside/);
  });

  test("dark trains (beam off): no pulses, every frame dark", async () => {
    const { dir, truth } = await gen({ darkTrains: [0, 3], seed: 8 });
    const ann = await annotate(dir);
    expectTruth(ann, truth);
    expect(ann.train(truth.trains[3])!.nPulse).toBe(0);
    expect(ann.train(truth.trains[3])!.nDataFrame).toBe(0);
  });

  test("the 352-frame limit: 352 frames at 4.5 MHz, and longer trains capped", async () => {
    const { dir, truth } = await gen({
      trains: 1,
      framesPerTrain: 352,
      repRate: 4.5,
      level: "raw",
      litFraction: 0.5,
      firstPulseSlot: 2000,
      extraPulses: 5,
      spotsPerFrame: [0, 0],
      seed: 3,
    });
    // One train with random lit frames: the first pulse need not face the reference frame; the detector
    // timing (the slot the reference frame faces) aligns it.
    const ann = await annotate(dir, { firstPulseSlot: 2000 });
    expectTruth(ann, truth);
    const a = ann.trains[0];
    expect(a.nFrame).toBe(352);
    expect(a.dataFramePattern[351]).toBe(truth.frames[351].lit ? 1 : 0);
    // More frames than cells: 352 annotated, the rest unannotated (kept as data frames) with a warning.
    const capped = await annotate(dir, { framesPerTrain: () => 400, firstPulseSlot: 2000 });
    const c = capped.trains[0];
    expect(c.nFrame).toBe(352);
    expect(c.nFrameTotal).toBe(400);
    expect(Array.from(c.dataFramePattern)).toEqual(Array.from(a.dataFramePattern));
    expect(capped.dataFrame(c.trainId, 360)).toBe(1);
    expect(capped.dataFrame(c.trainId, 400)).toBe(0);
    expect(capped.warnings.join("\n")).toMatch(/more than 352 frames/);
  });

  test("no XGM: energies NaN where pulses are, the pattern from the bunch pattern alone", async () => {
    const { dir, truth } = await gen({ seed: 9 });
    const ann = await annotate(dir, { xgm: null });
    expect(ann.sources.xgm).toBeNull();
    expect(ann.warnings.join("\n")).toMatch(/no XGM/);
    expectTruth(ann, truth, { xgm: false });
  });

  test("no time server at all: every frame a data frame; no DA files: frames from the detector", async () => {
    const { dir, truth } = await gen({ writeDa: false, seed: 10, trains: 3 });
    const ann = await annotate(dir);
    expect(ann.sources.timeServer).toBeNull();
    expect(ann.warnings.join("\n")).toMatch(/no time server/);
    for (const f of truth.frames) expect(ann.dataFrame(f.trainId, f.frame)).toBe(1);
    expect(ann.trains.every((t) => t.nFrame === 12 && t.nLitFrame === 0)).toBe(true);
  });

  test("alignment: a fixed first pulse slot, per-train first pulse (regular pattern), reference frame", async () => {
    const { dir, truth } = await gen({ seed: 12, litFraction: 0.25 });
    expectTruth(await annotate(dir, { firstPulseSlot: truth.options.firstPulseSlot }), truth);
    // A wrong slot shifts frames: the annotation then disagrees with the truth.
    const off = await annotate(dir, { firstPulseSlot: truth.options.firstPulseSlot + truth.stride });
    expect(truth.frames.some((f) => off.dataFrame(f.trainId, f.frame) !== (f.lit ? 1 : 0))).toBe(true);
    const reg = await gen({ seed: 13, litPattern: "regular", litFraction: 0.5, referenceFrames: 2 });
    expectTruth(await annotate(reg.dir, { align: "train", referenceFrame: 2 }), reg.truth);
    expectTruth(await annotate(reg.dir, { referenceFrame: 2 }), reg.truth);
    // With random patterns the first pulse of a train need not face the reference frame.
    const perTrain = await annotate(dir, { align: "train" });
    expect(perTrain.align).toBe("train");
    const zero = await gen({ seed: 14, referenceFrames: 0, litFraction: 0.5 });
    expectTruth(await annotate(zero.dir, { referenceFrame: 0 }), zero.truth);
  });
});

describe("LITFRM output", () => {
  test("alone: one REDU01 file, valid, in the facility's layout, read back with h5py", async () => {
    const { dir, truth } = await gen({ seed: 21, timeServerMissing: [1], extraPulses: 2, trains: 6 });
    const ann = await annotate(dir);
    const out = path.join(tmp, "litfrm-alone");
    const files = await writeLitframes(ann, out, { prefix: "RAW", run: 1 });
    expect(files).toEqual([path.join(out, "RAW-R0001-REDU01-S00000.h5")]);
    expect(await validateExdf(files[0])).toEqual([]);
    await expect(writeLitframes(ann, out, { prefix: "RAW", run: 1 })).rejects.toThrow(/exists/);
    if (!independentAvailable()) return;
    const ctl = "CONTROL/SPB/REDU/LITFRM";
    const fast = "INSTRUMENT/SPB/REDU/LITFRM:output/data";
    const keys = readIndependent(files[0], { keys: [ctl, fast] }).keys;
    expect(keys[ctl]).toEqual(
      ["dataFrames", "litFrames", "nDataFrame", "nFrame", "nLitFrame", "nPulse", "referenceFrame"],
    );
    expect(keys[fast]).toEqual([
      "dataFramePattern",
      "detectorPulseId",
      "energyPerFrame",
      "energySigma",
      "masterPulseId",
      "nFrame",
      "nPulsePerFrame",
      "trainId",
      "xgmPulseId",
    ]);
    const paths = [
      ...["nPulse", "nFrame", "nLitFrame", "nDataFrame", "litFrames", "dataFrames", "referenceFrame"].map((
        k,
      ) => `${ctl}/${k}/value`),
      ...[
        "dataFramePattern",
        "detectorPulseId",
        "energyPerFrame",
        "energySigma",
        "masterPulseId",
        "xgmPulseId",
        "nPulsePerFrame",
        "nFrame",
        "trainId",
      ].map((k) => `${fast}/${k}`),
    ];
    const r = readIndependent(files[0], { info: paths, values: paths.map((p) => ({ path: p })) });
    const dt = (p: string) => r.info[p].dtype;
    expect(dt(`${ctl}/nPulse/value`)).toBe("<u2");
    expect(dt(`${ctl}/referenceFrame/value`)).toBe("<i2");
    expect(r.info[`${ctl}/litFrames/value`].shape).toEqual([6, 352]);
    expect(dt(`${fast}/dataFramePattern`)).toBe("|u1");
    expect(dt(`${fast}/energyPerFrame`)).toBe("<f4");
    expect(r.info[`${fast}/masterPulseId`].shape).toEqual([6, 2700]);
    expect(dt(`${fast}/trainId`)).toBe("<u8");
    const v = (p: string) => r.values[p].data as (number | null)[];
    expect(v(`${fast}/trainId`)).toEqual(truth.trains);
    expect(v(`${ctl}/referenceFrame/value`)).toEqual(truth.trains.map(() => 1));
    ann.trains.forEach((a, i) => {
      expect(v(`${ctl}/nPulse/value`)[i]).toBe(a.nPulse);
      expect(v(`${ctl}/nLitFrame/value`)[i]).toBe(a.nLitFrame);
      expect(v(`${ctl}/nDataFrame/value`)[i]).toBe(a.nDataFrame);
      expect(v(`${fast}/nFrame`)[i]).toBe(a.nFrame);
      const row = (p: string, n: number) => v(p).slice(i * n, (i + 1) * n);
      const pad = (xs: number[], n: number) => [...xs, ...Array(n - xs.length).fill(0)];
      expect(row(`${ctl}/litFrames/value`, 352)).toEqual(pad(a.litFrames, 352));
      expect(row(`${ctl}/dataFrames/value`, 352)).toEqual(pad(a.dataFrames, 352));
      expect(row(`${fast}/dataFramePattern`, 352)).toEqual(pad(Array.from(a.dataFramePattern), 352));
      expect(row(`${fast}/nPulsePerFrame`, 352)).toEqual(pad(Array.from(a.nPulsePerFrame), 352));
      expect(row(`${fast}/detectorPulseId`, 352)).toEqual(pad(a.detectorPulseId, 352));
      expect(row(`${fast}/masterPulseId`, 2700)).toEqual(pad(a.masterPulseId, 2700));
      expect(row(`${fast}/xgmPulseId`, 2700)).toEqual(pad(a.xgmPulseId, 2700));
      const e = row(`${fast}/energyPerFrame`, 352);
      Array.from(a.energyPerFrame).forEach((x, f) => {
        if (Number.isNaN(x)) expect(e[f]).toBeNull(); // h5py helper: NaN -> null
        else expect(e[f]).toBeCloseTo(x, 3);
      });
    });
  });

  test("the schema piece inside another writer (as the localise REDU writer adds it)", async () => {
    const { dir, truth } = await gen({ seed: 22, trains: 5 });
    const ann = await annotate(dir);
    const piece = litframesSchema("SPB/REDU/LITFRM");
    const schema = {
      aliases: { out: "SPB_DET_AGIPD1M-1/REDU/LOCALISE:output", ...piece.aliases },
      datasets: {
        frameLit: { source: "@out", key: "data.frameLit", shape: [], dtype: "uint8" },
        ...piece.datasets,
      },
    } as const;
    const out = path.join(tmp, "litfrm-merged");
    const w = await openWriter(path.join(out, "{prefix}-R{run:04d}-{aggregator}-S{seq:05d}.h5"), schema, {
      prefix: "CORR",
      run: 1,
      aggregator: "REDU00",
    });
    // Frames of the localise output: trains 1.. only (the first train has no frames there), and a train the
    // annotation does not know (no LITFRM entry there).
    const extra = truth.trains[truth.trains.length - 1] + 10;
    const trains = [...truth.trains.slice(1), extra];
    const frameCounts = trains.map((
      t,
    ) => (t === extra ? 2 : truth.frames.filter((f) => f.trainId === t).length));
    const counts = litframesCounts(ann, trains);
    expect(counts["@litfrm"]).toEqual([...trains.slice(0, -1).map(() => 1), 0]);
    w.addTrains(trains, { "@out": frameCounts, ...counts });
    w.addData({
      frameLit: Uint8Array.from(
        [...truth.frames.filter((f) => f.trainId !== truth.trains[0]).map((f) => +f.lit), 0, 0],
      ),
      ...litframesData(ann, trains),
    });
    const files = w.close();
    expect(await validateExdf(files[0])).toEqual([]);
    const run = await Run.open(files[0]);
    try {
      expect(run.sources().map((s) => s.name).sort()).toEqual([
        "SPB/REDU/LITFRM",
        "SPB/REDU/LITFRM:output",
        "SPB_DET_AGIPD1M-1/REDU/LOCALISE:output",
      ]);
      expect(run.trainIds).toEqual(trains);
    } finally {
      run.close();
    }
    // addLitframes on a writer of the piece alone.
    const w2 = await openWriter(path.join(out, "x-{seq}.h5"), litframesSchema("SPB/REDU/LITFRM"));
    addLitframes(w2 as unknown as FileWriter<string>, ann);
    expect(await validateExdf(w2.close()[0])).toEqual([]);
  });
});

describe("combination with the images", () => {
  test("beam, images, both: lit when both agree; signal without pulse kept as an anomaly", async () => {
    const { dir, truth } = await gen({
      seed: 31,
      trains: 4,
      timeServerMissing: [3],
      litPattern: "regular",
      litFraction: 0.34,
    });
    const ann = await annotate(dir);
    const frames = truth.frames;
    // Images: the truth, plus a dark frame with signal (anomaly), minus a lit frame without signal (a miss).
    const dark = frames.findIndex((f) => !f.lit && f.trainId === truth.trains[0]);
    const litMiss = frames.findIndex((f) => f.lit && f.trainId === truth.trains[1]);
    const img = Uint8Array.from(frames, (f) => +f.lit);
    img[dark] = 1;
    img[litMiss] = 0;
    const input = {
      trainId: frames.map((f) => f.trainId),
      pulseId: frames.map((f) => f.pulseId),
      frameLit: img,
    };
    const beamTruth = frames.map((f) => (f.trainId === truth.trains[3] ? 1 : +f.lit));
    const beam = combineLit(ann, input, "beam");
    expect(Array.from(beam.frameLit)).toEqual(beamTruth);
    expect(beam.anomalies).toEqual([]);
    expect(Array.from(combineLit(ann, input, "images").frameLit)).toEqual(Array.from(img));
    const both = combineLit(ann, input, "both");
    expect(both.anomalies).toEqual([
      { trainId: frames[dark].trainId, pulseId: frames[dark].pulseId, frame: frames[dark].frame },
    ]);
    expect(Array.from(both.frameLit)).toEqual(frames.map((_, i) => (i === dark ? 1 : beamTruth[i] & img[i])));
    expect(() => combineLit(ann, input, "x" as never)).toThrow(InputError);
  });
});

describe("litframes command", () => {
  test("writes the file, prints a summary (--json), refuses DIR inside RUN and an existing file", async () => {
    const { dir, truth } = await gen({ seed: 41, trains: 4, prefix: "RAW" });
    const out = path.join(tmp, "litfrm-cmd");
    const log = vi.spyOn(console, "log").mockImplementation(() => {});
    const err = vi.spyOn(console, "error").mockImplementation(() => {});
    try {
      expect(await litframesCommand.run([dir], { out, json: true, referenceFrame: 1, align: "run" })).toBe(0);
      const s = JSON.parse(String(log.mock.calls[0][0]));
      expect(s.trains).toBe(4);
      expect(s.litFrames).toBe(truth.frames.filter((f) => f.lit).length);
      expect(s.files).toEqual([path.join(out, "RAW-R0001-REDU01-S00000.h5")]);
      expect(fs.existsSync(s.files[0])).toBe(true);
      await expect(litframesCommand.run([dir], { out, align: "run" })).rejects.toThrow(/exists; use --force/);
      expect(await litframesCommand.run([dir], { out, force: true, align: "run", repRate: 1.1 })).toBe(0);
      expect(String(log.mock.calls[1][0])).toMatch(/SPB \(SASE1\), 1.1 MHz \(option\)/);
      await expect(litframesCommand.run([dir], { out: path.join(dir, "x"), align: "run" })).rejects.toThrow(
        /inside the input run/,
      );
      await expect(litframesCommand.run([dir], { align: "run" })).rejects.toThrow(/--out/);
      expect(fs.readdirSync(dir).some((n) => n.includes("REDU"))).toBe(false);
    } finally {
      log.mockRestore();
      err.mockRestore();
    }
  });
});
