/**
 * The LITFRM output of the beam annotation (src/beam/annotate.ts has the spec): the CONTROL and INSTRUMENT
 * sources of the facility's lit-frame finder, written through the writer library, and the summary.
 */
import { OutputError } from "../errors.ts";
import { openH5 } from "../exdf/h5.ts";
import { type DataInput, type FileWriter, openWriter, type WriterSchema } from "../exdf/writer/writer.ts";

/** Frames the LITFRM arrays hold (AGIPD memory cells). */
import * as fs from "node:fs";
import * as path from "node:path";
import { LITFRM_FRAMES, PULSE_SLOTS, type Sase } from "./bunch.ts";
import type { BeamAnnotation, BeamLookup, TrainAnnotation } from "./annotate.ts";
// -----------------------------------------------------------------------------------------------------
// Writing

/** The LITFRM device name of an instrument. */
export function litframesDevice(instrument: string): string {
  return `${instrument}/REDU/LITFRM`;
}

const ARR = { chunks: 64, compression: "gzip", compressionOpts: 1 } as const;

/**
 * The LITFRM schema piece (aliases `litfrm`, `litfrmOut`; dataset names prefixed `litfrm_`), to merge into
 * a writer schema: `{ aliases: { ...a.aliases, ...p.aliases }, datasets: { ...a.datasets, ...p.datasets } }`.
 */
export function litframesSchema(device: string) {
  return {
    aliases: { litfrm: device, litfrmOut: `${device}:output` },
    datasets: {
      litfrm_nPulse: { source: "@litfrm", key: "nPulse", shape: [], dtype: "uint16" },
      litfrm_nFrame: { source: "@litfrm", key: "nFrame", shape: [], dtype: "uint16" },
      litfrm_nLitFrame: { source: "@litfrm", key: "nLitFrame", shape: [], dtype: "uint16" },
      litfrm_nDataFrame: { source: "@litfrm", key: "nDataFrame", shape: [], dtype: "uint16" },
      litfrm_litFrames: {
        source: "@litfrm",
        key: "litFrames",
        shape: [LITFRM_FRAMES],
        dtype: "uint16",
        ...ARR,
      },
      litfrm_dataFrames: {
        source: "@litfrm",
        key: "dataFrames",
        shape: [LITFRM_FRAMES],
        dtype: "uint16",
        ...ARR,
      },
      litfrm_referenceFrame: { source: "@litfrm", key: "referenceFrame", shape: [], dtype: "int16" },
      litfrm_dataFramePattern: {
        source: "@litfrmOut",
        key: "data.dataFramePattern",
        shape: [LITFRM_FRAMES],
        dtype: "uint8",
        ...ARR,
      },
      litfrm_detectorPulseId: {
        source: "@litfrmOut",
        key: "data.detectorPulseId",
        shape: [LITFRM_FRAMES],
        dtype: "uint16",
        ...ARR,
      },
      litfrm_energyPerFrame: {
        source: "@litfrmOut",
        key: "data.energyPerFrame",
        shape: [LITFRM_FRAMES],
        dtype: "float32",
        ...ARR,
      },
      litfrm_energySigma: {
        source: "@litfrmOut",
        key: "data.energySigma",
        shape: [LITFRM_FRAMES],
        dtype: "float32",
        ...ARR,
      },
      litfrm_masterPulseId: {
        source: "@litfrmOut",
        key: "data.masterPulseId",
        shape: [PULSE_SLOTS],
        dtype: "uint16",
        ...ARR,
      },
      litfrm_xgmPulseId: {
        source: "@litfrmOut",
        key: "data.xgmPulseId",
        shape: [PULSE_SLOTS],
        dtype: "uint16",
        ...ARR,
      },
      litfrm_nPulsePerFrame: {
        source: "@litfrmOut",
        key: "data.nPulsePerFrame",
        shape: [LITFRM_FRAMES],
        dtype: "uint16",
        ...ARR,
      },
      litfrm_nFrame_out: { source: "@litfrmOut", key: "data.nFrame", shape: [], dtype: "uint16" },
      litfrm_trainId: { source: "@litfrmOut", key: "data.trainId", shape: [], dtype: "uint64" },
    },
  } as const satisfies WriterSchema;
}

