/** A worker thread running one part (a module group) of an algorithm; posts the partial result. */
import { parentPort, workerData } from "node:worker_threads";
import { toWire } from "../errors.ts";
import { algorithmFactory, emptyStats, type PartMessage, runPart } from "./algorithm.ts";

const port = parentPort!;
const { id, runPath, options, modules } = workerData as {
  id: string;
  runPath: string;
  options: Record<string, unknown>;
  modules: number[];
};

const algo = (await algorithmFactory(id))();
try {
  algo.configure(options);
  const stats = emptyStats();
  const part = await runPart(algo, runPath, modules, (done, total) => {
    port.postMessage({ type: "progress", done, total } satisfies PartMessage<unknown>);
  }, stats);
  port.postMessage({ type: "part", part, stats } satisfies PartMessage<unknown>);
} catch (e) {
  port.postMessage({ type: "error", ...toWire(e) } satisfies PartMessage<unknown>);
} finally {
  algo.dispose?.();
}
