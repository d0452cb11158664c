/**
 * `xpcs RUN --geometry FILE --out DIR [--q-bins N] [--range A,B] [--max-delay D]`: pulse-resolved XPCS,
 * the intensity autocorrelation g2(q, tau) within each train.
 *
 * Spec (CPU reference `XpcsAccumulator`; GPU kernel shaders/xpcs.wgsl, float32 sums, P equal, floats close):
 * - q of each pixel centre as `azint` computes it (src/reductions/azint.ts, unit q_nm^-1, geometry from `--geometry`,
 *   energy and distance from the file or `--energy` / `--distance`); `--q-bins` bins uniform over `--range`
 *   (default: the detector's).
 * - The frames of a train, in pulse order, are t = 0 .. T-1 (their index among the train's frames). A pixel
 *   of a frame is valid when recorded, finite and mask 0. For each delay tau = 1 .. D (D = `--max-delay`,
 *   default min(T - 1, 32)), q bin and train, over the pairs (pixel p in the bin, t) with p valid in both t
 *   and t + tau: A = sum n_p(t) n_p(t + tau), L = sum n_p(t), R = sum n_p(t + tau), P = the number of pairs.
 *   g2 = A P / (L R): the pixel-ensemble estimator mean(n(t) n(t+tau)) / (mean n(t) * mean n(t+tau)) over
 *   the same pairs. NaN where P = 0 or L R = 0. Sums in float64.
 * - The run's g2: the mean over trains of the trains' g2 (trains where it is NaN left out).
 * - `--two-time TRAIN` (memory: that train's frames; GPU kernel shaders/xpcs-twotime.wgsl with the webgpu
 *   backend, float32 sums, P equal, floats close): per q bin and frame pair (t1, t2) of the train, the
 *   same estimator over the pixels valid in both: C = A P / (L R), A = sum n(t1) n(t2), L = sum n(t1),
 *   R = sum n(t2); frames ordered by pulse ID. Source `<DET>/REDU/XPCS:twoTime`, one entry at that train:
 *   `data.c` (f32, qbins x T x T), `data.pulseId` (T); summary.json `xpcs.twoTime: {train, pulseIds, c}`.
 * Output: `DIR/<PREFIX>-R<run>-REDU05-S00000.h5`, instrument source `<DET>/REDU/XPCS:output`, one entry per
 * train: `data.g2` (f32, qbins x delays), `data.pairs` (f64, qbins x delays); control source
 * `<DET>/REDU/XPCS` keys `qAxis`, `qEdges` (nm^-1), `delays` (pulses). `DIR/summary.json`: `"xpcs": {"unit",
 * "edges", "delays", "g2" (bins x delays, the run's)}`, bytes in / out and their ratio.
 * Memory: the last D frames of each module, whatever the train length. Each part appends its trains' sums to a
 * spill file as the trains end (src/framework/spill.ts; `TrainSumsSpill`); the merge reads them back a train at
 * a time (`mergedTrainSums`), once for the run's g2 and once for the writer: per train, only its ID (8 bytes)
 * stays in memory.
 */
import { InputError } from "../errors.ts";
import type { FrameBatch } from "../exdf/frames.ts";
import { type Algorithm, runAlgorithm, type RunInfo } from "../framework/algorithm.ts";
import { type AzintOptions, azintSetup, binOf, DEFAULT_AZINT, modulePixels } from "./azint.ts";
import { NO_BIN } from "./azint-spec.ts";
import {
  type BackendChoice,
  checkBackend,
  partsSummary,
  pickDevice,
  ReductionAlgorithm,
  type ReductionResult,
  workersFor,
  writeReductionDir,
  writeReduFile,
} from "./common.ts";
import type { XpcsGpu } from "./xpcs-spec.ts";
import { ownSpill, removeSpill } from "../framework/spill.ts";
import { g2Of, mergedTrainSums, mergedTwoTime, TrainSumsSpill } from "./xpcs-sums.ts";
import { type Detector, Run } from "../exdf/run.ts";
import { FrameReader } from "../exdf/frames.ts";
import type { WriterSchema } from "../exdf/writer/writer.ts";
import { type TrainSums, zeroSums } from "./xpcs-spec.ts";
import type { TwoTimeSums } from "./xpcs-spec.ts";

