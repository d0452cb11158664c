/** The shader text of shaders/*.wgsl, found from the package root. */
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

/** The package root: the nearest directory upwards of this module whose package.json is "xfel-redu". */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = path.join(dir, "package.json");
    if (fs.existsSync(pj)) {
      try {
        if (JSON.parse(fs.readFileSync(pj, "utf8")).name === "xfel-redu") return dir;
      } catch { /* not ours */ }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error("cannot find the xfel-redu package root (for shaders/)");
    dir = up;
  }
}

const shaderCache = new Map<string, string>();

/** The text of shaders/<name>, read once. */
export function shaderSource(name: string): string {
  let s = shaderCache.get(name);
  if (s === undefined) {
    s = fs.readFileSync(path.join(packageRoot(), "shaders", name), "utf8");
    shaderCache.set(name, s);
  }
  return s;
}

/**
 * The text of shaders/<name> with shared shader files put in front (their declarations first), for
 * Kernel.create's `source`: e.g. xpcs-common.wgsl in front of xpcs.wgsl and xpcs-twotime.wgsl.
 */
export function shaderWith(shared: string[], name: string): string {
  return [...shared, name].map(shaderSource).join("\n");
}
