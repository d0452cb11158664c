/**
 * Detector layouts in space: CrystFEL `.geom` files as EXtra-geom writes them for EuXFEL detectors, built-in
 * default layouts, a `.geom` writer, and per-module pixel positions.
 *
 * Coordinates (as in EXtra-geom and CrystFEL): x, y, z in metres; the origin is where the beam meets the
 * detector plane (z = 0 there); looking along the beam, x increases to the left and y upwards. A panel's
 * `fs` / `ss` vectors are the steps of one pixel along fast scan / slow scan, in pixel units (1 = 1/res
 * metres); `corner_x` / `corner_y` (pixels) locate the outer corner of the panel's first pixel (min_ss,
 * min_fs). `coffset` (metres) is the panel's z offset; `clen` (the detector distance) is NOT added to z here:
 * consumers add it (EXtra-geom does the same), so pyFAI's `dist` is `clen`.
 *
 * The data layout of a module is (ss, fs) with the module shape of src/exdf/detectors.ts; panels name slices of
 * it: `p<module>a<asic>/dim1 = <module>` (the 3D layout EXtra-geom writes, frame dim0 = %) or, without an
 * integer dim, modules stacked along slow scan (the 2D layout, module = floor(ss / module ss size)).
 *
 * Pixel centres: for a pixel (ss, fs) of a panel,
 *   position = (corner + (ss - min_ss + 0.5) * ss_vec + (fs - min_fs + 0.5) * fs_vec) / res, z += coffset.
 * Pixel corners (for pyFAI's `Detector.set_pixel_corners`): offsets (ss, fs) = (0,0), (1,0), (1,1), (0,1)
 * from the first corner, the order EXtra-geom uses. DSSC's hexagonal pixels are treated as the
 * parallelograms the `.geom` vectors describe (the format carries no hexagon shape).
 *
 * Rigid groups, bad regions and other CrystFEL keys are read past; a value this reader needs that does not
 * parse is an InputError naming the file and line.
 */
import * as fs from "node:fs";
import { type DetectorType, geometry as moduleGeometry } from "./detectors.ts";
import { InputError } from "../errors.ts";

export type Vec3 = [number, number, number];

export interface Panel {
  name: string;
  module: number;
  /** Inclusive pixel ranges within the module image. */
  minSs: number;
  maxSs: number;
  minFs: number;
  maxFs: number;
  /** One pixel step along fast scan / slow scan, in pixel units. */
  fs: Vec3;
  ss: Vec3;
  /** Corner of the first pixel, in pixels. */
  cornerX: number;
  cornerY: number;
  /** z offset of the panel, metres. */
  coffset: number;
  /** Pixels per metre. */
  res: number;
}

export interface DetectorLayout {
  type: DetectorType;
  moduleSs: number;
  moduleFs: number;
  nModules: number;
  panels: Panel[];
  /** Detector distance (metres), photon energy (eV), ADU per eV, where the file gives them as numbers. */
  clen?: number;
  photonEnergy?: number;
  aduPerEv?: number;
  /** Where it came from (a path, or `default AGIPD`). */
  source: string;
}

/** Pixel size (m) and module count of the built-in layouts. */
const DEFAULTS: Record<DetectorType, { pixel: number; modules: number; name: string }> = {
  AGIPD: { pixel: 200e-6, modules: 16, name: "AGIPD-1M" },
  LPD: { pixel: 500e-6, modules: 16, name: "LPD-1M" },
  DSSC: { pixel: 236e-6, modules: 16, name: "DSSC-1M" },
  JUNGFRAU: { pixel: 75e-6, modules: 8, name: "JUNGFRAU-4M" },
};

// ---------------------------------------------------------------------------------------------------------
// Reading

interface RawPanel {
  line: number;
  keys: Map<string, { value: string; line: number }>;
}

function parseNumber(file: string, line: number, key: string, value: string): number {
  const v = Number(value);
  if (value === "" || !Number.isFinite(v)) {
    throw new InputError(file, `line ${line}: ${key} = ${JSON.stringify(value)} is not a number`);
  }
  return v;
}

