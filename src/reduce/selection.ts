/** The frame selection of a localise output (its REDU file's frameLit and its summary.json), as reduce reads it. */
import * as fs from "node:fs";
import * as path from "node:path";
import { InputError } from "../errors.ts";
import { firstLine } from "../exdf/h5.ts";
import { ReduReader } from "../localise/redu.ts";

import type { Box } from "../exdf/detectors.ts";

export interface LocaliseSummary {
  /** The run localise ran on (absolute path). */
  run?: string;
  detector?: { name?: string; modules?: number[] };
  modules?: { module: number; selected: boolean; rois?: Box[]; files?: string[] }[];
}

// -----------------------------------------------------------------------------------------------------
// The selection (localise output)

/** frameLit per (trainId, pulseId), from the localise REDU file(s). */
export class Selection {
  private readonly byTrain = new Map<number, Map<number, number>>();
  frames = 0;
  lit = 0;

  add(trainId: number, pulseId: number, lit: number): void {
    let m = this.byTrain.get(trainId);
    if (!m) this.byTrain.set(trainId, m = new Map());
    if (!m.has(pulseId)) {
      this.frames++;
      if (lit) this.lit++;
    }
    m.set(pulseId, lit ? 1 : 0);
  }

  /** 1 lit, 0 dark, -1 not listed. */
  lookup(trainId: number, pulseId: number): number {
    return this.byTrain.get(trainId)?.get(pulseId) ?? -1;
  }
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
  const redu = await ReduReader.open(dir);
  try {
    const sel = new Selection();
    const { trainId, pulseId, frameLit } = redu.frames();
    for (let f = 0; f < redu.nFrames; f++) sel.add(trainId[f], pulseId[f], frameLit[f]);
    return { selection: sel, summary, detector: summary.detector?.name ?? redu.detector };
  } finally {
    redu.close();
  }
}