export interface XpcsOptions {
  geometry?: string;
  qBins: number;
  range?: [number, number];
  /** Default: min(frames per train - 1, 32). */
  maxDelay?: number;
  energy?: number;
  distance?: number;
  backend?: BackendChoice;
  workers?: number;
  /** Bytes of image data per batch (all modules); default 128 MiB. */
  batchBytes?: number;
  /** Train ID whose two-time correlation per q bin is computed (CPU). */
  twoTime?: number;
}

export const DEFAULT_XPCS: XpcsOptions = { qBins: 20, backend: "auto" };

function azintOptions(o: XpcsOptions): AzintOptions {
  return {
    ...DEFAULT_AZINT,
    geometry: o.geometry,
    bins: o.qBins,
    unit: "q_nm^-1",
    range: o.range,
    solidAngle: false,
    energy: o.energy,
    distance: o.distance,
    backend: "cpu",
  };
}

/**
 * The CPU reference: feeds the frames of one module batch by batch in run order, keeps the current train's
 * last D frames, accumulates the train's sums; a train ends when a frame of another train arrives or at
 * `flush()`. Works on blocks of pixels: the block's timeline (the history, then the batch's frames of the
 * train) is transposed to pixel-major once (four frames a pass); per pixel, A from products over t, four
 * delays a pass with the lagged values in locals shifting by one each step (the timeline behind D zeros, so
 * pairs before the train's start add 0), in float64 (products of float32 values are exact), added to its
 * bin; a NaN among them marks a pixel invalid in some frame of the timeline, which takes a loop that tests
 * each pair. L, R and P of the valid pixels come per bin from the bin's sums of the first and last D
 * positions and of all values (`binSums`): the same sums in another order (float64 round-off).
 */
export class XpcsAccumulator {
  /** The history, pixel-major: hist[p * D + h], h = 0 .. histLen - 1 oldest first. */
  private hist: Float64Array;
  private histLen = 0;
  private cur?: TrainSums;
  private x = new Float64Array(0);
  private c = new Float64Array(0);
  /** Per call of `add`: per bin, over its pixels valid in the whole timeline, the sums of x[u] of the first D
   * (sb[k * S + u]) and the last D positions u (sb[k * S + D + j], u = W - D + j) and of the frames' values
   * (u = H .. W - 1; sb[k * S + 2D]), S = 2D + 1; and their number (nb[k]). */
  private sb = new Float64Array(0);
  private nb = new Float64Array(0);
  /** One pixel's A per delay. */
  private t = new Float64Array(0);
  private static readonly BLOCK = 256;
  constructor(
    readonly bin: Uint32Array,
    readonly bins: number,
    readonly delays: number,
    readonly pixels: number,
  ) {
    this.hist = new Float64Array(delays * pixels);
  }

  /**
   * Add the frames [i0, i1) of a batch of this module (data, mask and present as in `ModuleFrames`), all of
   * train `trainId` and, where i1 is before the batch's end, all of the train's frames in this batch (the
   * history is kept only for a run that reaches the batch's end); returns the previous train when this one
   * starts.
   */
  add(
    trainId: number,
    data: Float32Array,
    mask: Uint32Array | undefined,
    present: Uint8Array,
    i0: number,
    i1: number,
  ): TrainSums | undefined {
    let done: TrainSums | undefined;
    if (this.cur && this.cur.trainId !== trainId) done = this.flush();
    if (!this.cur) {
      const n = this.bins * this.delays;
      this.cur = { trainId, ...zeroSums(n) };
      this.histLen = 0;
    }
    if (this.histLen < 0) {
      throw new Error(`xpcs: train ${trainId} goes on within a batch after a run of its frames`);
    }
    const D = this.delays, H = this.histLen, W = H + i1 - i0, stride = D + W;
    const BLOCK = XpcsAccumulator.BLOCK;
    // The history is needed only when the train may go on in the next batch: frames up to the batch's end.
    const keep = i1 * this.pixels >= data.length;
    if (this.x.length < BLOCK * stride) this.x = new Float64Array(BLOCK * stride);
    if (this.c.length < W + 1) this.c = new Float64Array(W + 1);
    const S = 2 * D + 1;
    if (this.sb.length < this.bins * S) this.sb = new Float64Array(this.bins * S);
    if (this.nb.length < this.bins) this.nb = new Float64Array(this.bins);
    if (this.t.length < D) this.t = new Float64Array(D);
    this.sb.fill(0, 0, this.bins * S);
    this.nb.fill(0);
    for (let p0 = 0; p0 < this.pixels; p0 += BLOCK) {
      const p1 = Math.min(this.pixels, p0 + BLOCK);
      this.timeline(data, mask, present, i0, i1, p0, p1, H, stride);
      this.sums(p0, p1, H, W, stride, this.cur, keep);
    }
    this.binSums(H, W, this.cur);
    this.histLen = keep ? Math.min(D, W) : -1;
    return done;
  }