/** A CrystFEL direction like `+0.0001x -1.0000y` or `-y` (pixel units). */
export function parseVector(file: string, line: number, key: string, value: string): Vec3 {
  const out: Vec3 = [0, 0, 0];
  const s = value.replace(/\s+/g, "");
  const re = /([+-]?(?:\d+\.?\d*|\.\d+)?(?:e[+-]?\d+)?)([xyz])/giy;
  let pos = 0;
  let any = false;
  while (pos < s.length) {
    re.lastIndex = pos;
    const m = re.exec(s);
    if (!m || m[0] === "") {
      throw new InputError(
        file,
        `line ${line}: ${key} = ${JSON.stringify(value)} is not a direction like +1x -0.5y`,
      );
    }
    let coef = m[1];
    if (coef === "" || coef === "+") coef = "1";
    else if (coef === "-") coef = "-1";
    const v = Number(coef);
    if (!Number.isFinite(v)) {
      throw new InputError(
        file,
        `line ${line}: ${key} = ${JSON.stringify(value)} is not a direction like +1x -0.5y`,
      );
    }
    out["xyz".indexOf(m[2].toLowerCase())] += v;
    any = true;
    pos = re.lastIndex;
  }
  if (!any) throw new InputError(file, `line ${line}: ${key} is empty`);
  return out;
}

/** A number where the file gives one; CrystFEL also allows an HDF5 path for clen / photon_energy. */
function optionalNumber(file: string, line: number, key: string, value: string): number | undefined {
  if (value.startsWith("/")) return undefined;
  return parseNumber(file, line, key, value);
}

