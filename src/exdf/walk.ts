/**
 * Whole-file copies on the copy engine (src/exdf/copy.ts): walk every group, dataset, link and attribute of a
 * file into another, with some datasets left out or written another way (reduce's module datasets,
 * decompress's rewritten filters).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { ensureGroup, h5, type H5File, type H5Group, openH5 } from "./h5.ts";
import { checkpoint } from "../app/outdir.ts";
import { type Wasm } from "./wasm.ts";
import { Copier } from "./copy.ts";

export function linkTarget(f: H5File, p: string): string | null {
  try {
    const t = f.get_link(p);
    return typeof t === "string" && t ? t : null;
  } catch {
    return null;
  }
}

export function dsShape(f: H5File, p: string): number[] {
  return ((f.get(p) as unknown as { shape: number[] | null }).shape ?? []) as number[];
}

/** Dataset paths under a group, through hard links only. */
export function datasetsUnder(f: H5File, g: string): string[] {
  const out: string[] = [];
  const rec = (p: string) => {
    const e = f.get(p) as unknown as { type?: string; keys?: () => string[] } | null;
    if (!e) return;
    if (e.type === "Dataset") out.push(p);
    else if (e.type === "Group") {
      for (const k of e.keys!()) if (!linkTarget(f, `${p}/${k}`)) rec(`${p}/${k}`);
    }
  };
  rec(g);
  return out;
}

/** Progress of a file copy: its start, each dataset, its end. */
export interface CopyProgress {
  file: string;
  phase: "start" | "dataset" | "done";
  dataset?: string;
}

/** A dataset written another way than the plain copy (by the walk below); may be async. */
export type Special = () => void | Promise<void>;

/** Copy every group, dataset, link and attribute of s into dst; `special` datasets are written by their function. */
export async function walkCopy(
  cp: Copier,
  s: H5File,
  dst: H5File,
  srcName: string,
  special: Map<string, Special>,
  progress: ((ev: CopyProgress) => void | Promise<void>) | undefined,
): Promise<void> {
  {
    const walk = async (g: string) => {
      const grp = (g ? s.get(g) : s) as unknown as H5Group;
      for (const name of grp.keys()) {
        const p = g ? `${g}/${name}` : name;
        const target = linkTarget(s, p);
        if (target) {
          const k = p.lastIndexOf("/");
          const parent = k > 0 ? ensureGroup(dst, p.slice(0, k)) : (dst as unknown as H5Group);
          parent.create_soft_link(target, p.slice(k + 1));
          continue;
        }
        const e = s.get(p) as unknown as { type?: string; filename?: string; obj_path?: string } | null;
        if (!e) continue;
        if (e.type === "Group") {
          ensureGroup(dst, p);
          cp.copyAttrs(s, dst, p);
          await walk(p);
        } else if (e.type === "Dataset") {
          const sp = special.get(p);
          if (sp) {
            await sp();
            await progress?.({ file: srcName, phase: "dataset", dataset: p });
          } else await cp.copyWhole(s, dst, p);
          await checkpoint();
          if (dst.get(p)) cp.copyAttrs(s, dst, p);
        } else if (e.type === "ExternalLink") {
          const k = p.lastIndexOf("/");
          const parent = k > 0 ? ensureGroup(dst, p.slice(0, k)) : (dst as unknown as H5Group);
          parent.create_external_link(e.filename!, e.obj_path!, p.slice(k + 1));
        } else {
          cp.notes.add(`${p}: ${e.type} not copied (${srcName})`);
        }
      }
    };
    await walk("");
  }
}

/** What `rewriteFile` does with a dataset: the plain copy (undefined), leave it out, or write it another way. */
export type RewriteAction = undefined | "skip" | ((dst: H5File) => void | Promise<void>);

/**
 * Copy one HDF5 file as `reduce` copies files (groups, datasets with their chunking and deflate filter,
 * soft and external links, attributes; other filters are replaced by deflate level 1 and noted), with
 * `decide(path)` choosing per dataset. Writes dstPath under a temporary name, renamed when complete.
 * Returns the notes. Used by `decompress` (src/compress/decompress.ts).
 */
export async function rewriteFile(
  srcPath: string,
  dstPath: string,
  decide: (p: string, src: H5File) => RewriteAction,
  opts: { sliceBytes?: number } = {},
): Promise<string[]> {
  const lib = await h5();
  const mod = (await lib.ready) as unknown as Wasm;
  const s = await openH5(srcPath);
  const tmp = path.join(path.dirname(dstPath), `.${path.basename(dstPath)}.tmp-${process.pid}`);
  const cp = new Copier(lib, mod, opts.sliceBytes ?? 32 * 2 ** 20);
  let dst: H5File | undefined;
  try {
    dst = new lib.File(tmp, "w");
    if (!dst.file_id || dst.file_id < 0n) throw new Error(`cannot create ${tmp}`);
    const d = dst;
    const special = new Map<string, Special>();
    const rec = (g: string) => {
      const grp = (g ? s.get(g) : s) as unknown as H5Group;
      for (const name of grp.keys()) {
        const p = g ? `${g}/${name}` : name;
        if (linkTarget(s, p)) continue;
        const e = s.get(p) as unknown as { type?: string } | null;
        if (e?.type === "Group") rec(p);
        else if (e?.type === "Dataset") {
          const a = decide(p, s);
          if (a === "skip") special.set(p, () => {});
          else if (a) special.set(p, () => a(d));
        }
      }
    };
    rec("");
    cp.copyAttrs(s, d, "");
    await walkCopy(cp, s, d, path.basename(srcPath), special, undefined);
    d.close();
    dst = undefined;
    fs.renameSync(tmp, dstPath);
    return [...cp.notes];
  } catch (e) {
    try {
      dst?.close();
    } catch {
      // already failing
    }
    fs.rmSync(tmp, { force: true });
    throw e;
  } finally {
    cp.dispose();
    s.close();
  }
}
