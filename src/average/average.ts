/**
 * `average RUN --out DIR`: the frame-averaged image of each module, separately for lit and dark frames; a
 * small second algorithm on the processing framework (src/framework/algorithm.ts).
 *
 * Spec: a pixel of a frame counts when the module recorded the frame, the value is finite and its mask is 0.
 * mean = sum / count per pixel (float64 sums, stored as float32; NaN where count is 0). A frame is lit when
 * the localise output given with `--from` says so (data.frameLit of its REDU file), else when the beam
 * annotation says it saw an X-ray pulse (bunch pattern), else every frame is lit (and a note says so).
 * Output, written with the writer library: `DIR/<PREFIX>-R<run>-REDU02-S00000.h5`, instrument source
 * `<DET>/REDU/AVERAGE:output`, one entry at the run's first train: `data.litMean`, `data.darkMean`
 * (nModules, ss, fs) f32, `data.litFrames`, `data.darkFrames` (nModules) u32; control source
 * `<DET>/REDU/AVERAGE` key `modules` (the module order).
 */
import * as path from "node:path";
import type { OptionSpec } from "../framework/options.ts";
import type { FrameBatch } from "../exdf/frames.ts";
import { type Algorithm, runAlgorithm, type RunInfo } from "../framework/algorithm.ts";
import { defaultWorkers } from "../framework/threads.ts";
import { streamBeam } from "../beam/annotate.ts";
import { Run, runNaming } from "../exdf/run.ts";
import { readSelection } from "../localise/redu.ts";
import { openWriter } from "../exdf/writer/writer.ts";
import { buildDir } from "../app/outdir.ts";

export interface AveragePart {
  modules: number[];
  pixels: number;
  /** Per module: sums and counts per pixel, lit then dark. */
  litSum: Float64Array[];
  litCount: Uint32Array[];
  darkSum: Float64Array[];
  darkCount: Uint32Array[];
  litFrames: number[];
  darkFrames: number[];
}

export interface AverageResult {
  run: string;
  detector: string;
  modules: number[];
  imageShape: [number, number];
  litMean: Float32Array[];
  darkMean: Float32Array[];
  litFrames: number[];
  darkFrames: number[];
  litFrom: "localise" | "beam" | "all";
  firstTrain: number;
}

type LitLookup = (trainId: number, pulseId: number) => boolean;

/** Which frames are lit: localise's decision, else the beam's, else all. */
export async function litLookup(
  run: Run,
  from?: string,
): Promise<{ lit: LitLookup; source: AverageResult["litFrom"] }> {
  if (from) {
    // The same reader as reduce's: frames the selection does not list count as dark.
    const { selection } = await readSelection(path.resolve(from));
    return { lit: (t, p) => selection.lookup(t, p) === 1, source: "localise" };
  }
  // Streamed (a window of trains held, annotated as the lookups reach it, in train order as batches come):
  // the whole run's annotation held ~50 bytes a frame.
  const ann = streamBeam(run, {});
  if (ann.trainsWithBunchPattern > 0) {
    return {
      lit: (t, p) => {
        const f = ann.frameOfPulse(t, p);
        return f >= 0 && ann.dataFrame(t, f) === 1;
      },
      source: "beam",
    };
  }
  return { lit: () => true, source: "all" };
}

export class AverageAlgorithm implements Algorithm<AveragePart, AverageResult> {
  readonly id = "average";
  readonly source = { module: import.meta.url, name: "AverageAlgorithm" };

  async writeOutput(result: AverageResult, dir: string): Promise<void> {
    await writeAverageDir(result, dir);
  }
  readonly help = "frame-averaged image per module, lit and dark frames apart";
  readonly options: OptionSpec[] = [
    { name: "from", value: "string", help: "localise output directory whose frameLit decides lit/dark" },
  ];
  private from?: string;
  private runPath = "";
  private lit?: LitLookup;
  private litSource: AverageResult["litFrom"] = "all";
  private part?: AveragePart;

  configure(options: Record<string, unknown>): void {
    this.from = options.from as string | undefined;
  }

  async initialize(info: RunInfo) {
    this.runPath = info.runPath;
    if (info.modules.length) {
      const px = info.detector.imageShape[0] * info.detector.imageShape[1];
      const n = info.modules.length;
      this.part = {
        modules: info.modules,
        pixels: px,
        litSum: Array.from({ length: n }, () => new Float64Array(px)),
        litCount: Array.from({ length: n }, () => new Uint32Array(px)),
        darkSum: Array.from({ length: n }, () => new Float64Array(px)),
        darkCount: Array.from({ length: n }, () => new Uint32Array(px)),
        litFrames: new Array(n).fill(0),
        darkFrames: new Array(n).fill(0),
      };
      const l = await litLookup(info.run, this.from);
      this.lit = l.lit;
      this.litSource = l.source;
    }
    return { mask: true, batchBytes: 128 * 2 ** 20 };
  }