/** Parse the text of a `.geom` file. `file` names it in errors. */
export function parseGeom(text: string, file: string): DetectorLayout {
  const globals = new Map<string, { value: string; line: number }>();
  const panels = new Map<string, RawPanel>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const lineNo = i + 1;
    const raw = lines[i];
    const semi = raw.indexOf(";");
    const body = (semi >= 0 ? raw.slice(0, semi) : raw).trim();
    if (body === "") continue;
    const eq = body.indexOf("=");
    if (eq < 0) {
      throw new InputError(file, `line ${lineNo}: expected "key = value", got ${JSON.stringify(body)}`);
    }
    const key = body.slice(0, eq).trim();
    const value = body.slice(eq + 1).trim();
    if (key === "") throw new InputError(file, `line ${lineNo}: missing key before "="`);
    const slash = key.indexOf("/");
    if (slash < 0) {
      globals.set(key, { value, line: lineNo });
      continue;
    }
    const name = key.slice(0, slash);
    const sub = key.slice(slash + 1);
    // Bad regions and rigid groups are not panels.
    if (name.startsWith("bad") || name.startsWith("rigid_group")) continue;
    let p = panels.get(name);
    if (!p) {
      // Global settings seen so far are the panel's defaults (CrystFEL's rule).
      p = { line: lineNo, keys: new Map(globals) };
      panels.set(name, p);
    }
    p.keys.set(sub, { value, line: lineNo });
  }
  if (panels.size === 0) throw new InputError(file, "no panels (expected lines like p0a0/min_fs = 0)");

  const num = (key: string) => {
    const g = globals.get(key);
    return g ? optionalNumber(file, g.line, key, g.value) : undefined;
  };
  let clen = num("clen");
  if (clen === undefined) {
    // Some files give clen per panel: take it when every panel gives the same number.
    const per = [...panels.values()].map((p) => p.keys.get("clen"));
    if (per.every((e) => e && !e.value.startsWith("/"))) {
      const vals = per.map((e) => parseNumber(file, e!.line, "clen", e!.value));
      if (vals.every((v) => v === vals[0])) clen = vals[0];
    }
  }
  const photonEnergy = num("photon_energy");
  const aduPerEv = num("adu_per_eV");

  // First pass: numbers, vectors, dims.
  interface Pre extends Omit<Panel, "module"> {
    module?: number;
    line: number;
  }
  const pre: Pre[] = [];
  for (const [name, p] of panels) {
    const get = (k: string) => {
      const e = p.keys.get(k);
      if (!e) throw new InputError(file, `line ${p.line}: panel ${name} has no ${k}`);
      return e;
    };
    const n = (k: string) => {
      const e = get(k);
      const v = parseNumber(file, e.line, `${name}/${k}`, e.value);
      if (k.startsWith("min_") || k.startsWith("max_")) {
        if (!Number.isInteger(v) || v < 0) {
          throw new InputError(file, `line ${e.line}: ${name}/${k} = ${e.value} is not a pixel index`);
        }
      }
      return v;
    };
    const vec = (k: string) => {
      const e = get(k);
      return parseVector(file, e.line, `${name}/${k}`, e.value);
    };
    let module: number | undefined;
    for (const [k, e] of p.keys) {
      if (!/^dim\d+$/.test(k)) continue;
      if (/^\d+$/.test(e.value)) {
        if (module !== undefined) {
          throw new InputError(file, `line ${e.line}: panel ${name} has two module dimensions`);
        }
        module = Number(e.value);
      } else if (!["%", "ss", "fs"].includes(e.value)) {
        throw new InputError(
          file,
          `line ${e.line}: ${name}/${k} = ${e.value} (expected %, ss, fs or a module number)`,
        );
      }
    }
    const res = n("res");
    if (!(res > 0)) throw new InputError(file, `line ${get("res").line}: ${name}/res must be positive`);
    const coffset = p.keys.has("coffset") ? n("coffset") : 0;
    const q: Pre = {
      name,
      module,
      line: p.line,
      minSs: n("min_ss"),
      maxSs: n("max_ss"),
      minFs: n("min_fs"),
      maxFs: n("max_fs"),
      fs: vec("fs"),
      ss: vec("ss"),
      cornerX: n("corner_x"),
      cornerY: n("corner_y"),
      coffset,
      res,
    };
    if (q.maxSs < q.minSs || q.maxFs < q.minFs) {
      throw new InputError(file, `line ${p.line}: panel ${name} has max_ss < min_ss or max_fs < min_fs`);
    }
    pre.push(q);
  }

  // Detector type from the module shape (3D layout) or the fast-scan width (2D layout).
  const layout3d = pre.every((q) => q.module !== undefined);
  if (!layout3d && pre.some((q) => q.module !== undefined)) {
    throw new InputError(file, "some panels name a module dimension and some do not");
  }
  const fsWidth = Math.max(...pre.map((q) => q.maxFs)) + 1;
  let type: DetectorType | undefined;
  if (layout3d) {
    const ssHeight = Math.max(...pre.map((q) => q.maxSs)) + 1;
    for (const t of Object.keys(DEFAULTS) as DetectorType[]) {
      const g = moduleGeometry(t);
      if (g.moduleSs === ssHeight && g.moduleFs === fsWidth) type = t;
    }
    if (!type) {
      throw new InputError(
        file,
        `module shape ${ssHeight} x ${fsWidth} (ss x fs) is no AGIPD, LPD, DSSC or JUNGFRAU module`,
      );
    }
  } else {
    const byFs: Record<number, DetectorType> = { 128: "AGIPD", 256: "LPD", 512: "DSSC", 1024: "JUNGFRAU" };
    type = byFs[fsWidth];
    if (!type) {
      throw new InputError(file, `fast-scan width ${fsWidth} is no AGIPD, LPD, DSSC or JUNGFRAU module`);
    }
  }
  const g = moduleGeometry(type);
  const out: Panel[] = pre.map((q) => {
    let module = q.module;
    let { minSs, maxSs } = q;
    if (module === undefined) {
      module = Math.floor(minSs / g.moduleSs);
      minSs -= module * g.moduleSs;
      maxSs -= module * g.moduleSs;
    }
    if (maxSs >= g.moduleSs || q.maxFs >= g.moduleFs) {
      throw new InputError(
        file,
        `line ${q.line}: panel ${q.name} reaches outside the ${g.moduleSs} x ${g.moduleFs} module`,
      );
    }
    const { line: _l, module: _m, minSs: _a, maxSs: _b, ...rest } = q;
    return { ...rest, module, minSs, maxSs };
  });
  const nModules = Math.max(...out.map((p) => p.module)) + 1;
  // No pixel in two panels.
  const owner = new Int32Array(nModules * g.pixels).fill(-1);
  out.forEach((p, i) => {
    for (let s = p.minSs; s <= p.maxSs; s++) {
      for (let f = p.minFs; f <= p.maxFs; f++) {
        const k = p.module * g.pixels + s * g.moduleFs + f;
        if (owner[k] >= 0) {
          throw new InputError(
            file,
            `panels ${out[owner[k]].name} and ${p.name} overlap at module ${p.module} ss ${s} fs ${f}`,
          );
        }
        owner[k] = i;
      }
    }
  });
  return {
    type,
    moduleSs: g.moduleSs,
    moduleFs: g.moduleFs,
    nModules,
    panels: out,
    clen,
    photonEnergy,
    aduPerEv,
    source: file,
  };
}

