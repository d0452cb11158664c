/** Library entry of xfel-redu: `import { ... } from "xfel-redu"`. */
export { InputError } from "./errors.ts";
export * from "./exdf/writer/writer.ts";
export { localise } from "./localise/algorithm.ts";
export type { LocaliseOptions, LocaliseResult } from "./localise/result.ts";
export { Run } from "./exdf/run.ts";
export { FrameReader } from "./exdf/frames.ts";
export { reportFromOutput, writeReport } from "./report/report.ts";
export type { ReportInfo, ReportOptions } from "./report/model.ts";
export { reduce } from "./reduce/reduce.ts";
export { annotateBeam } from "./beam/annotate.ts";
export { average } from "./average/average.ts";
export { decompress } from "./compress/decompress.ts";
