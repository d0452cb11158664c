/**
 * The validity rules of EuXFEL files (shared/docs/exdf.md), as EXtra-data's `extra-data-validate` checks
 * them for one file, plus the METADATA checks every file written here must pass.
 *
 * EXtra-data's checks (FileValidator):
 * - INDEX/trainId: zeros only as trailing padding; the rest strictly increasing.
 * - every index (INDEX/<control source>, INDEX/<instrument source>/<group>): first and count 1-D, of equal
 *   length, as long as the (non-zero) train IDs; first starts at 0; no gaps or overlaps
 *   (first[i+1] == first[i] + count[i]); first + count within every dataset of the source (group).
 * - control `.../timestamp` datasets: zeros only as trailing padding; never decreasing.
 * Added here (format 1.2 files as this project writes them):
 * - METADATA/dataFormatVersion present; dataSources/{dataSourceId, root, deviceId} consistent and
 *   listing exactly the sources present in CONTROL/INSTRUMENT/INDEX.
 * - INDEX/trainId, first, count are u64; INDEX/timestamp, flag, origin as long as INDEX/trainId.
 *
 * `validateExdf(path)` returns the problems found, `[]` for a valid file.
 */
import { dsInfo, type H5Dataset, type H5File, type H5Group, openH5, readAll } from "../../src/exdf/h5.ts";

type Entity = H5Group | H5Dataset;

function isDataset(e: unknown): e is H5Dataset {
  return !!e && (e as any).type === "Dataset";
}
function isGroup(e: unknown): e is H5Group {
  return !!e && (e as any).type === "Group";
}

/** All dataset paths below `path` (relative to it). */
function walk(file: H5File, path: string): string[] {
  const out: string[] = [];
  const rec = (g: H5Group, rel: string) => {
    for (const k of g.keys()) {
      const child = g.get(k) as Entity | null;
      const r = rel ? `${rel}/${k}` : k;
      if (isDataset(child)) out.push(r);
      else if (isGroup(child)) rec(child, r);
    }
  };
  const g = file.get(path);
  if (isGroup(g)) rec(g, "");
  return out;
}

function strings(file: H5File, path: string): string[] | undefined {
  const ds = file.get(path);
  if (!isDataset(ds)) return undefined;
  const v = ds.value as unknown;
  const arr = Array.isArray(v) ? v : [v];
  return arr.map((x) =>
    (x instanceof Uint8Array ? new TextDecoder().decode(x) : String(x)).replace(/\0+$/, "")
  );
}

function numbers(file: H5File, path: string): number[] {
  return Array.from(readAll(file, path) as ArrayLike<number | bigint>, Number);
}

function shapeOf(file: H5File, path: string): number[] {
  return dsInfo(file.get(path) as H5Dataset).shape;
}

