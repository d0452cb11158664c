/**
 * Once per `vitest run`: the Debian tools that some tests need (test/helpers/tools.ts). On CI every one must
 * be there; elsewhere one line names the skipped checks and the install line.
 */
import { CI, missingTools, TOOLS } from "./tools.ts";

export default function setup(): void {
  const missing = missingTools();
  if (!missing.length) return;
  const pkgs = missing.flatMap((t) => TOOLS[t].packages.map((p) => p.split(" ")[0]));
  const line = `tests needing ${missing.join(", ")} (${missing.map((t) => TOOLS[t].what).join("; ")})`;
  if (CI) throw new Error(`CI: ${line} cannot run: apt-get install ${pkgs.join(" ")}`);
  process.stderr.write(`SKIPPED: ${line}. To run them: apt-get install ${pkgs.join(" ")}\n`);
}
