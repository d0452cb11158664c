/**
 * `decompress RUN --out DIR`: turn a run written by `reduce --compress` back into plain EuXFEL files that
 * every HDF5 reader opens without plugins (docs/compression.md).
 *
 * - Every `*.h5` file of RUN gives a file of the same name in DIR.
 * - SZ stream datasets (`<name>Sz` with the codec attributes, src/compress/layout.ts) are decoded into
 *   `<name>` (float32, the original entry shape and chunk shape, deflate with the original level when the
 *   original had it, else unfiltered; the original's attributes); `<name>SzBytes` is left out.
 * - Datasets with a filter HDF5 does not build in (zstd, lz4, bitshuffle, blosc, ...) are rewritten with
 *   deflate level 1 (values unchanged; noted). Everything else is copied as `reduce` copies it (datasets
 *   with their chunking and deflate level, links, attributes); a file without either kind is copied byte for
 *   byte.
 * - Safety as in reduce: RUN is only read; DIR inside RUN or holding it is refused, an existing DIR without
 *   `force` too; DIR is built under a temporary name and renamed when complete; an error or a signal removes
 *   it. DIR/decompression.json records what happened to each file.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { InputError } from "../errors.ts";
import { type H5Dataset, type H5File, type H5Group, openH5 } from "../exdf/h5.ts";
import { rewriteFile } from "../exdf/walk.ts";
import { buildDir, checkOut, checkpoint, copyFile } from "../app/outdir.ts";
import { registerPlugins } from "./filters.ts";
import { frameShapeOf, isSzDataset, SZ_ATTRS, SzDatasetReader, szNames } from "./layout.ts";
import { fileSize, MB } from "../app/format.ts";

/** Filters built into HDF5 (deflate, shuffle, fletcher32, szip, nbit, scaleoffset). */
const BUILTIN_FILTERS = new Set([1, 2, 3, 4, 5, 6]);

export interface DecompressOptions {
  force?: boolean;
  /** Largest block of frames decoded and written at once, in bytes (default 32 MiB). */
  sliceBytes?: number;
}

export interface DecompressedFile {
  name: string;
  action: "decoded" | "rewritten" | "copied";
  /** SZ datasets decoded, datasets with plugin filters rewritten. */
  decoded: number;
  rewritten: number;
  frames: number;
  bytesIn: number;
  bytesOut: number;
}

export interface DecompressRecord {
  run: string;
  out: string;
  files: DecompressedFile[];
  bytesIn: number;
  bytesOut: number;
  frames: number;
  seconds: number;
  /** Decoded float32 bytes per second (the SZ datasets). */
  decodeMBps: number;
  notes: string[];
}

/** Every dataset reachable through hard links, with the filter ids it uses. */
function scan(f: H5File): { sz: string[]; plugin: string[] } {
  const sz: string[] = [], plugin: string[] = [];
  const rec = (g: string) => {
    const grp = (g ? f.get(g) : f) as unknown as H5Group;
    for (const name of grp.keys()) {
      const p = g ? `${g}/${name}` : name;
      let link: unknown = null;
      try {
        link = f.get_link(p);
      } catch {
        link = null;
      }
      if (typeof link === "string" && link) continue;
      const e = f.get(p) as unknown as { type?: string } | null;
      if (e?.type === "Group") rec(p);
      else if (e?.type === "Dataset") {
        if (isSzDataset(e)) sz.push(p);
        else {
          let filters: { id: number }[] = [];
          try {
            filters = ((e as unknown as H5Dataset).filters ?? []) as { id: number }[];
          } catch {
            filters = [];
          }
          if (filters.some((x) => !BUILTIN_FILTERS.has(x.id))) plugin.push(p);
        }
      }
    }
  };
  rec("");
  return { sz, plugin };
}

/** Decode the SZ stream dataset `p` of src into `<group>/<original name>` of dst. */
async function restore(
  src: H5File,
  p: string,
  dst: H5File,
  sliceBytes: number,
  notes: Set<string>,
): Promise<[number, number]> {
  const r = new SzDatasetReader(src, p);
  const m = r.meta;
  const group = p.slice(0, p.lastIndexOf("/"));
  const N = m.frames;
  const entry = m.shape;
  const P = r.pixels;
  const [H, W] = frameShapeOf(entry);
  if (H * W !== P) throw new Error(`${p}: bad frame shape`);
  const chunks = m.chunks && m.chunks.length === entry.length + 1 ? m.chunks : [1, ...entry];
  let filter: { compression?: number; compression_opts?: number[] } = {};
  if (m.filter?.id === 1) filter = { compression: 1, compression_opts: m.filter.opts };
  else if (m.filter) notes.add(`${p}: original filter ${m.filter.id} not restored (written unfiltered)`);
  let g = dst as unknown as H5Group;
  for (const part of group.split("/")) {
    g = (g.keys().includes(part) ? g.get(part) : g.create_group(part)) as H5Group;
  }
  const ds = g.create_dataset({
    name: m.name,
    data: new Float32Array(0),
    shape: [0, ...entry],
    maxshape: [null, ...entry],
    chunks,
    dtype: "<f4",
    ...filter,
  });
  // The original's own attributes (the layout's are left behind).
  const attrs = (src.get(p) as unknown as {
    attrs: Record<string, { value: unknown; shape: number[] | null; dtype: unknown }>;
  }).attrs;
  for (const [k, a] of Object.entries(attrs)) {
    if (SZ_ATTRS.includes(k)) continue;
    try {
      (ds as unknown as { create_attribute(...x: unknown[]): void }).create_attribute(
        k,
        a.value,
        a.shape,
        typeof a.dtype === "string" ? a.dtype : null,
      );
    } catch {
      notes.add(`${p}: attribute ${k} not copied`);
    }
  }
  if (N === 0) return [0, 0];
  ds.resize([N, ...entry]);
  const B = Math.max(1, Math.floor(sliceBytes / Math.max(1, 4 * P)));
  const buf = new Float32Array(B * P);
  for (let k = 0; k < N; k += B) {
    const n = Math.min(B, N - k);
    await checkpoint();
    for (let j = 0; j < n; j++) r.decode(k + j, buf.subarray(j * P, (j + 1) * P));
    ds.write_slice([[k, k + n], ...entry.map((d) => [0, d] as [number, number])], buf.subarray(0, n * P));
  }
  return [N, N * P * 4];
}

