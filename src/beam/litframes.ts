/**
 * Dark-frame annotation from the beam: which detector frames saw X-ray pulses, in the layout of the
 * facility's lit-frame finder (LITFRM). See docs/dark-frames.md.
 *
 * Spec:
 * - Bunch pattern: `data.bunchPatternTable` (u32[2700] per train) of the time server
 *   (`.../TSYS/TIMESERVER:outputBunchPattern`), decoded per SASE with exdf.md's bit rules. The SASE comes
 *   from the instrument (SPB/FXE: 1, MID/HED: 2, SQS/SCS/SXP: 3) unless given.
 * - Stride in pulse slots from the repetition rate (4.5 MHz: 1, 2.2: 2, 1.1: 4, 0.5: 8): the option, else
 *   the detector control `bunchStructure.repetitionRate`, else the pulse spacing of the bunch pattern (the
 *   largest stride dividing every gap between consecutive pulses of a train).
 * - Frames per train: the option, else the detector data (most frames any module recorded in the train),
 *   else the detector control `bunchStructure.nPulses`; at most 352 are annotated.
 * - Alignment: frame f of a train sees the pulse slots [a + (f - r) * stride, a + (f - r + 1) * stride),
 *   r the reference frame (default 1), a the anchor slot faced by frame r; frames before r see nothing.
 *   The anchor is `firstPulseSlot` when given (the detector timing, as the facility's "by reference delay"),
 *   else with align "run" (default) the earliest pulse slot of the SASE over the run (the detector timing
 *   does not follow the machine's pattern from train to train), else with align "train" the first pulse slot
 *   of each train (the facility's "by first pulse").
 * - Per frame: nPulsePerFrame; energyPerFrame = sum of the XGM pulse energies (`data.intensityTD`, one entry
 *   per pulse of the SASE in slot order) of its pulses; energySigma = root of the sum of squares of
 *   `data.intensitySigmaTD`; dataFramePattern = at least one pulse. Without an XGM entry for the train, the
 *   energies of frames with pulses are NaN (0 without pulses). A train without a bunch pattern: every frame a
 *   data frame, no lit frames, energies NaN, and a warning.
 * - Output (writer library): CONTROL `<INST>/REDU/LITFRM` {nPulse, nFrame, nLitFrame, nDataFrame u16,
 *   litFrames, dataFrames u16[352] (indices, zero-padded), referenceFrame i16} and INSTRUMENT
 *   `<INST>/REDU/LITFRM:output` data.{dataFramePattern u8[352], detectorPulseId u16[352], energyPerFrame
 *   f32[352], energySigma f32[352], masterPulseId u16[2700], xgmPulseId u16[2700], nPulsePerFrame u16[352],
 *   nFrame u16, trainId u64}, one entry per train; masterPulseId / xgmPulseId list the slot and the XGM index
 *   of every pulse a frame saw, in order, zero-padded.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { InputError, OutputError } from "../errors.ts";
import { openH5, readSlab } from "../exdf/h5.ts";
import { type Detector, readNumbers, Run, type RunFile } from "../exdf/run.ts";
import { type DataInput, type FileWriter, openWriter, type WriterSchema } from "../exdf/writer/writer.ts";

/** Frames the LITFRM arrays hold (AGIPD memory cells). */
export const LITFRM_FRAMES = 352;
/** Pulse slots of the bunch pattern table. */
export const PULSE_SLOTS = 2700;

export type Sase = 1 | 2 | 3;

const DEST_MASK = 0xf << 18;
const SOFT_KICK = 1 << 27;

/** Pulse slots holding a pulse for the SASE (exdf.md's bit rules), ascending. */
export function decodeBunchPattern(table: ArrayLike<number>, sase: Sase): number[] {
  const out: number[] = [];
  const n = Math.min(table.length, PULSE_SLOTS);
  for (let s = 0; s < n; s++) {
    const bp = table[s] >>> 0;
    let hit: boolean;
    if (sase === 1) hit = (bp & (SOFT_KICK | DEST_MASK)) >>> 0 === 4 << 18;
    else if (sase === 2) hit = (bp & DEST_MASK) === 2 << 18;
    else hit = (bp & (SOFT_KICK | DEST_MASK)) >>> 0 === (SOFT_KICK | (4 << 18)) >>> 0;
    if (hit) out.push(s);
  }
  return out;
}