  /** x[(p - p0) * stride + u]: D zeros, the history, the frames [i0, i1) (invalid values NaN). */
  private timeline(
    data: Float32Array,
    mask: Uint32Array | undefined,
    present: Uint8Array,
    i0: number,
    i1: number,
    p0: number,
    p1: number,
    H: number,
    stride: number,
  ): void {
    const x = this.x, hist = this.hist, D = this.delays, px = this.pixels;
    for (let p = p0; p < p1; p++) {
      const b = (p - p0) * stride, h = p * D;
      for (let u = 0; u < D; u++) x[b + u] = 0;
      for (let u = 0; u < H; u++) x[b + D + u] = hist[h + u];
    }
    for (let i = i0; i < i1; i++) {
      const o = i * px, col = D + H + i - i0 - p0 * stride;
      if (mask && i + 3 < i1 && present[i] && present[i + 1] && present[i + 2] && present[i + 3]) {
        // Four frames a pass: adjacent stores, a quarter of the cache lines of the block touched per pass.
        const o2 = o + 2 * px, o3 = o + 3 * px;
        for (let p = p0, q = p0 * stride + col; p < p1; p++, q += stride) {
          const v = data[o + p], w = data[o + px + p], y = data[o2 + p], z = data[o3 + p];
          x[q] = mask[o + p] !== 0 || v - v !== 0 ? NaN : v;
          x[q + 1] = mask[o + px + p] !== 0 || w - w !== 0 ? NaN : w;
          x[q + 2] = mask[o2 + p] !== 0 || y - y !== 0 ? NaN : y;
          x[q + 3] = mask[o3 + p] !== 0 || z - z !== 0 ? NaN : z;
        }
        i += 3;
      } else if (mask && i + 1 < i1 && present[i] && present[i + 1]) {
        // Two frames a pass: adjacent stores, half the cache lines of the block touched per pass.
        for (let p = p0, q = p0 * stride + col; p < p1; p++, q += stride) {
          const v = data[o + p], w = data[o + px + p];
          x[q] = mask[o + p] !== 0 || v - v !== 0 ? NaN : v;
          x[q + 1] = mask[o + px + p] !== 0 || w - w !== 0 ? NaN : w;
        }
        i++;
      } else if (!present[i]) {
        for (let p = p0; p < p1; p++) x[p * stride + col] = NaN;
      } else if (mask) {
        for (let p = p0, q = p0 * stride + col; p < p1; p++, q += stride) {
          const v = data[o + p];
          x[q] = mask[o + p] !== 0 || v - v !== 0 ? NaN : v;
        }
      } else {
        for (let p = p0; p < p1; p++) {
          const v = data[o + p];
          x[p * stride + col] = v - v !== 0 ? NaN : v;
        }
      }
    }
  }