export type LitframesDatasetName = keyof ReturnType<typeof litframesSchema>["datasets"];

/** Entries per train of the LITFRM sources for `trainIds` (1 where annotated), for `addTrains`. */
export function litframesCounts(ann: BeamLookup, trainIds: ArrayLike<number>): Record<string, number[]> {
  const c = Array.from(trainIds, (t) => (ann.train(Number(t)) ? 1 : 0));
  return { "@litfrm": c, "@litfrmOut": [...c] };
}

/** The LITFRM data of the annotated trains among `trainIds`, for `addData`. */
export function litframesData(
  ann: BeamLookup,
  trainIds: ArrayLike<number>,
): Record<LitframesDatasetName, DataInput> {
  return litframesRows(Array.from(trainIds, Number).map((t) => ann.train(t)).filter((a) => a !== undefined));
}

/** The LITFRM data of these trains' annotations, for `addData`. */
function litframesRows(ts: TrainAnnotation[]): Record<LitframesDatasetName, DataInput> {
  const n = ts.length;
  const u16 = (v: number) => Math.min(0xffff, Math.max(0, Math.round(v)));
  const nPulse = new Uint16Array(n), nFrame = new Uint16Array(n), nLit = new Uint16Array(n);
  const nData = new Uint16Array(n);
  const litFrames = new Uint16Array(n * LITFRM_FRAMES), dataFrames = new Uint16Array(n * LITFRM_FRAMES);
  const refs = new Int16Array(n);
  const pattern = new Uint8Array(n * LITFRM_FRAMES);
  const detPid = new Uint16Array(n * LITFRM_FRAMES);
  const energy = new Float32Array(n * LITFRM_FRAMES), sigma = new Float32Array(n * LITFRM_FRAMES);
  const master = new Uint16Array(n * PULSE_SLOTS), xgmIds = new Uint16Array(n * PULSE_SLOTS);
  const npf = new Uint16Array(n * LITFRM_FRAMES);
  const tid = new BigUint64Array(n);
  ts.forEach((a, i) => {
    nPulse[i] = u16(a.nPulse);
    nFrame[i] = a.nFrame;
    nLit[i] = a.nLitFrame;
    nData[i] = a.nDataFrame;
    litFrames.set(a.litFrames, i * LITFRM_FRAMES);
    dataFrames.set(a.dataFrames, i * LITFRM_FRAMES);
    refs[i] = a.referenceFrame;
    pattern.set(a.dataFramePattern, i * LITFRM_FRAMES);
    detPid.set(a.detectorPulseId.slice(0, a.nFrame).map(u16), i * LITFRM_FRAMES);
    energy.set(a.energyPerFrame, i * LITFRM_FRAMES);
    sigma.set(a.energySigma, i * LITFRM_FRAMES);
    master.set(a.masterPulseId.slice(0, PULSE_SLOTS), i * PULSE_SLOTS);
    xgmIds.set(a.xgmPulseId.slice(0, PULSE_SLOTS).map(u16), i * PULSE_SLOTS);
    npf.set(a.nPulsePerFrame, i * LITFRM_FRAMES);
    tid[i] = BigInt(a.trainId);
  });
  return {
    litfrm_nPulse: nPulse,
    litfrm_nFrame: nFrame,
    litfrm_nLitFrame: nLit,
    litfrm_nDataFrame: nData,
    litfrm_litFrames: { data: litFrames, shape: [n, LITFRM_FRAMES] },
    litfrm_dataFrames: { data: dataFrames, shape: [n, LITFRM_FRAMES] },
    litfrm_referenceFrame: refs,
    litfrm_dataFramePattern: { data: pattern, shape: [n, LITFRM_FRAMES] },
    litfrm_detectorPulseId: { data: detPid, shape: [n, LITFRM_FRAMES] },
    litfrm_energyPerFrame: { data: energy, shape: [n, LITFRM_FRAMES] },
    litfrm_energySigma: { data: sigma, shape: [n, LITFRM_FRAMES] },
    litfrm_masterPulseId: { data: master, shape: [n, PULSE_SLOTS] },
    litfrm_xgmPulseId: { data: xgmIds, shape: [n, PULSE_SLOTS] },
    litfrm_nPulsePerFrame: { data: npf, shape: [n, LITFRM_FRAMES] },
    litfrm_nFrame_out: Uint16Array.from(nFrame),
    litfrm_trainId: tid,
  };
}