const INSTRUMENT_SASE: Record<string, Sase> = {
  SPB: 1,
  FXE: 1,
  MID: 2,
  HED: 2,
  SQS: 3,
  SCS: 3,
  SXP: 3,
};

/** The SASE of an instrument ("SPB") or of a source name that starts with it ("MID_DET_AGIPD1M-1"). */
export function saseForInstrument(name: string): Sase {
  const inst = name.split(/[_/]/)[0].toUpperCase();
  const s = INSTRUMENT_SASE[inst];
  if (!s) {
    throw new InputError(
      undefined,
      `unknown instrument "${inst}": cannot tell its SASE (known: ${
        Object.keys(INSTRUMENT_SASE).join(", ")
      }; give --sase 1|2|3)`,
    );
  }
  return s;
}

const RATES: [number, number][] = [[4.5, 1], [2.2, 2], [1.1, 4], [0.5, 8]];

/** Pulse-slot stride of a repetition rate in MHz (4.5: 1, 2.2: 2, 1.1: 4, 0.5: 8; within 15 %). */
export function strideForRate(mhz: number): number {
  for (const [r, s] of RATES) if (Math.abs(mhz - r) <= 0.15 * r) return s;
  throw new InputError(undefined, `repetition rate ${mhz} MHz is not one of 4.5, 2.2, 1.1, 0.5`);
}

export function rateForStride(stride: number): number {
  const r = RATES.find(([, s]) => s === stride);
  if (!r) throw new InputError(undefined, `pulse-slot stride ${stride} is not one of 1, 2, 4, 8`);
  return r[0];
}

// -----------------------------------------------------------------------------------------------------
// Annotation

export interface BeamOptions {
  /** SASE (default: from the instrument). */
  sase?: Sase;
  /** Repetition rate in MHz (default: detector control, else inferred from the bunch pattern). */
  repRate?: number;
  /** Frame facing the anchor slot (default 1). */
  referenceFrame?: number;
  /** Frames per train (default: detector data, else control `bunchStructure.nPulses`). */
  framesPerTrain?: (trainId: number) => number;
  /** Instrument name (default: the detector name's prefix, else the time server's). */
  instrument?: string;
  /** Anchor: pulse slot faced by the reference frame in every train (overrides `align`). */
  firstPulseSlot?: number;
  /** Anchor when `firstPulseSlot` is not given: "run" (earliest pulse of the run) or "train". */
  align?: "run" | "train";
  /** Source names (default: found in the run); null: do not use one. */
  timeServer?: string | null;
  xgm?: string | null;
  /** Detector control source with `bunchStructure.*` keys (default: found in the run). */
  control?: string | null;
  detector?: string;
}

/** The annotation of one train, LITFRM fields plus what the lookups need. */
export interface TrainAnnotation {
  trainId: number;
  /** The time server has this train. */
  hasBunchPattern: boolean;
  /** XGM energies were found for this train. */
  hasXgm: boolean;
  /** SASE pulses in the train (all of them, seen by a frame or not). */
  nPulse: number;
  /** Frames annotated (at most 352). */
  nFrame: number;
  /** Frames the train has (before the 352 cap). */
  nFrameTotal: number;
  referenceFrame: number;
  /** Pulse slot faced by the reference frame (null: no pulse to align on). */
  anchor: number | null;
  nLitFrame: number;
  nDataFrame: number;
  litFrames: number[];
  dataFrames: number[];
  /** Per frame, nFrame long. */
  nPulsePerFrame: Uint16Array;
  energyPerFrame: Float32Array;
  energySigma: Float32Array;
  dataFramePattern: Uint8Array;
  /** Detector pulse ID per frame (all nFrameTotal frames). */
  detectorPulseId: number[];
  /** Slot and XGM index of every pulse seen by a frame, in order. */
  masterPulseId: number[];
  xgmPulseId: number[];
  /** Pulses no frame saw (before the reference frame's slot, after the last frame). */
  pulsesOutside: number;
}

