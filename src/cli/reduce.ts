/** The `reduce` command: options and the command line of reduce/reduce.ts. */
import type { Command, OptionSpec } from "./command.ts";
import { EXIT, InputError } from "../errors.ts";
import { formatReduction, reduce } from "../reduce/reduce.ts";

export const REDUCE_OPTIONS: OptionSpec[] = [
  { name: "from", value: "string", help: "the localise output directory (REDU file, summary.json)" },
  { name: "out", value: "string", help: "output directory (a run of the same file names)" },
  { name: "force", help: "replace an existing output directory" },
  {
    name: "modules",
    value: "string",
    default: "all",
    choices: ["all", "selected"],
    help: "leave out unselected modules (selected) or not",
  },
  { name: "roi", help: "keep only each module's ROI boxes (one dataset per ROI)" },
  {
    name: "keep-dark",
    value: "number",
    integer: true,
    min: 0,
    default: 0,
    help: "keep every Nth dark frame (0: none)",
  },
  { name: "run-copy", help: "RUN is a copy of the run localise ran on (another path): apply its selection" },
  {
    name: "unlisted",
    value: "string",
    choices: ["keep", "delete"],
    help: "frames the selection does not list: keep | delete (unset: refused)",
  },
  { name: "allow-empty", help: "accept a selection that keeps no frame" },
  {
    name: "compress",
    value: "string",
    help: "compress detector datasets: lossless:<filter> | round:<m>[,<p>] | sz:<abs error bound>",
  },
  { name: "compress-filter", value: "string", help: "lossless stage of round: and sz: [zstd]" },
  {
    name: "compress-backend",
    value: "string",
    choices: ["auto", "cpu", "webgpu"],
    default: "auto",
    help: "sz integer stage: auto | cpu | webgpu",
  },
  {
    name: "quality-frames",
    value: "number",
    integer: true,
    min: 1,
    default: 8,
    help: "frames per module file sampled for quality",
  },
];

export const reduceCommand: Command = {
  name: "reduce",
  usage: "reduce RUN --from LOCALISE_OUT --out DIR",
  help: "Delete dark frames: keep only the frames localise flagged lit, in a run of the same file names.",
  options: REDUCE_OPTIONS,
  async run(args, o) {
    const runPath = args[0];
    if (!runPath) throw new InputError(undefined, "missing argument RUN");
    if (!o.from) throw new InputError(undefined, "missing option --from LOCALISE_OUT");
    if (!o.out) throw new InputError(undefined, "missing option --out DIR");
    const r = await reduce(runPath, o.from, o.out, {
      modules: o.modules,
      roi: !!o.roi,
      keepDark: o.keepDark,
      force: !!o.force,
      runCopy: !!o.runCopy,
      unlisted: o.unlisted,
      allowEmpty: !!o.allowEmpty,
      compress: o.compress,
      compressFilter: o.compressFilter,
      compressBackend: o.compressBackend,
      qualityFrames: o.qualityFrames,
    });
    console.log(o.json ? JSON.stringify(r, null, 2) : formatReduction(r));
    return EXIT.ok;
  },
};