/** Read a `.geom` file. */
export function readGeom(path: string): DetectorLayout {
  let text: string;
  try {
    text = fs.readFileSync(path, "utf8");
  } catch (e) {
    throw new InputError(path, `cannot read geometry file (${(e as NodeJS.ErrnoException).code ?? e})`);
  }
  return parseGeom(text, path);
}

// ---------------------------------------------------------------------------------------------------------
// Built-in layouts (idealised, after EXtra-geom's example quadrant positions; beam at the origin)

function tile(
  module: number,
  asic: number,
  ss0: number,
  ss1: number,
  fs0: number,
  fs1: number,
  cornerM: [number, number],
  ssVec: Vec3,
  fsVec: Vec3,
  pixel: number,
): Panel {
  return {
    name: `p${module}a${asic}`,
    module,
    minSs: ss0,
    maxSs: ss1 - 1,
    minFs: fs0,
    maxFs: fs1 - 1,
    ss: ssVec,
    fs: fsVec,
    cornerX: cornerM[0] / pixel,
    cornerY: cornerM[1] / pixel,
    coffset: 0,
    res: 1 / pixel,
  };
}

function agipdPanels(): Panel[] {
  const px = DEFAULTS.AGIPD.pixel;
  // First pixel of modules 0, 4, 8, 12, in pixels; ASIC gap 2 px, module gap 29 px.
  const quads = [[-525, 625], [-550, -10], [520, -160], [542.5, 475]];
  const xo = [1, 1, -1, -1];
  const yo = [-1, -1, 1, 1];
  const out: Panel[] = [];
  for (let m = 0; m < 16; m++) {
    const q = m >> 2;
    const y = (quads[q][1] - (m % 4) * (128 + 29)) * px;
    for (let a = 0; a < 8; a++) {
      const x = (quads[q][0] + xo[q] * (64 + 2) * a) * px;
      out.push(tile(m, a, a * 64, a * 64 + 64, 0, 128, [x, y], [xo[q], 0, 0], [0, yo[q], 0], px));
    }
  }
  return out;
}

function lpdPanels(): Panel[] {
  const px = DEFAULTS.LPD.pixel;
  // Quadrant corners (mm) by module 4, tile 16; gaps 4 px between tiles and between modules.
  const quads = [[11.4, 299], [-11.5, 8], [254.5, -16], [278.5, 275]];
  const gap = 4;
  const panelW = (256 + gap + gap) * px;
  const panelH = (256 + 7 * gap + gap) * px;
  const tileW = (128 + gap) * px;
  const tileH = (32 + gap) * px;
  const across = [-1, -1, 0, 0];
  const up = [0, -1, -1, 0];
  const out: Panel[] = [];
  for (let m = 0; m < 16; m++) {
    const q = m >> 2;
    const pcx = quads[q][0] * 1e-3 + across[m % 4] * panelW;
    const pcy = quads[q][1] * 1e-3 + up[m % 4] * panelH;
    for (let a = 0; a < 16; a++) {
      const tUp = a < 8 ? -a : -(15 - a);
      const tAcross = a < 8 ? -1 : 0;
      const x = pcx + tAcross * tileW - 128 * px;
      const y = pcy + tUp * tileH - 32 * px;
      const ss0 = a < 8 ? (7 - a) * 32 : (a - 8) * 32;
      const fs0 = a < 8 ? 0 : 128;
      out.push(tile(m, a, ss0, ss0 + 32, fs0, fs0 + 128, [x, y], [0, 1, 0], [1, 0, 0], px));
    }
  }
  return out;
}