export interface BeamAnnotation {
  instrument: string;
  sase: Sase;
  repRate: number;
  stride: number;
  /** Where the repetition rate came from. */
  repRateFrom: "option" | "control" | "bunch pattern" | "detector pulse IDs" | "default";
  referenceFrame: number;
  align: "slot" | "run" | "train";
  /** The run-wide anchor slot ("slot" and "run" alignment). */
  anchor: number | null;
  sources: { timeServer: string | null; xgm: string | null; detector: string | null; control: string | null };
  trains: TrainAnnotation[];
  warnings: string[];
  /** The annotation of a train, if the run has it. */
  train(trainId: number): TrainAnnotation | undefined;
  /**
   * 1 when the frame is a data frame. Conservative: 1 for trains without a bunch pattern, for trains not
   * annotated and for frames beyond the 352 annotated; 0 for frames the train does not have.
   */
  dataFrame(trainId: number, frame: number): 0 | 1;
  /** Pulse energy the frame saw (µJ): 0 without pulses, NaN when unknown. */
  energy(trainId: number, frame: number): number;
  /** Frame index in the train of a detector pulse ID (-1 when unknown). */
  frameOfPulse(trainId: number, pulseId: number): number;
}

interface FastRow {
  file: RunFile;
  row: number;
}

/** First entry per train of a fast source's group. */
function fastRows(run: Run, source: string, group: string): Map<number, FastRow> {
  const out = new Map<number, FastRow>();
  for (const f of run.files) {
    const ix = f.sources.get(source)?.index.get(group);
    if (!ix) continue;
    f.trainIds.forEach((t, i) => {
      if (ix.count[i] > 0 && !out.has(t)) out.set(t, { file: f, row: ix.first[i] });
    });
  }
  return out;
}

/** Per-train values of a control key (`a.b` -> CONTROL/<src>/a/b/value). */
function controlValues(run: Run, source: string, key: string): Map<number, number> {
  const out = new Map<number, number>();
  const p = `CONTROL/${source}/${key.split(".").join("/")}/value`;
  for (const f of run.files) {
    const ix = f.sources.get(source)?.index.get("");
    if (!ix) continue;
    let vals: number[];
    try {
      if (!f.h5.get(p)) continue;
      vals = readNumbers(f, p);
    } catch {
      continue;
    }
    f.trainIds.forEach((t, i) => {
      if (ix.count[i] > 0 && ix.first[i] < vals.length && !out.has(t)) out.set(t, vals[ix.first[i]]);
    });
  }
  return out;
}

function hasKey(run: Run, source: string, p: string): boolean {
  return run.files.some((f) => {
    if (!f.sources.has(source)) return false;
    try {
      return f.h5.get(p) !== null;
    } catch {
      return false;
    }
  });
}

/** Source names of the run, once each. */
function sourceNames(run: Run): { name: string; kind: "CONTROL" | "INSTRUMENT" }[] {
  const seen = new Map<string, "CONTROL" | "INSTRUMENT">();
  for (const f of run.files) {
    for (const s of f.sources.values()) if (!seen.has(s.name)) seen.set(s.name, s.kind);
  }
  return [...seen].map(([name, kind]) => ({ name, kind })).sort((a, b) => a.name.localeCompare(b.name));
}

function findTimeServer(run: Run, inst: string | undefined): string | null {
  const cands = sourceNames(run).filter((s) =>
    s.kind === "INSTRUMENT" && hasKey(run, s.name, `INSTRUMENT/${s.name}/data/bunchPatternTable`)
  ).map((s) => s.name);
  if (!cands.length) return null;
  return cands.find((c) => inst && c.toUpperCase().startsWith(inst + "_")) ??
    cands.find((c) => /TIMESERVER/i.test(c)) ?? cands[0];
}

