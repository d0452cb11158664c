/** The `xpcs` command: options and the command line of reductions/xpcs.ts. */
import type { Command } from "./command.ts";
import { parseRange } from "../reductions/common.ts";
import { writeXpcsDir, xpcs, type XpcsOptions } from "../reductions/xpcs.ts";
import {
  BACKEND_OPTIONS,
  BEAM_OPTIONS,
  outOptions,
  ratioLine,
  runArgument,
  runReduction,
} from "./reduction.ts";

export const xpcsCommand: Command = {
  name: "xpcs",
  usage: "xpcs RUN --geometry FILE --out DIR",
  help: "XPCS: g2(q, tau) within trains per train and for the run (an EuXFEL file).",
  options: [
    { name: "geometry", value: "string", help: "CrystFEL .geom file (default: the built-in layout)" },
    ...outOptions("xpcs"),
    { name: "q-bins", value: "number", default: 20, help: "q bins" },
    { name: "range", value: "string", help: "A,B: the q range in nm^-1 (default: the detector's)" },
    {
      name: "max-delay",
      value: "number",
      help: "largest delay in frames (default min(frames/train - 1, 32))",
    },
    ...BEAM_OPTIONS,
    { name: "two-time", value: "number", help: "train ID: its two-time correlation C(q, t1, t2) too" },
    ...BACKEND_OPTIONS,
  ],
  async run(args, o) {
    const runPath = runArgument(args);
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
    return await runReduction(
      "xpcs",
      runPath,
      o,
      (progress) => xpcs(runPath, options, progress),
      writeXpcsDir,
      (r) => `${r.trainIds.length} trains, delays 1..${r.delays.length}`,
      (_r, summary, dir) => [ratioLine(summary, dir)],
    );
  },
};
