/** The xfel-redu command line (placeholder, filled in below). */
import { EXIT, InputError } from "./errors.ts";

export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes("--debug");
  try {
    const [command] = argv;
    throw new InputError(undefined, `unknown command: ${command ?? "(none)"}`);
  } catch (e) {
    if (e instanceof InputError) {
      console.error(`xfel-redu: ${e.message}`);
      if (debug) console.error(e.stack);
      return EXIT.badInput;
    }
    console.error(`xfel-redu: internal error: ${e instanceof Error ? e.message : e}`);
    if (debug) console.error(e);
    return EXIT.internal;
  }
}
