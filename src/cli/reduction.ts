/**
 * What the commands of the reductions (`roi`, `azint`, `xpcs`) share: their common options, the RUN
 * argument, the output directory and what they print.
 */
import type { OptionSpec } from "./command.ts";
import { EXIT, InputError } from "../errors.ts";
import { prepareOut, progressPrinter } from "../app/outdir.ts";

/** `--out` and `--force`. */
export function outOptions(command: string): OptionSpec[] {
  return [
    { name: "out", value: "string", help: `output directory (default ./${command}-<run name>)` },
    { name: "force", help: "replace an existing output directory" },
  ];
}

/** `--lit-only` and `--from`. */
export const LIT_OPTIONS: OptionSpec[] = [
  { name: "lit-only", help: "only frames the beam (or --from) says are lit" },
  { name: "from", value: "string", help: "localise output whose frameLit decides lit frames" },
];

/** `--energy` and `--distance` (azint, xpcs). */
export const BEAM_OPTIONS: OptionSpec[] = [
  { name: "energy", value: "number", help: "photon energy in eV (default: the geometry file's)" },
  { name: "distance", value: "number", help: "detector distance in metres (default: clen of the file)" },
];

/** `--backend` and `--workers`. */
export const BACKEND_OPTIONS: OptionSpec[] = [
  { name: "backend", value: "string", default: "auto", help: "auto | webgpu | cpu" },
  { name: "workers", value: "number", help: "worker threads (default: the cores; 1 on a GPU)" },
];

/** The RUN argument. */
export function runArgument(args: string[]): string {
  if (!args[0]) throw new InputError(undefined, "missing argument RUN");
  return args[0];
}

/** What the printing needs of a reduction's result. */
export interface ReductionShown {
  run: string;
  detector: string;
  backend: string;
  notes: string[];
  /** Remove the spill files (after writing). */
  dispose?(): void;
}

/**
 * A reduction's command once its options are checked: the output directory prepared (before the run is
 * read), the reduction run (`reduce`, given a progress line on a terminal), its directory written
 * (`write`; the result disposed after), then with `--json` the summary (without its `command` section,
 * plus `out`), else the text: the run, detector, `describe(r)` and backend, the notes, `lines`.
 */
export async function runReduction<R extends ReductionShown>(
  command: string,
  runPath: string,
  o: Record<string, any>,
  reduce: (progress?: (done: number, total: number) => void) => Promise<R>,
  write: (r: R, dir: string) => Promise<Record<string, unknown>>,
  describe: (r: R) => string,
  lines: (r: R, summary: Record<string, unknown>, dir: string) => string[],
): Promise<number> {
  const dir = prepareOut(runPath, o.out, command, !!o.force);
  const r = await reduce(progressPrinter(command));
  let summary;
  try {
    summary = await write(r, dir);
  } finally {
    r.dispose?.();
  }
  if (o.json) console.log(JSON.stringify({ ...summary, [command]: undefined, out: dir }, null, 2));
  else {
    console.log(`${r.run}: ${r.detector}, ${describe(r)}, backend ${r.backend}`);
    for (const n of r.notes) console.log(`note: ${n}`);
    for (const l of lines(r, summary, dir)) console.log(l);
  }
  return EXIT.ok;
}

/** The last line of the text: the ratio of bytes in to bytes out and the directory. */
export function ratioLine(summary: Record<string, unknown>, dir: string): string {
  return `ratio ${(summary.ratio as number).toFixed(1)} (bytes in / out); written: ${dir}`;
}
