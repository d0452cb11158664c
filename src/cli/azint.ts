/** The `azint` command: options and the command line of reductions/azint.ts. */
import type { Command } from "./command.ts";
import { InputError } from "../errors.ts";
import { parseRange } from "../reductions/common.ts";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  azint,
  type AzintOptions,
  checkAzintOptions,
  DEFAULT_AZINT,
  writeAzintDir,
} from "../reductions/azint.ts";
import {
  BACKEND_OPTIONS,
  BEAM_OPTIONS,
  LIT_OPTIONS,
  outOptions,
  runArgument,
  runReduction,
} from "./reduction.ts";

export const azintCommand: Command = {
  name: "azint",
  usage: "azint RUN --geometry FILE --out DIR",
  help: "Azimuthal integration per frame (powder, SAXS/WAXS), per-train and run means (an EuXFEL file).",
  options: [
    { name: "geometry", value: "string", help: "CrystFEL .geom file (default: the built-in layout, a note)" },
    ...outOptions("azint"),
    { name: "bins", value: "number", default: 500, help: "radial bins" },
    { name: "unit", value: "string", default: "q_nm^-1", help: "q_nm^-1 | 2th_deg | r_mm" },
    { name: "range", value: "string", help: "A,B: the radial range (default: the detector's)" },
    { name: "no-solid-angle", help: "no solid-angle correction" },
    { name: "polarization", value: "number", help: "polarisation factor P (-1..1; pyFAI's definition)" },
    ...BEAM_OPTIONS,
    ...LIT_OPTIONS,
    ...BACKEND_OPTIONS.map((b) =>
      b.name === "workers"
        ? { ...b, help: "worker threads (default: the cores; 1 on two cores or a GPU)" }
        : b
    ),
  ],
  async run(args, o) {
    const runPath = runArgument(args);
    if (o.geometry && !fs.existsSync(o.geometry)) throw new InputError(o.geometry, "no such geometry file");
    const options: Partial<AzintOptions> = {
      geometry: o.geometry,
      bins: o.bins,
      unit: o.unit,
      range: parseRange(o.range),
      solidAngle: !o.noSolidAngle,
      polarization: o.polarization,
      energy: o.energy,
      distance: o.distance,
      litOnly: !!o.litOnly,
      from: o.from ? path.resolve(o.from) : undefined,
      backend: o.backend,
      workers: o.workers,
    };
    checkAzintOptions({ ...DEFAULT_AZINT, ...options } as AzintOptions);
    return await runReduction(
      "azint",
      runPath,
      o,
      async (progress) => {
        const r = await azint(runPath, options, progress);
        if (!o.geometry) {
          r.notes.push(`no --geometry: the built-in ${r.geometry.replace(/^default /, "")} layout`);
        }
        return r;
      },
      writeAzintDir,
      (r) => `${r.frames} frames`,
      (r, summary, dir) => [
        `${r.options.bins} bins in ${r.options.unit} over [${r.edges[0].toPrecision(5)}, ` +
        `${r.edges[r.options.bins].toPrecision(5)}]; ratio ${(summary.ratio as number).toFixed(1)} ` +
        `(bytes in / out); written: ${dir}`,
      ],
    );
  },
};
