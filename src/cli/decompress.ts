/** The `decompress` command: options and the command line of compress/decompress.ts. */
import type { Command, OptionSpec } from "./command.ts";
import { EXIT, InputError } from "../errors.ts";
import { decompress, formatDecompression } from "../compress/decompress.ts";

export const DECOMPRESS_OPTIONS: OptionSpec[] = [
  { name: "out", value: "string", help: "output directory (a run of the same file names)" },
  { name: "force", help: "replace an existing output directory" },
];

export const decompressCommand: Command = {
  name: "decompress",
  usage: "decompress RUN --out DIR",
  help:
    "Turn a run written by reduce --compress back into plain EuXFEL files (SZ decoded, no plugin filters).",
  options: DECOMPRESS_OPTIONS,
  async run(args, o) {
    const runPath = args[0];
    if (!runPath) throw new InputError(undefined, "missing argument RUN");
    if (!o.out) throw new InputError(undefined, "missing option --out DIR");
    const r = await decompress(runPath, o.out, { force: !!o.force });
    console.log(o.json ? JSON.stringify(r, null, 2) : formatDecompression(r));
    return EXIT.ok;
  },
};
