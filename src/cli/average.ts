/** The `average` command: options and the command line of average/average.ts. */
import type { Command } from "./command.ts";
import { EXIT, InputError } from "../errors.ts";
import { prepareOut, progressPrinter } from "../app/outdir.ts";
import { average, writeAverageDir } from "../average/average.ts";

export const averageCommand: Command = {
  name: "average",
  usage: "average RUN --out DIR",
  help: "Frame-averaged image per module, lit and dark frames apart (an EuXFEL file).",
  options: [
    { name: "out", value: "string", help: "output directory (default ./average-<run name>)" },
    { name: "force", help: "replace an existing output directory" },
    {
      name: "from",
      value: "string",
      help: "localise output whose frameLit decides lit/dark (default: the beam)",
    },
    { name: "workers", value: "number", integer: true, min: 1, help: "worker threads (default: the cores)" },
  ],
  async run(args, o) {
    const runPath = args[0];
    if (!runPath) throw new InputError(undefined, "missing argument RUN");
    const from = o.from ? [{ path: o.from as string, what: "localise output" }] : [];
    const dir = prepareOut(runPath, o.out, "average", !!o.force, from);
    const r = await average(runPath, { from: o.from, workers: o.workers }, progressPrinter("average"));
    await writeAverageDir(r, dir);
    const summary = {
      run: r.run,
      detector: r.detector,
      modules: r.modules,
      litFrom: r.litFrom,
      litFrames: r.litFrames,
      darkFrames: r.darkFrames,
      out: dir,
    };
    if (o.json) console.log(JSON.stringify(summary, null, 2));
    else {
      console.log(`${r.run}: ${r.detector}, lit/dark from ${r.litFrom}`);
      r.modules.forEach((m, i) =>
        console.log(`module ${m}: ${r.litFrames[i]} lit, ${r.darkFrames[i]} dark frames`)
      );
      console.log(`written: ${dir}`);
    }
    return EXIT.ok;
  },
};
