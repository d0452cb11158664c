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
import { InputError } from "../errors.ts";
import { type H5Dataset, readSlab } from "../exdf/h5.ts";
import { type Detector, type Run } from "../exdf/run.ts";
import { indexRows, KeyData, type KeyFile, readRowsInto } from "../exdf/keydata.ts";

/** Frames the LITFRM arrays hold (AGIPD memory cells). */
import {
  decodeBunchPattern,
  LITFRM_FRAMES,
  PULSE_SLOTS,
  rateForStride,
  type Sase,
  saseForInstrument,
  strideForRate,
} from "./bunch.ts";
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
  /** Trains annotated together (default `$XFEL_REDU_BEAM_WINDOW`, else BEAM_WINDOW_TRAINS; tests make it small). */
  windowTrains?: number;
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

/**
 * The annotation's run-wide figures and its lookups by train (BeamAnnotation holds every train; streamBeam
 * annotates a window of trains at a time).
 */
export interface BeamLookup {
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
  warnings: string[];
  /** Trains of the run with a bunch pattern. */
  trainsWithBunchPattern: number;
  /** Data frames over the run (the sum of the trains' nDataFrame). */
  dataFrames: number;
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
  /** Trains whose annotation is held in memory (all of them in a BeamAnnotation, a window streamed). */
  held(): number;
  /** Every annotated train, in train order (streamed: annotated a window at a time, none kept). */
  annotated(): Iterable<TrainAnnotation>;
}

export interface BeamAnnotation extends BeamLookup {
  trains: TrainAnnotation[];
}

/** The first row per train of a fast source's key. */
function fastRows(run: Run, source: string, key: string): Map<number, { part: KeyFile; row: number }> {
  return new KeyData(run, source, key).firstRows();
}

