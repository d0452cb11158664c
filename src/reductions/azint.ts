/**
 * `azint RUN --geometry FILE --out DIR`: azimuthal integration per frame (powder diffraction, SAXS/WAXS).
 *
 * Spec (CPU reference `azintFrames`, GPU kernel shaders/azint.wgsl over the same pixel table):
 * - Pixel table (per module, from src/exdf/geometry.ts): the pixel centre (x, y, z), z += clen (the detector
 *   distance); r = hypot(x, y); 2theta = atan2(r, z); chi = atan2(y, x). Radial value per unit:
 *   `q_nm^-1` = 4 pi / lambda sin(theta) (lambda = 12.398419843320026 keV A / E), `2th_deg` = 2theta in
 *   degrees, `r_mm` = 1000 r. Bin edges uniform over [A, B] (`--range`, default the detector's min and max
 *   over all pixel centres); bin = floor((v - A) / (B - A) * bins), v = B in the last bin, outside: none.
 * - Correction c per pixel: cos^3(2theta) (flat-detector solid angle, 1 on the beam axis; off with
 *   `--no-solid-angle`) times, with `--polarization P`, pyFAI's factor 0.5 (1 + cos^2 2theta -
 *   P cos(2 chi) sin^2 2theta).
 * - A pixel is valid when its module recorded the frame, the value is finite and its mask is 0.
 * - Per frame and bin: S = sum of the valid values, C = sum of their c, n = their number;
 *   intensity = S / C (pyFAI's estimator with no pixel splitting: the mean of the values when c = 1; NaN
 *   when n = 0). The CPU sums in float64, the GPU in float32 (tree reduction); n equal, floats close.
 * - Per train and for the run: S and C summed over the frames, then S / C.
 * - `--lit-only`: only frames the beam annotation (or `--from` localise output) says are lit.
 * - Memory: each part appends its per-frame S, C, n to a spill file (src/framework/spill.ts); the merge reads them
 *   back in blocks of trains (train means, run means, then the writer), so memory is bounded by the batch
 *   and block sizes plus 16 bytes (train and pulse ID) per frame.
 * Output: `DIR/<PREFIX>-R<run>-REDU04-S00000.h5`, instrument source `<DET>/REDU/AZINT:output`, per frame
 * `data.trainId`, `data.pulseId`, `data.intensity` (f32, bins), `data.count` (u32, bins); control source
 * `<DET>/REDU/AZINT`, per train `trainMean` (f32, bins), and `radialAxis` (bin centres), `radialEdges`
 * (bins + 1), `unitCode` (0 q_nm^-1, 1 2th_deg, 2 r_mm). `DIR/summary.json`: `"azint": {"unit", "edges",
 * "mean" (the run's S / C per bin), "count" (valid pixel-frames per bin)}`, photon energy, distance,
 * geometry, frames, bytes in / out and their ratio.
 */
import { InputError } from "../errors.ts";
import type { FrameBatch } from "../exdf/frames.ts";
import { type Algorithm, runAlgorithm, type RunInfo } from "../framework/algorithm.ts";
import { type DetectorLayout, loadLayout, pixelCentres } from "../exdf/geometry.ts";
import {
  type BackendChoice,
  type BlockIds,
  blocksOfTrains,
  checkBackend,
  FrameRecords,
  mergeSpills,
  partsSummary,
  pickDevice,
  ReductionAlgorithm,
  type ReductionResult,
  workersFor,
  writeReductionDir,
  writeReduFile,
} from "./common.ts";
import { type Detector, Run } from "../exdf/run.ts";
import type { WriterSchema } from "../exdf/writer/writer.ts";
import type { TrainFrames } from "../framework/spill.ts";
import { litLookup } from "../average/average.ts";
import type { AzintBackend } from "./azint-spec.ts";
import type { AzintSums } from "./azint-spec.ts";
import { NO_BIN } from "./azint-spec.ts";
import type { PixelTable } from "./azint-spec.ts";

export const UNITS = ["q_nm^-1", "2th_deg", "r_mm"] as const;
export type RadialUnit = typeof UNITS[number];
/** keV * Angstrom (pyFAI's value). */
export const HC_KEV_A = 12.398419843320026;

