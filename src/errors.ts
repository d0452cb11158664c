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

/**
 * The output cannot be written where asked: it exists and this tool did not write it, another process is
 * writing it, the filesystem refuses writes, or the disk is full. One line naming the path, exit 2.
 */
export class OutputError extends InputError {
  constructor(
    readonly path: string,
    readonly reason: "exists" | "foreign" | "locked" | "unwritable" | "no-space" | "overlap",
    problem: string,
  ) {
    super(path, problem);
    this.name = "OutputError";
  }
}

/** Exit codes documented in the README. */
export const EXIT = { ok: 0, internal: 1, badInput: 2 } as const;

/** An error as it crosses a thread boundary (structured clone keeps neither the class nor its fields). */
export interface WireError {
  input: boolean;
  file?: string;
  message: string;
  stack?: string;
}

export function toWire(e: unknown): WireError {
  if (e instanceof InputError) {
    return {
      input: true,
      file: e.file,
      message: e.file ? e.message.slice(e.file.length + 2) : e.message,
      stack: e.stack,
    };
  }
  return {
    input: false,
    message: e instanceof Error ? e.message : String(e),
    stack: e instanceof Error ? e.stack : undefined,
  };
}

export function fromWire(w: WireError): Error {
  const e = w.input ? new InputError(w.file, w.message) : new Error(w.message);
  if (w.stack) e.stack = w.stack;
  return e;
}
