/**
 * The Debian tools some tests use as independent references, in one place: which are present, and what to
 * install for each. A test that needs a tool runs when it is present; when `CI` is set (`.ci/run` installs
 * them all) a missing tool is an error, never a skip; elsewhere (a fresh machine with only Node) the test is
 * skipped and `test/helpers/global-setup.ts` prints ONE line naming what is skipped and the `apt-get install`
 * line that enables it.
 *
 * `XFEL_TEST_HIDE_TOOLS=all` (or a comma list of tool names) makes tools look absent: a check that the suite
 * passes on a machine without them.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import process from "node:process";

export const PYTHON = "/usr/bin/python3";
export const CHROMIUM = "/usr/bin/chromium";
const PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/hdf5/serial/plugins";

export type Tool =
  | "h5py"
  | "h5dump"
  | "extra-data"
  | "hdf5-plugins"
  | "chromium"
  | "slurm"
  | "pyfai";

interface ToolSpec {
  /** What the skipped tests do without it. */
  what: string;
  /** Debian packages. */
  packages: string[];
  probe: () => boolean;
}

const py = (code: string) => fs.existsSync(PYTHON) && spawnSync(PYTHON, ["-c", code]).status === 0;

export const TOOLS: Record<Tool, ToolSpec> = {
  h5py: { what: "read-back with h5py", packages: ["python3-h5py"], probe: () => py("import h5py, numpy") },
  h5dump: {
    what: "read-back with h5dump",
    packages: ["hdf5-tools"],
    probe: () => spawnSync("h5dump", ["--version"]).status === 0,
  },
  "extra-data": {
    what: "EXtra-data's validator, RunDirectory and mock writers (hdf5plugin: compressed outputs)",
    packages: ["python3-extra-data", "python3-hdf5plugin"],
    probe: () =>
      py("import extra_data, extra_data.tests.mockdata, hdf5plugin") &&
      spawnSync("extra-data-validate", ["--help"]).status === 0,
  },
  "hdf5-plugins": {
    what: "h5py reading lz4/bitshuffle/blosc files",
    packages: ["hdf5-filter-plugin", "bitshuffle", "hdf5-filter-plugin-blosc-serial"],
    probe: () =>
      ["libh5lz4.so", "libh5bshuf.so", "libH5Zblosc.so"].every((f) => fs.existsSync(`${PLUGIN_DIR}/${f}`)),
  },
  pyfai: {
    what: "pyFAI as the azimuthal-integration reference",
    packages: ["python3-pyfai"],
    probe: () => py("import pyFAI, h5py"),
  },
  chromium: {
    what: "the report in a browser",
    packages: ["chromium"],
    probe: () => fs.existsSync(CHROMIUM),
  },
  slurm: {
    what: "a real SLURM job array",
    packages: ["slurm-wlm (then scripts/slurm-local.sh start)"],
    probe: () =>
      spawnSync("sinfo", ["-h", "-o", "%T"], { encoding: "utf8" }).stdout?.includes("idle") ?? false,
  },
};

export const CI = !!process.env.CI && process.env.CI !== "false" && process.env.CI !== "0";

function hidden(t: Tool): boolean {
  const h = process.env.XFEL_TEST_HIDE_TOOLS ?? "";
  return h === "all" || h.split(",").includes(t);
}

const cache = new Map<Tool, boolean>();

/** Whether the tool is present (probed once per process). Without it on CI: an error. */
export function have(t: Tool): boolean {
  let ok = cache.get(t);
  if (ok === undefined) {
    ok = !hidden(t) && TOOLS[t].probe();
    cache.set(t, ok);
  }
  if (!ok && CI) {
    throw new Error(`${t} missing on CI (${TOOLS[t].what}): apt-get install ${TOOLS[t].packages.join(" ")}`);
  }
  return ok;
}

/** The tools that are absent, probed afresh (for the summary line). */
export function missingTools(): Tool[] {
  return (Object.keys(TOOLS) as Tool[]).filter((t) => hidden(t) || !TOOLS[t].probe());
}
