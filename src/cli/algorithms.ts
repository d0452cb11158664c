/**
 * The registry of the framework's algorithms (the composition root knows them; the framework does not):
 * `submit --algorithm ID` and the tests build an instance here.
 */
import type { Algorithm } from "../framework/algorithm.ts";
import { LocaliseAlgorithm } from "../localise/algorithm.ts";
import { AverageAlgorithm } from "../average/average.ts";
import { RoiAlgorithm } from "../reductions/roi.ts";
import { AzintAlgorithm } from "../reductions/azint.ts";
import { XpcsAlgorithm } from "../reductions/xpcs.ts";

const ALGORITHMS: Record<string, () => Algorithm> = {
  localise: () => new LocaliseAlgorithm() as Algorithm,
  average: () => new AverageAlgorithm() as Algorithm,
  roi: () => new RoiAlgorithm() as Algorithm,
  azint: () => new AzintAlgorithm() as Algorithm,
  xpcs: () => new XpcsAlgorithm() as Algorithm,
};

export const ALGORITHM_IDS: readonly string[] = Object.keys(ALGORITHMS);

/** A new instance of the algorithm `id`. */
export function algorithm(id: string): Algorithm {
  const make = ALGORITHMS[id];
  if (!make) throw new Error(`unknown algorithm ${id} (one of ${ALGORITHM_IDS.join(", ")})`);
  return make();
}