/** Decompress the run at runPath into outDir. */
export async function decompress(
  runPath: string,
  outDir: string,
  opts: DecompressOptions = {},
): Promise<DecompressRecord> {
  const t0 = performance.now();
  const runAbs = path.resolve(runPath);
  const out = path.resolve(outDir);
  if (!fs.existsSync(runAbs)) throw new InputError(runPath, "no such file or directory");
  const isDir = fs.statSync(runAbs).isDirectory();
  const runDir = isDir ? runAbs : path.dirname(runAbs);
  const names = isDir
    ? fs.readdirSync(runAbs).filter((n) => n.endsWith(".h5")).sort()
    : [path.basename(runAbs)];
  if (!names.length) throw new InputError(runPath, "no HDF5 files (*.h5) in this directory");
  checkOut(out, { force: !!opts.force, inputs: [{ path: runAbs, what: "input run" }] });
  // 8 MiB slices: decompress rewrites with deflate, and a signal is answered between slices (one slice's
  // deflate, ~0.1 s, even on a loaded machine).
  const sliceBytes = opts.sliceBytes ?? 8 * 2 ** 20;
  await registerPlugins();
  const notes = new Set<string>();
  const files: DecompressedFile[] = [];
  let decodeSeconds = 0, decodedBytes = 0;
  return await buildDir(out, async (tmpDir) => {
    for (const name of names) {
      const srcPath = path.join(runDir, name);
      const final = path.join(tmpDir, name);
      const f = await openH5(srcPath);
      let found: { sz: string[]; plugin: string[] };
      try {
        found = scan(f);
      } finally {
        f.close();
      }
      const bytesIn = fileSize(srcPath);
      if (!found.sz.length && !found.plugin.length) {
        const tmp = path.join(tmpDir, `.${name}.tmp-${process.pid}`);
        await copyFile(srcPath, tmp);
        fs.renameSync(tmp, final);
        files.push({
          name,
          action: "copied",
          decoded: 0,
          rewritten: 0,
          frames: 0,
          bytesIn,
          bytesOut: fileSize(final),
        });
        continue;
      }
      const sz = new Set(found.sz);
      const lengths = new Set(found.sz.map((p) => {
        const k = p.lastIndexOf("/");
        const base = p.slice(k + 1).replace(/Sz$/, "");
        return `${p.slice(0, k)}/${szNames(base).bytes}`;
      }));
      let frames = 0;
      const fileNotes = await rewriteFile(srcPath, final, (p, s) => {
        if (lengths.has(p)) return "skip";
        if (!sz.has(p)) return undefined;
        return async (dst) => {
          const t = performance.now();
          const [n, bytes] = await restore(s, p, dst, sliceBytes, notes);
          decodeSeconds += (performance.now() - t) / 1000;
          decodedBytes += bytes;
          frames += n;
        };
      }, { sliceBytes });
      for (const n of fileNotes) notes.add(n);
      files.push({
        name,
        action: found.sz.length ? "decoded" : "rewritten",
        decoded: found.sz.length,
        rewritten: found.plugin.length,
        frames,
        bytesIn,
        bytesOut: fileSize(final),
      });
    }
    const record: DecompressRecord = {
      run: runAbs,
      out,
      files,
      bytesIn: files.reduce((a, f) => a + f.bytesIn, 0),
      bytesOut: files.reduce((a, f) => a + f.bytesOut, 0),
      frames: files.reduce((a, f) => a + f.frames, 0),
      seconds: (performance.now() - t0) / 1000,
      decodeMBps: decodeSeconds > 0 ? decodedBytes / 1e6 / decodeSeconds : 0,
      notes: [...notes],
    };
    fs.writeFileSync(path.join(tmpDir, "decompression.json"), JSON.stringify(record, null, 2) + "\n");
    return record;
  });
}

export function formatDecompression(r: DecompressRecord): string {
  const lines = [
    `${r.run} -> ${r.out}: ${(r.bytesIn / MB).toFixed(1)} MB -> ${
      (r.bytesOut / MB).toFixed(1)
    } MB, ${r.frames} frames decoded${r.decodeMBps ? ` (${r.decodeMBps.toFixed(0)} MB/s)` : ""} in ${
      r.seconds.toFixed(1)
    } s`,
  ];
  for (const f of r.files) {
    lines.push(
      `  ${f.name}: ${f.action}${f.decoded ? `, ${f.decoded} SZ datasets (${f.frames} frames)` : ""}${
        f.rewritten ? `, ${f.rewritten} datasets rewritten with deflate` : ""
      }`,
    );
  }
  for (const n of r.notes) lines.push(`note: ${n}`);
  lines.push(`written: ${r.out} (decompression.json)`);
  return lines.join("\n");
}