function findXgm(run: Run, sase: Sase, inst: string): string | null {
  const cands = sourceNames(run).filter((s) =>
    s.kind === "INSTRUMENT" && hasKey(run, s.name, `INSTRUMENT/${s.name}/data/intensityTD`)
  ).map((s) => s.name);
  if (!cands.length) return null;
  return cands.find((c) => c.toUpperCase().startsWith(`SA${sase}_`)) ??
    cands.find((c) => c.toUpperCase().startsWith(inst + "_")) ?? cands[0];
}

/** The detector control source with `bunchStructure` keys (AGIPD FPGA_COMP / composite device). */
function findControl(run: Run, det: string | null): string | null {
  const cands = sourceNames(run).filter((s) =>
    s.kind === "CONTROL" && hasKey(run, s.name, `CONTROL/${s.name}/bunchStructure/nPulses/value`)
  ).map((s) => s.name);
  if (!cands.length) return null;
  return cands.find((c) => det && c.startsWith(det + "/")) ?? cands[0];
}

/** Frames per train and detector pulse IDs per train, from the detector's module files. */
function detectorFrames(det: Detector): Map<number, { frames: number; pulseIds: number[] }> {
  const out = new Map<number, { frames: number; pulseIds: number[] }>();
  const jf = det.type === "JUNGFRAU";
  for (const m of det.modules) {
    for (const mf of m.files) {
      let pids: number[] | undefined;
      if (!jf) {
        try {
          if (mf.file.h5.get(`${mf.groupPath}/pulseId`)) {
            pids = readNumbers(mf.file, `${mf.groupPath}/pulseId`);
          }
        } catch {
          pids = undefined;
        }
      }
      mf.file.trainIds.forEach((t, i) => {
        const cnt = mf.index.count[i];
        if (!cnt) return;
        const frames = cnt * det.cellsPerEntry;
        const cur = out.get(t);
        if (cur && cur.frames >= frames) return;
        let ids: number[];
        if (jf) ids = Array.from({ length: frames }, (_, c) => c);
        else if (pids) ids = pids.slice(mf.index.first[i], mf.index.first[i] + cnt).sort((a, b) => a - b);
        else ids = [];
        out.set(t, { frames, pulseIds: ids });
      });
    }
  }
  return out;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Annotate the frames of a run from its bunch pattern and XGM. */
export function annotateBeam(run: Run, opts: BeamOptions = {}): BeamAnnotation {
  const warnings: string[] = [];
  const det = opts.detector ? run.detector(opts.detector) : (run.detectors.length ? run.detectors[0] : null);
  const ts0 = opts.timeServer === undefined
    ? findTimeServer(run, opts.instrument?.toUpperCase())
    : opts.timeServer;
  const instrument = (opts.instrument ?? (det ? det.name : ts0 ?? "")).split(/[_/]/)[0].toUpperCase();
  if (!instrument) throw new InputError(run.path, "cannot tell the instrument: give --instrument");
  const sase: Sase = opts.sase ?? saseForInstrument(instrument);
  if (![1, 2, 3].includes(sase)) throw new InputError(undefined, `--sase must be 1, 2 or 3, not ${sase}`);
  const ref = opts.referenceFrame ?? 1;
  if (!Number.isInteger(ref) || ref < 0 || ref >= LITFRM_FRAMES) {
    throw new InputError(undefined, `--reference-frame must be an integer 0..${LITFRM_FRAMES - 1}`);
  }
  const timeServer = ts0 && sourceNames(run).some((s) => s.name === ts0) ? ts0 : null;
  if (opts.timeServer && !timeServer) throw new InputError(run.path, `no source ${opts.timeServer}`);
  if (!timeServer) warnings.push("no time server bunch pattern in the run: every frame is a data frame");
  const xgm = opts.xgm === undefined ? findXgm(run, sase, instrument) : opts.xgm;
  if (opts.xgm && !sourceNames(run).some((s) => s.name === opts.xgm)) {
    throw new InputError(run.path, `no source ${opts.xgm}`);
  }
  if (!xgm) warnings.push("no XGM in the run: pulse energies are NaN");
  const control = opts.control === undefined ? findControl(run, det?.name ?? null) : opts.control;
  if (opts.control && !sourceNames(run).some((s) => s.name === opts.control)) {
    throw new InputError(run.path, `no source ${opts.control}`);
  }

  // Bunch patterns: SASE pulses per train.
  const pulses = new Map<number, number[]>();
  if (timeServer) {
    const rows = fastRows(run, timeServer, "data");
    const table = new Uint32Array(PULSE_SLOTS);
    for (const [t, r] of rows) {
      const p = `INSTRUMENT/${timeServer}/data/bunchPatternTable`;
      const width = Math.min(PULSE_SLOTS, (r.file.h5.get(p) as { shape: number[] }).shape[1] ?? PULSE_SLOTS);
      table.fill(0);
      readSlab(r.file.h5, p, [r.row, 0], [1, width], table);
      pulses.set(t, decodeBunchPattern(table, sase));
    }
  }

  // Frames per train.
  const detFrames = det ? detectorFrames(det) : new Map<number, { frames: number; pulseIds: number[] }>();
  const ctlFrames = control ? controlValues(run, control, "bunchStructure.nPulses") : new Map();
  const trainIds = run.trainIds;
  const framesOf = (t: number): number =>
    opts.framesPerTrain ? opts.framesPerTrain(t) : detFrames.get(t)?.frames ?? ctlFrames.get(t) ?? 0;
  if (!det && !control && !opts.framesPerTrain) {
    throw new InputError(
      run.path,
      "no detector data and no bunchStructure.nPulses: cannot tell frames per train",
    );
  }

  // Stride.
  let stride: number;
  let repRateFrom: BeamAnnotation["repRateFrom"];
  const ctlRate = control ? controlValues(run, control, "bunchStructure.repetitionRate") : new Map();
  if (opts.repRate !== undefined) {
    stride = strideForRate(opts.repRate);
    repRateFrom = "option";
  } else if (ctlRate.size) {
    stride = strideForRate(ctlRate.values().next().value as number);
    repRateFrom = "control";
    if ([...ctlRate.values()].some((r) => strideForRate(r) !== stride)) {
      warnings.push("the detector's repetition rate changes during the run: using the first value");
    }
  } else {
    let g = 0;
    for (const ps of pulses.values()) for (let i = 1; i < ps.length; i++) g = gcd(g, ps[i] - ps[i - 1]);
    let step = 0;
    for (const d of detFrames.values()) {
      for (let i = 1; i < d.pulseIds.length; i++) step = gcd(step, d.pulseIds[i] - d.pulseIds[i - 1]);
    }
    const largest = (x: number) => [8, 4, 2, 1].find((s) => x % s === 0)!;
    if (g > 0) {
      stride = largest(g);
      repRateFrom = "bunch pattern";
    } else if ([1, 2, 4, 8].includes(step)) {
      stride = step;
      repRateFrom = "detector pulse IDs";
    } else {
      stride = 1;
      repRateFrom = "default";
      if ([...pulses.values()].some((p) => p.length > 0)) {
        warnings.push("cannot tell the repetition rate (give --rep-rate): assumed 4.5 MHz");
      }
    }
    if (repRateFrom !== "default") {
      warnings.push(`repetition rate ${rateForStride(stride)} MHz inferred from the ${repRateFrom}`);
    }
  }

  // Anchor.
  let align: BeamAnnotation["align"];
  let anchor: number | null = null;
  if (opts.firstPulseSlot !== undefined) {
    if (
      !Number.isInteger(opts.firstPulseSlot) || opts.firstPulseSlot < 0 || opts.firstPulseSlot >= PULSE_SLOTS
    ) {
      throw new InputError(undefined, `first pulse slot must be an integer 0..${PULSE_SLOTS - 1}`);
    }
    align = "slot";
    anchor = opts.firstPulseSlot;
  } else if ((opts.align ?? "run") === "run") {
    align = "run";
    for (const ps of pulses.values()) if (ps.length && (anchor === null || ps[0] < anchor)) anchor = ps[0];
  } else {
    align = "train";
  }

  // XGM rows.
  const xgmRows = xgm ? fastRows(run, xgm, "data") : new Map<number, FastRow>();
  let xgmWidth = 0;
  let xBuf = new Float32Array(0), sBuf = new Float32Array(0);
  let hasSigma = false;
  if (xgm && xgmRows.size) {
    const r0 = xgmRows.values().next().value!;
    xgmWidth = (r0.file.h5.get(`INSTRUMENT/${xgm}/data/intensityTD`) as { shape: number[] }).shape[1] ?? 1;
    hasSigma = hasKey(run, xgm, `INSTRUMENT/${xgm}/data/intensitySigmaTD`);
    xBuf = new Float32Array(xgmWidth);
    sBuf = new Float32Array(xgmWidth);
  }
  const readXgm = (t: number): boolean => {
    const r = xgmRows.get(t);
    if (!r) return false;
    readSlab(r.file.h5, `INSTRUMENT/${xgm}/data/intensityTD`, [r.row, 0], [1, xgmWidth], xBuf);
    if (hasSigma) {
      readSlab(r.file.h5, `INSTRUMENT/${xgm}/data/intensitySigmaTD`, [r.row, 0], [1, xgmWidth], sBuf);
    } else sBuf.fill(0);
    return true;
  };

  let capped = 0;
  let noBp = 0;
  let noXgm = 0;
  const trains: TrainAnnotation[] = [];
  for (const t of trainIds) {
    const total = Math.max(0, Math.floor(framesOf(t)));
    if (total > LITFRM_FRAMES) capped++;
    const F = Math.min(total, LITFRM_FRAMES);
    const ps = pulses.get(t);
    const hasBp = ps !== undefined;
    const npf = new Uint16Array(F);
    const energy = new Float32Array(F);
    const sigma = new Float32Array(F);
    const pattern = new Uint8Array(F);
    const master: number[] = [];
    const xgmIds: number[] = [];
    let outside = 0;
    let a: number | null = null;
    let hasX = false;
    if (!hasBp) {
      noBp++;
      pattern.fill(1);
      energy.fill(NaN);
      sigma.fill(NaN);
    } else {
      a = align === "train" ? (ps.length ? ps[0] : null) : anchor;
      hasX = ps.length > 0 && readXgm(t);
      if (ps.length && xgm && !hasX) noXgm++;
      const sig2 = new Float64Array(F);
      const en = new Float64Array(F);
      for (let k = 0; k < ps.length; k++) {
        const rel = a === null ? -1 : ps[k] - a;
        const f = rel < 0 ? -1 : ref + Math.floor(rel / stride);
        if (f < ref || f >= F) {
          outside++;
          continue;
        }
        npf[f]++;
        master.push(ps[k]);
        xgmIds.push(k);
        if (hasX && k < xgmWidth) {
          en[f] += xBuf[k];
          sig2[f] += sBuf[k] * sBuf[k];
        } else {
          en[f] = NaN;
          sig2[f] = NaN;
        }
      }
      for (let f = 0; f < F; f++) {
        pattern[f] = npf[f] > 0 ? 1 : 0;
        energy[f] = en[f];
        sigma[f] = Math.sqrt(sig2[f]);
      }
    }
    const lit: number[] = [];
    const data: number[] = [];
    for (let f = 0; f < F; f++) {
      if (npf[f] > 0) lit.push(f);
      if (pattern[f]) data.push(f);
    }
    const d = detFrames.get(t);
    let pids = d && d.pulseIds.length ? d.pulseIds : [];
    if (pids.length < total) {
      // Frames without detector pulse IDs: continue from the last known with the stride.
      const first = pids.length ? pids[0] : 0;
      pids = Array.from({ length: total }, (_, f) => f < pids.length ? pids[f] : first + f * stride);
    }
    trains.push({
      trainId: t,
      hasBunchPattern: hasBp,
      hasXgm: hasX,
      nPulse: ps?.length ?? 0,
      nFrame: F,
      nFrameTotal: total,
      referenceFrame: ref,
      anchor: a,
      nLitFrame: lit.length,
      nDataFrame: data.length,
      litFrames: lit,
      dataFrames: data,
      nPulsePerFrame: npf,
      energyPerFrame: energy,
      energySigma: sigma,
      dataFramePattern: pattern,
      detectorPulseId: pids.slice(0, total),
      masterPulseId: master,
      xgmPulseId: xgmIds,
      pulsesOutside: outside,
    });
  }
  if (timeServer && noBp) {
    warnings.push(
      `${noBp} of ${trainIds.length} trains have no bunch pattern: all their frames are data frames`,
    );
  }
  if (noXgm) warnings.push(`${noXgm} trains with pulses have no XGM data: their energies are NaN`);
  if (capped) {
    warnings.push(`${capped} trains have more than ${LITFRM_FRAMES} frames: only ${LITFRM_FRAMES} annotated`);
  }
  const outside = trains.reduce((s, t) => s + t.pulsesOutside, 0);
  if (outside) warnings.push(`${outside} pulses fell outside the detector's frames`);

  const byId = new Map(trains.map((t) => [t.trainId, t]));
  const pulseIndex = new Map<number, Map<number, number>>();
  return {
    instrument,
    sase,
    repRate: rateForStride(stride),
    stride,
    repRateFrom,
    referenceFrame: ref,
    align,
    anchor: align === "train" ? null : anchor,
    sources: { timeServer, xgm, detector: det?.name ?? null, control },
    trains,
    warnings,
    train: (t) => byId.get(t),
    dataFrame(t, f) {
      const a = byId.get(t);
      if (!a || !a.hasBunchPattern) return 1;
      if (f < 0 || f >= a.nFrameTotal) return 0;
      if (f >= a.nFrame) return 1;
      return a.dataFramePattern[f] ? 1 : 0;
    },
    energy(t, f) {
      const a = byId.get(t);
      if (!a || f < 0 || f >= a.nFrame) return NaN;
      return a.energyPerFrame[f];
    },
    frameOfPulse(t, p) {
      const a = byId.get(t);
      if (!a) return -1;
      let m = pulseIndex.get(t);
      if (!m) {
        m = new Map(a.detectorPulseId.map((id, f) => [id, f]));
        pulseIndex.set(t, m);
      }
      return m.get(p) ?? -1;
    },
  };
}

// -----------------------------------------------------------------------------------------------------
// Combination with the images

export type LitFrom = "beam" | "images" | "both";

export interface LitAnomaly {
  trainId: number;
  pulseId: number;
  /** Frame index in the train (-1 when the annotation does not know the pulse ID). */
  frame: number;
}

/**
 * The lit decision per frame (frames as localise lists them: trainId, pulseId, image decision):
 * "beam": the frame is a data frame; "images": the image decision; "both": lit when the beam says X-rays
 * and the images say signal. A frame with signal but no pulse is an anomaly: reported and kept (lit).
 */
export function combineLit(
  ann: BeamAnnotation,
  frames: { trainId: ArrayLike<number>; pulseId: ArrayLike<number>; frameLit: ArrayLike<number> },
  mode: LitFrom,
): { frameLit: Uint8Array; beam: Uint8Array; anomalies: LitAnomaly[] } {
  if (!["beam", "images", "both"].includes(mode)) {
    throw new InputError(undefined, `--lit-from must be beam, images or both, not ${mode}`);
  }
  const n = frames.trainId.length;
  const out = new Uint8Array(n);
  const beam = new Uint8Array(n);
  const anomalies: LitAnomaly[] = [];
  for (let i = 0; i < n; i++) {
    const t = frames.trainId[i], p = frames.pulseId[i];
    const f = ann.frameOfPulse(t, p);
    const a = ann.train(t);
    // A pulse ID the annotation does not know: only trains without a bunch pattern count as data frames.
    beam[i] = f >= 0 ? ann.dataFrame(t, f) : (!a || !a.hasBunchPattern ? 1 : 0);
    const img = frames.frameLit[i] ? 1 : 0;
    if (mode === "beam") out[i] = beam[i];
    else if (mode === "images") out[i] = img;
    else {
      out[i] = beam[i] & img;
      if (img && !beam[i]) {
        anomalies.push({ trainId: t, pulseId: p, frame: f });
        out[i] = 1;
      }
    }
  }
  return { frameLit: out, beam, anomalies };
}

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
export function litframesCounts(ann: BeamAnnotation, trainIds: ArrayLike<number>): Record<string, number[]> {
  const c = Array.from(trainIds, (t) => (ann.train(Number(t)) ? 1 : 0));
  return { "@litfrm": c, "@litfrmOut": [...c] };
}

/** The LITFRM data of the annotated trains among `trainIds`, for `addData`. */
export function litframesData(
  ann: BeamAnnotation,
  trainIds: ArrayLike<number>,
): Record<LitframesDatasetName, DataInput> {
  const ts = Array.from(trainIds, Number).map((t) => ann.train(t)).filter((a) => a !== undefined);
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

/**
 * Add trains and the LITFRM data to an open writer whose schema holds (only) `litframesSchema`; the other
 * sources of the writer get no entries for these trains.
 */
export function addLitframes(w: FileWriter<string>, ann: BeamAnnotation, trainIds?: ArrayLike<number>): void {
  const ids = trainIds ? Array.from(trainIds, Number) : ann.trains.map((t) => t.trainId);
  for (let i = 0; i < ids.length; i += TRAINS_PER_CALL) {
    const chunk = ids.slice(i, i + TRAINS_PER_CALL);
    w.addTrains(chunk, litframesCounts(ann, chunk));
    w.addData(litframesData(ann, chunk) as Record<string, DataInput>);
  }
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
}

/** Write the annotation alone: `<PREFIX>-R<run>-REDU01-S00000.h5` in `dir`; returns the paths written. */
export async function writeLitframes(
  ann: BeamAnnotation,
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
    addLitframes(w as unknown as FileWriter<string>, ann);
    return w.close();
  } catch (e) {
    w.abort(String(e));
    throw e;
  }
}

/** File prefix and run number from EuXFEL file names (RAW-R0012-DA01-S00000.h5). */
export function runNaming(files: string[]): { prefix: string; run: number } {
  for (const f of files) {
    const m = /^([A-Za-z]+)-R(\d+)-/.exec(path.basename(f));
    if (m) return { prefix: m[1], run: Number(m[2]) };
  }
  return { prefix: "REDU", run: 0 };
}

// -----------------------------------------------------------------------------------------------------
// Command

export interface LitframesSummary {
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
  trains: number;
  trainsWithoutBunchPattern: number;
  pulses: number;
  frames: number;
  litFrames: number;
  dataFrames: number;
  warnings: string[];
  files: string[];
}

export function summariseLitframes(runPath: string, ann: BeamAnnotation, files: string[]): LitframesSummary {
  const sum = (f: (t: TrainAnnotation) => number) => ann.trains.reduce((s, t) => s + f(t), 0);
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
    trains: ann.trains.length,
    trainsWithoutBunchPattern: sum((t) => (t.hasBunchPattern ? 0 : 1)),
    pulses: sum((t) => t.nPulse),
    frames: sum((t) => t.nFrame),
    litFrames: sum((t) => t.nLitFrame),
    dataFrames: sum((t) => t.nDataFrame),
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