  processBatch(b: FrameBatch): void {
    const part = this.part!;
    const px = part.pixels;
    for (let i = 0; i < b.nFrames; i++) {
      const lit = this.lit!(b.trainId[i], b.pulseId[i]);
      b.modules.forEach((mf, m) => {
        if (!mf.present[i]) return;
        const sum = lit ? part.litSum[m] : part.darkSum[m];
        const count = lit ? part.litCount[m] : part.darkCount[m];
        (lit ? part.litFrames : part.darkFrames)[m]++;
        const o = i * px;
        for (let p = 0; p < px; p++) {
          const v = mf.data[o + p];
          if (Number.isFinite(v) && (!mf.mask || mf.mask[o + p] === 0)) {
            sum[p] += v;
            count[p]++;
          }
        }
      });
    }
  }

  finalizeChunk(): AveragePart {
    return this.part!;
  }

  async finalize(parts: AveragePart[]): Promise<AverageResult> {
    const run = await Run.open(this.runPath);
    try {
      const det = run.detector();
      const mean = (s: Float64Array, c: Uint32Array) =>
        Float32Array.from(s, (v, p) => (c[p] ? v / c[p] : NaN));
      if (!this.lit) this.litSource = (await litLookup(run, this.from)).source;
      return {
        run: run.path,
        detector: det.name,
        modules: parts.flatMap((p) => p.modules),
        imageShape: det.imageShape,
        litMean: parts.flatMap((p) => p.litSum.map((s, m) => mean(s, p.litCount[m]))),
        darkMean: parts.flatMap((p) => p.darkSum.map((s, m) => mean(s, p.darkCount[m]))),
        litFrames: parts.flatMap((p) => p.litFrames),
        darkFrames: parts.flatMap((p) => p.darkFrames),
        litFrom: this.litSource,
        firstTrain: run.trainIds[0],
      };
    } finally {
      run.close();
    }
  }
}

export async function average(
  runPath: string,
  options: { from?: string; workers?: number } = {},
  progress?: (done: number, total: number) => void,
): Promise<AverageResult> {
  return await runAlgorithm<AveragePart, AverageResult>(new AverageAlgorithm(), runPath, {
    from: options.from,
  }, {
    workers: options.workers ?? (await defaultWorkers()),
    progress,
  });
}

/** Write the averages with the writer library; returns the file paths. */
export async function writeAverage(r: AverageResult, dir: string, runFiles: string[]): Promise<string[]> {
  const { prefix, run } = runNaming(runFiles);
  const [ss, fs_] = r.imageShape;
  const schema = {
    parameters: ["det", "nmod", "ss", "fs"],
    aliases: { out: "{det}/REDU/AVERAGE:output", ctl: "{det}/REDU/AVERAGE" },
    datasets: {
      litMean: { source: "@out", key: "data.litMean", shape: ["nmod", "ss", "fs"], dtype: "float32" },
      darkMean: { source: "@out", key: "data.darkMean", shape: ["nmod", "ss", "fs"], dtype: "float32" },
      litFrames: { source: "@out", key: "data.litFrames", shape: ["nmod"], dtype: "uint32" },
      darkFrames: { source: "@out", key: "data.darkFrames", shape: ["nmod"], dtype: "uint32" },
      modules: { source: "@ctl", key: "modules", shape: ["nmod"], dtype: "uint16" },
    },
  } as const;
  const nmod = r.modules.length;
  const w = await openWriter(path.join(dir, "{prefix}-R{run:04d}-{aggregator}-S{seq:05d}.h5"), schema, {
    params: { det: r.detector, nmod, ss, fs: fs_ },
    prefix,
    run,
    aggregator: "REDU02",
  });
  try {
    const flat = (a: Float32Array[]) => {
      const out = new Float32Array(nmod * ss * fs_);
      a.forEach((m, i) => out.set(m, i * ss * fs_));
      return out;
    };
    w.setConstant("modules", Uint16Array.from(r.modules));
    w.addTrains([r.firstTrain], { "@out": 1 });
    w.addData({
      litMean: { data: flat(r.litMean), shape: [1, nmod, ss, fs_] },
      darkMean: { data: flat(r.darkMean), shape: [1, nmod, ss, fs_] },
      litFrames: { data: Uint32Array.from(r.litFrames), shape: [1, nmod] },
      darkFrames: { data: Uint32Array.from(r.darkFrames), shape: [1, nmod] },
    });
    return w.close();
  } catch (e) {
    w.abort(String(e));
    throw e;
  }
}

/** The output directory of average, built under a temporary name. */
export async function writeAverageDir(r: AverageResult, dir: string): Promise<void> {
  const run = await Run.open(r.run);
  const names = run.files.map((f) => f.name);
  run.close();
  await buildDir(dir, async (tmp) => {
    await writeAverage(r, tmp, names);
  });
}
