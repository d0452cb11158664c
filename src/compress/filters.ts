/**
 * Lossless HDF5 filters for `--compress lossless:<filter>` (and the last stage of `round:` and `sz:`),
 * through h5wasm and the filter plugins of h5wasm-plugins (the HDF Group's hdf5_plugins built for wasm).
 * Files written with them open in every HDF5 reader that has the plugin: h5py with `import hdf5plugin`,
 * HDF5_PLUGIN_PATH pointing at the plugins, Debian's hdf5-filter-plugin / bitshuffle /
 * hdf5-filter-plugin-blosc-serial packages (those have no zstd: see docs/compression.md).
 *
 * h5wasm applies one filter per dataset, so combinations are the options of one filter:
 *
 * | name                    | HDF5 filter (id)     | cd_values given          | what it does                           |
 * | ----------------------- | -------------------- | ------------------------ | -------------------------------------- |
 * | `none`                  | -                    |                          | chunked, unfiltered                    |
 * | `gzip[:<level>]`        | deflate (1)          | [level], default 4       | zlib, built into HDF5                  |
 * | `bitshuffle+lz4`        | bitshuffle (32008)   | [0 (auto block), 2]      | bit transpose per block, then LZ4      |
 * | `blosc[:<codec>[:<l>]]` | blosc (32001)        | [0,0,0,0,l,1,codec]      | byte shuffle, then zstd (default) / lz4 |
 * | `zstd[:<level>]`        | zstd (32015)         | [level], default 3       | zstd                                   |
 * | `lz4`                   | lz4 (32004)          | [0] (1 GiB block)        | LZ4                                    |
 */
import { createRequire } from "node:module";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { h5 } from "../exdf/h5.ts";

export interface FilterSpec {
  /** The name as written (normalised): "gzip:4", "bitshuffle+lz4", "blosc:zstd:5", ... */
  name: string;
  /** HDF5 filter id (0: none). */
  id: number;
  /** cd_values passed to HDF5. */
  opts: number[];
  /** Needs a plugin (not built into HDF5). */
  plugin: boolean;
}

export const FILTER_IDS = { deflate: 1, blosc: 32001, lz4: 32004, bitshuffle: 32008, zstd: 32015 } as const;

const BLOSC_CODECS: Record<string, number> = { blosclz: 0, lz4: 1, lz4hc: 2, zlib: 4, zstd: 5 };

function level(s: string | undefined, def: number, lo: number, hi: number, what: string): number {
  if (s === undefined || s === "") return def;
  const n = Number(s);
  if (!Number.isInteger(n) || n < lo || n > hi) {
    throw new RangeError(`${what} level must be an integer in ${lo}..${hi}, not ${s}`);
  }
  return n;
}

/** Parse a filter name (see the table above); throws a RangeError for unknown names or bad levels. */
export function parseFilter(text: string): FilterSpec {
  const t = text.trim().toLowerCase();
  const [head, ...rest] = t.split(":");
  switch (head) {
    case "none":
      if (rest.length) break;
      return { name: "none", id: 0, opts: [], plugin: false };
    case "gzip":
    case "deflate": {
      if (rest.length > 1) break;
      const l = level(rest[0], 4, 0, 9, "gzip");
      return { name: `gzip:${l}`, id: FILTER_IDS.deflate, opts: [l], plugin: false };
    }
    case "bitshuffle+lz4":
    case "bshuf+lz4":
    case "bitshuffle":
      if (rest.length) break;
      return { name: "bitshuffle+lz4", id: FILTER_IDS.bitshuffle, opts: [0, 2], plugin: true };
    case "blosc": {
      if (rest.length > 2) break;
      const codec = rest[0] || "zstd";
      if (!(codec in BLOSC_CODECS)) {
        throw new RangeError(
          `blosc codec must be one of ${Object.keys(BLOSC_CODECS).join(", ")}, not ${codec}`,
        );
      }
      const l = level(rest[1], 5, 0, 9, "blosc");
      return {
        name: `blosc:${codec}:${l}`,
        id: FILTER_IDS.blosc,
        opts: [0, 0, 0, 0, l, 1, BLOSC_CODECS[codec]],
        plugin: true,
      };
    }
    case "zstd": {
      if (rest.length > 1) break;
      const l = level(rest[0], 3, 1, 22, "zstd");
      return { name: `zstd:${l}`, id: FILTER_IDS.zstd, opts: [l], plugin: true };
    }
    case "lz4":
      if (rest.length) break;
      return { name: "lz4", id: FILTER_IDS.lz4, opts: [0], plugin: true };
  }
  throw new RangeError(
    `unknown filter ${JSON.stringify(text)}: use none, gzip[:level], bitshuffle+lz4, ` +
      `blosc[:zstd|lz4[:level]], zstd[:level] or lz4`,
  );
}

/** The directory of h5wasm-plugins' filter plugins. */
export function pluginDir(): string {
  let index: string;
  try {
    index = createRequire(import.meta.url).resolve("h5wasm-plugins/package.json");
  } catch {
    index = fileURLToPath((import.meta as any).resolve("h5wasm-plugins"));
  }
  return path.join(path.dirname(index), "plugins");
}

let registered: Promise<string> | undefined;

/**
 * Put h5wasm-plugins' plugin directory first on h5wasm's plugin search path (once per process); HDF5 then
 * loads a filter's plugin when a dataset with that filter is created or read. Returns the directory.
 */
export function registerPlugins(): Promise<string> {
  registered ??= (async () => {
    const lib = await h5();
    const mod = (await lib.ready) as unknown as {
      insert_plugin_search_path(p: string, i: number): number;
      get_plugin_search_paths(): string[];
    };
    const dir = pluginDir();
    if (!mod.get_plugin_search_paths().includes(dir)) mod.insert_plugin_search_path(dir, 0);
    return dir;
  })();
  return registered;
}

/** `compression`, `compression_opts` as h5wasm's create_dataset takes them. */
export function h5wasmFilter(f: FilterSpec): { compression: number; compression_opts: number[] } {
  return { compression: f.id, compression_opts: [...f.opts] };
}