/** Trains per writer call. */
const TRAINS_PER_CALL = 256;

/** Totals over the annotated trains (the litframes summary's). */
export interface LitframesTotals {
  trains: number;
  trainsWithoutBunchPattern: number;
  pulses: number;
  frames: number;
  litFrames: number;
  dataFrames: number;
}

/** Zero totals. */
export function noTotals(): LitframesTotals {
  return { trains: 0, trainsWithoutBunchPattern: 0, pulses: 0, frames: 0, litFrames: 0, dataFrames: 0 };
}
/** A train added to the totals. */
function addTotals(c: LitframesTotals, t: TrainAnnotation): void {
  c.trains++;
  c.trainsWithoutBunchPattern += t.hasBunchPattern ? 0 : 1;
  c.pulses += t.nPulse;
  c.frames += t.nFrame;
  c.litFrames += t.nLitFrame;
  c.dataFrames += t.nDataFrame;
}

/**
 * Add trains and the LITFRM data to an open writer whose schema holds (only) `litframesSchema`; the other
 * sources of the writer get no entries for them: every annotated train, added to `totals` when given.
 */
export function addLitframes(
  w: FileWriter<string>,
  ann: BeamLookup,
  totals?: LitframesTotals,
): void {
  // Every annotated train, TRAINS_PER_CALL at a time as the annotation streams them (a streamed lookup holds
  // one window of trains, not the run's).
  let chunk: TrainAnnotation[] = [];
  const flush = () => {
    if (!chunk.length) return;
    const ones = chunk.map(() => 1);
    w.addTrains(chunk.map((t) => t.trainId), { "@litfrm": ones, "@litfrmOut": [...ones] });
    w.addData(litframesRows(chunk) as Record<string, DataInput>);
    chunk = [];
  };
  for (const t of ann.annotated()) {
    chunk.push(t);
    if (totals) addTotals(totals, t);
    if (chunk.length === TRAINS_PER_CALL) flush();
  }
  flush();
}

export interface WriteLitframesOptions {
  /** File name prefix and run number (default: from the run's file names). */
  prefix?: string;
  run?: number;
  /** Aggregator in the file name (default REDU01). */
  aggregator?: string;
  overwrite?: boolean;
  /** LITFRM device (default `<INST>/REDU/LITFRM`). */
  device?: string;
  /** Filled with the totals of the trains written (the summary's, without a pass of its own). */
  totals?: LitframesTotals;
}

/** Write the annotation alone: `<PREFIX>-R<run>-REDU01-S00000.h5` in `dir`; returns the paths written. */
export async function writeLitframes(
  ann: BeamLookup,
  dir: string,
  opts: WriteLitframesOptions = {},
): Promise<string[]> {
  const device = opts.device ?? litframesDevice(ann.instrument);
  const w = await openWriter(
    path.join(dir, "{prefix}-R{run:04d}-{aggregator}-S{seq:05d}.h5"),
    litframesSchema(device),
    {
      prefix: opts.prefix ?? "REDU",
      run: opts.run ?? 0,
      aggregator: opts.aggregator ?? "REDU01",
      overwrite: opts.overwrite ?? false,
      maxBytesPerFile: 4 * 2 ** 30,
    },
  );
  try {
    addLitframes(w as unknown as FileWriter<string>, ann, opts.totals);
    return w.close();
  } catch (e) {
    w.abort(String(e));
    throw e;
  }
}

