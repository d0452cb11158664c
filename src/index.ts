/** Library entry of xfel-redu: `import { ... } from "xfel-redu"`. */
export { InputError } from "./errors.ts";
export * from "./writer.ts";
export { localise } from "./localise/localise.ts";
export type { LocaliseOptions, LocaliseResult } from "./localise/localise.ts";
export { Run } from "./run.ts";
export { FrameReader } from "./frames.ts";
