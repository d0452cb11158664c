/** Library entry of xfel-redu: `import { ... } from "xfel-redu"`. */
export { InputError } from "./errors.ts";