export interface AzintOptions {
  geometry?: string;
  bins: number;
  unit: RadialUnit;
  range?: [number, number];
  solidAngle: boolean;
  polarization?: number;
  /** eV; default the geometry file's photon_energy. */
  energy?: number;
  /** metres; default the geometry file's clen. */
  distance?: number;
  litOnly: boolean;
  from?: string;
  backend: BackendChoice;
  workers?: number;
}

export const DEFAULT_AZINT: AzintOptions = {
  bins: 500,
  unit: "q_nm^-1",
  solidAngle: true,
  litOnly: false,
  backend: "auto",
};

/** The resolved set-up: layout, energy, distance, range. */
export interface AzintSetup {
  layout: DetectorLayout;
  energy: number;
  distance: number;
  range: [number, number];
  /** Layout module of a run module (JUNGFRAU modules are numbered from 1 in the run). */
  layoutModule: (m: number) => number;
  /** modulePixels per layout module, kept from finding the range (pixelTable takes them, once). */
  pixels?: Map<number, { value: Float64Array; corr: Float64Array }>;
}

/**
 * Radial value and correction of every pixel of one module (NaN where no panel covers it). With
 * R = hypot(r, z): cos 2theta = z / R, sin theta = r / sqrt(2 R (R + z)) (the half-angle formula, exact where
 * 1 - cos 2theta would cancel), sin^2 2theta = r^2 / R^2, cos 2chi = (x^2 - y^2) / r^2: square roots instead
 * of atan2, sin and cos (20x faster; the same values to a few ulp). Behind the detector plane (z <= 0) the
 * trigonometric forms.
 */
export function modulePixels(
  layout: DetectorLayout,
  module: number,
  o: Pick<AzintOptions, "unit" | "solidAngle" | "polarization">,
  energy: number,
  distance: number,
): { value: Float64Array; corr: Float64Array } {
  const c = pixelCentres(layout, module);
  const n = c.length / 3;
  const value = new Float64Array(n);
  const corr = new Float64Array(n);
  const lambdaNm = HC_KEV_A / (energy / 1000) / 10;
  const unit = o.unit === "q_nm^-1" ? 0 : o.unit === "2th_deg" ? 1 : 2;
  const qScale = 4 * Math.PI / lambdaNm, solid = o.solidAngle, pol = o.polarization;
  for (let i = 0; i < n; i++) {
    const x = c[3 * i], y = c[3 * i + 1], z = distance + c[3 * i + 2];
    if (x !== x) {
      value[i] = corr[i] = NaN; // no panel covers the pixel
      continue;
    }
    const r2 = x * x + y * y, r = Math.sqrt(r2);
    let ct: number, st2: number, sinHalf: number;
    if (z > 0) {
      const R = Math.sqrt(r2 + z * z);
      ct = z / R;
      st2 = r2 / (R * R);
      sinHalf = r / Math.sqrt(2 * R * (R + z));
    } else {
      const tth = Math.atan2(r, z);
      ct = Math.cos(tth);
      const s = Math.sin(tth);
      st2 = s * s;
      sinHalf = Math.sin(tth / 2);
    }
    value[i] = unit === 0 ? qScale * sinHalf : unit === 1 ? Math.atan2(r, z) * 180 / Math.PI : r * 1000;
    let k = solid ? ct * ct * ct : 1;
    if (pol !== undefined) {
      const cos2chi = r2 > 0 ? (x * x - y * y) / r2 : 1;
      k *= 0.5 * (1 + ct * ct - pol * cos2chi * st2);
    }
    corr[i] = k;
  }
  return { value, corr };
}

/** Bin of a value: floor((v - a) / (b - a) * bins); v = b in the last bin; NO_BIN outside or NaN. */
export function binOf(v: number, a: number, b: number, bins: number): number {
  if (!(v >= a && v <= b)) return NO_BIN;
  const k = Math.floor(((v - a) / (b - a)) * bins);
  return k >= bins ? bins - 1 : k;
}

