/**
 * Compute kernels: the one place that compiles and caches pipelines, binds buffers, dispatches and reads
 * back (in the manner of onnxruntime-web's ProgramManager and tfjs-backend-webgpu).
 *
 * A `Kernel` is made from a WGSL file of shaders/ and its entry points. Its bind group layout is derived
 * from the shader's own `@group(0) @binding(n) var<uniform | storage, read | read_write> NAME` declarations,
 * so buffers are bound BY NAME (`{ data, mask, out }`); a missing or unknown name is an error. The shader's
 * uniform struct is declared once in TS (field names and types, in order; WGSL fields named pad* may be
 * left out): the declaration is checked against the WGSL struct when the kernel is made, the packing is
 * derived from the struct, and the kernel owns the uniform buffer and binds it itself. Workgroup sizes and
 * `const` values are read from the WGSL (`workgroupSize`, `constant`), or injected (`constants`), so each
 * has one source of truth. `readBuffers` reads several buffers back through one pooled staging buffer;
 * `Serial` runs async jobs one at a time.
 *
 * Compiled programs are cached per device (shader, constants, entry points), so making a kernel again is
 * cheap; the uniform buffer and bind groups belong to each kernel.
 */
import { shaderSource } from "./shaders.ts";

/** WebGPU flag values (numeric, so nothing depends on the GPU* globals being installed). */
export const BufferUsage = {
  MAP_READ: 0x0001,
  MAP_WRITE: 0x0002,
  COPY_SRC: 0x0004,
  COPY_DST: 0x0008,
  INDEX: 0x0010,
  VERTEX: 0x0020,
  UNIFORM: 0x0040,
  STORAGE: 0x0080,
  INDIRECT: 0x0100,
  QUERY_RESOLVE: 0x0200,
} as const;
export const MapMode = { READ: 0x0001, WRITE: 0x0002 } as const;
export const ShaderStage = { VERTEX: 0x1, FRAGMENT: 0x2, COMPUTE: 0x4 } as const;

/** A buffer of at least `size` bytes (rounded up to 4, at least 4). */
export function createBuffer(device: GPUDevice, size: number, usage: number, label?: string): GPUBuffer {
  return device.createBuffer({ size: Math.max(4, Math.ceil(size / 4) * 4), usage, label });
}

/** A compute shader module; throws with the compiler's messages when it does not compile. */
export async function compileShader(
  device: GPUDevice,
  code: string,
  label: string,
): Promise<GPUShaderModule> {
  const module = device.createShaderModule({ code, label });
  const info = await module.getCompilationInfo();
  const errors = info.messages.filter((m) => m.type === "error");
  if (errors.length) {
    throw new Error(
      `${label}: WGSL compile error:\n` +
        errors.map((m) => `  ${m.lineNum}:${m.linePos} ${m.message}`).join("\n"),
    );
  }
  return module;
}

export type BindingKind = "uniform" | "storage" | "read-only-storage";

/**
 * The one map-read-unmap: copies of the byte ranges [offset, offset + size) of a MAP_READ buffer (into
 * the range's view when it has one, giving an empty ArrayBuffer for it).
 */
async function mapRead(
  buffer: GPUBuffer,
  ranges: [number, number, ArrayBufferView?][],
): Promise<ArrayBuffer[]> {
  const end = Math.max(0, ...ranges.map(([o, n]) => o + n));
  const start = Math.min(end, ...ranges.map(([o]) => o));
  const start8 = start - (start % 8);
  const len = Math.ceil((end - start8) / 4) * 4;
  await buffer.mapAsync(MapMode.READ, start8, len);
  try {
    const mapped = buffer.getMappedRange(start8, len);
    return ranges.map(([o, n, into]) => {
      if (!into) return mapped.slice(o - start8, o - start8 + n);
      const m = Math.min(n, into.byteLength);
      new Uint8Array(into.buffer, into.byteOffset, m).set(new Uint8Array(mapped, o - start8, m));
      return new ArrayBuffer(0);
    });
  } finally {
    buffer.unmap();
  }
}