  /** The block's pairs into the train's sums; the block's new history. */
  private sums(
    p0: number,
    p1: number,
    H: number,
    W: number,
    stride: number,
    s: TrainSums,
    keep: boolean,
  ): void {
    const x = this.x,
      t = this.t,
      sb = this.sb,
      nb = this.nb,
      hist = this.hist,
      bin = this.bin,
      D = this.delays;
    const S = 2 * D + 1;
    const { a: A, l: L, r: R, p: P } = s;
    const H2 = keep ? Math.min(D, W) : 0;
    for (let p = p0; p < p1; p++) {
      const k = bin[p];
      if (k === NO_BIN) continue;
      const b = (p - p0) * stride + D, e = b + W, jk = k * D - 1;
      // A per delay into t first: every value of the timeline x[b .. e) meets a product (the lagged values of
      // q = b + H cover the history), so a NaN anywhere makes their sum NaN and the pixel takes the loop
      // that tests each pair.
      let chk = 0, sum = 0;
      {
        let tau = 1;
        // Four delays a pass, the values x[q - tau - j] kept in locals that shift by one each step (two
        // loads a step); each delay's products summed in q order.
        for (; tau + 3 <= D; tau += 4) {
          let s1 = 0, s2 = 0, s3 = 0, s4 = 0, s0 = 0;
          let q = b + H;
          let w2 = x[q - tau - 1], w3 = x[q - tau - 2], w4 = x[q - tau - 3];
          for (; q < e; q++) {
            const y = x[q], w1 = x[q - tau];
            s0 += y;
            s1 += w1 * y;
            s2 += w2 * y;
            s3 += w3 * y;
            s4 += w4 * y;
            w4 = w3;
            w3 = w2;
            w2 = w1;
          }
          t[tau - 1] = s1;
          t[tau] = s2;
          t[tau + 1] = s3;
          t[tau + 2] = s4;
          chk += s1 + s2 + s3 + s4;
          sum = s0;
        }
        for (; tau <= D; tau++) {
          let s1 = 0, s0 = 0;
          for (let q = b + H; q < e; q++) {
            s0 += x[q];
            s1 += x[q - tau] * x[q];
          }
          t[tau - 1] = s1;
          chk += s1;
          sum = s0;
        }
      }
      if (chk === chk) {
        // L, R and P of the pixel's bin come from sb and nb (binSums).
        for (let tau = 1; tau <= D; tau++) A[jk + tau] += t[tau - 1];
        // The last D positions from e - D: before b they are the timeline's zeros.
        const o = k * S, hn = D < W ? D : W;
        for (let u = 0; u < hn; u++) sb[o + u] += x[b + u];
        for (let j = 0; j < D; j++) sb[o + D + j] += x[e - D + j];
        sb[o + 2 * D] += sum;
        nb[k]++;
      } else {
        for (let tau = 1; tau <= D; tau++) {
          const u0 = H > tau ? H : tau;
          if (u0 >= W) break;
          let sa = 0, sl = 0, sr = 0, n = 0;
          for (let q = b + u0; q < e; q++) {
            const xv = x[q - tau], yv = x[q];
            if (xv !== xv || yv !== yv) continue;
            sa += xv * yv;
            sl += xv;
            sr += yv;
            n++;
          }
          A[jk + tau] += sa;
          L[jk + tau] += sl;
          R[jk + tau] += sr;
          P[jk + tau] += n;
        }
      }
      const h = p * D;
      for (let u = 0; u < H2; u++) hist[h + u] = x[e - H2 + u];
    }
  }

  /**
   * L, R and P of the pixels valid in the whole timeline, per bin, from sb: with T the sum over u = 0 .. W-1
   * and u0 = max(H, tau), L = T - (the first u0 - tau) - (the last tau), R = T - (the first u0); u0 <= D.
   */
  private binSums(H: number, W: number, s: TrainSums): void {
    const sb = this.sb, nb = this.nb, D = this.delays, S = 2 * D + 1;
    const { l: L, r: R, p: P } = s;
    for (let k = 0; k < this.bins; k++) {
      const n = nb[k];
      if (n === 0) continue;
      const o = k * S, jk = k * D - 1;
      let total = sb[o + 2 * D];
      for (let u = 0; u < H; u++) total += sb[o + u];
      const first = (m: number) => {
        let v = 0;
        for (let u = 0; u < m; u++) v += sb[o + u];
        return v;
      };
      for (let tau = 1; tau <= D; tau++) {
        const u0 = H > tau ? H : tau;
        if (u0 >= W) break;
        let last = 0;
        for (let j = D - tau; j < D; j++) last += sb[o + D + j];
        L[jk + tau] += total - first(u0 - tau) - last;
        R[jk + tau] += total - first(u0);
        P[jk + tau] += n * (W - u0);
      }
    }
  }

  flush(): TrainSums | undefined {
    const c = this.cur;
    this.cur = undefined;
    this.histLen = 0;
    return c;
  }
}

