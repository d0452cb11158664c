/**
 * The report page: HTML with inline CSS, inline SVG plots and a small inline script (tooltips, zoom).
 *
 * Every number taken from summary.json sits in an element with `data-key` (and `data-module` in the module
 * table and map) and an exact `data-value`, so tests and tools can check the page against summary.json.
 * The summary itself (hot-pixel lists left out) is embedded as JSON in `<script id="summary-data">`.
 */
import type { Histogram, ReportModel, SampleFrame } from "./model.ts";
import { HOT_COLOUR, INVALID_COLOUR, scaleGradient } from "./png.ts";
import { boxPolygon, layoutModule, modulePanels, pointAt } from "./assembly.ts";

const LIT = "#ea580c";
const DARK = "#64748b";

function esc(s: unknown): string {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function int(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

function pct(x: number, digits = 1): string {
  if (!Number.isFinite(x)) return "–";
  return `${(100 * x).toFixed(digits)} %`;
}

function num(x: number, digits: number): string {
  return Number.isFinite(x) ? x.toFixed(digits) : "–";
}

/** A number of summary.json: shown as `text`, exact in data-value. */
function kv(key: string, value: unknown, text: string, module?: number): string {
  const m = module === undefined ? "" : ` data-module="${module}"`;
  return `<span data-key="${key}"${m} data-value="${esc(value)}">${text}</span>`;
}

function jsonScript(id: string, v: unknown): string {
  return `<script type="application/json" id="${id}">${JSON.stringify(v).replace(/</g, "\\u003c")}</script>`;
}

/** Round a number up to 1, 2 or 5 times a power of ten. */
function niceCeil(x: number): number {
  if (!(x > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= x - 1e-12) return m * p;
  return 10 * p;
}

const f1 = (x: number) => (Math.round(x * 10) / 10).toString();

// ---------------------------------------------------------------------------------------------------------
// Sections

function summarySection(m: ReportModel): string {
  const s = m.summary;
  const t = m.trains;
  const first = t.firstTrain[0], last = t.lastTrain[t.lastTrain.length - 1];
  const sel = s.modules.filter((x) => x.selected).length;
  const rois = s.modules.reduce((a, x) => a + x.rois.length, 0);
  const hot = s.modules.reduce((a, x) => a + x.hotPixels.length, 0);
  const litFraction = s.frames > 0 ? s.litFrames / s.frames : NaN;
  const card = (label: string, value: string, sub = "") =>
    `<div class="card"><div class="label">${label}</div><div class="value">${value}</div>` +
    `<div class="sub">${sub}</div></div>`;
  const cards = [
    card(
      "Trains",
      kv("trains", s.trains, int(s.trains)),
      first === undefined
        ? ""
        : `${kv("firstTrain", first, String(first))} – ${kv("lastTrain", last, String(last))}`,
    ),
    card(
      "Frames",
      kv("frames", s.frames, int(s.frames)),
      `${int(s.frames / Math.max(1, s.trains))} per train`,
    ),
    card(
      "Lit frames",
      kv("litFrames", s.litFrames, int(s.litFrames)),
      `${kv("darkFrames", s.frames - s.litFrames, int(s.frames - s.litFrames))} dark`,
    ),
    card(
      "Lit fraction",
      kv("litFraction", litFraction, pct(litFraction)),
      `classifier: ${esc(s.params.mode)}`,
    ),
    card(
      "Selected",
      `${kv("selectedModules", sel, String(sel))} / ${
        kv("modules", s.detector.modules.length, String(s.detector.modules.length))
      }`,
      `${kv("selectedFiles", s.selectedFiles.length, int(s.selectedFiles.length))} files kept`,
    ),
    card("ROIs", kv("rois", rois, int(rois)), `${kv("hotPixels", hot, int(hot))} hot pixels`),
    card(
      "Backend",
      kv("backend", s.backend.name, esc(s.backend.name)),
      kv("adapter", s.backend.adapter, esc(s.backend.adapter)),
    ),
    card(
      "Throughput",
      `${
        kv("framesPerSecond", s.timing.framesPerSecond, int(s.timing.framesPerSecond))
      } <small>frames/s</small>`,
      `${kv("gbPerSecond", s.timing.gbPerSecond, num(s.timing.gbPerSecond, 2))} GB/s · ` +
        `${kv("seconds", s.timing.seconds, num(s.timing.seconds, 1))} s`,
    ),
  ];
  const { backend: _b, detector: _d, modules: _m, ...rest } = s.params as Record<string, unknown>;
  const params = Object.entries(rest)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) =>
      `<tr><td>${esc(k)}</td><td>${esc(typeof v === "object" ? JSON.stringify(v) : v)}</td></tr>`
    )
    .join("");
  const beam = s.beam
    ? `<p class="small">Beam: SASE ${esc(s.beam.sase)}, ${esc(s.beam.repRate)} MHz, reference frame ` +
      `${esc(s.beam.referenceFrame)}, ${
        kv("dataFrames", s.beam.dataFrames, int(s.beam.dataFrames))
      } frames with ` +
      `an X-ray pulse; ${
        kv("anomalies", s.anomalyCount ?? s.anomalies.length, int(s.anomalyCount ?? s.anomalies.length))
      } frames with signal but no pulse.</p>`
    : "";
  const notes = [...s.notes.map((n) => `localise: ${n}`), ...m.notes.map((n) => `report: ${n}`)];
  const noteList = notes.length
    ? `<ul class="notes">${notes.slice(0, 30).map((n) => `<li>${esc(n)}</li>`).join("")}${
      notes.length > 30 ? `<li>… ${notes.length - 30} more</li>` : ""
    }</ul>`
    : "";
  return `<section id="summary"><div class="cards">${cards.join("")}</div>${beam}${noteList}
<details><summary>Parameters</summary><table class="params">${params}</table></details></section>`;
}

function trainPlot(m: ReportModel): string {
  const t = m.trains;
  const n = t.frames.length;
  const W = 1100, H = 220, L = 52, R = 14, T = 12, B = 38;
  const pw = W - L - R, ph = H - T - B;
  if (n === 0) return `<p class="muted">No frames.</p>`;
  const frac = t.lit.map((l, i) => l / t.frames[i]);
  const overall = m.summary.frames > 0 ? m.summary.litFrames / m.summary.frames : 0;
  const yMax = Math.min(1, niceCeil(Math.max(0.05, overall, ...t.maxFraction) * 1.05));
  const x = (i: number) => L + ((i + 0.5) * pw) / n;
  const y = (v: number) => T + ph * (1 - v / yMax);
  const parts: string[] = [];
  // Grid and y axis.
  for (let k = 0; k <= 4; k++) {
    const v = (yMax * k) / 4;
    parts.push(
      `<line class="grid" x1="${L}" x2="${W - R}" y1="${f1(y(v))}" y2="${f1(y(v))}"/>` +
        `<text class="tick" x="${L - 6}" y="${f1(y(v) + 4)}" text-anchor="end">${f1(100 * v)}%</text>`,
    );
  }
  // X ticks: train IDs.
  const nt = Math.min(n, 7);
  for (let k = 0; k < nt; k++) {
    const i = nt === 1 ? 0 : Math.round((k * (n - 1)) / (nt - 1));
    parts.push(
      `<line class="axis" x1="${f1(x(i))}" x2="${f1(x(i))}" y1="${T + ph}" y2="${T + ph + 4}"/>` +
        `<text class="tick" x="${f1(x(i))}" y="${T + ph + 16}" text-anchor="middle">${
          t.firstTrain[i]
        }</text>`,
    );
  }
  parts.push(`<line class="axis" x1="${L}" x2="${W - R}" y1="${T + ph}" y2="${T + ph}"/>`);
  if (n <= 120) {
    const bw = Math.max(1, (pw / n) * 0.8);
    frac.forEach((v, i) => {
      parts.push(
        `<rect class="bar" x="${f1(x(i) - bw / 2)}" y="${f1(y(v))}" width="${f1(bw)}" height="${
          f1(y(0) - y(v))
        }"/>`,
      );
    });
  } else {
    if (m.trainsPerPoint > 1) {
      const up = t.maxFraction.map((v, i) => `${f1(x(i))},${f1(y(v))}`);
      const down = t.minFraction.map((v, i) => `${f1(x(i))},${f1(y(v))}`).reverse();
      parts.push(`<polygon class="band" points="${[...up, ...down].join(" ")}"/>`);
    }
    parts.push(
      `<polyline class="line" points="${frac.map((v, i) => `${f1(x(i))},${f1(y(v))}`).join(" ")}"/>`,
    );
  }
  parts.push(
    `<line class="mean" x1="${L}" x2="${W - R}" y1="${f1(y(overall))}" y2="${f1(y(overall))}"/>` +
      `<text class="meanlabel" x="${W - R - 4}" y="${f1(y(overall) - 4)}" text-anchor="end">run: ${
        pct(overall)
      }</text>`,
  );
  // Where the sample frames are.
  const stack = new Map<number, number>();
  for (const s of m.samples) {
    let i = t.firstTrain.findIndex((f, k) => s.trainId >= f && s.trainId <= t.lastTrain[k]);
    if (i < 0) i = 0;
    const k = stack.get(i) ?? 0;
    stack.set(i, k + 1);
    const yy = T + ph - 3 - k * 9;
    parts.push(
      `<a href="#sample-${s.label}"><path class="marker ${s.kind}" d="M${f1(x(i))},${f1(yy)} l-4,-7 h8 z">` +
        `<title>${s.label}: train ${s.trainId}, pulse ${s.pulseId}</title></path></a>`,
    );
  }
  const xl = m.trainsPerPoint > 1 ? `train ID (${m.trainsPerPoint} trains per point)` : "train ID";
  parts.push(`<text class="axlabel" x="${L + pw / 2}" y="${H - 4}" text-anchor="middle">${xl}</text>`);
  parts.push(
    `<line id="train-guide" class="guide" x1="0" x2="0" y1="${T}" y2="${T + ph}" visibility="hidden"/>` +
      `<rect id="train-hover" x="${L}" y="${T}" width="${pw}" height="${ph}" fill="transparent"/>`,
  );
  const data = {
    L,
    pw,
    n,
    first: t.firstTrain,
    last: t.lastTrain,
    trains: t.trains,
    frames: t.frames,
    lit: t.lit,
  };
  return `<section id="trains"><h2>Lit fraction per train</h2>
<p class="caption">Lit frames / frames of each train${
    m.trainsPerPoint > 1 ? `, ${m.trainsPerPoint} trains per point (band: lowest to highest train)` : ""
  }; dashed: the whole run. Triangles: the sample frames below (<span class="lit">lit</span>, <span class="dark">dark</span>).</p>
<div class="plotwrap"><svg id="train-plot" class="plot" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" data-points="${n}">${
    parts.join("")
  }</svg><div id="train-tip" class="tip" hidden></div></div>${jsonScript("train-data", data)}</section>`;
}

function litColour(frac: number): string {
  const t = Math.sqrt(Math.max(0, Math.min(1, frac)));
  const a = [255, 255, 255], b = [234, 88, 12];
  return `rgb(${a.map((c, i) => Math.round(c + (b[i] - c) * t)).join(",")})`;
}

/**
 * The module map: every module of the layout drawn as its panels at their assembled positions (the view of
 * the sample frames), filled by the module's lit-frame fraction; modules of the layout not in this run grey.
 */
function moduleMap(m: ReportModel): string {
  const s = m.summary;
  const a = m.assembly;
  const type = a.type;
  const byModule = new Map(s.modules.map((x) => [x.module, x]));
  // Data module numbers of every layout module (JUNGFRAU: layout module + 1).
  const all = Array.from({ length: a.layout.nModules }, (_, lm) => (type === "JUNGFRAU" ? lm + 1 : lm));
  for (const mod of s.detector.modules) if (!all.includes(mod)) all.push(mod);
  const scale = Math.min(1, 460 / Math.max(a.width, a.height));
  const W = Math.ceil(a.width * scale), H = Math.ceil(a.height * scale);
  const parts: string[] = [];
  for (const mod of all) {
    const r = byModule.get(mod);
    const lm = layoutModule(type, mod);
    const panels = lm >= 0 && lm < a.layout.nModules ? modulePanels(a, mod) : [];
    // Label at the module's centre pixel.
    const c = pointAt(a, mod, (a.layout.moduleSs - 1) / 2, (a.layout.moduleFs - 1) / 2) ??
      pointAt(a, mod, 0, 0);
    const polys = (fill: string) => panels.map((pts) => `<polygon points="${pts}"${fill}/>`).join("");
    const label = c
      ? `<text class="mod" x="${c[0].toFixed(1)}" y="${c[1].toFixed(1)}" text-anchor="middle" ` +
        `dominant-baseline="middle" style="font-size:${(12 / scale).toFixed(0)}px">M${mod}</text>`
      : "";
    if (!r) {
      parts.push(
        `<g class="cell absent" data-module="${mod}" data-key="map"><title>module ${mod}: not in this run</title>` +
          `${polys("")}${label}</g>`,
      );
      continue;
    }
    const frac = r.frames > 0 ? r.litFrames / r.frames : 0;
    const textCls = Math.sqrt(frac) > 0.6 ? " inv" : "";
    const rois = r.rois.map((b) => boxPolygon(a, mod, b)).filter((x) => x !== null)
      .map((pts) => `<polygon class="roi" points="${pts}"/>`).join("");
    parts.push(
      `<g class="cell ${r.selected ? "selected" : "unselected"}${textCls}" data-module="${r.module}" ` +
        `data-key="map" data-value="${frac}"><title>module ${r.module}: ${r.litFrames} of ${r.frames} frames ` +
        `lit, ${r.rois.length} ROIs, ${r.hotPixels.length} hot pixels, ${
          r.selected ? "selected" : "not selected"
        }</title>${polys(` fill="${litColour(frac)}"`)}${rois}${label}</g>`,
    );
  }
  const legendY = H + 18;
  const legend =
    `<defs><linearGradient id="litgrad">${
      [0, 0.25, 0.5, 0.75, 1].map((u) => `<stop offset="${u}" stop-color="${litColour(u * u)}"/>`).join("")
    }</linearGradient></defs>` +
    `<rect x="0" y="${legendY}" width="120" height="10" fill="url(#litgrad)" stroke="#cbd5e1"/>` +
    `<text class="small" x="0" y="${legendY + 22}">0</text><text class="small" x="30" y="${
      legendY + 22
    }" text-anchor="middle">6 %</text><text class="small" x="60" y="${
      legendY + 22
    }" text-anchor="middle">25 %</text>` +
    `<text class="small" x="120" y="${legendY + 22}" text-anchor="end">100 %</text>` +
    `<text class="small" x="128" y="${legendY + 9}">lit frames of the module</text>` +
    `<rect x="0" y="${legendY + 30}" width="22" height="12" rx="2" class="legend-sel"/>` +
    `<text class="small" x="28" y="${legendY + 40}">selected: its files are kept</text>` +
    `<rect x="200" y="${legendY + 30}" width="22" height="12" rx="2" class="legend-unsel"/>` +
    `<text class="small" x="228" y="${legendY + 40}">not selected</text>`;
  const Wt = Math.max(W, 330), Ht = legendY + 46;
  return `<svg id="module-map" class="map" viewBox="-1 -1 ${Wt + 2} ${Ht + 2}" width="${Wt + 2}" height="${
    Ht + 2
  }"><g transform="scale(${scale})">${parts.join("")}</g>${legend}</svg>`;
}

function moduleTable(m: ReportModel): string {
  const s = m.summary;
  const px = m.geometry.pixels;
  const rows = s.modules.map((r) => {
    const frac = r.frames > 0 ? r.litFrames / r.frames : NaN;
    const roiPx = r.rois.reduce((a, b) => a + (b[2] - b[0]) * (b[3] - b[1]), 0);
    const mk = (key: string, v: unknown, text: string) => `<td>${kv(key, v, text, r.module)}</td>`;
    return `<tr data-module="${r.module}" class="${r.selected ? "selected" : "unselected"}">` +
      `<td>${kv("module", r.module, String(r.module), r.module)}</td>` +
      mk("frames", r.frames, int(r.frames)) +
      mk("litFrames", r.litFrames, int(r.litFrames)) +
      mk("litFraction", frac, pct(frac)) +
      mk("hotPixels", r.hotPixels.length, int(r.hotPixels.length)) +
      mk("rois", r.rois.length, int(r.rois.length)) +
      mk("roiArea", roiPx / px, pct(roiPx / px)) +
      mk("selected", r.selected, r.selected ? "yes" : "no") +
      mk("files", r.files.length, int(r.files.length)) +
      `</tr>`;
  });
  return `<table id="module-table" class="modules"><thead><tr><th>module</th><th>frames</th><th>lit frames</th>` +
    `<th>lit</th><th>hot pixels</th><th>ROIs</th><th>ROI area</th><th>selected</th><th>files</th></tr></thead>` +
    `<tbody>${rows.join("")}</tbody></table>`;
}

function modulesSection(m: ReportModel): string {
  const p = m.summary.params;
  return `<section id="modules"><h2>Modules</h2>
<p class="caption">A module is selected when at least ${
    pct(p.minLitFraction, 0)
  } of its frames are lit or it holds an ROI.
ROI area: the module's pixels inside its ROI boxes. Map: the modules at their places in the layout ${
    esc(m.assembly.layout.source)
  }, looking along the beam (x to the left, y up), ROIs outlined.</p>
<div class="two">${moduleMap(m)}${moduleTable(m)}</div></section>`;
}

const QUANTITY: Record<Histogram["quantity"], string> = {
  framePeaks: "peaks per frame (all modules)",
  asicFraction: "lit fraction of the ASIC (lit / valid pixels)",
  frameFraction: "lit fraction of the frame (lit / valid pixels, all modules)",
};

function fracLabel(v: number): string {
  return v >= 0.01 ? String(v) : `1e${Math.round(Math.log10(v))}`;
}

function histogramPlot(h: Histogram, id: string, W = 600): string {
  const H = 270, L = 56, R = 16, T = 28, B = 44, Z = 28, ZG = 10;
  const pw = W - L - R, ph = H - T - B;
  const e = h.edges;
  const counts = h.quantity === "framePeaks";
  const lx0 = Math.log10(e[0]), lx1 = Math.log10(e[e.length - 1]);
  const x = (v: number) => L + Z + ZG + ((Math.log10(v) - lx0) / (lx1 - lx0)) * (pw - Z - ZG);
  const max = Math.max(1, h.zero.lit, h.zero.dark, ...h.lit, ...h.dark);
  const ly1 = Math.max(1, Math.ceil(Math.log10(max)));
  const y = (c: number) => T + ph * (1 - Math.log10(Math.max(1, c)) / ly1);
  const parts: string[] = [];
  for (let k = 0; k <= ly1; k++) {
    parts.push(
      `<line class="grid" x1="${L}" x2="${W - R}" y1="${f1(y(10 ** k))}" y2="${f1(y(10 ** k))}"/>` +
        `<text class="tick" x="${L - 6}" y="${f1(y(10 ** k) + 4)}" text-anchor="end">${
          k <= 3 ? 10 ** k : `1e${k}`
        }</text>`,
    );
  }
  const bars = (series: number[], zero: number, cls: string) => {
    const out: string[] = [];
    if (zero > 0) {
      out.push(
        `<rect class="${cls}" x="${L + 2}" y="${f1(y(zero))}" width="${Z - 4}" height="${
          f1(y(1) - y(zero))
        }">` +
          `<title>0: ${zero} ${h.unit}</title></rect>`,
      );
    }
    series.forEach((c, k) => {
      if (c <= 0) return;
      const x0 = x(e[k]), x1 = x(e[k + 1]);
      const range = counts
        ? `${e[k]}${e[k + 1] - e[k] > 1 ? `–${e[k + 1] - 1}` : ""}`
        : `${e[k].toPrecision(2)}–${e[k + 1].toPrecision(2)}`;
      out.push(
        `<rect class="${cls}" x="${f1(x0)}" y="${f1(y(c))}" width="${f1(Math.max(1, x1 - x0 - 0.5))}" ` +
          `height="${f1(Math.max(0.5, y(1) - y(c)))}"><title>${range}: ${c} ${h.unit}</title></rect>`,
      );
    });
    return out.join("");
  };
  parts.push(bars(h.dark, h.zero.dark, "hdark"), bars(h.lit, h.zero.lit, "hlit"));
  // X axis: the zero slot and decades.
  parts.push(
    `<line class="axis" x1="${L}" x2="${W - R}" y1="${T + ph}" y2="${T + ph}"/>` +
      `<text class="tick" x="${L + Z / 2}" y="${T + ph + 15}" text-anchor="middle">0</text>`,
  );
  const step = lx1 - lx0 > 5 ? 2 : 1;
  for (let d = Math.ceil(lx0); d <= Math.floor(lx1); d++) {
    if ((Math.floor(lx1) - d) % step) continue;
    const xv = x(10 ** d);
    parts.push(
      `<line class="axis" x1="${f1(xv)}" x2="${f1(xv)}" y1="${T + ph}" y2="${T + ph + 4}"/>` +
        `<text class="tick" x="${f1(xv)}" y="${T + ph + 15}" text-anchor="middle">${
          counts ? String(10 ** d) : fracLabel(10 ** d)
        }</text>`,
    );
  }
  parts.push(
    `<text class="axlabel" x="${L + pw / 2}" y="${H - 6}" text-anchor="middle">${
      QUANTITY[h.quantity]
    }</text>` +
      `<text class="axlabel" transform="translate(14 ${
        T + ph / 2
      }) rotate(-90)" text-anchor="middle">${h.unit}</text>`,
  );
  if (Number.isFinite(h.threshold) && h.threshold > 0) {
    const tx = x(Math.min(Math.max(h.threshold, e[0]), e[e.length - 1]));
    const label = counts ? `minPeaks = ${h.threshold}` : `threshold = ${h.threshold.toPrecision(3)}`;
    const right = tx < L + pw * 0.75;
    parts.push(
      `<line id="${id}-threshold" class="threshold" x1="${f1(tx)}" x2="${f1(tx)}" y1="${T - 6}" y2="${
        T + ph
      }" ` +
        `data-value="${h.threshold}"/><text class="thlabel" x="${f1(right ? tx + 4 : tx - 4)}" y="${
          T - 10
        }" ` +
        `text-anchor="${right ? "start" : "end"}">${label}</text>`,
    );
  }
  parts.push(
    `<rect x="${W - R - 190}" y="${T}" width="10" height="10" class="hdark"/><text class="small" x="${
      W - R - 176
    }" y="${T + 9}">dark frames: ${int(h.total.dark)} ${h.unit}</text>` +
      `<rect x="${W - R - 190}" y="${T + 16}" width="10" height="10" class="hlit"/><text class="small" x="${
        W - R - 176
      }" y="${T + 25}">lit frames: ${int(h.total.lit)} ${h.unit}</text>`,
  );
  return `<svg id="${id}" class="plot" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}">${
    parts.join("")
  }</svg>`;
}

function classifierSection(m: ReportModel): string {
  const h = m.hist;
  const p = m.summary.params;
  const beam = p.litFrom && p.litFrom !== "images"
    ? ` Lit frames are combined with the beam annotation (--lit-from ${esc(p.litFrom)}).`
    : "";
  let text: string;
  if (h.quantity === "framePeaks") {
    text = `<p>Classifier <b>peaks</b>: a frame is lit when it holds at least <b>minPeaks = ${p.minPeaks}` +
      `</b> peaks, all modules together${
        p.minLit > 0 ? ` (or an ASIC has ${p.minLit} filtered candidate pixels)` : ""
      }.${beam}</p><ul class="small">` +
      `<li>lit frames: ${int(h.above.lit)} of ${int(h.total.lit)} (${
        pct(h.above.lit / h.total.lit)
      }) at or above minPeaks</li><li>dark frames: ${int(h.above.dark)} of ${int(h.total.dark)} (${
        pct(h.above.dark / h.total.dark, 3)
      }) at or above minPeaks</li></ul>`;
  } else {
    const sh = m.scoreHist!;
    text =
      `<p>Classifier <b>adaptive</b>: a frame is lit when its lit fraction exceeds median + ${p.snr} × IQR / ` +
      `1.349 over the run (<b>${
        Number.isFinite(h.threshold) ? h.threshold.toPrecision(3) : "–"
      }</b>); the ASICs ` +
      `of a lit frame are lit above the same fraction (or when they hold a peak).${beam}</p><ul class="small">` +
      `<li>lit frames: ${int(sh.above.lit)} of ${int(sh.total.lit)} above the threshold</li>` +
      `<li>dark frames: ${int(sh.above.dark)} of ${int(sh.total.dark)} above the threshold</li></ul>`;
  }
  const plots = m.scoreHist
    ? histogramPlot(h, "hist-plot", 540) + histogramPlot(m.scoreHist, "score-plot", 540)
    : histogramPlot(h, "hist-plot");
  return `<section id="classifier"><h2>Classifier</h2><div class="two">${plots}<div class="explain">${text}
<p class="small muted">Per ASIC of every recorded module frame (ASICs without valid pixels left out)${
    m.scoreHist ? "; right: per frame" : ""
  }; lit and dark frames as classified. Log scales; zeros in the left slot. A clean run shows the dark frames
left of the threshold and the lit ones spread to the right.</p></div></div></section>`;
}

function frameCard(m: ReportModel, s: SampleFrame): string {
  const g = m.geometry;
  const a = m.assembly;
  const mods = m.summary.detector.modules;
  const nA = g.nAsics;
  const litAsics = s.asicLit.reduce((x, y) => x + y, 0);
  const svg: string[] = [];
  mods.forEach((mod, mi) => {
    for (const b of m.summary.modules[mi]?.rois ?? []) {
      const poly = boxPolygon(a, mod, b);
      if (poly) svg.push(`<polygon class="roi" data-module="${mod}" points="${poly}"/>`);
    }
    for (let k = 0; k < nA; k++) {
      if (!s.asicLit[mi * nA + k]) continue;
      const r = Math.floor(k / g.asicCols), c = k % g.asicCols;
      const box = [r * g.asicSs, c * g.asicFs, (r + 1) * g.asicSs, (c + 1) * g.asicFs];
      const poly = boxPolygon(a, mod, box);
      if (poly) svg.push(`<polygon class="asic" points="${poly}"/>`);
    }
  });
  // Peaks: a circle around the centroid at its assembled position, radius from the box (at least 3 px).
  let drawn = 0;
  for (const p of s.peaks) {
    const at = pointAt(a, p.module, p.ss, p.fs);
    if (!at) continue;
    const size = Math.max(p.box[2] - p.box[0], p.box[3] - p.box[1]) * (1 / a.layout.panels[0].res) / a.cell;
    svg.push(
      `<circle class="peak" data-module="${p.module}" cx="${at[0].toFixed(1)}" cy="${at[1].toFixed(1)}" r="${
        Math.max(3, size / 2 + 2).toFixed(1)
      }"><title>peak, module ${p.module}: ${p.area} px, ${p.intensity.toPrecision(3)} integrated, max ${
        p.max.toPrecision(3)
      } at (ss ${p.ss.toFixed(1)}, fs ${p.fs.toFixed(1)})</title></circle>`,
    );
    drawn++;
  }
  const absent = mods.filter((_, mi) => s.images[mi] === "absent");
  const W = a.width, H = a.height;
  const size = `style="width:calc(var(--z) * ${W}px);height:calc(var(--z) * ${H}px)"`;
  const content = s.assembled === null
    ? `<div class="noimg" ${size}>no image</div>`
    : `<div class="img" ${size}><img src="${s.assembled}" width="${W}" height="${H}" alt="assembled detector, train ${s.trainId}, pulse ${s.pulseId}">` +
      `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${svg.join("")}</svg></div>`;
  const shown = s.peaks.length < s.nPeaks ? ` (${s.peaks.length} in the table)` : "";
  const missing = absent.length ? ` · not recorded: M${absent.join(", M")}` : "";
  return `<figure class="frame ${s.kind}" id="sample-${s.label}" data-sample="${s.label}" data-train="${s.trainId}" ` +
    `data-pulse="${s.pulseId}" data-frame="${s.frame}" data-peaks="${drawn}"><figcaption><b class="${s.kind}">${s.label}</b> train ${s.trainId} · pulse ${s.pulseId}` +
    `<br><span class="muted">frame ${s.frame} · ${s.nPeaks} peaks${shown} · ${litAsics} lit ASICs${missing}</span></figcaption>` +
    `<div class="mods">${content}</div></figure>`;
}

function framesSection(m: ReportModel): string {
  const lit = m.samples.filter((s) => s.kind === "lit");
  const dark = m.samples.filter((s) => s.kind === "dark");
  const raw = m.summary.notes.some((n) => n.startsWith("RAW data"));
  const unit = raw ? "ADU" : "photons";
  const fmt = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toPrecision(2));
  const legend =
    `<div class="legend"><span class="scale"><span>≤ ${
      fmt(m.scale.lo)
    }</span><span class="bar" style="background:${scaleGradient()}"></span><span>≥ ${
      fmt(m.scale.hi)
    } ${unit}</span></span>` +
    `<span><i class="sw" style="background:${INVALID_COLOUR}"></i>masked / NaN</span>` +
    `<span><i class="sw" style="background:${HOT_COLOUR}"></i>hot pixel</span>` +
    `<span><i class="sw box peak"></i>peak</span><span><i class="sw box asic"></i>lit ASIC</span>` +
    `<span><i class="sw box roi"></i>module ROI</span>` +
    `<label><input type="checkbox" id="zoom"> zoom ×2</label></div>`;
  const row = (title: string, list: SampleFrame[]) =>
    `<h3>${title}</h3>${
      list.length
        ? `<div class="row">${list.map((s) => frameCard(m, s)).join("")}</div>`
        : `<p class="muted">None.</p>`
    }`;
  return `<section id="frames"><h2>Sample frames</h2>
<p class="caption">Evenly spaced over the run's lit and dark frames. The assembled detector, pixels placed by the
layout ${esc(m.assembly.layout.source)}, looking along the beam (x to the left, y up); one image pixel is ${
    (m.assembly.cell * 1e6).toFixed(0)
  } µm (largest value of the pixels landing in it). Log colour scale from the lit-pixel threshold to the 99.9th
percentile of the lit sample frames. Peaks are circled at their assembled positions.</p>${legend}
<div id="frame-views" class="frameviews">${row("Lit frames", lit)}${
    row("Dark frames", dark)
  }</div></section>`;
}