/** Run `f` inside validation and out-of-memory error scopes; throws the first error. */
export async function withErrorScope<T>(
  device: GPUDevice,
  what: string,
  f: () => T | Promise<T>,
): Promise<T> {
  device.pushErrorScope("out-of-memory");
  device.pushErrorScope("validation");
  let value: T | undefined;
  let failure: { error: unknown } | undefined;
  try {
    // Synchronous work stays synchronous, so that concurrent callers do not interleave scopes.
    const r = f();
    value = r instanceof Promise ? await r : r;
  } catch (error) {
    failure = { error };
  }
  const scopes = [device.popErrorScope(), device.popErrorScope()];
  const [validation, oom] = await Promise.all(scopes);
  if (failure) throw failure.error;
  const err = validation ?? oom;
  if (err) throw new Error(`${what}: ${err.message}`);
  return value as T;
}

// ---------------------------------------------------------------------------------------------------------
// What a WGSL file declares

export type ScalarType = "u32" | "i32" | "f32";
/** A uniform struct as TS declares it: field name -> type, in the WGSL struct's order. */
export type UniformDecl = Readonly<Record<string, ScalarType>>;
/** Values for every field of a uniform declaration. */
export type UniformValues<U extends UniformDecl> = { [K in keyof U]: number };

export interface WgslBinding {
  binding: number;
  name: string;
  kind: BindingKind;
  /** The declared type: a struct name for a uniform, e.g. "array<u32>" for storage. */
  type: string;
}

export interface WgslInfo {
  bindings: WgslBinding[];
  structs: Map<string, { name: string; type: string }[]>;
  /** Module-scope `const NAME = number;` values. */
  constants: Map<string, number>;
  /** Compute entry points and their workgroup sizes (x, y, z). */
  entries: Map<string, [number, number, number]>;
}

const stripComments = (s: string) => s.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/\/\/[^\n]*/g, "");
const numberOf = (s: string) => {
  const t = s.trim().replace(/^(?:u32|i32|f32)\((.*)\)$/, "$1");
  if (/^0x[0-9a-f]+[ui]?$/i.test(t)) return Number(t.replace(/[ui]$/i, ""));
  const d = t.replace(/[uif]$/, "");
  return /^-?\d+(?:\.\d*)?(?:e-?\d+)?$/i.test(d) ? Number(d) : undefined;
};

/** The bindings, structs, constants and compute entry points that a WGSL text declares. */
export function parseWgsl(source: string, label = "shader"): WgslInfo {
  const s = stripComments(source);
  const constants = new Map<string, number>();
  for (const m of s.matchAll(/\bconst\s+(\w+)\s*(?::\s*\w+\s*)?=\s*([^;]+);/g)) {
    const v = numberOf(m[2]);
    if (v !== undefined) constants.set(m[1], v);
  }
  const structs = new Map<string, { name: string; type: string }[]>();
  for (const m of s.matchAll(/\bstruct\s+(\w+)\s*\{([^}]*)\}/g)) {
    const fields = m[2].split(",").map((f) => f.replace(/@\w+(\([^)]*\))?/g, "").trim()).filter(Boolean)
      .map((f) => {
        const [name, type] = f.split(":").map((x) => x.trim());
        return { name, type };
      });
    structs.set(m[1], fields);
  }
  const bindings: WgslBinding[] = [];
  const varRe =
    /((?:@\w+\s*\([^)]*\)\s*)+)var\s*<\s*(uniform|storage)\s*(?:,\s*(read|read_write)\s*)?>\s*(\w+)\s*:\s*([^;]+);/g;
  for (const m of s.matchAll(varRe)) {
    const attr = (a: string) => m[1].match(new RegExp(`@${a}\\s*\\(\\s*(\\d+)\\s*\\)`))?.[1];
    const group = Number(attr("group") ?? NaN), binding = Number(attr("binding") ?? NaN);
    if (group !== 0) throw new Error(`${label}: ${m[4]}: only @group(0) is supported, not ${attr("group")}`);
    if (bindings.some((b) => b.binding === binding)) {
      throw new Error(`${label}: binding ${binding} declared twice`);
    }
    const kind: BindingKind = m[2] === "uniform"
      ? "uniform"
      : m[3] === "read_write"
      ? "storage"
      : "read-only-storage";
    bindings.push({ binding, name: m[4], kind, type: m[5].trim() });
  }
  bindings.sort((a, b) => a.binding - b.binding);
  const entries = new Map<string, [number, number, number]>();
  for (const m of s.matchAll(/((?:@\w+\s*(?:\([^)]*\))?\s*)+)fn\s+(\w+)/g)) {
    if (!/@compute\b/.test(m[1])) continue;
    const args = m[1].match(/@workgroup_size\s*\(([^)]*)\)/)?.[1].split(",").map((a) => a.trim())
      .filter(Boolean) ?? [];
    const size = [1, 1, 1] as [number, number, number];
    args.forEach((a, i) => {
      const v = numberOf(a) ?? constants.get(a);
      if (v === undefined) {
        throw new Error(`${label}: ${m[2]}: cannot evaluate @workgroup_size argument ${a}`);
      }
      size[i] = v;
    });
    entries.set(m[2], size);
  }
  return { bindings, structs, constants, entries };
}