export function twoTimeSums(
  trainId: number,
  pulseIds: number[],
  frames: Float32Array[][],
  bins: Uint32Array[],
  nBins: number,
): TwoTimeSums {
  const T = pulseIds.length;
  const n = nBins * T * T;
  const s: TwoTimeSums = { trainId, pulseIds, ...zeroSums(n) };
  frames.forEach((mod, m) => {
    const bin = bins[m];
    for (let t1 = 0; t1 < T; t1++) {
      for (let t2 = t1; t2 < T; t2++) {
        const x = mod[t1], y = mod[t2];
        for (let q = 0; q < bin.length; q++) {
          const k = bin[q];
          if (k === NO_BIN) continue;
          const u = x[q], v = y[q];
          if (u !== u || v !== v) continue;
          const j = (k * T + t1) * T + t2;
          s.a[j] += u * v;
          s.l[j] += u;
          s.r[j] += v;
          s.p[j]++;
        }
      }
    }
  });
  // The lower triangle mirrors the upper one (L and R swap).
  for (let k = 0; k < nBins; k++) {
    for (let t1 = 0; t1 < T; t1++) {
      for (let t2 = 0; t2 < t1; t2++) {
        const j = (k * T + t1) * T + t2, i = (k * T + t2) * T + t1;
        s.a[j] = s.a[i];
        s.l[j] = s.r[i];
        s.r[j] = s.l[i];
        s.p[j] = s.p[i];
      }
    }
  }
  return s;
}

export interface XpcsPart {
  modules: number[];
  /** The spill file of the part's trains' sums (`TrainSumsSpill`) and how many trains it holds. */
  sums: string;
  trains: number;
  backend: string;
  notes: string[];
  twoTime?: TwoTimeSums;
}

/** g2 and pairs of trains [t0, t1) (`XpcsResult.blocks`): (t1 - t0) x bins x delays each. */
export interface XpcsBlock {
  t0: number;
  t1: number;
  g2: Float64Array;
  pairs: Float64Array;
}

export interface XpcsResult extends ReductionResult {
  options: XpcsOptions;
  geometry: string;
  energy: number;
  distance: number;
  edges: Float64Array;
  delays: number[];
  trainIds: number[];
  /** Per train g2 and pairs in blocks of `perBlock` trains, read from the parts' spill files (the writer). */
  blocks(perBlock: number): Generator<XpcsBlock>;
  /** Per train: g2 and pairs (bins x delays), made on first access (tests; 16 bytes x bins x delays a train). */
  readonly g2: Float64Array[];
  readonly pairs: Float64Array[];
  /** The run's g2 (mean over trains). */
  runG2: Float64Array;
  /** With `twoTime`: C(q, t1, t2) of that train, (bins, T, T), and the frames' pulse IDs. */
  twoTime?: { trainId: number; pulseIds: number[]; c: Float64Array };
  /** Remove the spill files (after writing). */
  dispose(): void;
}

export class XpcsAlgorithm extends ReductionAlgorithm implements Algorithm<XpcsPart, XpcsResult> {
  readonly id = "xpcs";
  readonly source = { module: import.meta.url, name: "XpcsAlgorithm" };

  async writeOutput(result: XpcsResult, dir: string): Promise<void> {
    await writeXpcsDir(result, dir);
  }
  readonly help = "g2(q, tau) within trains";
  private o: XpcsOptions = { ...DEFAULT_XPCS };
  private delays = 1;
  private acc = new Map<number, XpcsAccumulator>();
  private trains?: TrainSumsSpill;
  private modules: number[] = [];
  private pixels = 0;
  private gpu?: XpcsGpu;
  private device?: GPUDevice;
  /** Two-time: the train's frames per module (invalid pixels NaN) and their pulse IDs. */
  private ttFrames = new Map<number, Float32Array[]>();
  private ttPulses: number[] = [];

  configure(options: Record<string, unknown>): void {
    this.o = { ...DEFAULT_XPCS, ...(options as Partial<XpcsOptions>) };
    this.delays = this.o.maxDelay ?? 1;
  }

  async initialize(info: RunInfo) {
    this.takeRun(info);
    if (this.o.maxDelay === undefined) {
      this.o.maxDelay = defaultMaxDelay(info.detector);
      this.delays = this.o.maxDelay;
    }
    if (info.modules.length) {
      const setup = azintSetup(info.detector, azintOptions(this.o));
      this.modules = info.modules;
      this.trains = new TrainSumsSpill(this.o.qBins * this.delays);
      for (const m of info.modules) {
        const { value } = modulePixels(
          setup.layout,
          setup.layoutModule(m),
          { unit: "q_nm^-1", solidAngle: false },
          setup.energy,
          setup.distance,
        );
        this.pixels = value.length;
        const bin = Uint32Array.from(value, (v) => binOf(v, setup.range[0], setup.range[1], this.o.qBins));
        this.acc.set(m, new XpcsAccumulator(bin, this.o.qBins, this.delays, this.pixels));
      }
      const device = await pickDevice(checkBackend(this.o.backend), this.notes);
      if (device) {
        this.device = device;
        const { createXpcsGpu } = await import("./xpcs-webgpu.ts");
        const bins = info.modules.map((m) => this.acc.get(m)!.bin);
        this.gpu = await createXpcsGpu(device, info.modules, bins, this.pixels, this.o.qBins, this.delays);
      }
    }
    return { mask: true, batchBytes: this.o.batchBytes ?? 128 * 2 ** 20 };
  }

