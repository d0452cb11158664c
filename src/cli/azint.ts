/** The `azint` command: options and the command line of reductions/azint.ts. */
import type { Command } from "./command.ts";
import { EXIT, InputError } from "../errors.ts";
import { prepareOut, progressPrinter } from "../app/outdir.ts";
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

export const azintCommand: Command = {
  name: "azint",
  usage: "azint RUN --geometry FILE --out DIR",
  help: "Azimuthal integration per frame (powder, SAXS/WAXS), per-train and run means (an EuXFEL file).",
  options: [
    { name: "geometry", value: "string", help: "CrystFEL .geom file (default: the built-in layout, a note)" },
    { name: "out", value: "string", help: "output directory (default ./azint-<run name>)" },
    { name: "force", help: "replace an existing output directory" },
    { name: "bins", value: "number", default: 500, help: "radial bins" },
    { name: "unit", value: "string", default: "q_nm^-1", help: "q_nm^-1 | 2th_deg | r_mm" },
    { name: "range", value: "string", help: "A,B: the radial range (default: the detector's)" },
    { name: "no-solid-angle", help: "no solid-angle correction" },
    { name: "polarization", value: "number", help: "polarisation factor P (-1..1; pyFAI's definition)" },
    { name: "energy", value: "number", help: "photon energy in eV (default: the geometry file's)" },
    { name: "distance", value: "number", help: "detector distance in metres (default: clen of the file)" },
    { name: "lit-only", help: "only frames the beam (or --from) says are lit" },
    { name: "from", value: "string", help: "localise output whose frameLit decides lit frames" },
    { name: "backend", value: "string", default: "auto", help: "auto | webgpu | cpu" },
    { name: "workers", value: "number", help: "worker threads (default: the cores; 1 on a GPU)" },
  ],
  async run(args, o) {
    const runPath = args[0];
    if (!runPath) throw new InputError(undefined, "missing argument RUN");
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
    const dir = prepareOut(runPath, o.out, "azint", !!o.force);
    const r = await azint(runPath, options, progressPrinter("azint"));
    if (!o.geometry) {
      r.notes.push(`no --geometry: the built-in ${r.geometry.replace(/^default /, "")} layout`);
    }
    let summary;
    try {
      summary = await writeAzintDir(r, dir);
    } finally {
      r.dispose();
    }
    if (o.json) console.log(JSON.stringify({ ...summary, azint: undefined, out: dir }, null, 2));
    else {
      console.log(`${r.run}: ${r.detector}, ${r.trainId.length} frames, backend ${r.backend}`);
      for (const n of r.notes) console.log(`note: ${n}`);
      console.log(
        `${r.options.bins} bins in ${r.options.unit} over [${r.edges[0].toPrecision(5)}, ` +
          `${r.edges[r.options.bins].toPrecision(5)}]; ratio ${(summary.ratio as number).toFixed(1)} ` +
          `(bytes in / out); written: ${dir}`,
      );
    }
    return EXIT.ok;
  },
};