// ---------------------------------------------------------------------------------------------------------

const CSS = `
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--lit:${LIT};--dark:${DARK};--z:1}
*{box-sizing:border-box}
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);margin:0;background:#f8fafc}
main{max-width:1180px;margin:0 auto;padding:14px 18px 40px}
header{display:flex;align-items:baseline;gap:14px;flex-wrap:wrap;border-bottom:2px solid var(--fg);padding-bottom:6px}
h1{font-size:19px;margin:0}h2{font-size:15px;margin:0 0 4px}h3{font-size:13px;margin:10px 0 4px}
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:10px 12px;margin-top:12px}
.sub,.muted,.caption{color:var(--muted)}.caption{margin:0 0 8px}.small{font-size:11.5px}
.cards{display:grid;grid-template-columns:repeat(8,1fr);gap:8px}
.card{border:1px solid var(--line);border-radius:5px;padding:6px 8px;background:#fcfcfd}
.card .label{color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums;white-space:nowrap}
.card .value small{font-size:11px;font-weight:400;color:var(--muted)}
.card .sub{font-size:11.5px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.notes{background:#fffbeb;border:1px solid #fcd34d;border-radius:5px;margin:8px 0 0;padding:6px 10px 6px 26px}
details{margin-top:8px}summary{cursor:pointer;color:var(--muted)}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:2px 8px;border-bottom:1px solid var(--line);text-align:right}
th{font-weight:600;color:var(--muted);font-size:11.5px}
.params td{text-align:left;font-family:ui-monospace,monospace;font-size:11.5px}
tr.unselected td{color:var(--muted)}
.two{display:flex;gap:22px;align-items:flex-start;flex-wrap:wrap}
.explain{flex:1;min-width:300px}
svg.plot text,svg.map text{font:11px system-ui,sans-serif;fill:#374151}
.grid{stroke:#eef0f3}.axis{stroke:#9ca3af}.tick{fill:#6b7280}
.axlabel{fill:#374151}
.bar{fill:var(--lit);opacity:.85}.line{fill:none;stroke:var(--lit);stroke-width:1.5}
.band{fill:var(--lit);opacity:.18}.mean{stroke:#111827;stroke-dasharray:5 4}
.meanlabel{fill:#111827!important}
.marker.lit{fill:var(--lit);stroke:#7c2d12}.marker.dark{fill:var(--dark);stroke:#1e293b}
.guide{stroke:#111827;stroke-width:1;opacity:.4}
.hdark{fill:var(--dark);opacity:.55}.hlit{fill:var(--lit);opacity:.6}
.threshold{stroke:#dc2626;stroke-width:1.5;stroke-dasharray:4 3}.thlabel{fill:#dc2626!important;font-weight:600}
.plotwrap{position:relative}
.tip{position:absolute;pointer-events:none;background:#111827;color:#fff;padding:3px 7px;border-radius:4px;font-size:11.5px;white-space:nowrap}
.cell rect{stroke:#9ca3af}.cell.selected rect{stroke:#15803d;stroke-width:2}.cell.unselected{opacity:.6}
.cell.absent rect{fill:#f9fafb;stroke:#d1d5db;stroke-dasharray:3 3}.cell.absent text{fill:#9ca3af}
.cell .mod{font-weight:700}
.cell polygon{stroke:#9ca3af;vector-effect:non-scaling-stroke}.cell.selected polygon{stroke:#15803d;stroke-width:1.5}
.cell.absent polygon{fill:#f9fafb;stroke:#d1d5db;stroke-dasharray:3 3}.cell polygon.roi{fill:none;stroke:#1d4ed8;stroke-width:1}.cell.inv text{fill:#fff}
.qlabel{font-weight:700;fill:#6b7280!important}
.legend-sel{fill:#fff;stroke:#15803d;stroke-width:2}.legend-unsel{fill:#fff;stroke:#9ca3af;opacity:.6}
.lit{color:var(--lit)}.dark{color:var(--dark)}
.legend{display:flex;gap:14px;align-items:center;flex-wrap:wrap;font-size:11.5px;margin-bottom:4px}
.legend .scale{display:flex;align-items:center;gap:5px}.legend .bar{display:inline-block;width:140px;height:10px;border-radius:2px}
.sw{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px;border-radius:2px}
.sw.box{background:#000;border:2px solid}
.sw.peak{border-color:#39ff14}.sw.asic{border-color:#ff9f1c;border-style:dotted}.sw.roi{border-color:#fff;border-style:dashed;outline:1px solid #000}
.row{display:flex;flex-wrap:wrap;gap:10px}
.frame{margin:0;border:1px solid var(--line);border-radius:5px;padding:5px 6px;background:#fff}
.frame.lit{border-top:3px solid var(--lit)}.frame.dark{border-top:3px solid var(--dark)}
.frame figcaption{font-size:11.5px;margin-bottom:3px;font-variant-numeric:tabular-nums}
.mods{display:flex;gap:3px;flex-wrap:wrap;max-width:1130px}
.mlabel{font-size:10px;color:var(--muted);text-align:center}
.img{position:relative;background:#fff;outline:1px solid var(--line)}
.img img{display:block;width:100%;height:100%;image-rendering:pixelated}
.img svg{position:absolute;inset:0;width:100%;height:100%;overflow:visible}
.img rect,.img polygon,.img circle{fill:none;vector-effect:non-scaling-stroke}
.img .peak{stroke:#39ff14;stroke-width:1.2}.img .asic{stroke:#ff9f1c;stroke-width:1;stroke-dasharray:2 2}
.img .roi{stroke:#fff;stroke-opacity:.6;stroke-width:1;stroke-dasharray:4 3}
.noimg{background:#e5e7eb;color:var(--muted);font-size:10px;display:flex;align-items:center;justify-content:center;writing-mode:vertical-rl}
.frameviews.zoom{--z:2}
footer{color:var(--muted);font-size:11.5px;margin-top:14px}
code{font-family:ui-monospace,monospace;font-size:12px}
@media (max-width:1100px){.cards{grid-template-columns:repeat(4,1fr)}}
`;

