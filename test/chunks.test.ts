/**
 * exdf/chunks.ts, the direct chunk reads behind readSlab: files written by h5py with values given by a formula
 * (the ground truth), read row range by row range. The datasets the spec covers (1-frame chunks, deflate per
 * chunk, chunks of several rows with a short last one, multi-level B-trees, contiguous, a user block, a chunk
 * stored raw through its filter mask) must be read the direct way and give the formula's values; the others
 * (shuffle, big-endian, unallocated chunks, libver "latest") must give the same values through h5wasm.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { h5, type NumericArray, openH5, readSlab } from "../src/exdf/h5.ts";
import { directStats, planCacheSize, setDirectReads } from "../src/exdf/chunks.ts";
import { InputError } from "../src/errors.ts";
import { have, PYTHON } from "./helpers/tools.ts";

const N = 300, A = 8, B = 6;
const PY = `
import sys, numpy as np, h5py
d = sys.argv[1]
i, j, k = np.meshgrid(np.arange(${N}), np.arange(${A}), np.arange(${B}), indexing="ij")
val = (i * 1000 + j * 10 + k + 0.5).astype("f4")
msk = np.where((i * 7 + j * 3 + k) % 5 == 0, i + 1, 0).astype("u4")
def fill(f):
    f.create_dataset("data", data=val, chunks=(1, ${A}, ${B}), maxshape=(None, ${A}, ${B}))
    f.create_dataset("mask", data=msk, chunks=(1, ${A}, ${B}), compression="gzip", maxshape=(None, ${A}, ${B}))
    f.create_dataset("g/i16x4", data=(val % 30000).astype("i2"), chunks=(4, ${A}, ${B}), compression="gzip")
    f.create_dataset("contig", data=(val % 60000).astype("u2"))
    f.create_dataset("shuffled", data=val, chunks=(1, ${A}, ${B}), compression="gzip", shuffle=True)
    f.create_dataset("bigendian", data=val.astype(">f4"), chunks=(1, ${A}, ${B}))
    part = f.create_dataset("partial", shape=(${N}, ${A}, ${B}), dtype="f4", chunks=(1, ${A}, ${B}), fillvalue=0)
    part[:20] = val[:20]
    raw = f.create_dataset("rawchunk", data=val, chunks=(1, ${A}, ${B}), compression="gzip")
    raw.id.write_direct_chunk((5, 0, 0), val[5:6].tobytes(), filter_mask=1)
with h5py.File(d + "/plain.h5", "w") as f: fill(f)
with h5py.File(d + "/userblock.h5", "w", userblock_size=512) as f: fill(f)
with h5py.File(d + "/latest.h5", "w", libver="latest") as f: fill(f)
with h5py.File(d + "/plain.h5", "r") as f:
    print(f["mask"].id.get_chunk_info(7).byte_offset)
`;

const value = (name: string, i: number, j: number, k: number): number => {
  const v = Math.fround(i * 1000 + j * 10 + k + 0.5);
  if (name === "mask") return (i * 7 + j * 3 + k) % 5 === 0 ? i + 1 : 0;
  if (name === "g/i16x4") return Math.trunc(v % 30000);
  if (name === "contig") return Math.trunc(v % 60000);
  if (name === "partial" && i >= 20) return 0;
  return v;
};
const TYPES: Record<string, (n: number) => NumericArray> = {
  data: (n) => new Float32Array(n),
  mask: (n) => new Uint32Array(n),
  "g/i16x4": (n) => new Int16Array(n),
  contig: (n) => new Uint16Array(n),
  shuffled: (n) => new Float32Array(n),
  bigendian: (n) => new Float32Array(n),
  partial: (n) => new Float32Array(n),
  rawchunk: (n) => new Float32Array(n),
};
/** Read the direct way (partial: its allocated rows only, checked apart). */
const DIRECT = ["data", "mask", "g/i16x4", "contig", "rawchunk", "partial"];

