/** The `roi` command: options and the command line of reductions/roi.ts. */
import type { Command } from "./command.ts";
import { InputError } from "../errors.ts";
import * as path from "node:path";
import { regionsFromOptions, roi, roiSummary, writeRoiDir } from "../reductions/roi.ts";
import {
  BACKEND_OPTIONS,
  LIT_OPTIONS,
  outOptions,
  ratioLine,
  runArgument,
  runReduction,
} from "./reduction.ts";

export const roiCommand: Command = {
  name: "roi",
  usage: "roi RUN --roi NAME=MODULE:SS0:SS1:FS0:FS1 --out DIR",
  help: "Per-frame sum, count, mean and spectrum (sum over ss) of fixed regions (an EuXFEL file).",
  options: [
    { name: "roi", value: "string", repeat: true, help: "a region NAME=MODULE:SS0:SS1:FS0:FS1 (repeatable)" },
    {
      name: "roi-file",
      value: "string",
      help: "JSON list of regions {name, module, ss: [a, b], fs: [a, b]}",
    },
    ...outOptions("roi"),
    ...LIT_OPTIONS,
    ...BACKEND_OPTIONS,
  ],
  async run(args, o) {
    const runPath = runArgument(args);
    const rois = regionsFromOptions(o);
    if (!rois.length) {
      throw new InputError(undefined, "no region: give --roi NAME=MODULE:SS0:SS1:FS0:FS1 or --roi-file");
    }
    const options = {
      rois,
      backend: o.backend,
      workers: o.workers,
      litOnly: !!o.litOnly,
      from: o.from ? path.resolve(o.from) : undefined,
    };
    return await runReduction(
      "roi",
      runPath,
      o,
      (progress) => roi(runPath, options, progress),
      writeRoiDir,
      (r) => `${r.frames} frames`,
      (_r, summary, dir) => [
        ...(summary.roi as ReturnType<typeof roiSummary>).map((s) =>
          `${s.name} (module ${s.module}): mean sum ${s.meanSum.toPrecision(6)}, ${s.count} valid pixels`
        ),
        ratioLine(summary, dir),
      ],
    );
  },
};
