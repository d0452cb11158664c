/**
 * Independent HDF5 readers for tests: Debian's h5py (through /usr/bin/python3; the python3 on PATH may be
 * a pyenv without h5py) and h5dump from hdf5-tools. Both are installed by `.ci/run`.
 *
 * `readerAvailability()` says which are there; tests skip when they are missing locally, and fail on CI
 * (`CI` set) so that a missing package cannot hide behind a skip.
 */
import { spawnSync } from "node:child_process";
import { have, PYTHON } from "./tools.ts";

export { PYTHON };

/** Which independent readers are present (test/helpers/tools.ts: required on CI, else skipped). */
export function readerAvailability(): { h5py: boolean; h5dump: boolean } {
  return { h5py: have("h5py"), h5dump: have("h5dump") };
}

function runPython(script: string, args: unknown): any {
  const r = spawnSync(PYTHON, ["-c", script, JSON.stringify(args)], {
    encoding: "utf8",
    maxBuffer: 1 << 30,
  });
  if (r.status !== 0) throw new Error(`h5py script failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const READ = `
import sys, json, h5py, numpy as np
a = json.loads(sys.argv[1])
out = {}
with h5py.File(a["file"], "r") as f:
    for p in a["paths"]:
        ds = f[p]
        v = ds[()]
        if ds.dtype.kind in "SO":
            vals = [x.decode() if isinstance(x, bytes) else str(x) for x in np.ravel(v)]
        else:
            vals = np.ravel(v).tolist()
        out[p] = {"shape": list(ds.shape), "dtype": ds.dtype.str, "chunks": ds.chunks,
                  "compression": ds.compression, "values": vals}
print(json.dumps(out))
`;

export interface PyDataset {
  shape: number[];
  /** numpy dtype string: "<f8", "<u8", "|O" (variable-length string), ... */
  dtype: string;
  chunks: number[] | null;
  compression: string | null;
  /** Flattened values (strings decoded). */
  values: (number | string)[];
}

/** Read datasets with h5py. */
export function h5pyRead(file: string, paths: string[]): Record<string, PyDataset> {
  return runPython(READ, { file, paths });
}

// What EXtra-data's FileAccess makes of a file: format version, sources, train IDs, keys, indexes.
const EXDF_VIEW = `
import sys, json, h5py, numpy as np
a = json.loads(sys.argv[1])
with h5py.File(a["file"], "r") as f:
    version = f["METADATA/dataFormatVersion"][0].decode("ascii")
    tids = f["INDEX/trainId"][:]
    tids = tids[tids != 0]
    control, instrument = set(), set()
    for s in f["METADATA/dataSources/dataSourceId"][:]:
        if not s:
            continue
        cat, _, h5src = s.decode().partition("/")
        if cat == "INSTRUMENT":
            dev, _, chan_grp = h5src.partition(":")
            chan, _, grp = chan_grp.partition("/")
            instrument.add(dev + ":" + chan)
        elif cat == "CONTROL":
            control.add(h5src)
        else:
            raise ValueError(cat)
    def keys(group):
        res = set()
        f[group].visititems(lambda k, v: res.add(k.replace("/", ".")) if isinstance(v, h5py.Dataset) else None)
        return sorted(res)
    out = {"version": version, "trainIds": tids.tolist(), "flag": f["INDEX/flag"][:len(tids)].tolist(),
           "control": {}, "instrument": {}}
    for s in sorted(control):
        out["control"][s] = {"keys": keys("CONTROL/" + s), "runKeys": keys("RUN/" + s),
                             "first": f["INDEX/%s/first" % s][:len(tids)].tolist(),
                             "count": f["INDEX/%s/count" % s][:len(tids)].tolist()}
    for s in sorted(instrument):
        ks = keys("INSTRUMENT/" + s)
        groups = {}
        for g in sorted(set(k.split(".")[0] for k in ks)):
            groups[g] = {"first": f["INDEX/%s/%s/first" % (s, g)][:len(tids)].tolist(),
                         "count": f["INDEX/%s/%s/count" % (s, g)][:len(tids)].tolist()}
        out["instrument"][s] = {"keys": ks, "groups": groups}
    print(json.dumps(out))
`;

export interface ExdfView {
  version: string;
  trainIds: number[];
  flag: number[];
  control: Record<string, { keys: string[]; runKeys: string[]; first: number[]; count: number[] }>;
  instrument: Record<
    string,
    { keys: string[]; groups: Record<string, { first: number[]; count: number[] }> }
  >;
}

/** Open a file the way EXtra-data's FileAccess does (with h5py) and report what it sees. */
export function h5pyExdfView(file: string): ExdfView {
  return runPython(EXDF_VIEW, { file });
}

/** Run h5dump; status 0 means the HDF5 C library read the file. */
export function h5dump(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("h5dump", args, { encoding: "utf8", maxBuffer: 1 << 28 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
