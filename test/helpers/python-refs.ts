/**
 * Independent references through Debian's Python (/usr/bin/python3): EXtra-data (`extra-data-validate`,
 * `RunDirectory`), numpy/h5py, pyFAI. Tests skip when a package is missing locally and fail on CI (`CI` set),
 * as test/helpers/h5py.ts does.
 */
import { spawnSync } from "node:child_process";
import { have, PYTHON, type Tool } from "./tools.ts";

export { PYTHON };

/** The tool (test/helpers/tools.ts) that brings each Python module. */
const TOOL_OF: Record<string, Tool> = {
  h5py: "h5py",
  numpy: "h5py",
  extra_data: "extra-data",
  pyFAI: "pyfai",
};

/**
 * Whether `/usr/bin/python3` imports these modules (through test/helpers/tools.ts: required on CI, else
 * skipped and named in the one summary line).
 */
export function pythonHas(...modules: string[]): boolean {
  return modules.every((m) => {
    const t = TOOL_OF[m];
    if (!t) throw new Error(`python-refs: no tool known for the module ${m}`);
    return have(t);
  });
}

/** Run a Python script with one JSON argument; it prints one JSON value. */
export function runPython(script: string, args: unknown): any {
  const r = spawnSync(PYTHON, ["-c", script, JSON.stringify(args)], {
    encoding: "utf8",
    maxBuffer: 1 << 30,
  });
  if (r.status !== 0) throw new Error(`python script failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

/** `extra-data-validate DIR`: exit status and output. */
export function extraDataValidate(dir: string): { status: number | null; output: string } {
  const r = spawnSync(PYTHON, [
    "-c",
    "import sys; from extra_data.validation import main; sys.exit(main())",
    dir,
  ], {
    encoding: "utf8",
  });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

const OPEN = `
import sys, json
from extra_data import RunDirectory
a = json.loads(sys.argv[1])
run = RunDirectory(a["dir"])
out = {"trains": len(run.train_ids), "sources": sorted(run.all_sources), "keys": {}}
for s, keys in a["keys"].items():
    out["keys"][s] = {}
    for k in keys:
        arr = run[s, k].ndarray()
        out["keys"][s][k] = {"shape": list(arr.shape), "sum": float(__import__("numpy").nansum(arr))}
print(json.dumps(out))
`;

/** Open a directory with `extra_data.RunDirectory`; per asked key its shape and nansum. */
export function openWithExtraData(
  dir: string,
  keys: Record<string, string[]>,
): {
  trains: number;
  sources: string[];
  keys: Record<string, Record<string, { shape: number[]; sum: number }>>;
} {
  return runPython(OPEN, { dir, keys });
}