/** `source` with the values of its `const NAME[: T] = ...;` declarations replaced (each must exist). */
export function injectConstants(
  source: string,
  values: Readonly<Record<string, number>>,
  label = "shader",
): string {
  let out = source;
  for (const [name, v] of Object.entries(values)) {
    const re = new RegExp(`(\\bconst\\s+${name}\\s*(?::\\s*(\\w+)\\s*)?=\\s*)[^;]+;`);
    const m = out.match(re);
    if (!m) throw new Error(`${label}: no \`const ${name}\` to set`);
    const type = m[2] ?? "";
    if ((type === "u32" || type === "i32") && !Number.isInteger(v)) {
      throw new Error(`${label}: const ${name}: ${type} cannot be ${v}`);
    }
    const lit = type === "u32" ? `${v}u` : type === "i32" ? `${v}i` : type === "f32" ? `${v}f` : `${v}`;
    out = out.replace(re, `$1${lit};`);
  }
  return out;
}

/** The packing of a uniform struct: byte offsets and types of its scalar fields, and the struct's size. */
export interface UniformLayout {
  fields: { name: string; type: ScalarType; offset: number }[];
  size: number;
}

const isPad = (name: string) => /^_?pad\w*$/i.test(name);

/** The layout of WGSL struct `struct`, checked against the TS declaration `decl` (names, types, order). */
export function uniformLayout(
  info: WgslInfo,
  struct: string,
  decl: UniformDecl,
  label = "shader",
): UniformLayout {
  const fields = info.structs.get(struct);
  if (!fields) throw new Error(`${label}: no struct ${struct}`);
  const out: UniformLayout["fields"] = [];
  fields.forEach((f, i) => {
    if (f.type !== "u32" && f.type !== "i32" && f.type !== "f32") {
      throw new Error(
        `${label}: struct ${struct}.${f.name}: ${f.type} (only u32, i32, f32 fields are packed)`,
      );
    }
    out.push({ name: f.name, type: f.type, offset: 4 * i });
  });
  const wgsl = out.filter((f) => !isPad(f.name)).map((f) => `${f.name}: ${f.type}`);
  const ts = Object.entries(decl).map(([n, t]) => `${n}: ${t}`);
  if (wgsl.join(", ") !== ts.join(", ")) {
    throw new Error(
      `${label}: uniform struct ${struct} is { ${wgsl.join(", ")} } but TS declares { ${ts.join(", ")} }`,
    );
  }
  return { fields: out, size: Math.max(16, Math.ceil((4 * out.length) / 16) * 16) };
}

/** The bytes of a uniform struct: `values` by field name (pad fields 0). */
export function packUniforms(layout: UniformLayout, values: Readonly<Record<string, number>>): ArrayBuffer {
  const buf = new ArrayBuffer(layout.size);
  const view = new DataView(buf);
  for (const f of layout.fields) {
    const v = values[f.name] ?? (isPad(f.name) ? 0 : undefined);
    if (v === undefined) throw new Error(`uniform field ${f.name}: no value`);
    if (f.type === "f32") view.setFloat32(f.offset, v, true);
    else if (f.type === "i32") view.setInt32(f.offset, v, true);
    else view.setUint32(f.offset, v, true);
  }
  return buf;
}

// ---------------------------------------------------------------------------------------------------------
// Kernels

