/** Library entry of xfel-redu: `import { ... } from "xfel-redu"`. */
export { InputError } from "./errors.ts";
export * from "./writer.ts";
export { localise } from "./localise/localise.ts";
export type { LocaliseOptions, LocaliseResult } from "./localise/localise.ts";
export { Run } from "./run.ts";
export { FrameReader } from "./frames.ts";
export { reportFromOutput, writeReport } from "./report.ts";
export type { ReportInfo, ReportOptions } from "./report.ts";
export { reduce } from "./reduce.ts";
export { annotateBeam } from "./litframes.ts";
export { average } from "./average.ts";
export { decompress } from "./compress/decompress.ts";
