/**
 * Library entry of xfel-redu: `import { ... } from "xfel-redu"`. The curated API: runs and frames, the
 * writer, detector layouts, and each algorithm's function with its options and result types.
 */
export { InputError, OutputError } from "./errors.ts";
export { Run } from "./exdf/run.ts";
export { FrameReader } from "./exdf/frames.ts";
export * from "./exdf/writer/writer.ts";
export { defaultLayout, type DetectorLayout, loadLayout, readGeom, writeGeom } from "./exdf/geometry.ts";
export { localise } from "./localise/algorithm.ts";
export type { LocaliseOptions, LocaliseResult } from "./localise/result.ts";
export { writeCxi } from "./localise/cxi.ts";
export { reportFromOutput, writeReport } from "./report/report.ts";
export type { ReportInfo, ReportOptions } from "./report/model.ts";
export { reduce } from "./reduce/reduce.ts";
export { annotateBeam } from "./beam/annotate.ts";
export { average } from "./average/average.ts";
export { decompress } from "./compress/decompress.ts";
export { roi } from "./reductions/roi.ts";
export { azint } from "./reductions/azint.ts";
export { xpcs } from "./reductions/xpcs.ts";
