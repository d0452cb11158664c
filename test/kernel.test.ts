/**
 * src/gpu/kernel.ts: bindings parsed from the WGSL and bound by name (a shader whose bindings are declared
 * in shuffled order computes the right thing), a missing or unknown buffer name is a clear error, and the
 * uniform packing follows the WGSL struct (checked against the TS declaration; the kernel reads the values
 * back as the shader sees them). GPU parts run on whatever adapter getGpuDevice() finds; skipped without one.
 */
import { afterAll, describe, expect, test } from "vitest";
import { getGpuDevice } from "../src/gpu/device.ts";
import {
  BufferUsage,
  createBuffer,
  injectConstants,
  Kernel,
  packUniforms,
  parseWgsl,
  readBuffers,
  Serial,
  uniformLayout,
} from "../src/gpu/kernel.ts";

// Bindings declared out of order (and attributes swapped on one), a comment that looks like a binding.
const SHUFFLED = `
struct P {
  n: u32,
  scale: f32,
  shift: i32,
  pad0: u32,
}
// @group(0) @binding(9) var<storage, read> commentedOut: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
@binding(0) @group(0) var<uniform> params: P;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<u32>;
const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x;
  if (i >= params.n) {
    return;
  }
  // out = 1000 a + b, then the uniform's fields as the shader reads them.
  out[i] = 1000u * a[i] + b[i];
  if (i == 0u) {
    out[params.n] = bitcast<u32>(params.scale);
    out[params.n + 1u] = bitcast<u32>(params.shift);
  }
}
`;
const DECL = { n: "u32", scale: "f32", shift: "i32" } as const;

describe("WGSL declarations", () => {
  test("bindings by number with names and kinds; constants and workgroup sizes", () => {
    const info = parseWgsl(SHUFFLED, "shuffled");
    expect(info.bindings.map((b) => [b.binding, b.name, b.kind])).toEqual([
      [0, "params", "uniform"],
      [1, "a", "read-only-storage"],
      [2, "b", "read-only-storage"],
      [3, "out", "storage"],
    ]);
    expect(info.constants.get("WG")).toBe(64);
    const c =
      parseWgsl("const A = 0xff; const B: u32 = 0xffffffffu; const C = 2.5f; const D: i32 = -3i;").constants;
    expect([c.get("A"), c.get("B"), c.get("C"), c.get("D")]).toEqual([255, 0xffffffff, 2.5, -3]);
    expect(info.entries.get("main")).toEqual([64, 1, 1]);
    const wg = parseWgsl(injectConstants(SHUFFLED, { WG: 128 }), "x").entries.get("main");
    expect(wg).toEqual([128, 1, 1]);
    expect(() => injectConstants(SHUFFLED, { NOPE: 1 }, "shuffled")).toThrow(/shuffled: no `const NOPE`/);
  });

  test("uniform packing follows the WGSL struct; a TS declaration that differs is an error", () => {
    const info = parseWgsl(SHUFFLED);
    const layout = uniformLayout(info, "P", DECL, "s.wgsl");
    expect(layout.size).toBe(16);
    const bytes = packUniforms(layout, { n: 7, scale: 1.5, shift: -3 });
    const v = new DataView(bytes);
    expect([v.getUint32(0, true), v.getFloat32(4, true), v.getInt32(8, true), v.getUint32(12, true)])
      .toEqual([7, 1.5, -3, 0]);
    expect(() => uniformLayout(info, "P", { n: "u32", shift: "i32", scale: "f32" }, "s.wgsl"))
      .toThrow(/s\.wgsl: uniform struct P is \{ n: u32, scale: f32, shift: i32 \} but TS declares/);
    expect(() => uniformLayout(info, "P", { n: "u32", scale: "u32", shift: "i32" }, "s.wgsl")).toThrow(
      /TS declares/,
    );
    expect(() => uniformLayout(info, "P", { n: "u32", scale: "f32" }, "s.wgsl")).toThrow(/TS declares/);
  });

  test("every shader of shaders/ parses, with group 0 bindings numbered without gaps", async () => {
    const fs = await import("node:fs");
    const { shaderSource, shaderWith } = await import("../src/gpu/shaders.ts");
    for (
      const f of fs.readdirSync("shaders").filter((n: string) =>
        n.endsWith(".wgsl") && !n.endsWith("common.wgsl")
      )
    ) {
      // The xpcs shaders with what they share in front (xpcs-webgpu.ts); the others as they are.
      const info = parseWgsl(f.startsWith("xpcs") ? shaderWith(["xpcs-common.wgsl"], f) : shaderSource(f), f);
      expect(info.entries.size, f).toBeGreaterThan(0);
      expect(info.bindings.map((b) => b.binding), f).toEqual(info.bindings.map((_, i) => i));
    }
  });
});

