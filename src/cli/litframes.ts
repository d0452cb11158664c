/** The `litframes` command: options and the command line of beam/annotate.ts and beam/litfrm.ts. */
import type { Command, OptionSpec } from "./command.ts";
import { EXIT, InputError } from "../errors.ts";
import { addToDir, buildDir, checkOut } from "../app/outdir.ts";
import { Run, runNaming } from "../exdf/run.ts";
import * as fs from "node:fs";
import * as path from "node:path";
import { streamBeam } from "../beam/annotate.ts";
import {
  checkLitframesTarget,
  formatLitframes,
  litframesDevice,
  noTotals,
  summariseLitframes,
  writeLitframes,
} from "../beam/litfrm.ts";

export const LITFRAMES_OPTIONS: OptionSpec[] = [
  { name: "out", value: "string", help: "output directory (may be an xfel-redu output without LITFRM)" },
  { name: "force", help: "replace an existing LITFRM file" },
  {
    name: "sase",
    value: "number",
    integer: true,
    min: 1,
    max: 3,
    help: "SASE 1, 2 or 3 (default: from the instrument)",
  },
  {
    name: "rep-rate",
    value: "number",
    help: "repetition rate in MHz (default: detector control, else inferred)",
  },
  {
    name: "reference-frame",
    value: "number",
    integer: true,
    min: 0,
    max: 351,
    default: 1,
    help: "frame facing the first pulse",
  },
  {
    name: "first-pulse-slot",
    value: "number",
    help: "pulse slot faced by the reference frame (fixed timing)",
  },
  {
    name: "align",
    value: "string",
    choices: ["run", "train"],
    default: "run",
    help: "anchor: run (earliest pulse) | train (first pulse)",
  },
  { name: "instrument", value: "string", help: "instrument name (default: from the detector name)" },
  { name: "detector", value: "string", help: "detector name, when the run holds several" },
];

export const litframesCommand: Command = {
  name: "litframes",
  usage: "litframes RUN --out DIR",
  help: "Annotate dark and lit frames from the bunch pattern and XGM (the facility's LITFRM layout).",
  options: LITFRAMES_OPTIONS,
  async run(args, o) {
    const runPath = args[0];
    if (!runPath) throw new InputError(undefined, "missing argument RUN");
    if (!o.out) throw new InputError(undefined, "missing option --out DIR");
    const dir = path.resolve(o.out);
    const into = fs.existsSync(dir);
    checkOut(dir, { force: !!o.force, inputs: [{ path: runPath, what: "input run" }], existing: "add" });
    const run = await Run.open(runPath);
    try {
      // Streamed: a window of trains annotated at a time as the writer and the summary go (the whole run's
      // annotation held ~50 bytes a frame).
      const ann = streamBeam(run, {
        sase: o.sase,
        repRate: o.repRate,
        referenceFrame: o.referenceFrame,
        firstPulseSlot: o.firstPulseSlot,
        align: o.align,
        instrument: o.instrument,
        detector: o.detector,
      });
      const naming = runNaming(run.files.map((f) => f.name), "REDU");
      await checkLitframesTarget(dir, litframesDevice(ann.instrument), naming, !!o.force);
      const totals = noTotals();
      const write = (d: string) => writeLitframes(ann, d, { ...naming, overwrite: !!o.force, totals });
      const written = into ? await addToDir(dir, write) : await buildDir(dir, write);
      const files = written.map((f) => path.join(dir, path.basename(f)));
      const s = summariseLitframes(run.path, ann, files, totals);
      if (!o.json) { for (const w of ann.warnings) console.error(`xfel-redu: warning: ${w}`); }
      console.log(o.json ? JSON.stringify(s, null, 2) : formatLitframes({ ...s, warnings: [] }));
      return EXIT.ok;
    } finally {
      run.close();
    }
  },
};