function dsscPanels(): Panel[] {
  const px = DEFAULTS.DSSC.pixel;
  const rowStep = 1.5 / Math.sqrt(3); // hexagon rows, in pixel widths
  // Quadrant corners (mm) at low x, low y; ASIC gap 2 mm, module gap 4 mm.
  const quads = [[-130, 5], [-130, -125], [5, -125], [5, 5]];
  const asicGap = 2e-3;
  const panelGap = 4e-3;
  const xo = [-1, -1, 1, 1];
  const yo = [1, 1, -1, -1];
  const fragW = px * 256;
  const fragH = px * rowStep * 128;
  const moduleW = 2 * fragW + asicGap;
  const quadH = 4 * fragH + 3 * panelGap;
  const out: Panel[] = [];
  for (let m = 0; m < 16; m++) {
    const q = m >> 2;
    const qx = quads[q][0] * 1e-3;
    const qy = quads[q][1] * 1e-3;
    const sx = xo[q] === -1 ? qx + moduleW : qx;
    const sy = xo[q] === -1 ? qy : qy + quadH;
    const my = sy + yo[q] * (m % 4) * (fragH + panelGap);
    for (let a = 0; a < 2; a++) {
      const x = sx + xo[q] * a * (fragW + asicGap);
      out.push(
        tile(m, a, 0, 128, a * 256, a * 256 + 256, [x, my], [0, yo[q] * rowStep, 0], [xo[q], 0, 0], px),
      );
    }
  }
  return out;
}

function jungfrauPanels(): Panel[] {
  const px = DEFAULTS.JUNGFRAU.pixel;
  // 8 modules in 2 columns x 4 rows; ASIC gap 2 px, module gaps 100 px (x) and 20 px (y); then centred.
  const gap = 2;
  const modW = 4 * 256 + 3 * gap;
  const modH = 2 * 256 + gap;
  const pos: [number, number][] = [];
  for (let m = 0; m < 8; m++) {
    const row = Math.floor(m / 2);
    const col = m % 2;
    pos.push([-modW - modW * col - col * 100, modH * row + row * 20]);
  }
  const minX = Math.min(...pos.map((p) => p[0]));
  const maxX = Math.max(...pos.map((p) => p[0])) + modW;
  const minY = Math.min(...pos.map((p) => p[1]));
  const maxY = Math.max(...pos.map((p) => p[1])) + modH;
  const cx = (minX + maxX) / 2;
  const cy = (minY + maxY) / 2;
  const out: Panel[] = [];
  for (let m = 0; m < 8; m++) {
    for (let a = 0; a < 8; a++) {
      const row = Math.floor(a / 4);
      const col = a % 4;
      const x = (pos[m][0] - cx + (256 + gap) * col) * px;
      const y = (pos[m][1] - cy + (256 + gap) * row) * px;
      out.push(
        tile(m, a, row * 256, row * 256 + 256, col * 256, col * 256 + 256, [x, y], [0, 1, 0], [1, 0, 0], px),
      );
    }
  }
  return out;
}

