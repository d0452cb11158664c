/** The `roi` command: options and the command line of reductions/roi.ts. */
import type { Command } from "./command.ts";
import { EXIT, InputError } from "../errors.ts";
import { prepareOut, progressPrinter } from "../app/outdir.ts";
import * as path from "node:path";
import { regionsFromOptions, roi, roiSummary, writeRoiDir } from "../reductions/roi.ts";

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
    { name: "out", value: "string", help: "output directory (default ./roi-<run name>)" },
    { name: "force", help: "replace an existing output directory" },
    { name: "lit-only", help: "only frames the beam (or --from) says are lit" },
    { name: "from", value: "string", help: "localise output whose frameLit decides lit frames" },
    { name: "backend", value: "string", default: "auto", help: "auto | webgpu | cpu" },
    { name: "workers", value: "number", help: "worker threads (default: the cores; 1 on a GPU)" },
  ],
  async run(args, o) {
    const runPath = args[0];
    if (!runPath) throw new InputError(undefined, "missing argument RUN");
    const rois = regionsFromOptions(o);
    if (!rois.length) {
      throw new InputError(undefined, "no region: give --roi NAME=MODULE:SS0:SS1:FS0:FS1 or --roi-file");
    }
    const dir = prepareOut(runPath, o.out, "roi", !!o.force);
    const r = await roi(
      runPath,
      {
        rois,
        backend: o.backend,
        workers: o.workers,
        litOnly: !!o.litOnly,
        from: o.from ? path.resolve(o.from) : undefined,
      },
      progressPrinter("roi"),
    );
    let summary;
    try {
      summary = await writeRoiDir(r, dir);
    } finally {
      r.dispose();
    }
    if (o.json) console.log(JSON.stringify({ ...summary, roi: undefined, out: dir }, null, 2));
    else {
      console.log(`${r.run}: ${r.detector}, ${r.trainId.length} frames, backend ${r.backend}`);
      for (const n of r.notes) console.log(`note: ${n}`);
      for (const s of summary.roi as ReturnType<typeof roiSummary>) {
        console.log(
          `${s.name} (module ${s.module}): mean sum ${s.meanSum.toPrecision(6)}, ${s.count} valid pixels`,
        );
      }
      console.log(`ratio ${(summary.ratio as number).toFixed(1)} (bytes in / out); written: ${dir}`);
    }
    return EXIT.ok;
  },
};