const gpu = await getGpuDevice();
if (!gpu) console.warn("test/kernel.test.ts: GPU part SKIPPED: no WebGPU adapter");

describe.skipIf(!gpu)("Kernel on a device", () => {
  const made: { destroy(): void }[] = [];
  afterAll(() => made.forEach((b) => b.destroy()));
  const upload = (
    device: GPUDevice,
    words: Uint32Array,
    usage = BufferUsage.STORAGE | BufferUsage.COPY_DST,
  ) => {
    const b = createBuffer(device, words.byteLength, usage);
    device.queue.writeBuffer(b, 0, words);
    made.push(b);
    return b;
  };

  test("buffers bound by name in a shader with shuffled bindings; uniforms as the shader sees them", async () => {
    const device = gpu!.device;
    const k = await Kernel.create(device, {
      shader: "shuffled.wgsl",
      source: SHUFFLED,
      entries: ["main"],
      uniforms: DECL,
    });
    made.push(k.uniformBuffer!);
    const n = 100;
    const a = Uint32Array.from({ length: n }, (_, i) => i);
    const b = Uint32Array.from({ length: n }, (_, i) => 3 * i + 1);
    const out = createBuffer(device, (n + 2) * 4, BufferUsage.STORAGE | BufferUsage.COPY_SRC);
    made.push(out);
    const [bytes] = await readBuffers(device, "kernel test", [{ buffer: out, size: (n + 2) * 4 }], (enc) => {
      k.setUniforms({ n, scale: 1.5, shift: -3 });
      // Named in an order unlike the binding numbers.
      k.dispatch(
        "main",
        { out, b: upload(device, b), a: upload(device, a) },
        Math.ceil(n / k.workgroupSize("main")[0]),
        enc,
      );
    });
    const got = new Uint32Array(bytes);
    for (let i = 0; i < n; i++) expect(got[i]).toBe(1000 * i + 3 * i + 1);
    expect(new Float32Array(bytes, n * 4, 1)[0]).toBe(1.5);
    expect(new Int32Array(bytes, (n + 1) * 4, 1)[0]).toBe(-3);
  });

  test("a uniform buffer of the caller's, shared by two kernels, is bound by name", async () => {
    const device = gpu!.device;
    const opts = {
      shader: "s.wgsl",
      source: SHUFFLED,
      entries: ["main"],
      uniforms: DECL,
      callerUniformBuffer: true,
    };
    const [k1, k2] = [await Kernel.create(device, opts), await Kernel.create(device, opts)];
    expect(k1.uniformBuffer).toBeUndefined();
    const n = 8;
    const params = upload(
      device,
      new Uint32Array(k1.packUniforms({ n, scale: 2, shift: 5 })),
      BufferUsage.UNIFORM | BufferUsage.COPY_DST,
    );
    const a = upload(device, Uint32Array.from({ length: n }, (_, i) => i));
    const out1 = createBuffer(device, (n + 2) * 4, BufferUsage.STORAGE | BufferUsage.COPY_SRC);
    const out2 = createBuffer(device, (n + 2) * 4, BufferUsage.STORAGE | BufferUsage.COPY_SRC);
    made.push(out1, out2);
    expect(() => k1.bindGroup({ a, b: a, out: out1 })).toThrow("s.wgsl: no buffer given for binding params");
    const size = (n + 2) * 4;
    const [r1, r2] = await readBuffers(
      device,
      "t",
      [{ buffer: out1, size }, { buffer: out2, size }],
      (enc) => {
        k1.dispatch("main", { params, a, b: a, out: out1 }, 1, enc);
        k2.dispatch("main", { params, a, b: a, out: out2 }, 1, enc);
      },
    );
    for (const r of [r1, r2]) {
      expect([...new Uint32Array(r, 0, n)]).toEqual(Array.from({ length: n }, (_, i) => 1001 * i));
      expect(new Float32Array(r, n * 4, 1)[0]).toBe(2);
    }
  });

  test("dispatchInPass: dispatches of two kernels in one compute pass, each seeing the writes before", async () => {
    const device = gpu!.device;
    const k = await Kernel.create(device, {
      shader: "shuffled.wgsl",
      source: SHUFFLED,
      entries: ["main"],
      uniforms: DECL,
    });
    made.push(k.uniformBuffer!);
    const twice = await Kernel.create(device, {
      shader: "twice.wgsl",
      source: `@group(0) @binding(0) var<storage, read_write> x: array<u32>;
@compute @workgroup_size(32)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x < arrayLength(&x)) {
    x[gid.x] = 2u * x[gid.x] + 1u;
  }
}`,
      entries: ["main"],
    });
    const n = 100;
    const a = upload(device, Uint32Array.from({ length: n }, (_, i) => i));
    const b = upload(device, Uint32Array.from({ length: n }, (_, i) => 7 * i));
    const out = createBuffer(device, (n + 2) * 4, BufferUsage.STORAGE | BufferUsage.COPY_SRC);
    made.push(out);
    const tg = Math.ceil((n + 2) / twice.workgroupSize("main")[0]);
    const [bytes] = await readBuffers(device, "kernel test", [{ buffer: out, size: n * 4 }], (enc) => {
      k.setUniforms({ n, scale: 1, shift: 0 });
      const pass = enc.beginComputePass();
      k.dispatchInPass(pass, "main", { a, b, out }, Math.ceil(n / k.workgroupSize("main")[0]));
      twice.dispatchInPass(pass, "main", { x: out }, tg);
      twice.dispatchInPass(pass, "main", { x: out }, [0, 1]); // nothing dispatched
      twice.dispatchInPass(pass, "main", { x: out }, [tg, 1, 1]);
      expect(() => twice.dispatchInPass(pass, "main", { y: out }, 1)).toThrow(
        /twice\.wgsl: no buffer binding named y/,
      );
      pass.end();
    });
    // ((1000 a + b) * 2 + 1) * 2 + 1, with b = 7 a
    expect([...new Uint32Array(bytes)]).toEqual(Array.from({ length: n }, (_, i) => 4 * 1007 * i + 3));
  });

  test("a missing or unknown buffer name, a wrong declaration or entry point: clear errors", async () => {
    const device = gpu!.device;
    const k = await Kernel.create(device, {
      shader: "shuffled.wgsl",
      source: SHUFFLED,
      entries: ["main"],
      uniforms: DECL,
    });
    made.push(k.uniformBuffer!);
    const x = upload(device, new Uint32Array(4));
    const out = createBuffer(device, 16, BufferUsage.STORAGE);
    made.push(out);
    expect(() => k.bindGroup({ a: x, out })).toThrow("shuffled.wgsl: no buffer given for binding b");
    expect(() => k.bindGroup({ a: x, b: x, out, c: x })).toThrow(
      "shuffled.wgsl: no buffer binding named c (bindings: a, b, out)",
    );
    expect(() => k.bindGroup({ a: x, b: x, out, params: x })).toThrow(/no buffer binding named params/);
    await expect(
      Kernel.create(device, {
        shader: "s.wgsl",
        source: SHUFFLED,
        entries: ["main"],
        uniforms: { n: "u32" },
      }),
    ).rejects.toThrow(/s\.wgsl: uniform struct P is/);
    await expect(
      Kernel.create(device, { shader: "s.wgsl", source: SHUFFLED, entries: ["nope"], uniforms: DECL }),
    )
      .rejects.toThrow("s.wgsl: no @compute entry point nope");
  });

  test("readBuffers reads several ranges; Serial keeps call order", async () => {
    const device = gpu!.device;
    const src = upload(
      device,
      Uint32Array.from({ length: 64 }, (_, i) => i),
      BufferUsage.STORAGE | BufferUsage.COPY_DST | BufferUsage.COPY_SRC,
    );
    const [r1, r2] = await readBuffers(device, "t", [{ buffer: src, size: 12, offset: 4 }, {
      buffer: src,
      size: 8,
      offset: 200,
    }]);
    expect([...new Uint32Array(r1)]).toEqual([1, 2, 3]);
    expect([...new Uint32Array(r2)]).toEqual([50, 51]);
    const into = new Uint16Array(5);
    const [r3] = await readBuffers(device, "t", [{ buffer: src, size: 12, offset: 8, into }]);
    expect([r3.byteLength, ...into]).toEqual([0, 2, 0, 3, 0, 4]);
    const s = new Serial();
    const order: number[] = [];
    const slow = s.run(async () => {
      await new Promise((r) => setTimeout(r, 30));
      order.push(1);
    });
    const failing = s.run(() => Promise.reject(new Error("x")));
    const fast = s.run(() => Promise.resolve(void order.push(3)));
    await Promise.allSettled([slow, failing, fast]);
    expect(order).toEqual([1, 3]);
  });
});