/** The built-in layout of a detector type: AGIPD-1M, LPD-1M, DSSC-1M (16 modules) or JUNGFRAU-4M (8). */
export function defaultLayout(type: DetectorType): DetectorLayout {
  const g = moduleGeometry(type);
  const panels = type === "AGIPD"
    ? agipdPanels()
    : type === "LPD"
    ? lpdPanels()
    : type === "DSSC"
    ? dsscPanels()
    : jungfrauPanels();
  return {
    type,
    moduleSs: g.moduleSs,
    moduleFs: g.moduleFs,
    nModules: DEFAULTS[type].modules,
    panels,
    source: `default ${DEFAULTS[type].name}`,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Writing

function fmtNum(v: number): string {
  return String(Number(v.toPrecision(15)));
}

function fmtVec(v: Vec3): string {
  return v.map((c, i) => ({ c, axis: "xyz"[i] }))
    .filter(({ c, axis }) => !(axis === "z" && c === 0))
    .map(({ c, axis }) => `${c < 0 || Object.is(c, -0) ? "-" : "+"}${fmtNum(Math.abs(c))}${axis}`)
    .join(" ");
}

/**
 * A `.geom` text in EXtra-geom's layout (3D data layout: dim0 = frame, dim1 = module, dim2 = ss, dim3 = fs).
 * With `stack` (module numbers in data order): the 2D ("slabby") layout instead, dim0 = frame, dim1 = ss,
 * dim2 = fs, the listed modules stacked along slow scan (module k of the list at ss offset k x module ss
 * size), only their panels written; `data` and `peakList` (a CXI peak-list group, `peak_list_type = cxi`)
 * name the HDF5 paths, `mask` a mask array shaped like the data (any bit set: bad). CrystFEL reads CXI peak
 * lists only through such a layout (src/localise/cxi.ts).
 */
export function writeGeom(
  layout: DetectorLayout,
  opts: {
    clen?: number;
    photonEnergy?: number;
    aduPerEv?: number;
    stack?: number[];
    data?: string;
    peakList?: string;
    /** A per-pixel mask shaped like the data: any bit set marks the pixel bad. */
    mask?: string;
  } = {},
): string {
  const clen = opts.clen ?? layout.clen;
  const energy = opts.photonEnergy ?? layout.photonEnergy;
  const adu = opts.aduPerEv ?? layout.aduPerEv;
  const resAll = layout.panels[0].res;
  const sameRes = layout.panels.every((p) => p.res === resAll);
  const lines = [
    `; ${DEFAULTS[layout.type].name} geometry file written by xfel-redu`,
    "",
    `data = ${opts.data ?? "/entry_1/instrument_1/detector_1/data"} ;`,
    "dim0 = %",
    ...(opts.stack ? ["dim1 = ss", "dim2 = fs"] : []),
    ...(opts.peakList ? [`peak_list = ${opts.peakList}`, "peak_list_type = cxi"] : []),
    ...(opts.mask ? [`mask0_data = ${opts.mask}`, "mask0_goodbits = 0x0", "mask0_badbits = 0xffffffff"] : []),
    ...(sameRes ? [`res = ${fmtNum(resAll)} ; pixels per metre`] : []),
    "",
    "; Beam energy in eV",
    energy === undefined ? "; photon_energy = SET ME" : `photon_energy = ${fmtNum(energy)}`,
    "",
    "; Camera length, aka detector distance",
    clen === undefined ? "; clen = SET ME" : `clen = ${fmtNum(clen)}`,
    "",
    "; Analogue Digital Units per eV",
    adu === undefined ? "; adu_per_eV = SET ME" : `adu_per_eV = ${fmtNum(adu)}`,
    "",
  ];
  const stack = opts.stack;
  const modules = stack ?? Array.from({ length: layout.nModules }, (_, m) => m);
  for (const m of modules) {
    const names = layout.panels.filter((p) => p.module === m).map((p) => p.name);
    if (names.length) lines.push(`rigid_group_p${m} = ${names.join(",")}`);
  }
  lines.push("");
  for (const m of modules) {
    for (const p of layout.panels.filter((q) => q.module === m)) {
      const n = p.name;
      const ss0 = stack ? stack.indexOf(m) * layout.moduleSs : 0;
      lines.push(
        "",
        ...(stack ? [] : [`${n}/dim1 = ${p.module}`, `${n}/dim2 = ss`, `${n}/dim3 = fs`]),
        `${n}/min_fs = ${p.minFs}`,
        `${n}/min_ss = ${p.minSs + ss0}`,
        `${n}/max_fs = ${p.maxFs}`,
        `${n}/max_ss = ${p.maxSs + ss0}`,
        `${n}/fs = ${fmtVec(p.fs)}`,
        `${n}/ss = ${fmtVec(p.ss)}`,
        `${n}/corner_x = ${fmtNum(p.cornerX)}`,
        `${n}/corner_y = ${fmtNum(p.cornerY)}`,
        `${n}/coffset = ${fmtNum(p.coffset)}`,
      );
      if (!sameRes) lines.push(`${n}/res = ${fmtNum(p.res)}`);
    }
  }
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------------------------
// Pixel positions

function panelsOf(layout: DetectorLayout, module: number): Panel[] {
  if (!Number.isInteger(module) || module < 0 || module >= layout.nModules) {
    throw new InputError(layout.source, `no module ${module} (the layout has ${layout.nModules})`);
  }
  return layout.panels.filter((p) => p.module === module);
}

/**
 * Pixel-centre positions of one module: (ss, fs, 3) as x, y, z in metres (z without clen). Pixels that no
 * panel covers are NaN.
 */
export function pixelCentres(layout: DetectorLayout, module: number): Float64Array {
  const { moduleSs, moduleFs } = layout;
  const out = new Float64Array(moduleSs * moduleFs * 3).fill(NaN);
  for (const p of panelsOf(layout, module)) {
    const [ss0, ss1, ss2] = p.ss, [fs0, fs1, fs2] = p.fs, { cornerX, cornerY, coffset, res } = p;
    for (let s = p.minSs; s <= p.maxSs; s++) {
      const a = s - p.minSs + 0.5;
      for (let f = p.minFs; f <= p.maxFs; f++) {
        const b = f - p.minFs + 0.5;
        const k = (s * moduleFs + f) * 3;
        out[k] = (cornerX + a * ss0 + b * fs0) / res;
        out[k + 1] = (cornerY + a * ss1 + b * fs1) / res;
        out[k + 2] = coffset + (a * ss2 + b * fs2) / res;
      }
    }
  }
  return out;
}

/** The corner offsets (ss, fs) of a pixel, in the order of `pixelCorners`. */
export const CORNER_OFFSETS: readonly [number, number][] = [[0, 0], [1, 0], [1, 1], [0, 1]];

/**
 * Pixel corners of one module: (ss, fs, 4, 3) as x, y, z in metres, corners in CORNER_OFFSETS order. For
 * pyFAI's `Detector.set_pixel_corners`, reorder the last axis to (z, y, x) and stack modules along ss.
 */
export function pixelCorners(layout: DetectorLayout, module: number): Float64Array {
  const { moduleSs, moduleFs } = layout;
  const out = new Float64Array(moduleSs * moduleFs * 12).fill(NaN);
  for (const p of panelsOf(layout, module)) {
    for (let s = p.minSs; s <= p.maxSs; s++) {
      for (let f = p.minFs; f <= p.maxFs; f++) {
        const k = (s * moduleFs + f) * 12;
        for (let c = 0; c < 4; c++) {
          const a = s - p.minSs + CORNER_OFFSETS[c][0];
          const b = f - p.minFs + CORNER_OFFSETS[c][1];
          out[k + c * 3] = (p.cornerX + a * p.ss[0] + b * p.fs[0]) / p.res;
          out[k + c * 3 + 1] = (p.cornerY + a * p.ss[1] + b * p.fs[1]) / p.res;
          out[k + c * 3 + 2] = p.coffset + (a * p.ss[2] + b * p.fs[2]) / p.res;
        }
      }
    }
  }
  return out;
}

/** The layout to use: a `.geom` file when given, else the built-in one of the type. */
export function loadLayout(path: string | undefined, type: DetectorType): DetectorLayout {
  const layout = path ? readGeom(path) : defaultLayout(type);
  if (layout.type !== type) {
    throw new InputError(layout.source, `geometry is for ${layout.type} modules, the data is ${type}`);
  }
  return layout;
}
