/**
 * Writing a bench/RESULTS*.md file: the generated part (machine, table) replaces the file's head, and the
 * hand-written sections after it (from the first "## " heading or "Notes (added by hand" line on) are kept.
 */
import fs from "node:fs";

export function writeResults(file: string, generated: string): void {
  const before = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
  const at = ["\n## ", "\nNotes (added by hand"].map((m) => before.indexOf(m)).filter((i) => i >= 0);
  const kept = at.length ? Math.min(...at) : -1;
  fs.writeFileSync(file, generated + (kept >= 0 ? "\n" + before.slice(kept + 1) : ""));
}
