/**
 * WebGPU device access for Node and Deno, plus the small buffer/pipeline/readback helpers the
 * localisation backend uses.
 *
 * Which adapter (first that gives one):
 * - Deno: the built-in `navigator.gpu` (deno.json has `"unstable": ["webgpu"]`), then as under Node.
 * - Node (and Deno without a built-in adapter): the npm `webgpu` package (Dawn): its default backend
 *   (Vulkan on Linux), then its OpenGL backend at the "compatibility" feature level (with EGL_PLATFORM
 *   defaulting to "surfaceless", so Mesa's llvmpipe works on machines without a GPU or a display).
 *
 * Environment: XFEL_REDU_GPU=off gives no device; XFEL_REDU_GPU_BACKEND=vulkan|opengl|default picks one
 * Dawn backend only (default: try the default one, then OpenGL).
 *
 * Dawn prints "Warning: maxDynamic... artificially reduced" (and, without Vulkan, "Couldn't load Vulkan")
 * on stderr from native code while it looks for adapters; these are harmless and not suppressible from JS.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

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

export interface GpuDevice {
  device: GPUDevice;
  /** Where the adapter came from and what it says it is, e.g. "OpenGL: llvmpipe-... (OpenGL version 4.5 ...)". */
  adapterName: string;
  /** A CPU implementation (llvmpipe, lavapipe, SwiftShader, WARP) or a fallback adapter. */
  software: boolean;
  /** Whose WebGPU: Dawn (the npm `webgpu` package) or Deno's built-in one (wgpu). */
  implementation: "dawn" | "deno";
}

/**
 * Whether this machine shows a GPU to user space, found without initialising any WebGPU implementation
 * (Dawn prints native warnings on stderr as soon as it looks for adapters). Linux: an NVIDIA, AMD (kfd) or
 * DRM render node under /dev; elsewhere assumed. `auto` backends use this to stay on the CPU, silently,
 * where only a software adapter could exist. XFEL_REDU_GPU=on skips the check.
 */
export function gpuHardwarePresent(): boolean {
  if (/^(on|1|true|force)$/i.test(process.env.XFEL_REDU_GPU ?? "")) return true;
  if (/^(off|0|false|none)$/i.test(process.env.XFEL_REDU_GPU ?? "")) return false;
  if (process.platform !== "linux") return true;
  try {
    if (fs.readdirSync("/dev").some((n) => /^nvidia\d+$/.test(n) || n === "kfd")) return true;
  } catch {
    // no /dev listing
  }
  try {
    return fs.readdirSync("/dev/dri").some((n) => n.startsWith("renderD"));
  } catch {
    return false;
  }
}

// Strong references to what Dawn's create() returns, for the life of the process: Dawn crashes when
// these are garbage-collected while a device lives.
const keep: unknown[] = [];
let cached: Promise<GpuDevice | undefined> | undefined;

/** The process's WebGPU device (created once); undefined when no adapter is found. */
export function getGpuDevice(): Promise<GpuDevice | undefined> {
  cached ??= findDevice().catch((e: unknown) => {
    if (process.env.XFEL_REDU_DEBUG) console.error("xfel-redu: no WebGPU device:", e);
    return undefined;
  });
  return cached;
}

async function findDevice(): Promise<GpuDevice | undefined> {
  if (/^(off|0|false|none)$/i.test(process.env.XFEL_REDU_GPU ?? "")) return undefined;
  const g = globalThis as any;
  if (g.Deno && g.navigator?.gpu) {
    const adapter: GPUAdapter | null = await g.navigator.gpu.requestAdapter().catch(() => null);
    if (adapter) return openDevice(adapter, "Deno", "deno");
  }
  const want = (process.env.XFEL_REDU_GPU_BACKEND ?? "").toLowerCase();
  let dawn: { create(options: string[]): GPU; globals: object };
  try {
    dawn = await import("webgpu");
  } catch (e) {
    if (process.env.XFEL_REDU_DEBUG) console.error("xfel-redu: cannot load the webgpu package:", e);
    return undefined;
  }
  Object.assign(globalThis, dawn.globals);
  const tries: [string, string[], GPURequestAdapterOptions][] = [];
  if (want !== "opengl") tries.push([defaultBackendName(), [], {}]);
  if (want !== "vulkan" && want !== "default") {
    tries.push(["OpenGL", ["backend=opengl"], { featureLevel: "compatibility" } as GPURequestAdapterOptions]);
  }
  for (const [name, options, request] of tries) {
    if (name === "OpenGL") process.env.EGL_PLATFORM ??= "surfaceless";
    const gpu = dawn.create(options);
    keep.push(gpu);
    const adapter = await gpu.requestAdapter(request).catch(() => null);
    if (adapter) return openDevice(adapter, name, "dawn");
  }
  return undefined;
}