export interface KernelOptions<E extends string, U extends UniformDecl> {
  /** A file of shaders/ (its text by shaderSource), or the WGSL text itself with `source`. */
  shader: string;
  source?: string;
  entries: readonly E[];
  /** The uniform struct's fields, when the shader has a uniform binding. */
  uniforms?: U;
  /** Values for `const` declarations of the shader (replacing the file's). */
  constants?: Readonly<Record<string, number>>;
  /**
   * The caller's uniform buffer, bound by the uniform's name like the other buffers (to share one among
   * kernels; `packUniforms` gives its bytes); by default the kernel owns one (`setUniforms`).
   */
  callerUniformBuffer?: boolean;
}

/** Buffers by binding name (the uniform binding is the kernel's own and is not named). */
export type Buffers = Readonly<Record<string, GPUBuffer>>;
/** Workgroup counts: x, or [x, y?, z?]. */
export type Groups = number | readonly number[];

interface Program {
  info: WgslInfo;
  layout: GPUBindGroupLayout;
  pipelines: Map<string, GPUComputePipeline>;
}

const programs = new WeakMap<GPUDevice, Map<string, Promise<Program>>>();

async function program(device: GPUDevice, label: string, source: string, entries: readonly string[]) {
  const info = parseWgsl(source, label);
  for (const e of entries) {
    if (!info.entries.has(e)) throw new Error(`${label}: no @compute entry point ${e}`);
  }
  const module = await compileShader(device, source, label);
  const layout = device.createBindGroupLayout({
    label,
    entries: info.bindings.map((b) => ({
      binding: b.binding,
      visibility: ShaderStage.COMPUTE,
      buffer: { type: b.kind },
    })),
  });
  const pipelineLayout = device.createPipelineLayout({ bindGroupLayouts: [layout], label });
  const pipelines = new Map<string, GPUComputePipeline>();
  for (const entryPoint of entries) {
    pipelines.set(
      entryPoint,
      await device.createComputePipelineAsync({
        label: `${label}.${entryPoint}`,
        layout: pipelineLayout,
        compute: { module, entryPoint },
      }),
    );
  }
  return { info, layout, pipelines };
}

const bufferIds = new WeakMap<GPUBuffer, number>();
let nextBufferId = 1;
const idOf = (b: GPUBuffer) => {
  let id = bufferIds.get(b);
  if (id === undefined) bufferIds.set(b, id = nextBufferId++);
  return id;
};

export class Kernel<E extends string = string, U extends UniformDecl = UniformDecl> {
  /** The uniform buffer (undefined when the shader has no uniform binding). */
  readonly uniformBuffer: GPUBuffer | undefined;
  /** The uniform binding when the kernel owns its buffer. */
  private readonly uniform: WgslBinding | undefined;
  private readonly uniformLayout: UniformLayout | undefined;
  private readonly groupsCache = new Map<string, GPUBindGroup>();

  private constructor(
    readonly device: GPUDevice,
    readonly label: string,
    private readonly prog: Program,
    decl: U | undefined,
    callerUniform: boolean,
  ) {
    const uniforms = prog.info.bindings.filter((b) => b.kind === "uniform");
    if (uniforms.length > 1) throw new Error(`${label}: more than one uniform binding`);
    this.uniform = uniforms[0];
    if (this.uniform && !decl) {
      throw new Error(`${label}: the shader has uniform ${this.uniform.name}: declare it`);
    }
    if (!this.uniform && decl) {
      throw new Error(`${label}: uniforms declared but the shader has no uniform binding`);
    }
    if (this.uniform && decl) {
      this.uniformLayout = uniformLayout(prog.info, this.uniform.type, decl, label);
      if (callerUniform) {
        this.uniform = undefined;
        return;
      }
      this.uniformBuffer = createBuffer(
        device,
        this.uniformLayout.size,
        BufferUsage.UNIFORM | BufferUsage.COPY_DST,
        `${label}.${this.uniform.name}`,
      );
    }
  }