// -----------------------------------------------------------------------------------------------------
// Command

export interface LitframesSummary extends LitframesTotals {
  run: string;
  instrument: string;
  sase: Sase;
  repRate: number;
  repRateFrom: string;
  stride: number;
  referenceFrame: number;
  align: string;
  anchor: number | null;
  sources: BeamAnnotation["sources"];
  warnings: string[];
  files: string[];
}

/** The litframes summary; the totals from writeLitframes's `totals`, else a pass over the annotated trains. */
export function summariseLitframes(
  runPath: string,
  ann: BeamLookup,
  files: string[],
  totals?: LitframesTotals,
): LitframesSummary {
  let c = totals;
  if (!c) {
    c = noTotals();
    for (const t of ann.annotated()) addTotals(c, t);
  }
  return {
    run: runPath,
    instrument: ann.instrument,
    sase: ann.sase,
    repRate: ann.repRate,
    repRateFrom: ann.repRateFrom,
    stride: ann.stride,
    referenceFrame: ann.referenceFrame,
    align: ann.align,
    anchor: ann.anchor,
    sources: ann.sources,
    ...c,
    warnings: ann.warnings,
    files,
  };
}

export function formatLitframes(s: LitframesSummary): string {
  const lines = [
    `${s.run}: ${s.instrument} (SASE${s.sase}), ${s.repRate} MHz (${s.repRateFrom}), reference frame ${s.referenceFrame}, ` +
    `aligned by ${s.align}${s.anchor !== null ? ` (slot ${s.anchor})` : ""}`,
    `${s.trains} trains (${s.trainsWithoutBunchPattern} without bunch pattern), ${s.pulses} pulses, ` +
    `${s.frames} frames, ${s.litFrames} lit, ${s.dataFrames} data frames`,
    `sources: time server ${s.sources.timeServer ?? "-"}, XGM ${s.sources.xgm ?? "-"}, detector ${
      s.sources.detector ?? "-"
    }`,
  ];
  for (const w of s.warnings) lines.push(`warning: ${w}`);
  for (const f of s.files) lines.push(`written: ${f}`);
  return lines.join("\n");
}

/**
 * Refuse, before writing into `dir`, files of ours already there without --force, and another file of `dir`
 * holding the same LITFRM source (a localise output of a run with a bunch pattern): two sources of one name
 * make EXtra-data refuse the directory.
 */
export async function checkLitframesTarget(
  dir: string,
  device: string,
  naming: { prefix: string; run: number },
  force: boolean,
): Promise<void> {
  if (!fs.existsSync(dir)) return;
  const ours = new RegExp(`^${naming.prefix}-R${String(naming.run).padStart(4, "0")}-REDU01-S\\d+\\.h5$`);
  const names = fs.readdirSync(dir).filter((n) => n.endsWith(".h5")).sort();
  const mine = names.filter((n) => ours.test(n));
  if (mine.length && !force) {
    throw new OutputError(path.join(dir, mine[0]), "exists", "exists; use --force to replace it");
  }
  for (const n of names) {
    if (ours.test(n)) continue;
    const f = await openH5(path.join(dir, n));
    try {
      const ds = f.get("METADATA/dataSources/dataSourceId") as unknown as { value: unknown } | null;
      const v = ds?.value;
      const ids = (Array.isArray(v) ? v : v === undefined ? [] : [v]).map(String);
      if (ids.some((id) => id.endsWith(`/${device}`) || id.endsWith(`/${device}:output`))) {
        throw new OutputError(
          dir,
          "exists",
          `${n} already holds the beam annotation ${device} (localise writes it); a second copy would make ` +
            `EXtra-data refuse the directory: choose another --out`,
        );
      }
    } finally {
      f.close();
    }
  }
}
