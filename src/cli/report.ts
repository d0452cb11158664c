/** The `report` command: options and the command line of report/report.ts. */
import type { Command } from "./command.ts";
import { EXIT, InputError } from "../errors.ts";
import * as fs from "node:fs";
import * as path from "node:path";
import { DEFAULTS } from "../report/model.ts";
import { reportFromOutput } from "../report/report.ts";
import { kB } from "../app/format.ts";
import type { OptionSpec } from "./command.ts";

const REPORT_OPTIONS: OptionSpec[] = [
  {
    name: "run",
    value: "string",
    help: "the run, when it moved (default: the run recorded in summary.json)",
  },
  {
    name: "lit",
    value: "number",
    integer: true,
    min: 0,
    default: DEFAULTS.litFrames,
    help: "lit sample frames shown",
  },
  {
    name: "dark",
    value: "number",
    integer: true,
    min: 0,
    default: DEFAULTS.darkFrames,
    help: "dark sample frames shown",
  },
];

export const reportCommand: Command = {
  name: "report",
  usage: "report LOCALISE_OUT",
  help:
    "Write LOCALISE_OUT/report.html: one self-contained page to judge a localise (or roi, azint, xpcs) result.",
  options: REPORT_OPTIONS,
  async run(args, o) {
    const dir = args[0];
    if (!dir) throw new InputError(undefined, "missing argument LOCALISE_OUT");
    // The output of roi, azint or xpcs: their own page (src/reductions/report.ts).
    const sp = path.join(dir, "summary.json");
    const cmd = fs.existsSync(sp)
      ? (() => {
        try {
          return JSON.parse(fs.readFileSync(sp, "utf8")).command;
        } catch {
          return undefined;
        }
      })()
      : undefined;
    if (["roi", "azint", "xpcs"].includes(cmd)) {
      const { writeReductionReport } = await import("../reductions/report.ts");
      const file = writeReductionReport(dir);
      console.log(o.json ? JSON.stringify({ path: file }, null, 2) : `written: ${file}`);
      return EXIT.ok;
    }
    const info = await reportFromOutput(dir, { run: o.run, litFrames: o.lit, darkFrames: o.dark });
    for (const n of info.notes) console.error(`xfel-redu: report: ${n}`);
    console.log(o.json ? JSON.stringify(info, null, 2) : `written: ${info.path} (${kB(info.bytes)})`);
    return EXIT.ok;
  },
};
