/** The `cxi` command: options and the command line of localise/cxi.ts. */
import type { Command, OptionSpec } from "./command.ts";
import { EXIT, InputError } from "../errors.ts";
import { formatCxi, writeCxi } from "../localise/cxi.ts";

export const CXI_OPTIONS: OptionSpec[] = [
  { name: "from", value: "string", help: "the localise output directory (its REDU file and summary.json)" },
  { name: "out", value: "string", help: "output directory" },
  { name: "force", help: "replace an existing output directory written by xfel-redu" },
  {
    name: "geometry",
    value: "string",
    help: "CrystFEL .geom file (default: the one localise used, else the built-in layout)",
  },
  {
    name: "clen",
    value: "number",
    min: 0,
    help: "detector distance (m) for det.geom (default: the layout's)",
  },
  {
    name: "photon-energy",
    value: "number",
    min: 0,
    help: "photon energy (eV) for det.geom (default: the layout's)",
  },
  {
    name: "gzip",
    value: "number",
    integer: true,
    min: 0,
    max: 9,
    default: 0,
    help: "gzip level of the images",
  },
  { name: "batch-mb", value: "number", min: 1, default: 128, help: "image data per batch, MiB" },
];

export const cxiCommand: Command = {
  name: "cxi",
  usage: "cxi RUN --from LOCALISE_OUT --out DIR",
  help:
    "Hit frames as a CXI file with peak lists, a .geom and hits.lst for CrystFEL (indexamajig --peaks=cxi).",
  options: CXI_OPTIONS,
  async run(args, o) {
    const runPath = args[0];
    if (!runPath) throw new InputError(undefined, "missing argument RUN");
    if (!o.from) throw new InputError(undefined, "missing option --from LOCALISE_OUT");
    if (!o.out) throw new InputError(undefined, "missing option --out DIR");
    const r = await writeCxi(runPath, o.from, o.out, {
      geometry: o.geometry,
      clen: o.clen,
      photonEnergy: o.photonEnergy,
      gzip: o.gzip,
      batchBytes: o.batchMb * 2 ** 20,
      force: !!o.force,
    });
    console.log(o.json ? JSON.stringify(r, null, 2) : formatCxi(r));
    return EXIT.ok;
  },
};