  private captureTwoTime(b: FrameBatch): void {
    const tt = this.o.twoTime;
    if (tt === undefined) return;
    const px = this.pixels;
    for (let i = 0; i < b.nFrames; i++) {
      if (b.trainId[i] !== tt) continue;
      this.ttPulses.push(b.pulseId[i]);
      for (const mf of b.modules) {
        const f = new Float32Array(px);
        const o = i * px;
        for (let q = 0; q < px; q++) {
          const v = mf.data[o + q];
          f[q] = !mf.present[i] || !Number.isFinite(v) || (mf.mask && mf.mask[o + q] !== 0) ? NaN : v;
        }
        let list = this.ttFrames.get(mf.module);
        if (!list) this.ttFrames.set(mf.module, list = []);
        list.push(f);
      }
    }
  }

  async processBatch(b: FrameBatch): Promise<void> {
    this.captureTwoTime(b);
    const trains = this.trains!;
    if (this.gpu) {
      for (const s of await this.gpu.batch(b)) trains.add(s);
    } else this.cpuBatch(b, trains);
    if (b.nFrames) trains.endBefore(b.trainId[b.nFrames - 1]);
  }

  private cpuBatch(b: FrameBatch, trains: TrainSumsSpill): void {
    for (const mf of b.modules) {
      const acc = this.acc.get(mf.module)!;
      // Runs of frames of one train.
      for (let i0 = 0; i0 < b.nFrames;) {
        let i1 = i0 + 1;
        while (i1 < b.nFrames && b.trainId[i1] === b.trainId[i0]) i1++;
        trains.add(acc.add(b.trainId[i0], mf.data, mf.mask, mf.present, i0, i1));
        i0 = i1;
      }
    }
  }

  async finalizeChunk(): Promise<XpcsPart> {
    this.trains ??= new TrainSumsSpill(this.o.qBins * this.delays);
    if (!this.gpu) { for (const acc of this.acc.values()) this.trains.add(acc.flush()); }
    let twoTime: TwoTimeSums | undefined;
    if (this.o.twoTime !== undefined && this.ttPulses.length) {
      const mods = this.modules.filter((m) => this.ttFrames.has(m));
      const args = [
        this.o.twoTime,
        this.ttPulses,
        mods.map((m) => this.ttFrames.get(m)!),
        mods.map((m) => this.acc.get(m)!.bin),
        this.o.qBins,
      ] as const;
      if (this.device) {
        const { twoTimeSumsGpu } = await import("./xpcs-webgpu.ts");
        twoTime = await twoTimeSumsGpu(this.device, ...args);
      } else twoTime = twoTimeSums(...args);
      this.ttFrames.clear();
    }
    return {
      modules: this.modules,
      ...this.trains.close(),
      backend: this.gpu?.name ?? "cpu",
      notes: this.notes,
      twoTime,
    };
  }

  dispose(): void {
    this.gpu?.dispose();
  }

