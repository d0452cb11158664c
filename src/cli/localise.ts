/**
 * The `localise` command: options, output directory handling, progress, and the human summary.
 *
 * `localise RUN --out DIR` (default ./localise-<run name>) writes DIR/summary.json and the REDU file; refuses
 * an existing DIR without --force; never writes into RUN. The directory is built under a temporary name
 * beside DIR and renamed when complete.
 */
import type { Command, OptionSpec } from "./command.ts";
import { EXIT, InputError } from "../errors.ts";
import { DEFAULT_OPTIONS, type LocaliseOptions, type LocaliseResult } from "../localise/result.ts";
import { localise } from "../localise/algorithm.ts";
import { summaryJson, writeLocaliseDir } from "../localise/output.ts";
import type { OutputOptions } from "../localise/redu.ts";
import { prepareOut, progressPrinter } from "../app/outdir.ts";

export const LOCALISE_OPTIONS: OptionSpec[] = [
  { name: "report", help: "also write DIR/report.html, a page to judge the result (docs/report.md)" },
  {
    name: "workers",
    value: "number",
    integer: true,
    min: 1,
    help:
      "worker threads: cpu, module groups (default: the cores); webgpu, readers feeding one device (default: cores - 1)",
  },
  {
    name: "lit-from",
    value: "string",
    choices: ["beam", "images", "both"],
    default: DEFAULT_OPTIONS.litFrom,
    help: "lit frames from the beam (bunch pattern), the images, or both",
  },
  {
    name: "sase",
    value: "number",
    integer: true,
    min: 1,
    max: 3,
    help: "SASE of the beam annotation (default from the instrument)",
  },
  { name: "rep-rate", value: "number", help: "repetition rate in MHz (default from the run)" },
  {
    name: "reference-frame",
    value: "number",
    integer: true,
    min: 0,
    max: 351,
    help: "frame facing the first pulse [1]",
  },
  { name: "out", value: "string", help: "output directory (default ./localise-<run name>)" },
  {
    name: "geometry",
    value: "string",
    help: "CrystFEL .geom file for peak positions (default: the built-in layout, beam at the origin)",
  },
  {
    name: "photon-energy",
    value: "number",
    min: 0,
    help: "photon energy in eV for the peak resolution (default: the .geom file's photon_energy, else NaN)",
  },
  {
    name: "clen",
    value: "number",
    min: 0,
    help: "detector distance in metres for the peak resolution (default: the .geom file's clen, else NaN)",
  },
  { name: "force", help: "replace an existing output directory" },
  {
    name: "backend",
    value: "string",
    default: DEFAULT_OPTIONS.backend,
    choices: ["auto", "webgpu", "cpu"],
    help: "WebGPU on a GPU, else the CPU",
  },
  { name: "detector", value: "string", help: "detector name, when the run holds several" },
  { name: "modules", value: "string", help: "modules to use, e.g. 0-3,8 (default all)" },
  { name: "first-train", value: "number", integer: true, min: 0, help: "first train ID to use" },
  { name: "last-train", value: "number", integer: true, min: 0, help: "last train ID to use" },
  {
    name: "threshold",
    value: "number",
    default: DEFAULT_OPTIONS.threshold,
    help:
      "lit pixel: value > threshold; candidate: value - background > max(threshold, min-snr * noise) (photons)",
  },
  {
    name: "min-snr",
    value: "number",
    default: DEFAULT_OPTIONS.minSnr,
    help: "candidate pixels: this many noise sigmas above the local background (0: fixed threshold only)",
  },
  {
    name: "bg-iterations",
    value: "number",
    default: DEFAULT_OPTIONS.bgIterations,
    help: "local background: sigma-clipping iterations per radius bin (or 16 x 16 tile)",
  },
  {
    name: "bg-clip",
    value: "number",
    default: DEFAULT_OPTIONS.bgClip,
    help: "local background: values >= mu + bg-clip * sigma leave the next iteration",
  },
  {
    name: "bg-bin-width",
    value: "number",
    default: DEFAULT_OPTIONS.bgBinWidth,
    min: 0,
    help:
      "local background per radius bin of this width (pixels) over each module, from the layout (0: 16 x 16 tiles)",
  },
  {
    name: "min-peak-snr",
    value: "number",
    default: DEFAULT_OPTIONS.minPeakSnr,
    help: "smallest peak SNR: subtracted intensity / noise of its pixels",
  },
  {
    name: "min-peaks",
    value: "number",
    default: DEFAULT_OPTIONS.minPeaks,
    help: "peaks classifier: a frame is lit with at least this many peaks",
  },
  {
    name: "hot-fraction",
    value: "number",
    min: 0,
    max: 1,
    default: DEFAULT_OPTIONS.hotFraction,
    help: "hot pixel: lit in more than this fraction of frames",
  },
  {
    name: "hot-sample",
    value: "number",
    integer: true,
    min: 1,
    default: DEFAULT_OPTIONS.hotSample,
    help: "frames per module sampled for hot pixels",
  },
  {
    name: "neighbours",
    value: "number",
    integer: true,
    min: 0,
    max: 8,
    default: DEFAULT_OPTIONS.neighbours,
    help: "noise filter: lit neighbours a lit pixel needs",
  },
  {
    name: "strong",
    value: "number",
    default: DEFAULT_OPTIONS.strong,
    help: "noise filter: a pixel this bright survives alone (photons)",
  },
  {
    name: "min-area",
    value: "number",
    integer: true,
    min: 1,
    default: DEFAULT_OPTIONS.minArea,
    help: "smallest peak (pixels)",
  },
  {
    name: "max-area",
    value: "number",
    integer: true,
    min: 1,
    default: DEFAULT_OPTIONS.maxArea,
    help: "largest peak (pixels)",
  },
  {
    name: "min-intensity",
    value: "number",
    default: DEFAULT_OPTIONS.minIntensity,
    help: "smallest background-subtracted integrated intensity of a peak (photons)",
  },
  {
    name: "max-peaks",
    value: "number",
    integer: true,
    min: 1,
    default: DEFAULT_OPTIONS.maxPeaks,
    help: "peak table capacity per frame",
  },
  {
    name: "min-lit",
    value: "number",
    integer: true,
    min: 0,
    default: DEFAULT_OPTIONS.minLit,
    help: "an ASIC is also lit with this many filtered candidate pixels (0: off)",
  },
  {
    name: "mode",
    value: "string",
    choices: ["peaks", "adaptive"],
    default: DEFAULT_OPTIONS.mode,
    help: "classifier: peaks | adaptive (diffuse signal: SPI, SAXS)",
  },
  {
    name: "snr",
    value: "number",
    default: DEFAULT_OPTIONS.snr,
    help: "adaptive classifier: median + snr * IQR / 1.349",
  },
  {
    name: "margin",
    value: "number",
    integer: true,
    min: 0,
    default: DEFAULT_OPTIONS.margin,
    help: "ROI padding around peaks (pixels)",
  },
  {
    name: "max-rois",
    value: "number",
    integer: true,
    min: 1,
    default: DEFAULT_OPTIONS.maxRois,
    help: "ROIs per module at most",
  },
  {
    name: "roi-fraction",
    value: "number",
    default: DEFAULT_OPTIONS.roiFraction,
    help: "ROI pixels carry peaks in this fraction of the lit frames (0: union of all peak boxes)",
  },
  {
    name: "min-lit-fraction",
    value: "number",
    min: 0,
    max: 1,
    default: DEFAULT_OPTIONS.minLitFraction,
    help: "module selected at this lit-frame fraction",
  },
  {
    name: "batch-mb",
    value: "number",
    min: 1,
    default: DEFAULT_OPTIONS.batchBytes / 2 ** 20,
    help: "image data per batch, all modules together (MiB)",
  },
];

