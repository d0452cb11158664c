/**
 * WebGPU device access for Node and Deno. Shader text is in shaders.ts, pipelines, bindings, dispatch and
 * readback in kernel.ts.
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
import process from "node:process";

/** What a command asks for: a GPU when one works (auto), the GPU or an error (webgpu), or the CPU. */
export type BackendChoice = "auto" | "webgpu" | "cpu";

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

/**
 * Whether a backend choice runs the cpu backend without WebGPU ever being asked: `cpu`, or `auto` on a
 * machine that shows no GPU (gpuHardwarePresent). Otherwise a device is probed (auto may still fall back).
 */
export function cpuWithoutGpu(choice: BackendChoice): boolean {
  return choice === "cpu" || (choice === "auto" && !gpuHardwarePresent());
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