  /** A kernel of `opts.entries` of a shader; the compiled program is shared by kernels of the same device. */
  static async create<E extends string, U extends UniformDecl = UniformDecl>(
    device: GPUDevice,
    opts: KernelOptions<E, U>,
  ): Promise<Kernel<E, U>> {
    const label = opts.shader;
    let source = opts.source ?? shaderSource(opts.shader);
    if (opts.constants) source = injectConstants(source, opts.constants, label);
    let cache = programs.get(device);
    if (!cache) programs.set(device, cache = new Map());
    const key = `${label}\0${[...opts.entries].sort().join(",")}\0${source}`;
    let p = cache.get(key);
    if (!p) {
      p = program(device, label, source, opts.entries);
      cache.set(key, p);
      p.catch(() => cache.delete(key));
    }
    return new Kernel<E, U>(device, label, await p, opts.uniforms, Boolean(opts.callerUniformBuffer));
  }

  /** The shader's bindings (by binding number). */
  get bindings(): readonly WgslBinding[] {
    return this.prog.info.bindings;
  }

  /** A `const` of the shader (after injection). */
  constant(name: string): number {
    const v = this.prog.info.constants.get(name);
    if (v === undefined) throw new Error(`${this.label}: no numeric const ${name}`);
    return v;
  }

  /** The @workgroup_size of an entry point. */
  workgroupSize(entry: E): [number, number, number] {
    return this.prog.info.entries.get(entry)!;
  }

  /**
   * Workgroups covering `n` invocations along x of `entry`, as a 2-D grid [x, y] when they exceed the
   * device's per-dimension limit (the shader indexes gid.y * x * workgroup size + gid.x).
   */
  grid(entry: E, n: number): [number, number] {
    const groups = Math.ceil(n / this.workgroupSize(entry)[0]);
    const x = Math.max(1, Math.min(groups, this.device.limits.maxComputeWorkgroupsPerDimension));
    return [x, Math.max(1, Math.ceil(groups / x))];
  }

  /** The bytes of the uniform struct. */
  packUniforms(values: UniformValues<U>): ArrayBuffer {
    if (!this.uniformLayout) throw new Error(`${this.label}: no uniforms`);
    return packUniforms(this.uniformLayout, values);
  }

  /** Write the uniform struct (queue-ordered: dispatches submitted before keep the values they had). */
  setUniforms(values: UniformValues<U>): void {
    if (!this.uniformBuffer) throw new Error(`${this.label}: no uniform buffer of its own`);
    this.device.queue.writeBuffer(this.uniformBuffer, 0, this.packUniforms(values));
  }

  /** The bind group of `buffers` by binding name (cached); every non-uniform binding, and no other name. */
  bindGroup(buffers: Buffers): GPUBindGroup {
    const names = Object.keys(buffers);
    const known = new Set(this.bindings.map((b) => b.name));
    const extra = names.filter((n) => !known.has(n) || n === this.uniform?.name);
    if (extra.length) {
      throw new Error(
        `${this.label}: no buffer binding named ${extra.join(", ")} (bindings: ${
          this.bindings.filter((b) => b !== this.uniform).map((b) => b.name).join(", ")
        })`,
      );
    }
    const missing = this.bindings.filter((b) => b !== this.uniform && !buffers[b.name]).map((b) => b.name);
    if (missing.length) throw new Error(`${this.label}: no buffer given for binding ${missing.join(", ")}`);
    const key = this.bindings.map((b) => (b === this.uniform ? 0 : idOf(buffers[b.name]))).join(",");
    let group = this.groupsCache.get(key);
    if (!group) {
      if (this.groupsCache.size >= 16) this.groupsCache.clear();
      group = this.device.createBindGroup({
        label: this.label,
        layout: this.prog.layout,
        entries: this.bindings.map((b) => ({
          binding: b.binding,
          resource: { buffer: b === this.uniform ? this.uniformBuffer! : buffers[b.name] },
        })),
      });
      this.groupsCache.set(key, group);
    }
    return group;
  }

  /**
   * Dispatch `entry` over `groups` workgroups with `buffers` bound by name: recorded into `encoder` when
   * given, else submitted on its own. Nothing is dispatched when a count is 0.
   */
  dispatch(entry: E, buffers: Buffers, groups: Groups, encoder?: GPUCommandEncoder): void {
    const [x, y = 1, z = 1] = typeof groups === "number" ? [groups] : groups;
    this.pipeline(entry);
    this.bindGroup(buffers);
    if (!(x > 0 && y > 0 && z > 0)) return;
    const enc = encoder ?? this.device.createCommandEncoder();
    const pass = enc.beginComputePass({ label: `${this.label}.${entry}` });
    this.dispatchInPass(pass, entry, buffers, groups);
    pass.end();
    if (!encoder) this.device.queue.submit([enc.finish()]);
  }

