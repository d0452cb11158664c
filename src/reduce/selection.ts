/** The frame selection of a localise output (localise/redu.ts readSelection) and its summary.json, as reduce reads them. */
import * as fs from "node:fs";
import * as path from "node:path";
import { InputError } from "../errors.ts";
import { firstLine } from "../exdf/h5.ts";
import { readSelection, type Selection } from "../localise/redu.ts";

import type { Box } from "../exdf/detectors.ts";

export interface LocaliseSummary {
  /** The run localise ran on (absolute path). */
  run?: string;
  detector?: { name?: string; modules?: number[] };
  modules?: { module: number; selected: boolean; rois?: Box[]; files?: string[] }[];
}

/** Read the localise output directory: the frame selection and summary.json. */
export async function readLocaliseOutput(
  dir: string,
): Promise<{ selection: Selection; summary: LocaliseSummary; detector: string | null }> {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new InputError(dir, "localise output directory not found");
  }
  let summary: LocaliseSummary = {};
  const sp = path.join(dir, "summary.json");
  if (fs.existsSync(sp)) {
    try {
      summary = JSON.parse(fs.readFileSync(sp, "utf8"));
    } catch (e) {
      throw new InputError(sp, `cannot read: ${firstLine(e)}`);
    }
  }
  const { selection, detector } = await readSelection(dir);
  return { selection, summary, detector: summary.detector?.name ?? detector };
}