const SCRIPT = `
(function () {
  var d = JSON.parse(document.getElementById("train-data").textContent);
  var svg = document.getElementById("train-plot"), hover = document.getElementById("train-hover");
  var tip = document.getElementById("train-tip"), guide = document.getElementById("train-guide");
  if (svg && hover && tip && guide) {
    hover.addEventListener("mousemove", function (ev) {
      var r = svg.getBoundingClientRect(), sx = r.width / svg.viewBox.baseVal.width;
      var x = (ev.clientX - r.left) / sx;
      var i = Math.max(0, Math.min(d.n - 1, Math.floor(((x - d.L) / d.pw) * d.n)));
      var cx = d.L + ((i + 0.5) * d.pw) / d.n;
      guide.setAttribute("x1", cx); guide.setAttribute("x2", cx); guide.setAttribute("visibility", "visible");
      var t = d.first[i] === d.last[i] ? "train " + d.first[i] : "trains " + d.first[i] + "\\u2013" + d.last[i];
      tip.textContent = t + ": " + d.lit[i] + " of " + d.frames[i] + " frames lit (" +
        (100 * d.lit[i] / d.frames[i]).toFixed(1) + " %)";
      tip.hidden = false;
      tip.style.left = Math.min(r.width - 260, cx * sx + 10) + "px";
      tip.style.top = "8px";
    });
    hover.addEventListener("mouseleave", function () {
      tip.hidden = true; guide.setAttribute("visibility", "hidden");
    });
  }
  var zoom = document.getElementById("zoom"), views = document.getElementById("frame-views");
  if (zoom && views) zoom.addEventListener("change", function () { views.classList.toggle("zoom", zoom.checked); });
  document.documentElement.setAttribute("data-ready", "1");
})();
`;

export function renderReport(m: ReportModel): string {
  const s = m.summary;
  const name = String(s.run).replace(/\/+$/, "").split("/").pop() ?? String(s.run);
  const { modules, ...rest } = s;
  const embedded = {
    ...rest,
    modules: modules.map(({ hotPixels, ...x }) => ({ ...x, hotPixels: hotPixels.length })),
  };
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>localise report · ${esc(name)}</title><style>${CSS}</style></head>
<body><main>
<header><h1>localise report · ${esc(name)}</h1><span class="sub">${kv("run", s.run, esc(s.run))} · ${
    kv("detector", s.detector.name, esc(s.detector.name))
  } (${kv("detectorType", s.detector.type, esc(s.detector.type))}, modules ${
    esc(s.detector.modules.join(", "))
  }) · generated ${esc(m.generated)}</span></header>
${summarySection(m)}
${trainPlot(m)}
${modulesSection(m)}
${classifierSection(m)}
${framesSection(m)}
<footer>xfel-redu localise report. Regenerate with <code>xfel-redu report LOCALISE_OUT</code>; the numbers are
those of summary.json and the REDU file beside this page.</footer>
</main>
${jsonScript("summary-data", embedded)}
<script>${SCRIPT}</script>
</body></html>
`;
}