  finalize(parts: XpcsPart[]): Promise<XpcsResult> {
    return this.withRun((run, det) => {
      const setup = azintSetup(det, azintOptions(this.o));
      const n = this.o.qBins * this.delays;
      for (const p of parts) ownSpill(p.sums);
      // One pass: the trains and the run's g2 (the mean of the trains' finite g2).
      const trainIds: number[] = [];
      const sum = new Float64Array(n), cnt = new Float64Array(n);
      for (const s of mergedTrainSums(parts, n)) {
        trainIds.push(s.trainId);
        const g = g2Of(s);
        for (let j = 0; j < n; j++) {
          if (Number.isFinite(g[j])) {
            sum[j] += g[j];
            cnt[j]++;
          }
        }
      }
      const blocks = function* (perBlock: number): Generator<XpcsBlock> {
        let t0 = 0, k = 0;
        let g2 = new Float64Array(0), pairs = new Float64Array(0);
        for (const s of mergedTrainSums(parts, n)) {
          if (k === 0) {
            const m = Math.min(perBlock, trainIds.length - t0);
            g2 = new Float64Array(m * n);
            pairs = new Float64Array(m * n);
          }
          g2.set(g2Of(s), k * n);
          pairs.set(s.p, k * n);
          if (++k === g2.length / n) {
            yield { t0, t1: t0 + k, g2, pairs };
            t0 += k;
            k = 0;
          }
        }
      };
      let all: { g2: Float64Array[]; pairs: Float64Array[] } | undefined;
      const materialise = () => {
        if (!all) {
          all = { g2: [], pairs: [] };
          for (const b of blocks(trainIds.length)) {
            for (let t = 0; t < b.t1 - b.t0; t++) {
              all.g2.push(b.g2.slice(t * n, (t + 1) * n));
              all.pairs.push(b.pairs.slice(t * n, (t + 1) * n));
            }
          }
        }
        return all;
      };
      let twoTime: XpcsResult["twoTime"];
      const tts = parts.map((p) => p.twoTime).filter((t): t is TwoTimeSums => !!t);
      if (this.o.twoTime !== undefined) {
        if (!tts.length) throw new InputError(run.path, `--two-time: no train ${this.o.twoTime} in the run`);
        twoTime = { trainId: this.o.twoTime, ...mergedTwoTime(tts, this.o.qBins) };
      }
      const [a, b] = setup.range;
      return {
        twoTime,
        run: run.path,
        detector: det.name,
        options: this.o,
        geometry: setup.layout.source,
        energy: setup.energy,
        distance: setup.distance,
        edges: Float64Array.from({ length: this.o.qBins + 1 }, (_, k) => a + ((b - a) * k) / this.o.qBins),
        delays: Array.from({ length: this.delays }, (_, d) => d + 1),
        trainIds,
        blocks,
        get g2() {
          return materialise().g2;
        },
        get pairs() {
          return materialise().pairs;
        },
        runG2: Float64Array.from(sum, (s, j) => (cnt[j] ? s / cnt[j] : NaN)),
        dispose: () => {
          for (const p of parts) removeSpill(p.sums);
        },
        notes: [...new Set(parts.flatMap((p) => p.notes))],
        ...partsSummary(parts, run, det.name),
      };
    });
  }
}

/** The default largest delay: min(frames per train - 1, 32), frames per train from the run's index. */
export function defaultMaxDelay(det: Detector): number {
  // The largest train's frames, a window of the run's frame ids at a time (frames of a train are consecutive).
  const reader = new FrameReader(det, {});
  let most = 1, train = NaN, n = 0;
  for (const w of reader.frameIdWindows()) {
    for (const t of w.trainId) {
      n = t === train ? n + 1 : 1;
      train = t;
      most = Math.max(most, n);
    }
  }
  return Math.max(1, Math.min(32, most - 1));
}

export async function xpcs(
  runPath: string,
  options: Partial<XpcsOptions>,
  progress?: (done: number, total: number) => void,
): Promise<XpcsResult> {
  const o: XpcsOptions = { ...DEFAULT_XPCS, ...options };
  if (!Number.isInteger(o.qBins) || o.qBins < 1 || o.qBins > 10000) {
    throw new InputError(undefined, `--q-bins: ${o.qBins}? (an integer 1..10000)`);
  }
  if (o.maxDelay !== undefined && !(Number.isInteger(o.maxDelay) && o.maxDelay >= 1)) {
    throw new InputError(undefined, `--max-delay: ${o.maxDelay}? (an integer >= 1)`);
  }
  if (o.range && !(o.range[1] > o.range[0])) throw new InputError(undefined, "--range A,B needs B > A");
  if (o.twoTime !== undefined && !Number.isInteger(o.twoTime)) {
    throw new InputError(undefined, `--two-time: ${o.twoTime}? (a train ID)`);
  }
  const r = await Run.open(runPath);
  try {
    o.range ??= azintSetup(r.detector(), azintOptions(o)).range; // checked first; the range computed once
    o.maxDelay ??= defaultMaxDelay(r.detector());
  } finally {
    r.close();
  }
  const backend = checkBackend(o.backend);
  return await runAlgorithm<XpcsPart, XpcsResult>(
    new XpcsAlgorithm(),
    runPath,
    o as unknown as Record<string, unknown>,
    {
      workers: await workersFor(backend, o.workers),
      progress,
    },
  );
}