export function parseModules(spec: string): number[] {
  const out: number[] = [];
  for (const part of spec.split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new InputError(undefined, `--modules: bad list ${spec} (example: 0-3,8)`);
    const a = Number(m[1]), b = m[2] === undefined ? a : Number(m[2]);
    for (let i = a; i <= b; i++) out.push(i);
  }
  return out;
}

/** Options of the command line as LocaliseOptions. */
export function toLocaliseOptions(o: Record<string, any>): Partial<LocaliseOptions & OutputOptions> {
  const opts = fromCli(o);
  // An option left out keeps the library default.
  for (const k of Object.keys(opts) as (keyof typeof opts)[]) if (opts[k] === undefined) delete opts[k];
  return opts;
}

function fromCli(o: Record<string, any>): Partial<LocaliseOptions & OutputOptions> {
  return {
    backend: o.backend,
    workers: o.workers,
    litFrom: o.litFrom,
    sase: o.sase,
    repRate: o.repRate,
    referenceFrame: o.referenceFrame,
    detector: o.detector,
    modules: o.modules ? parseModules(o.modules) : undefined,
    firstTrain: o.firstTrain,
    lastTrain: o.lastTrain,
    threshold: o.threshold,
    minSnr: o.minSnr,
    bgIterations: o.bgIterations,
    bgClip: o.bgClip,
    bgBinWidth: o.bgBinWidth,
    minPeakSnr: o.minPeakSnr,
    minPeaks: o.minPeaks,
    hotFraction: o.hotFraction,
    hotSample: o.hotSample,
    neighbours: o.neighbours,
    strong: o.strong,
    minArea: o.minArea,
    maxArea: o.maxArea,
    minIntensity: o.minIntensity,
    maxPeaks: o.maxPeaks,
    minLit: o.minLit,
    mode: o.mode,
    snr: o.snr,
    margin: o.margin,
    maxRois: o.maxRois,
    roiFraction: o.roiFraction,
    minLitFraction: o.minLitFraction,
    batchBytes: Math.round(o.batchMb * 2 ** 20),
    geometry: o.geometry,
    photonEnergy: o.photonEnergy,
    clen: o.clen,
  };
}