/** Resolve geometry, energy, distance and the radial range for a detector. */
export function azintSetup(det: Detector, o: AzintOptions): AzintSetup {
  const layout = loadLayout(o.geometry, det.type);
  const layoutModule = (m: number) => (det.type === "JUNGFRAU" ? m - 1 : m);
  for (const m of det.modules) {
    const lm = layoutModule(m.module);
    if (lm < 0 || lm >= layout.nModules) {
      throw new InputError(layout.source, `no panel for module ${m.module} of ${det.name}`);
    }
  }
  const energy = o.energy ?? layout.photonEnergy;
  const distance = o.distance ?? layout.clen;
  if (distance === undefined || !(distance > 0)) {
    throw new InputError(
      layout.source,
      "no detector distance: give clen in the geometry file or --distance METRES",
    );
  }
  if (o.unit === "q_nm^-1" && (energy === undefined || !(energy > 0))) {
    throw new InputError(
      layout.source,
      "no photon energy: give photon_energy in the geometry file or --energy EV",
    );
  }
  let range = o.range;
  const pixels = new Map<number, { value: Float64Array; corr: Float64Array }>();
  if (!range) {
    let lo = Infinity, hi = -Infinity;
    for (const m of det.modules) {
      const lm = layoutModule(m.module);
      const p = modulePixels(layout, lm, o, energy ?? 1, distance);
      pixels.set(lm, p);
      const value = p.value;
      for (let i = 0; i < value.length; i++) {
        const v = value[i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    range = [lo, hi];
  }
  return { layout, energy: energy ?? NaN, distance, range, layoutModule, pixels };
}

export function pixelTable(setup: AzintSetup, modules: number[], o: AzintOptions): PixelTable {
  const bin: Uint32Array[] = [], corr: Float32Array[] = [];
  let pixels = 0;
  const [a, b] = setup.range;
  for (const m of modules) {
    const lm = setup.layoutModule(m);
    const p = setup.pixels?.get(lm) ?? modulePixels(setup.layout, lm, o, setup.energy, setup.distance);
    setup.pixels?.delete(lm);
    const value = p.value, mb = new Uint32Array(value.length);
    for (let i = 0; i < value.length; i++) mb[i] = binOf(value[i], a, b, o.bins);
    pixels = value.length;
    bin.push(mb);
    corr.push(Float32Array.from(p.corr));
  }
  return { modules, pixels, bin, corr };
}

/**
 * One module slot of a pixel table as the CPU reference uses it (built once per table and bin count): the bin
 * of each pixel with NO_BIN as `bins` (one bin past the last, summed and dropped), c in float64, and per bin
 * the sum of c and the number of pixels (what a frame with every pixel valid gives).
 */
interface SlotSums {
  bin: Uint32Array;
  corr: Float64Array;
  totalC: Float64Array;
  totalN: Uint32Array;
}

const slotSumsOf = new WeakMap<PixelTable, { bins: number; slots: SlotSums[] }>();

function slotSums(t: PixelTable, bins: number): SlotSums[] {
  const had = slotSumsOf.get(t);
  if (had?.bins === bins) return had.slots;
  const slots = t.bin.map((tb, s) => {
    const bin = new Uint32Array(t.pixels), corr = Float64Array.from(t.corr[s]);
    const totalC = new Float64Array(bins), totalN = new Uint32Array(bins);
    for (let p = 0; p < t.pixels; p++) {
      const k = tb[p] === NO_BIN ? bins : tb[p];
      bin[p] = k;
      if (k < bins) {
        totalC[k] += corr[p];
        totalN[k]++;
      }
    }
    return { bin, corr, totalC, totalN };
  });
  slotSumsOf.set(t, { bins, slots });
  return slots;
}

/**
 * One module frame into the accumulators (bins + 1 long, the last one dropped): the valid values into s0
 * (even pixels) and s1 (odd: two chains of additions instead of one), the invalid pixels' c and number into
 * badC and badN.
 */
function accumulate(
  data: Float32Array,
  mask: Uint32Array | undefined,
  bin: Uint32Array,
  corr: Float64Array,
  s0: Float64Array,
  s1: Float64Array,
  badC: Float64Array,
  badN: Uint32Array,
): void {
  const n = data.length, even = n - (n & 1);
  if (mask) {
    for (let p = 0; p < even; p += 2) {
      let v = data[p], k = bin[p];
      if (v - v === 0 && mask[p] === 0) s0[k] += v; // finite and not masked
      else {
        badC[k] += corr[p];
        badN[k]++;
      }
      v = data[p + 1];
      k = bin[p + 1];
      if (v - v === 0 && mask[p + 1] === 0) s1[k] += v;
      else {
        badC[k] += corr[p + 1];
        badN[k]++;
      }
    }
    if (even < n) {
      const v = data[even], k = bin[even];
      if (v - v === 0 && mask[even] === 0) s0[k] += v;
      else {
        badC[k] += corr[even];
        badN[k]++;
      }
    }
  } else {
    for (let p = 0; p < n; p++) {
      const v = data[p], k = bin[p];
      if (v - v === 0) {
        if (p & 1) s1[k] += v;
        else s0[k] += v;
      } else {
        badC[k] += corr[p];
        badN[k]++;
      }
    }
  }
}

/**
 * The CPU reference: S, C (float64) and n per frame and bin over the batch's modules. Per frame: S scattered
 * pixel by pixel (`accumulate`); C and n as the modules' totals (`slotSums`) less those of the invalid pixels,
 * which are few (C the same sum in another order: values of float32 pixels and corrections add exactly in
 * float64 unless a bin spans 2^29 in magnitude).
 */
export function azintFrames(b: FrameBatch, t: PixelTable, bins: number): AzintSums {
  const F = b.nFrames, P = t.pixels;
  const sum = new Float64Array(F * bins),
    norm = new Float64Array(F * bins),
    count = new Uint32Array(F * bins);
  const slots = slotSums(t, bins);
  const mods = t.modules.map((m) => b.modules.find((x) => x.module === m)!);
  const s0 = new Float64Array(bins + 1), s1 = new Float64Array(bins + 1);
  const badC = new Float64Array(bins + 1), badN = new Uint32Array(bins + 1);
  for (let i = 0; i < F; i++) {
    s0.fill(0);
    s1.fill(0);
    badC.fill(0);
    badN.fill(0);
    const ob = i * bins, o = i * P;
    for (let s = 0; s < mods.length; s++) {
      const mf = mods[s];
      if (!mf.present[i]) continue;
      const { bin, corr, totalC, totalN } = slots[s];
      for (let k = 0; k < bins; k++) {
        norm[ob + k] += totalC[k];
        count[ob + k] += totalN[k];
      }
      accumulate(mf.data.subarray(o, o + P), mf.mask?.subarray(o, o + P), bin, corr, s0, s1, badC, badN);
    }
    for (let k = 0; k < bins; k++) {
      sum[ob + k] = s0[k] + s1[k];
      norm[ob + k] -= badC[k];
      count[ob + k] -= badN[k];
    }
  }
  return { sum, norm, count };
}

export interface AzintPart {
  modules: number[];
  /** The part's frames: how many, and their id spill file (src/framework/spill.ts `IdWriter`). */
  frames: number;
  ids: string;
  /** Spill file (src/framework/spill.ts) of per-frame records: S (f64 x bins), C (f64 x bins), n (u32 x bins). */
  spill: string;
  backend: string;
}

/** Bytes of one frame's record in a spill file. */
const recordBytes = (bins: number) => 20 * bins;

/** Frames [f0, f1) of the merged parts: per frame and bin, the sums of the parts and the intensity. */
export interface AzintBlock extends BlockIds {
  f0: number;
  f1: number;
  /** Weighted sums and their weights (intensity = sum / norm where count > 0, else NaN), counts. */
  sum: Float64Array;
  norm: Float64Array;
  count: Uint32Array;
  intensity: Float32Array;
}

/**
 * The sums of each train of a block of whole trains (`frames`: the frames of its trains, in order), per bin,
 * float64 in frame order, given to `each(train, sum, norm, count)` (the buffers are reused).
 */
function trainSums(
  blk: AzintBlock,
  frames: number[],
  bins: number,
  each: (t: number, s: Float64Array, w: Float64Array, m: Float64Array) => void,
): void {
  const s = new Float64Array(bins), w = new Float64Array(bins), m = new Float64Array(bins);
  let i = 0;
  frames.forEach((n, t) => {
    s.fill(0);
    w.fill(0);
    m.fill(0);
    for (const i1 = i + n; i < i1; i++) {
      for (let k = 0; k < bins; k++) {
        s[k] += blk.sum[i * bins + k];
        w[k] += blk.norm[i * bins + k];
        m[k] += blk.count[i * bins + k];
      }
    }
    each(t, s, w, m);
  });
}

/** The mean profile of each train of a block of whole trains (trainSums), per bin: NaN where no pixel. */
function trainMeans(blk: AzintBlock, frames: number[], bins: number): Float32Array {
  const out = new Float32Array(frames.length * bins);
  trainSums(blk, frames, bins, (t, s, w, m) => {
    for (let k = 0; k < bins; k++) out[t * bins + k] = m[k] ? s[k] / w[k] : NaN;
  });
  return out;
}

export interface AzintResult extends ReductionResult {
  options: AzintOptions;
  geometry: string;
  energy: number;
  distance: number;
  edges: Float64Array;
  frames: number;
  /** Per train, in order: its trainId and frames. */
  trains: TrainFrames;
  /** Every frame's ids, made on first access (16 bytes a frame: tests); blocks carry their own. */
  readonly trainId: Float64Array;
  readonly pulseId: Float64Array;
  /**
   * Per frame and bin, frames [f0, f1) for consecutive ranges (starting at 0 each time the iteration
   * starts): read from the parts' spill files, memory bounded by the range.
   */
  blocks(bounds: number[]): Generator<AzintBlock>;
  /** All frames at once (materialised from the spill files on first access: tests, small runs). */
  readonly intensity: Float32Array;
  readonly count: Uint32Array;
  /** Remove the spill files (after writing). */
  dispose(): void;
  /** Per train (`trains` order) and bin: made on first access (tests); the writer makes it block by block. */
  readonly trainMean: Float32Array;
  runMean: Float64Array;
  runCount: Float64Array;
  litFrom?: string;
}

export class AzintAlgorithm extends ReductionAlgorithm implements Algorithm<AzintPart, AzintResult> {
  readonly id = "azint";
  readonly source = { module: import.meta.url, name: "AzintAlgorithm" };

  async writeOutput(result: AzintResult, dir: string): Promise<void> {
    await writeAzintDir(result, dir);
  }
  readonly help = "azimuthal integration per frame";
  private o: AzintOptions = { ...DEFAULT_AZINT };
  private setup?: AzintSetup;
  private table?: PixelTable;
  private backend?: AzintBackend;
  private lit?: (t: number, p: number) => boolean;
  private litFrom?: string;
  private records = new FrameRecords("azint");
  private modules: number[] = [];

  configure(options: Record<string, unknown>): void {
    this.o = { ...DEFAULT_AZINT, ...(options as Partial<AzintOptions>) };
  }

  async initialize(info: RunInfo) {
    this.takeRun(info);
    this.setup ??= azintSetup(info.detector, this.o);
    this.o.range ??= this.setup.range;
    if (info.modules.length) {
      this.modules = info.modules;
      this.table = pixelTable(this.setup, info.modules, this.o);
      this.setup.pixels = undefined; // the other groups' modules: not needed here
      if (this.o.litOnly) {
        const l = await litLookup(info.run, this.o.from);
        this.lit = l.lit;
        this.litFrom = l.source;
      }
      const device = await pickDevice(this.o.backend, this.notes);
      if (device) {
        const { createAzintGpu } = await import("./azint-webgpu.ts");
        this.backend = await createAzintGpu(device, this.table, this.o.bins);
      } else {
        const t = this.table, bins = this.o.bins;
        this.backend = { name: "cpu", frames: (b) => azintFrames(b, t, bins), dispose() {} };
      }
    }
    // 32 MB batches (16 AGIPD frames of 8 modules): the first batch arrives 4x sooner than with 128 MB
    // and a batch is read back from cache more often (bench/RESULTS-reductions.md: 0.1 s less wall, 6 % less CPU).
    return { mask: true, batchBytes: 32 * 2 ** 20 };
  }

  async processBatch(b: FrameBatch): Promise<void> {
    const r = await this.backend!.frames(b);
    const bins = this.o.bins;
    const kept = this.records.keep(b, this.lit);
    const rb = recordBytes(bins);
    const buf = new ArrayBuffer(kept.length * rb);
    kept.forEach((i, j) => {
      new Float64Array(buf, j * rb, bins).set(r.sum.subarray(i * bins, (i + 1) * bins));
      new Float64Array(buf, j * rb + 8 * bins, bins).set(r.norm.subarray(i * bins, (i + 1) * bins));
      new Uint32Array(buf, j * rb + 16 * bins, bins).set(r.count.subarray(i * bins, (i + 1) * bins));
    });
    this.records.append(rb, new Uint8Array(buf));
  }

  finalizeChunk(): AzintPart {
    return {
      modules: this.modules,
      ...this.records.close(recordBytes(this.o.bins)),
      backend: this.backend?.name ?? "cpu",
    };
  }

  finalize(parts: AzintPart[]): Promise<AzintResult> {
    return this.withRun(async (run, det) => {
      const setup = this.setup ?? azintSetup(det, this.o);
      const bins = this.o.bins, rb = recordBytes(bins);
      const merged = mergeSpills(parts, () => rb, (f0, f1) => {
        const m = f1 - f0;
        const sum = new Float64Array(m * bins),
          norm = new Float64Array(m * bins),
          count = new Uint32Array(m * bins);
        return {
          add(_pi, buffer, at, f) {
            const o = f * bins;
            const s = new Float64Array(buffer, at, bins);
            const w = new Float64Array(buffer, at + 8 * bins, bins);
            const k = new Uint32Array(buffer, at + 16 * bins, bins);
            for (let q = 0; q < bins; q++) {
              sum[o + q] += s[q];
              norm[o + q] += w[q];
              count[o + q] += k[q];
            }
          },
          done: () => ({
            f0,
            f1,
            sum,
            norm,
            count,
            intensity: Float32Array.from(sum, (v, j) => (count[j] ? v / norm[j] : NaN)),
          }),
        };
      });
      const n = merged.frames;
      const byTrains = () => blocksOfTrains(merged.blocks, merged.trains, TRAINS_PER_CALL);
      const runS = new Float64Array(bins), runC = new Float64Array(bins), runN = new Float64Array(bins);
      // The run's sums: of the trains' sums, in train order (blocks of whole trains).
      for (const { blk, frames } of byTrains()) {
        trainSums(blk, frames, bins, (_t, s, w, m) => {
          for (let k = 0; k < bins; k++) {
            runS[k] += s[k];
            runC[k] += w[k];
            runN[k] += m[k];
          }
        });
      }
      let means: Float32Array | undefined;
      let all: { intensity: Float32Array; count: Uint32Array } | undefined;
      const materialise = () => {
        if (!all) {
          const intensity = new Float32Array(n * bins), count = new Uint32Array(n * bins);
          for (const blk of merged.blocks([0, n])) {
            intensity.set(blk.intensity);
            count.set(blk.count);
          }
          all = { intensity, count };
        }
        return all;
      };
      const [a, b] = setup.range;
      return {
        run: run.path,
        detector: det.name,
        options: this.o,
        geometry: setup.layout.source,
        energy: setup.energy,
        distance: setup.distance,
        edges: Float64Array.from({ length: bins + 1 }, (_, k) => a + ((b - a) * k) / bins),
        frames: n,
        trains: merged.trains,
        get trainId() {
          return merged.trainId;
        },
        get pulseId() {
          return merged.pulseId;
        },
        blocks: (b: number[]) => merged.blocks(b),
        get intensity() {
          return materialise().intensity;
        },
        get count() {
          return materialise().count;
        },
        dispose: merged.dispose,
        get trainMean() {
          if (!means) {
            means = new Float32Array(merged.trains.frames.length * bins);
            for (const { blk, t0, frames } of byTrains()) means.set(trainMeans(blk, frames, bins), t0 * bins);
          }
          return means;
        },
        runMean: Float64Array.from(runS, (s, k) => (runN[k] ? s / runC[k] : NaN)),
        runCount: runN,
        litFrom: this.litFrom ?? (this.o.litOnly ? await litSource(this.runPath, this.o.from) : undefined),
        notes: this.notes,
        ...partsSummary(parts, run, det.name),
      };
    });
  }

  dispose(): void {
    this.backend?.dispose();
  }
}

/** Where the lit frames come from (the run opened for the beam annotation). */
async function litSource(runPath: string, from?: string): Promise<AzintResult["litFrom"]> {
  const run = await Run.open(runPath);
  try {
    return (await litLookup(run, from)).source;
  } finally {
    run.close();
  }
}

/** Check options early (before any GPU or worker starts). */
export function checkAzintOptions(o: AzintOptions): void {
  if (!Number.isInteger(o.bins) || o.bins < 1 || o.bins > 65535) {
    throw new InputError(undefined, `--bins: ${o.bins}? (an integer 1..65535)`);
  }
  if (!UNITS.includes(o.unit)) throw new InputError(undefined, `--unit: ${o.unit}? (${UNITS.join(", ")})`);
  if (o.range && !(o.range[1] > o.range[0])) throw new InputError(undefined, "--range A,B needs B > A");
  checkBackend(o.backend);
}

export async function azint(
  runPath: string,
  options: Partial<AzintOptions>,
  progress?: (done: number, total: number) => void,
): Promise<AzintResult> {
  const o: AzintOptions = { ...DEFAULT_AZINT, ...options };
  checkAzintOptions(o);
  // Geometry, energy and distance are checked, and the range found, by the algorithm's first initialize
  // (on the run the framework opens, before any batch is read); part workers find the same range.
  return await runAlgorithm<AzintPart, AzintResult>(
    new AzintAlgorithm(),
    runPath,
    o as unknown as Record<string, unknown>,
    {
      workers: await workersFor(o.backend, o.workers, true),
      progress,
    },
  );
}

const TRAINS_PER_CALL = 256;

export async function writeAzint(r: AzintResult, dir: string, runFiles: string[]): Promise<string[]> {
  const bins = r.options.bins;
  const packed = { chunks: 256, compression: "gzip", compressionOpts: 1 } as const;
  const schema = {
    parameters: ["det", "bins", "edges"],
    aliases: { out: "{det}/REDU/AZINT:output", ctl: "{det}/REDU/AZINT" },
    datasets: {
      trainId: { source: "@out", key: "data.trainId", shape: [], dtype: "uint64", ...packed },
      pulseId: { source: "@out", key: "data.pulseId", shape: [], dtype: "uint64", ...packed },
      intensity: { source: "@out", key: "data.intensity", shape: ["bins"], dtype: "float32", ...packed },
      count: { source: "@out", key: "data.count", shape: ["bins"], dtype: "uint32", ...packed },
      trainMean: { source: "@ctl", key: "trainMean", shape: ["bins"], dtype: "float32", ...packed },
      radialAxis: { source: "@ctl", key: "radialAxis", shape: ["bins"], dtype: "float64", ...packed },
      radialEdges: { source: "@ctl", key: "radialEdges", shape: ["edges"], dtype: "float64", ...packed },
      unitCode: { source: "@ctl", key: "unitCode", shape: [], dtype: "uint8", ...packed },
    },
  } as unknown as WriterSchema;
  return await writeReduFile(
    dir,
    runFiles,
    "REDU04",
    schema,
    { det: r.detector, bins, edges: bins + 1 },
    (w) => {
      w.setConstant(
        "radialAxis",
        Float64Array.from({ length: bins }, (_, k) => (r.edges[k] + r.edges[k + 1]) / 2),
      );
      w.setConstant("radialEdges", r.edges);
      w.setConstant("unitCode", Uint8Array.of(UNITS.indexOf(r.options.unit)));
      // Blocks of TRAINS_PER_CALL trains, read from the spill files one after the other.
      for (
        const { blk, t0, t1, trainIds, frames: c } of blocksOfTrains(
          (b) => r.blocks(b),
          r.trains,
          TRAINS_PER_CALL,
        )
      ) {
        const { f0, f1, intensity, count, trainId, pulseId } = blk;
        const n = f1 - f0;
        w.addTrains(trainIds, { "@out": c, "@ctl": c.map(() => 1) });
        w.addData({
          trainId: BigUint64Array.from(trainId, BigInt),
          pulseId: BigUint64Array.from(pulseId, BigInt),
          intensity: { data: intensity, shape: [n, bins] },
          count: { data: count, shape: [n, bins] },
          trainMean: { data: trainMeans(blk, c, bins), shape: [t1 - t0, bins] },
        } as never);
      }
    },
  );
}

export function writeAzintDir(r: AzintResult, dir: string): Promise<Record<string, unknown>> {
  return writeReductionDir("azint", r, dir, (tmp, names) => writeAzint(r, tmp, names), {
    geometry: r.geometry,
    photonEnergy: r.energy,
    distance: r.distance,
    solidAngle: r.options.solidAngle,
    polarization: r.options.polarization ?? null,
    litOnly: r.options.litOnly,
    litFrom: r.litFrom ?? null,
    frames: r.frames,
    trains: r.trains.trainId.length,
  }, { azint: { unit: r.options.unit, edges: r.edges, mean: r.runMean, count: r.runCount } });
}