export async function writeXpcs(r: XpcsResult, dir: string, runFiles: string[]): Promise<string[]> {
  const packed = { chunks: 64, compression: "gzip", compressionOpts: 1 } as const;
  const schema = {
    parameters: ["det", "bins", "edges", "delays", "nt"],
    aliases: { out: "{det}/REDU/XPCS:output", ctl: "{det}/REDU/XPCS", two: "{det}/REDU/XPCS:twoTime" },
    datasets: {
      g2: { source: "@out", key: "data.g2", shape: ["bins", "delays"], dtype: "float32", ...packed },
      pairs: { source: "@out", key: "data.pairs", shape: ["bins", "delays"], dtype: "float64", ...packed },
      qAxis: { source: "@ctl", key: "qAxis", shape: ["bins"], dtype: "float64", ...packed },
      qEdges: { source: "@ctl", key: "qEdges", shape: ["edges"], dtype: "float64", ...packed },
      delays: { source: "@ctl", key: "delays", shape: ["delays"], dtype: "uint32", ...packed },
      ...(r.twoTime
        ? {
          twoTime: {
            source: "@two",
            key: "data.c",
            shape: ["bins", "nt", "nt"],
            dtype: "float32",
            ...packed,
          },
          twoTimePulses: { source: "@two", key: "data.pulseId", shape: ["nt"], dtype: "uint64", ...packed },
        }
        : {}),
    },
  } as unknown as WriterSchema;
  const bins = r.options.qBins, D = r.delays.length;
  return await writeReduFile(dir, runFiles, "REDU05", schema, {
    det: r.detector,
    bins,
    edges: bins + 1,
    delays: D,
    nt: r.twoTime?.pulseIds.length ?? 1,
  }, (w) => {
    w.setConstant("qAxis", Float64Array.from({ length: bins }, (_, k) => (r.edges[k] + r.edges[k + 1]) / 2));
    w.setConstant("qEdges", r.edges);
    w.setConstant("delays", Uint32Array.from(r.delays));
    for (const { t0, t1, g2, pairs } of r.blocks(256)) {
      const ids = r.trainIds.slice(t0, t1);
      w.addTrains(ids, {
        "@out": ids.map(() => 1),
        ...(r.twoTime ? { "@two": ids.map((t) => (t === r.twoTime!.trainId ? 1 : 0)) } : {}),
      });
      if (r.twoTime && ids.includes(r.twoTime.trainId)) {
        const nt = r.twoTime.pulseIds.length;
        w.addData({
          twoTime: { data: Float32Array.from(r.twoTime.c), shape: [1, bins, nt, nt] },
          twoTimePulses: { data: BigUint64Array.from(r.twoTime.pulseIds, BigInt), shape: [1, nt] },
        } as never);
      }
      w.addData({
        g2: { data: Float32Array.from(g2), shape: [t1 - t0, bins, D] },
        pairs: { data: pairs, shape: [t1 - t0, bins, D] },
      } as never);
    }
  });
}

export function writeXpcsDir(r: XpcsResult, dir: string): Promise<Record<string, unknown>> {
  const bins = r.options.qBins, D = r.delays.length;
  return writeReductionDir("xpcs", r, dir, (tmp, names) => writeXpcs(r, tmp, names), {
    geometry: r.geometry,
    photonEnergy: r.energy,
    distance: r.distance,
    trains: r.trainIds.length,
  }, {
    xpcs: {
      unit: "q_nm^-1",
      edges: r.edges,
      delays: r.delays,
      g2: Array.from({ length: bins }, (_, k) => Array.from(r.runG2.subarray(k * D, (k + 1) * D))),
      ...(r.twoTime
        ? {
          twoTime: {
            train: r.twoTime.trainId,
            pulseIds: r.twoTime.pulseIds,
            c: Array.from({ length: bins }, (_, k) => {
              const T = r.twoTime!.pulseIds.length;
              return Array.from({ length: T }, (_, i) =>
                Array.from(r.twoTime!.c.subarray((k * T + i) * T, (k * T + i + 1) * T)));
            }),
          },
        }
        : {}),
    },
  });
}