  /**
   * Dispatch `entry` over `groups` workgroups with `buffers` bound by name, into an open compute pass
   * (several dispatches, of this and other kernels, in one pass; each sees the writes of those before).
   * Nothing is dispatched when a count is 0.
   */
  dispatchInPass(pass: GPUComputePassEncoder, entry: E, buffers: Buffers, groups: Groups): void {
    const pipeline = this.pipeline(entry);
    const [x, y = 1, z = 1] = typeof groups === "number" ? [groups] : groups;
    const group = this.bindGroup(buffers);
    if (!(x > 0 && y > 0 && z > 0)) return;
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
  }

  private pipeline(entry: E): GPUComputePipeline {
    const pipeline = this.prog.pipelines.get(entry);
    if (!pipeline) throw new Error(`${this.label}: entry point ${entry} not made`);
    return pipeline;
  }

  dispose(): void {
    this.uniformBuffer?.destroy();
    this.groupsCache.clear();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Readback and ordering

/** A range of a buffer (COPY_SRC) to read back. */
export interface ReadRange {
  buffer: GPUBuffer;
  /** Bytes (a multiple of 4). */
  size: number;
  offset?: number;
  /** Copy the bytes straight into this view (up to its length) instead of returning them. */
  into?: ArrayBufferView;
}

const MAX_POOLED = 4;
const pools = new WeakMap<GPUDevice, GPUBuffer[]>();

/**
 * Submit the GPU work that `record` puts into a command encoder (uploads by queue.writeBuffer inside it
 * come first), then copies of the buffer `ranges` into one staging buffer from a per-device pool (the
 * smallest free one that fits, else a new one of a power of two bytes; at most 4 kept free), all in one
 * submission and inside validation / out-of-memory error scopes (errors thrown, prefixed by `what`); then
 * the one map-read-unmap, giving the bytes of each range.
 */
export async function readBuffers(
  device: GPUDevice,
  what: string,
  ranges: readonly ReadRange[],
  record?: (encoder: GPUCommandEncoder) => void,
): Promise<ArrayBuffer[]> {
  const at: number[] = [];
  let total = 0;
  for (const r of ranges) {
    if (r.size % 4 || (r.offset ?? 0) % 4) {
      throw new Error(`${what}: ${r.buffer.label}: read size and offset must be multiples of 4`);
    }
    at.push(total);
    total += Math.ceil(r.size / 8) * 8;
  }
  let pool = pools.get(device);
  if (!pool) pools.set(device, pool = []);
  const fit = total ? pool.filter((b) => b.size >= total).sort((a, b) => a.size - b.size)[0] : undefined;
  if (fit) pool.splice(pool.indexOf(fit), 1);
  const staging = fit ?? (total
    ? createBuffer(
      device,
      Math.max(1 << 12, 2 ** Math.ceil(Math.log2(total))),
      BufferUsage.MAP_READ | BufferUsage.COPY_DST,
      "readBuffers.staging",
    )
    : undefined);
  let ok = false;
  try {
    // Synchronous inside the scope, so that concurrent callers do not interleave error scopes.
    await withErrorScope(device, what, () => {
      const enc = device.createCommandEncoder();
      record?.(enc);
      ranges.forEach((r, i) => {
        if (r.size) enc.copyBufferToBuffer(r.buffer, r.offset ?? 0, staging!, at[i], r.size);
      });
      device.queue.submit([enc.finish()]);
    });
    const out = staging
      ? await mapRead(staging, ranges.map((r, i) => [at[i], r.size, r.into]))
      : ranges.map(() => new ArrayBuffer(0));
    ok = true;
    return out;
  } finally {
    if (staging) {
      if (ok && pool.length < MAX_POOLED) pool.push(staging);
      else staging.destroy();
    }
  }
}

/** Runs async jobs one after another, in call order; a failed job does not stop the next. */
export class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(job: () => Promise<T>): Promise<T> {
    const r = this.tail.then(job);
    this.tail = r.catch(() => undefined);
    return r;
  }
}