/** Per-train values of a control key (`a.b` -> CONTROL/<src>/a/b/value). */
function controlValues(run: Run, source: string, key: string): Map<number, number> {
  return new KeyData(run, source, key).trainValues();
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

/** Frames per train and detector pulse IDs per train of the trains in [first, last], from the module files. */
function detectorFrames(
  det: Detector,
  first = -Infinity,
  last = Infinity,
): Map<number, { frames: number; pulseIds: number[] }> {
  const out = new Map<number, { frames: number; pulseIds: number[] }>();
  const jf = det.type === "JUNGFRAU";
  for (const m of det.modules) {
    for (const mf of m.files) {
      const rows = [...indexRows(mf.file, mf.index, mf.rows)].filter((r) =>
        r.count > 0 && r.trainId >= first && r.trainId <= last
      );
      if (!rows.length) continue;
      // The pulse IDs of these trains' rows only: rows [lo, hi) (numbers past the dataset's end missing).
      let pids: number[] | undefined;
      let lo = Infinity;
      if (!jf) {
        lo = Math.min(...rows.map((r) => r.first));
        const hi = Math.max(...rows.map((r) => r.first + r.count));
        try {
          const p = `${mf.groupPath}/pulseId`;
          const ds = mf.file.h5.get(p) as H5Dataset | null;
          if (ds) {
            const end = Math.min(hi, ds.shape?.[0] ?? 0);
            const buf = new Float64Array(Math.max(0, end - lo));
            if (end > lo) readRowsInto({ file: mf.file }, p, lo, end - lo, buf);
            pids = Array.from(buf);
          }
        } catch {
          pids = undefined;
        }
      }
      for (const { trainId: t, first: f0, count: cnt } of rows) {
        const frames = cnt * det.cellsPerEntry;
        const cur = out.get(t);
        if (cur && cur.frames >= frames) continue;
        let ids: number[];
        if (jf) ids = Array.from({ length: frames }, (_, c) => c);
        else if (pids) ids = pids.slice(f0 - lo, f0 - lo + cnt).sort((a, b) => a - b);
        else ids = [];
        out.set(t, { frames, pulseIds: ids });
      }
    }
  }
  return out;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Trains annotated together: the bunch patterns and detector pulse IDs are read for this many at a time. */
const BEAM_WINDOW_TRAINS = 64;

/** The run-wide part of an annotation, and how to annotate any window of trains. */
interface BeamSetup {
  head: Omit<
    BeamLookup,
    | "train"
    | "dataFrame"
    | "energy"
    | "frameOfPulse"
    | "trainsWithBunchPattern"
    | "dataFrames"
    | "held"
    | "annotated"
  >;
  trainIds: readonly number[];
  /** Trains per window. */
  window: number;
  /** Annotate trains (consecutive in the run), counting what the run's warnings count. */
  annotate(trainIds: readonly number[], counts: BeamCounts): TrainAnnotation[];
}

interface BeamCounts {
  capped: number;
  noBp: number;
  noXgm: number;
  outside: number;
  withBp: number;
  dataFrames: number;
}

/** The windows of BEAM_WINDOW_TRAINS trains of the run, in order. */
function* trainWindows(trainIds: readonly number[], n: number): Generator<readonly number[]> {
  for (let i = 0; i < trainIds.length; i += n) yield trainIds.slice(i, i + n);
}

/** Sources, stride and anchor of the run (passes over its bunch patterns, nothing kept per train). */
function beamSetup(run: Run, opts: BeamOptions): BeamSetup {
  const warnings: string[] = [];
  const perWindow = Math.max(
    1,
    opts.windowTrains ?? (Number(process.env.XFEL_REDU_BEAM_WINDOW) || BEAM_WINDOW_TRAINS),
  );
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

  // Bunch patterns: SASE pulses per train, read for a window of trains at a time.
  const bpRows = timeServer
    ? fastRows(run, timeServer, "data.bunchPatternTable")
    : new Map<number, { part: KeyFile; row: number }>();
  const table = new Uint32Array(PULSE_SLOTS);
  const pulsesOf = (trainIds: readonly number[]): Map<number, number[]> => {
    const pulses = new Map<number, number[]>();
    const p = `INSTRUMENT/${timeServer}/data/bunchPatternTable`;
    for (const t of trainIds) {
      const r = bpRows.get(t);
      if (!r) continue;
      const width = Math.min(
        PULSE_SLOTS,
        (r.part.file.h5.get(p) as { shape: number[] }).shape[1] ?? PULSE_SLOTS,
      );
      table.fill(0);
      readSlab(r.part.file.h5, p, [r.row, 0], [1, width], table);
      pulses.set(t, decodeBunchPattern(table, sase));
    }
    return pulses;
  };

  // Frames per train.
  const ctlFrames = control ? controlValues(run, control, "bunchStructure.nPulses") : new Map();
  const trainIds = run.trainIds;
  if (!det && !control && !opts.framesPerTrain) {
    throw new InputError(
      run.path,
      "no detector data and no bunchStructure.nPulses: cannot tell frames per train",
    );
  }
  const framesOf = (t: number, detFrames: Map<number, { frames: number }>): number =>
    opts.framesPerTrain ? opts.framesPerTrain(t) : detFrames.get(t)?.frames ?? ctlFrames.get(t) ?? 0;
  const detFramesOf = (ids: readonly number[]) =>
    det && ids.length
      ? detectorFrames(det, ids[0], ids[ids.length - 1])
      : new Map<number, { frames: number; pulseIds: number[] }>();

  // Stride, and the run's anchor: one pass over the bunch patterns (and detector pulse IDs) when needed.
  let stride: number;
  let repRateFrom: BeamAnnotation["repRateFrom"];
  const ctlRate = control ? controlValues(run, control, "bunchStructure.repetitionRate") : new Map();
  const runAnchor = opts.firstPulseSlot === undefined && (opts.align ?? "run") === "run";
  const inferRate = opts.repRate === undefined && !ctlRate.size;
  let g = 0, step = 0, anyPulses = false;
  let anchor: number | null = null;
  if (timeServer && (runAnchor || inferRate)) {
    for (const ids of trainWindows(trainIds, perWindow)) {
      const pulses = pulsesOf(ids);
      for (const ps of pulses.values()) {
        if (ps.length) anyPulses = true;
        if (runAnchor && ps.length && (anchor === null || ps[0] < anchor)) anchor = ps[0];
        if (inferRate) { for (let i = 1; i < ps.length; i++) g = gcd(g, ps[i] - ps[i - 1]); }
      }
    }
  }
  if (inferRate) {
    // The pulse spacing of the detector's pulse IDs (the fallback when the bunch pattern has no gaps).
    for (const ids of trainWindows(trainIds, perWindow)) {
      for (const d of detFramesOf(ids).values()) {
        for (let i = 1; i < d.pulseIds.length; i++) step = gcd(step, d.pulseIds[i] - d.pulseIds[i - 1]);
      }
    }
  }
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
      if (anyPulses) {
        warnings.push("cannot tell the repetition rate (give --rep-rate): assumed 4.5 MHz");
      }
    }
    if (repRateFrom !== "default") {
      warnings.push(`repetition rate ${rateForStride(stride)} MHz inferred from the ${repRateFrom}`);
    }
  }

  // Anchor.
  let align: BeamAnnotation["align"];
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
  } else {
    align = "train";
    anchor = null;
  }

  // XGM rows.
  const xgmRows = xgm
    ? fastRows(run, xgm, "data.intensityTD")
    : new Map<number, { part: KeyFile; row: number }>();
  let xgmWidth = 0;
  let xBuf = new Float32Array(0), sBuf = new Float32Array(0);
  let hasSigma = false;
  if (xgm && xgmRows.size) {
    const r0 = xgmRows.values().next().value!;
    xgmWidth = (r0.part.file.h5.get(`INSTRUMENT/${xgm}/data/intensityTD`) as { shape: number[] }).shape[1] ??
      1;
    hasSigma = hasKey(run, xgm, `INSTRUMENT/${xgm}/data/intensitySigmaTD`);
    xBuf = new Float32Array(xgmWidth);
    sBuf = new Float32Array(xgmWidth);
  }
  const readXgm = (t: number): boolean => {
    const r = xgmRows.get(t);
    if (!r) return false;
    readSlab(r.part.file.h5, `INSTRUMENT/${xgm}/data/intensityTD`, [r.row, 0], [1, xgmWidth], xBuf);
    if (hasSigma) {
      readSlab(r.part.file.h5, `INSTRUMENT/${xgm}/data/intensitySigmaTD`, [r.row, 0], [1, xgmWidth], sBuf);
    } else sBuf.fill(0);
    return true;
  };

  const annotate = (ids: readonly number[], counts: BeamCounts): TrainAnnotation[] => {
    const pulses = timeServer ? pulsesOf(ids) : new Map<number, number[]>();
    const detFrames = detFramesOf(ids);
    const trains: TrainAnnotation[] = [];
    for (const t of ids) {
      const total = Math.max(0, Math.floor(framesOf(t, detFrames)));
      if (total > LITFRM_FRAMES) counts.capped++;
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
        counts.noBp++;
        pattern.fill(1);
        energy.fill(NaN);
        sigma.fill(NaN);
      } else {
        counts.withBp++;
        a = align === "train" ? (ps.length ? ps[0] : null) : anchor;
        hasX = ps.length > 0 && readXgm(t);
        if (ps.length && xgm && !hasX) counts.noXgm++;
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
      counts.outside += outside;
      counts.dataFrames += data.length;
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
    return trains;
  };

  return {
    head: {
      instrument,
      sase,
      repRate: rateForStride(stride),
      stride,
      repRateFrom,
      referenceFrame: ref,
      align,
      anchor: align === "train" ? null : anchor,
      sources: { timeServer, xgm, detector: det?.name ?? null, control },
      warnings,
    },
    trainIds,
    window: perWindow,
    annotate,
  };
}

