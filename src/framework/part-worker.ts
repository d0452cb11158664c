/**
 * A worker thread running one part (a module group) of an algorithm; posts the partial result. It loads
 * the algorithm and h5wasm as soon as it starts, then waits for its modules and the run's index (PartTask).
 */
import { parentPort, workerData } from "node:worker_threads";
import { toWire } from "../errors.ts";
import { Run } from "../exdf/run.ts";
import {
  type AlgorithmSource,
  createAlgorithm,
  emptyStats,
  type PartMessage,
  type PartTask,
  runPart,
} from "./algorithm.ts";

const port = parentPort!;
const { source, runPath, options } = workerData as {
  source: AlgorithmSource;
  runPath: string;
  options: Record<string, unknown>;
};

const task = new Promise<PartTask>((resolve) => port.once("message", resolve));
// The run comes with the task, as the parent opened it: only its files are reopened here.
const opened = task.then((t) => t.index ? Run.fromIndex(t.index) : Run.open(runPath));
opened.catch(() => undefined); // reported through runPart
let algo;
try {
  algo = await createAlgorithm(source);
  algo.configure(options);
  const { modules, sharedBy } = await task;
  const stats = emptyStats();
  const part = await runPart(algo, runPath, {
    modules,
    progress: (done, total) => {
      port.postMessage({ type: "progress", done, total } satisfies PartMessage<unknown>);
    },
    stats,
    opened,
    sharedBy,
    local: true,
  });
  port.postMessage({ type: "part", part, stats } satisfies PartMessage<unknown>);
} catch (e) {
  port.postMessage({ type: "error", ...toWire(e) } satisfies PartMessage<unknown>);
} finally {
  algo?.dispose?.();
}
