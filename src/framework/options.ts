/**
 * Option declarations. Algorithms and commands own their options and declare them here in one form; the
 * command line (src/cli/command.ts) parses and checks argv against the declarations.
 */
export interface OptionSpec {
  name: string;
  help: string;
  /** Absent for flags. */
  value?: "number" | "string";
  /** The option may be given several times: its value is then the list of values. */
  repeat?: boolean;
  default?: number | string | boolean;
  /** The values a string option takes. */
  choices?: readonly string[];
  /** A number option that must be an integer. */
  integer?: boolean;
  /** Bounds of a number option (inclusive). */
  min?: number;
  max?: number;
}
