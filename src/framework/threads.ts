/**
 * Worker threads that run unchanged under Node (compiled dist/), Deno (TypeScript sources) and vitest
 * (Node running the TypeScript sources: workers then load the compiled twin under dist/, which `npm test`
 * builds first).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";

const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";

/** The URL of a worker module `name` (without extension) beside the module at `base` (import.meta.url). */
export function workerUrl(name: string, base: string): URL {
  if (base.endsWith(".js") || !base.endsWith(".ts")) return new URL(`${name}.js`, base);
  return loadableUrl(new URL(`${name}.ts`, base).href);
}

/**
 * A URL of one of our modules (an import.meta.url) that this runtime can import in a worker: itself, except
 * under Node running the TypeScript sources (vitest), where it is the compiled twin under dist/.
 */
export function loadableUrl(module: string): URL {
  if (isDeno || !module.endsWith(".ts")) return new URL(module);
  const src = fileURLToPath(module);
  let root = path.dirname(src);
  while (!fs.existsSync(path.join(root, "package.json"))) {
    const up = path.dirname(root);
    if (up === root) throw new Error(`no package root above ${src}`);
    root = up;
  }
  const js = path.join(root, "dist", path.relative(root, src)).replace(/\.ts$/, ".js");
  if (!fs.existsSync(js)) throw new Error(`${js} is missing: run npm run build`);
  return pathToFileURL(js);
}

/** Start a worker thread on a module of ours. */
export function startWorker(name: string, base: string, workerData: unknown): Worker {
  return new Worker(workerUrl(name, base), { workerData });
}

/** Wait for the next message of a worker; a worker error or exit rejects. */
export function nextMessage<T>(w: Worker): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onMessage = (m: T) => {
      cleanup();
      resolve(m);
    };
    const onError = (e: Error) => {
      cleanup();
      reject(e);
    };
    const onExit = (code: number) => {
      cleanup();
      reject(new Error(`worker exited with code ${code}`));
    };
    const cleanup = () => {
      w.off("message", onMessage);
      w.off("error", onError);
      w.off("exit", onExit);
    };
    w.on("message", onMessage);
    w.on("error", onError);
    w.on("exit", onExit);
  });
}

/** Number of cores to use by default. */
export async function defaultWorkers(): Promise<number> {
  const os = await import("node:os");
  return Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
}