export async function validateExdf(path: string): Promise<string[]> {
  const problems: string[] = [];
  const rec = (msg: string, where?: string) => problems.push(where ? `${where}: ${msg}` : msg);
  let file: H5File;
  try {
    file = await openH5(path);
  } catch (e) {
    return [`Could not open file: ${e instanceof Error ? e.message : e}`];
  }
  try {
    const exists = (p: string) => {
      try {
        return file.get(p) !== null;
      } catch {
        return false;
      }
    };
    if (!isDataset(file.get("INDEX/trainId"))) return ["INDEX/trainId dataset not found"];

    // METADATA.
    const version = strings(file, "METADATA/dataFormatVersion");
    if (!version || !version[0]) rec("METADATA/dataFormatVersion missing");
    const srcBase = version ? "METADATA/dataSources" : "METADATA";
    const ids = strings(file, `${srcBase}/dataSourceId`);
    const control = new Set<string>();
    const instrument = new Map<string, Set<string>>(); // source -> groups
    if (!ids) rec(`${srcBase}/dataSourceId not found`);
    else {
      const roots = strings(file, `${srcBase}/root`);
      const devices = strings(file, `${srcBase}/deviceId`);
      if (!roots || !devices) rec(`${srcBase}/root or deviceId missing`);
      ids.forEach((id, i) => {
        if (!id) return;
        const [cat, ...rest] = id.split("/");
        const dev = rest.join("/");
        if (roots && devices && (roots[i] !== cat || devices[i] !== dev)) {
          rec(`entry ${i}: root "${roots[i]}" / deviceId "${devices[i]}" do not match "${id}"`, srcBase);
        }
        if (cat === "CONTROL") control.add(dev);
        else if (cat === "INSTRUMENT") {
          const colon = dev.indexOf(":");
          const slash = dev.indexOf("/", colon);
          const src = slash < 0 ? dev : dev.slice(0, slash);
          const group = slash < 0 ? "" : dev.slice(slash + 1);
          if (colon < 0) rec(`instrument source without channel: "${id}"`, srcBase);
          if (!instrument.has(src)) instrument.set(src, new Set());
          if (group) instrument.get(src)!.add(group);
        } else if (cat !== "Karabo_TimerServer") rec(`unknown data category in "${id}"`, srcBase);
      });
    }

    // Train IDs.
    const tidRaw = numbers(file, "INDEX/trainId");
    if (dsInfo(file.get("INDEX/trainId") as H5Dataset).dtype !== "uint64") rec("not uint64", "INDEX/trainId");
    const z = tidRaw.indexOf(0);
    if (z >= 0 && tidRaw.slice(z).some((t) => t !== 0)) {
      rec("Zeroes in trainId index before last train ID", "INDEX/trainId");
    }
    const tids = tidRaw.filter((t) => t !== 0);
    for (let i = 0; i + 1 < tids.length; i++) {
      if (tids[i + 1] <= tids[i]) {
        rec(
          `Train IDs are not strictly increasing, e.g. at ${i} (${tids[i]} >= ${tids[i + 1]})`,
          "INDEX/trainId",
        );
        break;
      }
    }
    for (const k of ["timestamp", "flag", "origin"]) {
      if (exists(`INDEX/${k}`) && shapeOf(file, `INDEX/${k}`)[0] !== tidRaw.length) {
        rec(
          `length ${shapeOf(file, `INDEX/${k}`)[0]} differs from INDEX/trainId (${tidRaw.length})`,
          `INDEX/${k}`,
        );
      }
    }

    const readIndex = (ipath: string): { first: number[]; count: number[] } | undefined => {
      if (!isDataset(file.get(`${ipath}/first`))) {
        rec("index not found", ipath);
        return undefined;
      }
      const first = numbers(file, `${ipath}/first`);
      let count: number[];
      if (exists(`${ipath}/count`)) count = numbers(file, `${ipath}/count`);
      else {
        const last = numbers(file, `${ipath}/last`);
        const status = numbers(file, `${ipath}/status`);
        count = first.map((f, i) => (last[i] - f + 1) * status[i]);
      }
      return { first, count };
    };

    const checkIndex = (ipath: string) => {
      const ix = readIndex(ipath);
      if (!ix) return;
      const fs = shapeOf(file, `${ipath}/first`);
      const cs = exists(`${ipath}/count`) ? shapeOf(file, `${ipath}/count`) : fs;
      if (fs.length !== 1 || cs.length !== 1) return rec("Index first / count are not 1D", ipath);
      if (fs[0] !== cs[0]) return rec("Index first & count have different number of entries", ipath);
      for (const k of ["first", "count"]) {
        if (exists(`${ipath}/${k}`) && dsInfo(file.get(`${ipath}/${k}`) as H5Dataset).dtype !== "uint64") {
          rec(`${k} is not uint64`, ipath);
        }
      }
      if (fs[0] !== tids.length) {
        rec(`Index has wrong number of entries (${fs[0]}, train IDs ${tids.length})`, ipath);
      }
      const { first, count } = ix;
      if (!first.length) return;
      if (first[0] !== 0) rec("Index doesn't start at 0", ipath);
      let gaps = 0;
      let overlaps = 0;
      let gapAt = -1;
      let overlapAt = -1;
      for (let i = 0; i + 1 < first.length; i++) {
        const d = first[i + 1] - (first[i] + count[i]);
        if (d > 0 && gaps++ === 0) gapAt = i;
        if (d < 0 && overlaps++ === 0) overlapAt = i;
      }
      if (gaps) {
        const i = gapAt;
        rec(`Gaps (${gaps}) in index, e.g. at ${i} (${first[i]} + ${count[i]} < ${first[i + 1]})`, ipath);
      }
      if (overlaps) {
        const i = overlapAt;
        rec(
          `Overlaps (${overlaps}) in index, e.g. at ${i} (${first[i]} + ${count[i]} > ${first[i + 1]})`,
          ipath,
        );
      }
    };

    /** first + count (over the train IDs) within each dataset's length. */
    const checkExtent = (ipath: string, dataPaths: string[], once: boolean) => {
      const ix = readIndex(ipath);
      if (!ix) return;
      let maxEnd = 0;
      for (let i = 0; i < Math.min(tids.length, ix.first.length); i++) {
        maxEnd = Math.max(maxEnd, ix.first[i] + ix.count[i]);
      }
      for (const p of dataPaths) {
        const n = shapeOf(file, p)[0] ?? 0;
        if (maxEnd > n) {
          rec(`Index referring to data (${maxEnd}) outside dataset (${n})`, p);
          if (once) break;
        }
      }
    };

    // Control sources.
    for (const src of control) {
      if (!isGroup(file.get(`CONTROL/${src}`))) {
        rec("listed in METADATA but CONTROL group missing", `CONTROL/${src}`);
        continue;
      }
      const keys = walk(file, `CONTROL/${src}`);
      checkExtent(`INDEX/${src}`, keys.map((k) => `CONTROL/${src}/${k}`), true);
      checkIndex(`INDEX/${src}`);
      for (const k of keys) {
        if (!k.endsWith("/timestamp") && k !== "timestamp") continue;
        const p = `CONTROL/${src}/${k}`;
        const ts = numbers(file, p);
        const z0 = ts.indexOf(0);
        if (z0 >= 0 && ts.slice(z0).some((t) => t !== 0)) rec("Zeroes in Timestamp before last train ID", p);
        const nz = z0 >= 0 ? ts.slice(0, z0) : ts;
        for (let i = 0; i + 1 < nz.length; i++) {
          if (nz[i + 1] < nz[i]) {
            rec(`Timestamp is decreasing, e.g. at ${i + 1} (${nz[i + 1]} < ${nz[i]})`, p);
            break;
          }
        }
      }
    }

    // Instrument sources.
    for (const [src, listedGroups] of instrument) {
      if (!isGroup(file.get(`INSTRUMENT/${src}`))) {
        rec("listed in METADATA but INSTRUMENT group missing", `INSTRUMENT/${src}`);
        continue;
      }
      const byGroup = new Map<string, string[]>();
      for (const k of walk(file, `INSTRUMENT/${src}`)) {
        const g = k.split("/")[0];
        if (!byGroup.has(g)) byGroup.set(g, []);
        byGroup.get(g)!.push(`INSTRUMENT/${src}/${k}`);
      }
      for (const [g, paths] of byGroup) {
        if (listedGroups.size && !listedGroups.has(g)) {
          rec(`group "${g}" not listed in METADATA/dataSources`, `INSTRUMENT/${src}`);
        }
        checkExtent(`INDEX/${src}/${g}`, paths, false);
        checkIndex(`INDEX/${src}/${g}`);
      }
      for (const g of listedGroups) {
        if (!byGroup.has(g) && !isGroup(file.get(`INSTRUMENT/${src}/${g}`))) {
          rec(`listed in METADATA but missing`, `INSTRUMENT/${src}/${g}`);
        }
      }
    }

    // Exactly the listed sources: every data set and index belongs to one.
    const controlList = [...control].sort((a, b) => b.length - a.length);
    for (const k of walk(file, "CONTROL")) {
      if (!controlList.some((s) => k.startsWith(s + "/"))) {
        rec("data of a source not listed in METADATA", `CONTROL/${k}`);
      }
    }
    for (const k of walk(file, "INSTRUMENT")) {
      const colon = k.indexOf(":");
      const slash = colon < 0 ? -1 : k.indexOf("/", colon);
      const src = slash < 0 ? k : k.slice(0, slash);
      if (!instrument.has(src)) rec("data of a source not listed in METADATA", `INSTRUMENT/${k}`);
    }
    for (const k of walk(file, "INDEX")) {
      if (!/\/first$/.test(k)) continue;
      const ipath = k.slice(0, k.lastIndexOf("/"));
      const colon = ipath.indexOf(":");
      if (colon < 0) {
        if (!control.has(ipath)) rec("index of a source not listed in METADATA", `INDEX/${ipath}`);
      } else {
        const slash = ipath.indexOf("/", colon);
        const src = slash < 0 ? ipath : ipath.slice(0, slash);
        if (!instrument.has(src)) rec("index of a source not listed in METADATA", `INDEX/${ipath}`);
      }
    }
  } catch (e) {
    rec(`validation failed: ${e instanceof Error ? e.message.split("\n")[0] : e}`);
  } finally {
    file.close();
  }
  return problems;
}