/** The warnings of a run's counts (after the setup's), in the order they always came. */
function countWarnings(setup: BeamSetup, c: BeamCounts): void {
  const w = setup.head.warnings;
  if (setup.head.sources.timeServer && c.noBp) {
    w.push(
      `${c.noBp} of ${setup.trainIds.length} trains have no bunch pattern: all their frames are data frames`,
    );
  }
  if (c.noXgm) w.push(`${c.noXgm} trains with pulses have no XGM data: their energies are NaN`);
  if (c.capped) {
    w.push(`${c.capped} trains have more than ${LITFRM_FRAMES} frames: only ${LITFRM_FRAMES} annotated`);
  }
  if (c.outside) w.push(`${c.outside} pulses fell outside the detector's frames`);
}

const noCounts = (): BeamCounts => ({ capped: 0, noBp: 0, noXgm: 0, outside: 0, withBp: 0, dataFrames: 0 });

/** The lookups over a train getter (the last train's pulse-ID map cached: combineLit asks frame by frame). */
function lookups(get: (t: number) => TrainAnnotation | undefined) {
  let pulseTrain: TrainAnnotation | undefined;
  let pulseIndex = new Map<number, number>();
  return {
    train: get,
    dataFrame(t: number, f: number): 0 | 1 {
      const a = get(t);
      if (!a || !a.hasBunchPattern) return 1;
      if (f < 0 || f >= a.nFrameTotal) return 0;
      if (f >= a.nFrame) return 1;
      return a.dataFramePattern[f] ? 1 : 0;
    },
    energy(t: number, f: number): number {
      const a = get(t);
      if (!a || f < 0 || f >= a.nFrame) return NaN;
      return a.energyPerFrame[f];
    },
    frameOfPulse(t: number, p: number): number {
      const a = get(t);
      if (!a) return -1;
      if (a !== pulseTrain) {
        pulseTrain = a;
        pulseIndex = new Map();
        // A pulse ID listed twice: its last frame (as before).
        a.detectorPulseId.forEach((id, f) => pulseIndex.set(id, f));
      }
      return pulseIndex.get(p) ?? -1;
    },
  };
}

