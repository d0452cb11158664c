/** A worker thread running one part (a module group) of an algorithm; posts the partial result. */
import { parentPort, workerData } from "node:worker_threads";
import { toWire } from "../errors.ts";
import { type AlgorithmSource, createAlgorithm, emptyStats, type PartMessage, runPart } from "./algorithm.ts";

const port = parentPort!;
const { source, runPath, options, modules, sharedBy } = workerData as {
  source: AlgorithmSource;
  runPath: string;
  options: Record<string, unknown>;
  modules: number[];
  /** The modules of all worker threads of the process, which share the batch budget. */
  sharedBy?: number;
};

const algo = await createAlgorithm(source);
try {
  algo.configure(options);
  const stats = emptyStats();
  const part = await runPart(
    algo,
    runPath,
    modules,
    (done, total) => {
      port.postMessage({ type: "progress", done, total } satisfies PartMessage<unknown>);
    },
    stats,
    undefined,
    sharedBy,
  );
  port.postMessage({ type: "part", part, stats } satisfies PartMessage<unknown>);
} catch (e) {
  port.postMessage({ type: "error", ...toWire(e) } satisfies PartMessage<unknown>);
} finally {
  algo.dispose?.();
}
