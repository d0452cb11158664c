/**
 * Errors that reach the user as one line.
 *
 * InputError: the input is bad (missing path, not HDF5, truncated, no EuXFEL layout, no detector, bad option).
 * The CLI prints `xfel-redu: <file>: <problem>` and exits 2. Anything else is an internal error (exit 1).
 */
export class InputError extends Error {
  constructor(readonly file: string | undefined, problem: string) {
    super(file ? `${file}: ${problem}` : problem);
    this.name = "InputError";
  }
}

/** Exit codes documented in the README. */
export const EXIT = { ok: 0, internal: 1, badInput: 2 } as const;
