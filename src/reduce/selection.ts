/** The frame selection of a localise output (its REDU file's frameLit and its summary.json), as reduce reads it. */
import * as fs from "node:fs";
import * as path from "node:path";
import { InputError } from "../errors.ts";
import { firstLine, readAll } from "../exdf/h5.ts";
import { Run } from "../exdf/run.ts";

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

const LOCALISE_RE = /\/REDU\/LOCALISE:output$/;

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
  const run = await Run.open(dir);
  try {
    const sel = new Selection();
    let source: string | null = null;
    const files = [...run.files].sort((a, b) => (a.trainIds[0] ?? 0) - (b.trainIds[0] ?? 0));
    for (const f of files) {
      for (const s of f.sources.values()) {
        if (!LOCALISE_RE.test(s.name)) continue;
        source = s.name;
        const ix = s.index.get("data");
        if (!ix) continue;
        const base = `INSTRUMENT/${s.name}/data`;
        const tid = readAll(f.h5, `${base}/trainId`);
        const pid = readAll(f.h5, `${base}/pulseId`);
        const lit = readAll(f.h5, `${base}/frameLit`);
        f.trainIds.forEach((t, i) => {
          for (let r = ix.first[i]; r < ix.first[i] + ix.count[i] && r < lit.length; r++) {
            const rt = Number(tid[r]);
            sel.add(rt === 0 ? t : rt, Number(pid[r]), Number(lit[r]));
          }
        });
      }
    }
    if (!source) throw new InputError(dir, "no localise REDU file (source <DET>/REDU/LOCALISE:output) found");
    const detector = summary.detector?.name ?? source.replace(LOCALISE_RE, "");
    return { selection: sel, summary, detector };
  } finally {
    run.close();
  }
}
