/**
 * Read HDF5 files with an implementation independent of h5wasm: Debian's h5py (HDF5 C library) through
 * /usr/bin/python3 (the python3 on PATH may be a pyenv without h5py). CI installs python3-h5py.
 *
 * `readIndependent(file, query)` answers, as JSON, what a test asks: group members, dataset shapes /
 * dtypes / chunking / compression, values of a selection (NaN -> null, strings decoded), soft link
 * targets, and the list of every dataset reachable through hard links (soft links are reported, not
 * followed, so a linked source is not counted twice).
 *
 * `independentAvailable()` is false when h5py is missing; on CI (CI set) that throws instead, so a missing
 * package cannot hide behind a skipped test.
 */
import { spawnSync } from "node:child_process";
import { have } from "./tools.ts";

export const SYSTEM_PYTHON = "/usr/bin/python3";

export function independentAvailable(): boolean {
  return have("h5py");
}

export interface H5Query {
  /** Groups whose member names to list (links included, sorted). */
  keys?: string[];
  /** Datasets to describe. */
  info?: string[];
  /** Values of datasets; `select` is a numpy index such as "0", ":5", "3, :2, 7" (default: everything). */
  values?: { path: string; select?: string }[];
  /** Paths whose link to report: the soft link target, or null for a hard link. */
  links?: string[];
  /** List every dataset path reachable through hard links, and every soft link met on the way. */
  walk?: boolean;
}

export interface H5DatasetInfo {
  shape: number[];
  /** numpy dtype string: "<f4", "<u8", "|u1", "|O" (variable-length string), ... */
  dtype: string;
  chunks: number[] | null;
  compression: string | null;
  compressionOpts: number | null;
  maxshape: (number | null)[];
}

export interface H5Answer {
  keys: Record<string, string[]>;
  info: Record<string, H5DatasetInfo>;
  /** Flattened values of the selection with its shape. */
  values: Record<string, { shape: number[]; data: (number | string | null)[] }>;
  links: Record<string, string | null>;
  datasets: string[];
  softLinks: Record<string, string>;
}

const SCRIPT = String.raw`
import sys, json, math
import h5py, numpy as np

q = json.loads(sys.argv[1])
out = {"keys": {}, "info": {}, "values": {}, "links": {}, "datasets": [], "softLinks": {}}

def plain(v):
    if isinstance(v, (bytes, np.bytes_)):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return str(v)

with h5py.File(q["file"], "r") as f:
    for g in q.get("keys", []):
        out["keys"][g] = sorted(f[g].keys())
    for p in q.get("info", []):
        d = f[p]
        out["info"][p] = {"shape": list(d.shape), "dtype": d.dtype.str, "chunks": list(d.chunks) if d.chunks else None,
                          "compression": d.compression, "compressionOpts": d.compression_opts
                          if isinstance(d.compression_opts, int) else None,
                          "maxshape": list(d.maxshape) if d.maxshape is not None else []}
    for v in q.get("values", []):
        d = f[v["path"]]
        sel = v.get("select")
        if sel:
            if not all(c in "0123456789:, -" for c in sel):
                raise ValueError("bad selection " + sel)
            a = d[eval("np.s_[" + sel + "]")]
        else:
            a = d[()]
        a = np.asarray(a)
        out["values"][v["path"] + ("[" + sel + "]" if sel else "")] = {
            "shape": list(a.shape), "data": [plain(x) for x in a.ravel().tolist()]
            if a.dtype.kind != "O" else [plain(x) for x in a.ravel()]}
    for p in q.get("links", []):
        l = f.get(p, getlink=True)
        out["links"][p] = l.path if isinstance(l, h5py.SoftLink) else None
    if q.get("walk"):
        def rec(g, prefix):
            for k in g.keys():
                path = prefix + "/" + k if prefix else k
                l = g.get(k, getlink=True)
                if isinstance(l, h5py.SoftLink):
                    out["softLinks"][path] = l.path
                    continue
                o = g[k]
                if isinstance(o, h5py.Dataset):
                    out["datasets"].append(path)
                else:
                    rec(o, path)
        rec(f, "")
print(json.dumps(out))
`;

/** Ask h5py about one file. Throws with h5py's error when the file or a path cannot be read. */
export function readIndependent(file: string, query: H5Query): H5Answer {
  const r = spawnSync(SYSTEM_PYTHON, ["-c", SCRIPT, JSON.stringify({ ...query, file })], {
    encoding: "utf8",
    maxBuffer: 1 << 30,
  });
  if (r.status !== 0) throw new Error(`h5py failed on ${file}: ${r.stderr.trim().split("\n").pop()}`);
  return JSON.parse(r.stdout) as H5Answer;
}
