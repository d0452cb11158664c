/** The algorithms of the framework, by id (loaded lazily: worker threads import only what they run). */
import { registerAlgorithm } from "./algorithm.ts";

registerAlgorithm("localise", async () => {
  const { LocaliseAlgorithm } = await import("../localise/localise.ts");
  return () => new LocaliseAlgorithm();
});

registerAlgorithm("average", async () => {
  const { AverageAlgorithm } = await import("../average/average.ts");
  return () => new AverageAlgorithm();
});

registerAlgorithm("roi", async () => {
  const { RoiAlgorithm } = await import("../reductions/roi.ts");
  return () => new RoiAlgorithm();
});

registerAlgorithm("azint", async () => {
  const { AzintAlgorithm } = await import("../reductions/azint.ts");
  return () => new AzintAlgorithm();
});

registerAlgorithm("xpcs", async () => {
  const { XpcsAlgorithm } = await import("../reductions/xpcs.ts");
  return () => new XpcsAlgorithm();
});
