/** The `xpcs` command: options and the command line of reductions/xpcs.ts. */
import type { Command } from "./command.ts";
import { EXIT, InputError } from "../errors.ts";
import { prepareOut, progressPrinter } from "../app/outdir.ts";
import { parseRange } from "../reductions/common.ts";
import { writeXpcsDir, xpcs, type XpcsOptions } from "../reductions/xpcs.ts";

export const xpcsCommand: Command = {
  name: "xpcs",
  usage: "xpcs RUN --geometry FILE --out DIR",
  help: "XPCS: g2(q, tau) within trains per train and for the run (an EuXFEL file).",
  options: [
    { name: "geometry", value: "string", help: "CrystFEL .geom file (default: the built-in layout)" },
    { name: "out", value: "string", help: "output directory (default ./xpcs-<run name>)" },
    { name: "force", help: "replace an existing output directory" },
    { name: "q-bins", value: "number", default: 20, help: "q bins" },
    { name: "range", value: "string", help: "A,B: the q range in nm^-1 (default: the detector's)" },
    {
      name: "max-delay",
      value: "number",
      help: "largest delay in frames (default min(frames/train - 1, 32))",
    },
    { name: "energy", value: "number", help: "photon energy in eV (default: the geometry file's)" },
    { name: "distance", value: "number", help: "detector distance in metres (default: clen of the file)" },
    { name: "two-time", value: "number", help: "train ID: its two-time correlation C(q, t1, t2) too" },
    { name: "backend", value: "string", default: "auto", help: "auto | webgpu | cpu" },
    { name: "workers", value: "number", help: "worker threads (default: the cores; 1 on a GPU)" },
  ],
  async run(args, o) {
    const runPath = args[0];
    if (!runPath) throw new InputError(undefined, "missing argument RUN");
    const options: Partial<XpcsOptions> = {
      twoTime: o.twoTime,
      backend: o.backend,
      geometry: o.geometry,
      qBins: o.qBins,
      range: parseRange(o.range),
      maxDelay: o.maxDelay,
      energy: o.energy,
      distance: o.distance,
      workers: o.workers,
    };
    const dir = prepareOut(runPath, o.out, "xpcs", !!o.force);
    const r = await xpcs(runPath, options, progressPrinter("xpcs"));
    const summary = await writeXpcsDir(r, dir);
    if (o.json) console.log(JSON.stringify({ ...summary, xpcs: undefined, out: dir }, null, 2));
    else {
      console.log(
        `${r.run}: ${r.detector}, ${r.trainIds.length} trains, delays 1..${r.delays.length}, backend ${r.backend}`,
      );
      for (const n of r.notes) console.log(`note: ${n}`);
      console.log(`ratio ${(summary.ratio as number).toFixed(1)} (bytes in / out); written: ${dir}`);
    }
    return EXIT.ok;
  },
};