function defaultBackendName(): string {
  if (process.platform === "darwin") return "Metal";
  if (process.platform === "win32") return "D3D12";
  return "Vulkan";
}

const RAISED_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxUniformBufferBindingSize",
] as const;

async function openDevice(
  adapter: GPUAdapter,
  backend: string,
  implementation: GpuDevice["implementation"],
): Promise<GpuDevice> {
  const requiredLimits: Record<string, number> = {};
  for (const k of RAISED_LIMITS) {
    const v = (adapter.limits as any)[k];
    if (typeof v === "number") requiredLimits[k] = v;
  }
  const device = await adapter.requestDevice({ requiredLimits });
  const info: any = adapter.info ?? {};
  // Numeric vendor/device ids (wgpu gives them) say little: keep the names.
  const parts = [info.vendor, info.architecture, info.device].filter((s) =>
    typeof s === "string" && s.trim() && !/^(0x)?[0-9a-f]+$/i.test(s.trim())
  );
  let name = parts.join(" ").trim();
  if (info.description) name = name ? `${name} (${info.description})` : info.description;
  const adapterName = `${backend}: ${name || "unknown adapter"}`;
  const software = Boolean(info.isFallbackAdapter || (adapter as any).isFallbackAdapter) ||
    /llvmpipe|lavapipe|softpipe|swiftshader|warp|software/i.test(name);
  device.lost.then((l) => {
    if (l.reason !== "destroyed") {
      console.error(`xfel-redu: WebGPU device lost: ${l.message}`);
      cached = undefined;
    }
  });
  return { device, adapterName, software, implementation };
}

/** The package root: the nearest directory upwards of this module whose package.json is "xfel-redu". */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = path.join(dir, "package.json");
    if (fs.existsSync(pj)) {
      try {
        if (JSON.parse(fs.readFileSync(pj, "utf8")).name === "xfel-redu") return dir;
      } catch { /* not ours */ }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error("cannot find the xfel-redu package root (for shaders/)");
    dir = up;
  }
}

const shaderCache = new Map<string, string>();

/** The text of shaders/<name>, read once. */
export function shaderSource(name: string): string {
  let s = shaderCache.get(name);
  if (s === undefined) {
    s = fs.readFileSync(path.join(packageRoot(), "shaders", name), "utf8");
    shaderCache.set(name, s);
  }
  return s;
}

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

/** A bind group layout of buffer bindings 0..n-1, visible to compute shaders. */
export function bindGroupLayout(device: GPUDevice, kinds: BindingKind[], label?: string): GPUBindGroupLayout {
  return device.createBindGroupLayout({
    label,
    entries: kinds.map((type, binding) => ({ binding, visibility: ShaderStage.COMPUTE, buffer: { type } })),
  });
}

/** A bind group of whole buffers at bindings 0..n-1. */
export function bindGroup(
  device: GPUDevice,
  layout: GPUBindGroupLayout,
  buffers: GPUBuffer[],
  label?: string,
): GPUBindGroup {
  return device.createBindGroup({
    label,
    layout,
    entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
  });
}

/** Compute pipelines for entry points of one module sharing one bind group layout; errors thrown. */
export async function computePipelines<E extends string>(
  device: GPUDevice,
  module: GPUShaderModule,
  layout: GPUBindGroupLayout,
  entries: readonly E[],
  label: string,
): Promise<Record<E, GPUComputePipeline>> {
  const pipelineLayout = device.createPipelineLayout({ bindGroupLayouts: [layout], label });
  const out = {} as Record<E, GPUComputePipeline>;
  for (const entryPoint of entries) {
    out[entryPoint] = await device.createComputePipelineAsync({
      label: `${label}.${entryPoint}`,
      layout: pipelineLayout,
      compute: { module, entryPoint },
    });
  }
  return out;
}

/** Read `size` bytes of a MAP_READ buffer into a fresh ArrayBuffer (the buffer is unmapped again). */
export async function readBack(buffer: GPUBuffer, size: number, offset = 0): Promise<ArrayBuffer> {
  await buffer.mapAsync(MapMode.READ, offset, size);
  try {
    return buffer.getMappedRange(offset, size).slice(0);
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
