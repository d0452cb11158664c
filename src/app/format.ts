/** Sizes for people and for records: one copy of each helper. */
import * as fs from "node:fs";

/** Bytes per MB as the tool prints them (decimal, as `du --si` and EuXFEL's data-rate figures). */
export const MB = 1e6;

/** A file's size in bytes; 0 when it is missing or unreadable. */
export function fileSize(p: string): number {
  try {
    return fs.statSync(p).size;
  } catch {
    return 0;
  }
}

/** "231 kB" or "1.2 MB". */
export function kB(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.ceil(n / 1e3)} kB`;
}
