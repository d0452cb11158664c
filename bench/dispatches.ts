/**
 * GPU calls per batch of the localise webgpu backend: command submissions, compute dispatches, queue
 * writes and buffer maps (readbacks, upload re-maps), counted on the device for one batch of all modules,
 * as localise's processBatch and prepassBatch issue them. Counts, not speed: this runs on any adapter.
 *
 *   npm run build && node dist/bench/dispatches.js [--type AGIPD] [--modules 8] [--frames 32]
 *                                                  [--initial 16] [--cap BYTES]
 *
 * --initial: the frames the backend is made for (localise makes it on the first pre-pass block: 16).
 */
import process from "node:process";
import { type DetectorType, geometry } from "../src/exdf/detectors.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { DEFAULT_PARAMS, type LocaliseBackend, type ModuleBatch } from "../src/localise/spec.ts";
import { createWebgpuBackend } from "../src/localise/webgpu.ts";

const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const type = arg("type", "AGIPD") as DetectorType;
const nMod = Number(arg("modules", "8"));
const frames = Number(arg("frames", "32"));
const initial = Number(arg("initial", "16"));
const cap = arg("cap", "");

const gpu = await getGpuDevice();
if (!gpu) {
  console.error("no WebGPU adapter");
  process.exit(1);
}
const { device } = gpu;
const count = { submit: 0, dispatch: 0, writeBuffer: 0, mapAsync: 0 };
const q = device.queue;
const submit = q.submit.bind(q), writeBuffer = q.writeBuffer.bind(q);
q.submit = (b) => (count.submit++, submit(b));
q.writeBuffer =
  ((...a: Parameters<GPUQueue["writeBuffer"]>) => (count.writeBuffer++, writeBuffer(...a))) as GPUQueue[
    "writeBuffer"
  ];
const createEncoder = device.createCommandEncoder.bind(device);
device.createCommandEncoder = (d?: GPUCommandEncoderDescriptor) => {
  const enc = createEncoder(d);
  const begin = enc.beginComputePass.bind(enc);
  enc.beginComputePass = (pd?: GPUComputePassDescriptor) => {
    const pass = begin(pd);
    const dispatch = pass.dispatchWorkgroups.bind(pass);
    pass.dispatchWorkgroups = (x: number, y?: number, z?: number) => (count.dispatch++, dispatch(x, y, z));
    return pass;
  };
  return enc;
};
const createBuffer = device.createBuffer.bind(device);
device.createBuffer = (d: GPUBufferDescriptor) => {
  const b = createBuffer(d);
  const map = b.mapAsync.bind(b);
  b.mapAsync = (...a: Parameters<GPUBuffer["mapAsync"]>) => (count.mapAsync++, map(...a));
  return b;
};

const g = geometry(type);
const params = { ...DEFAULT_PARAMS, bgBinWidth: 0 };
const options = cap ? { maxBindingBytes: Number(cap) } : {};
const backend = (await createWebgpuBackend(params, g, initial, options as object))! as LocaliseBackend;
const mods: ModuleBatch[] = Array.from({ length: nMod }, (_, m) => {
  const data = new Float32Array(frames * g.pixels);
  for (let i = 0; i < data.length; i++) {
    data[i] = (Math.imul(i + 7919 * m, 2654435761) >>> 0) % 1000 < 10 ? 3 : 0.1;
  }
  return {
    geometry: g,
    nFrames: frames,
    data,
    mask: new Uint32Array(frames * g.pixels),
    hot: new Uint8Array(g.pixels),
  };
});

/** As localise's processBatch: all modules at once where the backend can, else two modules in flight. */
async function processBatch() {
  if (backend.processModules) {
    const run = backend.processModules(mods);
    await run.uploaded;
    await run.results;
    return;
  }
  let inFlight: Promise<unknown> | undefined;
  for (let m = 0; m <= nMod; m++) {
    const next = m < nMod ? backend.process(mods[m]) : undefined;
    if (inFlight) await inFlight;
    inFlight = next;
  }
}
async function prepassBatch() {
  const counts = mods.map(() => new Uint32Array(g.pixels));
  if (backend.accumulateModules) await backend.accumulateModules(mods, counts);
  else for (let m = 0; m < nMod; m++) await backend.accumulateLitCounts(mods[m], counts[m]);
}

for (const [what, f] of [["process", processBatch], ["prepass", prepassBatch]] as const) {
  await f(); // warm-up (buffers grown)
  for (const k of Object.keys(count) as (keyof typeof count)[]) count[k] = 0;
  await f();
  console.log(
    `${type} ${nMod} modules x ${frames} frames, ${what}: ${count.submit} submissions, ${count.dispatch} dispatches, ` +
      `${count.writeBuffer} queue writes, ${count.mapAsync} buffer maps`,
  );
}
backend.dispose();
process.exit(0);