/** Annotate the frames of a run from its bunch pattern and XGM: every train, held in `trains`. */
export function annotateBeam(run: Run, opts: BeamOptions = {}): BeamAnnotation {
  const setup = beamSetup(run, opts);
  const counts = noCounts();
  const trains: TrainAnnotation[] = [];
  for (const ids of trainWindows(setup.trainIds, setup.window)) {
    for (const a of setup.annotate(ids, counts)) trains.push(a);
  }
  countWarnings(setup, counts);
  const byId = new Map(trains.map((t) => [t.trainId, t]));
  return {
    ...setup.head,
    trains,
    trainsWithBunchPattern: counts.withBp,
    dataFrames: counts.dataFrames,
    ...lookups((t) => byId.get(t)),
    held: () => trains.length,
    annotated: () => trains,
  };
}

/**
 * The same annotation, streamed: the run-wide figures (stride, anchor, counts, warnings) from passes over the
 * run, the trains annotated a window of BEAM_WINDOW_TRAINS at a time when asked for (the window of the last
 * train asked kept): memory independent of the run length. Lookups in train order read each window once.
 */
export function streamBeam(run: Run, opts: BeamOptions = {}): BeamLookup {
  const setup = beamSetup(run, opts);
  const counts = noCounts();
  for (const ids of trainWindows(setup.trainIds, setup.window)) setup.annotate(ids, counts);
  countWarnings(setup, counts);
  const ids = setup.trainIds;
  let cached = -1;
  let held = new Map<number, TrainAnnotation>();
  const get = (t: number): TrainAnnotation | undefined => {
    if (held.has(t)) return held.get(t);
    // The train's position in the run (its trains sorted), then its window.
    let lo = 0, hi = ids.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ids[mid] < t) lo = mid + 1;
      else hi = mid;
    }
    if (ids[lo] !== t) return undefined;
    const n = setup.window;
    const w = Math.floor(lo / n);
    if (w !== cached) {
      const these = ids.slice(w * n, (w + 1) * n);
      held = new Map(setup.annotate(these, noCounts()).map((a) => [a.trainId, a]));
      cached = w;
    }
    return held.get(t);
  };
  return {
    ...setup.head,
    trainsWithBunchPattern: counts.withBp,
    dataFrames: counts.dataFrames,
    ...lookups(get),
    held: () => held.size,
    *annotated() {
      for (const w of trainWindows(ids, setup.window)) yield* setup.annotate(w, noCounts());
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
  ann: BeamLookup,
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