let dir = "";
let maskChunk7 = 0;
/** Run a Python script (h5py) with one argument; its stdout. */
function python(script: string, arg: string): string {
  const r = spawnSync(PYTHON, ["-c", script, arg], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout;
}
beforeAll(() => {
  if (!have("h5py")) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "chunks-"));
  maskChunk7 = Number(python(PY, dir).trim());
});
afterAll(() => {
  setDirectReads(true);
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** Every row of a dataset, read in ranges of `step` rows starting at `first`, against the formula. */
function check(file: Awaited<ReturnType<typeof openH5>>, name: string, first: number, step: number): number {
  const per = A * B;
  const out = TYPES[name](N * per);
  let bad = 0;
  for (let r = first; r < N; r += step) {
    const n = Math.min(step, N - r);
    readSlab(file, "/" + name, [r, 0, 0], [n, A, B], out, r * per);
  }
  for (let i = first; i < N; i++) {
    for (let j = 0; j < A; j++) {
      for (let k = 0; k < B; k++) if (out[(i * A + j) * B + k] !== value(name, i, j, k)) bad++;
    }
  }
  return bad;
}

describe.skipIf(!have("h5py"))("direct chunk reads (chunks.ts) give the values h5py wrote", () => {
  for (const file of ["plain.h5", "userblock.h5", "latest.h5"]) {
    test(`${file}: every dataset, row ranges of 1, 3 and 64 rows, direct where the spec allows`, async () => {
      await h5();
      for (const [on, zlibHandle] of [[true, true], [true, false], [false, true]]) {
        setDirectReads(on, { zlibHandle });
        const f = await openH5(path.join(dir, file));
        try {
          for (const name of Object.keys(TYPES)) {
            const before = directStats.reads;
            expect([name, check(f, name, 0, 1)]).toEqual([name, 0]);
            expect([name, check(f, name, 5, 3)]).toEqual([name, 0]);
            expect([name, check(f, name, 1, 64)]).toEqual([name, 0]);
            // Direct for the datasets the spec covers (layout version 3: not libver "latest"), never when off.
            const direct = on && file !== "latest.h5" && DIRECT.includes(name);
            expect([name, directStats.reads > before]).toEqual([name, direct]);
          }
          // Rows in unallocated chunks come from h5wasm (the fill value).
          const before = directStats.reads;
          const out = new Float32Array(A * B).fill(7);
          readSlab(f, "/partial", [25, 0, 0], [1, A, B], out);
          expect(directStats.reads).toBe(before);
          expect(out.every((v) => v === 0)).toBe(true);
        } finally {
          f.close();
        }
      }
    });
  }

  test("a file reopened keeps its plans (readers reopen sequence files as they go)", async () => {
    await h5();
    setDirectReads(true);
    const out = new Float32Array(A * B);
    const plans = () => directStats.plans;
    let before = 0;
    for (let round = 0; round < 3; round++) {
      const f = await openH5(path.join(dir, "userblock.h5"));
      try {
        if (round === 1) before = plans();
        readSlab(f, "/data", [3, 0, 0], [1, A, B], out);
        expect(out[0]).toBe(value("data", 3, 0, 0));
      } finally {
        f.close();
      }
    }
    expect(plans()).toBe(before);
  });

  test("the plans kept stay bounded however many files are read (a long run's sequence files)", async () => {
    await h5();
    setDirectReads(true);
    // One plan larger than the cache's chunk budget (2^16), then the data and mask plans of four more files.
    const big = path.join(dir, "many-chunks.h5");
    const py = `import sys, numpy as np, h5py
with h5py.File(sys.argv[1], "w") as f:
    f.create_dataset("rows", data=(np.arange(70000) % 251).astype("u1"), chunks=(1,))`;
    python(py, big);
    const one = new Uint8Array(1);
    let f = await openH5(big);
    try {
      readSlab(f, "/rows", [69999], [1], one);
    } finally {
      f.close();
    }
    expect(one[0]).toBe(69999 % 251);
    expect(planCacheSize().chunks).toBeGreaterThanOrEqual(70000);
    const out = new Float32Array(A * B), mask = new Uint32Array(A * B);
    for (let k = 0; k < 2; k++) {
      const copy = path.join(dir, `copy-${k}.h5`);
      fs.copyFileSync(path.join(dir, "plain.h5"), copy);
      f = await openH5(copy);
      try {
        readSlab(f, "/data", [7, 0, 0], [1, A, B], out);
        readSlab(f, "/mask", [7, 0, 0], [1, A, B], mask);
      } finally {
        f.close();
      }
      expect(out[0]).toBe(value("data", 7, 0, 0));
      expect(mask[0]).toBe(value("mask", 7, 0, 0));
    }
    // The large plan made way: what is kept is within the budget (the old budget, 2^19, kept it all).
    const kept = planCacheSize();
    expect(kept.chunks).toBeLessThan(1 << 16);
    expect(kept.plans).toBeGreaterThanOrEqual(4);
  });

  test("plans made in the arrays of evicted ones read every file right (longer and shorter files)", async () => {
    await h5();
    setDirectReads(true);
    // Files of 12,000-30,000 one-row chunks: the cache keeps 2-3 such plans, the next ones reuse the evicted
    // plans' arrays (a shorter file a part of a longer array). Values differ by file; odd files deflated; file
    // 5 has only its first half written (the rest unallocated: the fill value 200, read through h5wasm).
    const rows = [20000, 15000, 24000, 12000, 20000, 18000, 30000, 16000];
    const py = `import sys, numpy as np, h5py
d = sys.argv[1]
for k, n in enumerate([${rows.join(", ")}]):
    v = ((np.arange(n) * 7 + k) % 251).astype("u1")
    with h5py.File(f"{d}/reuse-{k}.h5", "w") as f:
        if k == 5:
            ds = f.create_dataset("rows", shape=(n,), dtype="u1", chunks=(1,), fillvalue=200)
            ds[: n // 2] = v[: n // 2]
        else:
            f.create_dataset("rows", data=v, chunks=(1,), compression="gzip" if k % 2 else None)`;
    python(py, dir);
    const expected = (k: number, n: number, r: number) => k === 5 && r >= n >> 1 ? 200 : (r * 7 + k) % 251;
    const reused = directStats.reused;
    const one = new Uint8Array(1);
    for (let pass = 0; pass < 2; pass++) {
      for (const [k, n] of rows.entries()) {
        const f = await openH5(path.join(dir, `reuse-${k}.h5`));
        try {
          for (const r of [0, 1, n >> 1, n - 2, n - 1]) {
            readSlab(f, "/rows", [r], [1], one);
            expect(one[0]).toBe(expected(k, n, r));
          }
        } finally {
          f.close();
        }
      }
    }
    expect(directStats.reused - reused).toBeGreaterThan(4);
  });

  test("the plans kept stay at most 256 however many small datasets are read (a long run's ID datasets)", async () => {
    await h5();
    setDirectReads(true);
    const many = path.join(dir, "many-datasets.h5");
    const py = `import sys, numpy as np, h5py
with h5py.File(sys.argv[1], "w") as f:
    for i in range(300):
        f.create_dataset(f"d{i}", data=np.arange(4, dtype="u8") + i, chunks=(4,))`;
    python(py, many);
    const out = new BigUint64Array(4);
    const f = await openH5(many);
    const made = directStats.plans;
    try {
      for (let i = 0; i < 300; i++) {
        readSlab(f, `/d${i}`, [0], [4], out);
        expect(out[3]).toBe(BigInt(3 + i));
      }
    } finally {
      f.close();
    }
    expect(directStats.plans - made).toBe(300); // each read the direct way, through a plan of its own
    expect(planCacheSize().plans).toBeLessThanOrEqual(256); // the old cache kept all 300 (1 chunk each)
  });

  test.each([true, false])(
    "a damaged deflated chunk is an InputError naming the file (zlib handle: %s)",
    async (zlibHandle) => {
      await h5();
      setDirectReads(true, { zlibHandle });
      const p = path.join(dir, `damaged-${zlibHandle}.h5`);
      fs.copyFileSync(path.join(dir, "plain.h5"), p);
      const fd = fs.openSync(p, "r+");
      fs.writeSync(fd, Buffer.alloc(16, 0xa5), 0, 16, maskChunk7);
      fs.closeSync(fd);
      const f = await openH5(p);
      try {
        const out = new Uint32Array(A * B);
        readSlab(f, "/mask", [6, 0, 0], [1, A, B], out);
        expect(() => readSlab(f, "/mask", [7, 0, 0], [1, A, B], out)).toThrow(InputError);
        expect(() => readSlab(f, "/mask", [7, 0, 0], [1, A, B], out)).toThrow(/damaged-(true|false)\.h5/);
        // The next chunk reads (a fresh zlib handle after the error).
        readSlab(f, "/mask", [8, 0, 0], [1, A, B], out);
        expect(out[0]).toBe(value("mask", 8, 0, 0));
      } finally {
        f.close();
      }
    },
  );
});