export function formatResult(r: LocaliseResult, dir: string): string {
  const lines = [
    `${r.run}: ${r.detector.name} (${r.detector.type}), ${r.trains} trains, ${r.frames} frames, ${r.litFrames} lit`,
    `backend ${r.backend.name} (${r.backend.adapter}), ${r.timing.seconds.toFixed(2)} s, ` +
    `${r.timing.gbPerSecond.toFixed(2)} GB/s, ${r.timing.framesPerSecond.toFixed(0)} frames/s`,
    "module  frames  lit  ROIs  hot  selected",
  ];
  for (const m of r.modules) {
    lines.push(
      `${String(m.module).padStart(6)}  ${String(m.frames).padStart(6)}  ${
        String(m.litFrames).padStart(3)
      }  ` +
        `${String(m.rois.length).padStart(4)}  ${String(m.hotPixels.length).padStart(3)}  ${
          m.selected ? "yes" : "no"
        }`,
    );
  }
  lines.push(`written: ${dir}`);
  return lines.join("\n");
}

export const localiseCommand: Command = {
  name: "localise",
  usage: "localise RUN [--out DIR]",
  help: "Find the signal: lit pixels per ASIC, lit frames, peaks, ROIs, modules worth keeping.",
  options: LOCALISE_OPTIONS,
  async run(args, o) {
    const runPath = args[0];
    if (!runPath) throw new InputError(undefined, "missing argument RUN");
    const dir = prepareOut(runPath, o.out, "localise", !!o.force);
    const result = await localise(runPath, toLocaliseOptions(o), progressPrinter("localise"));
    for (const n of result.notes) console.error(`xfel-redu: ${n}`);
    if (result.frames === 0) {
      const range = o.firstTrain !== undefined || o.lastTrain !== undefined
        ? ` in trains ${o.firstTrain ?? "start"}..${o.lastTrain ?? "end"}`
        : "";
      result.dispose();
      throw new InputError(runPath, `no detector frames${range}: nothing to localise, nothing written`);
    }
    try {
      await writeLocaliseDir(
        result,
        dir,
        o.report
          ? async (tmp) => {
            const { writeReport } = await import("../report/report.ts");
            await writeReport(result, runPath, tmp, {
              onNote: (n) => console.error(`xfel-redu: report: ${n}`),
            });
          }
          : undefined,
      );
    } finally {
      result.dispose();
    }
    console.log(o.json ? JSON.stringify(summaryJson(result), null, 2) : formatResult(result, dir));
    return EXIT.ok;
  },
};

/** The output directory of localise: the REDU file(s) and summary.json, built under a temporary name. */
