import type { DeviceInfo } from '../../base/types';
import { devMajor, devMinor } from '../../base/loopdev';
import { jsonQuote, rawEncode, safeEncode } from './text';

/**
 * What `losetup` prints, reproduced from util-linux 2.38.1: the `--list`
 * table as libsmartcols lays it out (human, --raw, --json), and the old
 * `-a` line. Pure functions of DeviceInfo; run.ts does the I/O.
 */

export type JsonType = 'string' | 'number' | 'boolean';

export interface ColumnInfo {
  name: string;
  /** libsmartcols width hint: < 1 is a fraction of the terminal, >= 1 a minimum width. */
  whint: number;
  right: boolean;
  json: JsonType;
  help: string;
}

/** The columns in util-linux's order (the order of --output-all and of --help). */
export const COLUMNS: readonly ColumnInfo[] = [
  { name: 'NAME', whint: 0.25, right: false, json: 'string', help: 'loop device name' },
  { name: 'AUTOCLEAR', whint: 1, right: true, json: 'boolean', help: 'autoclear flag set' },
  { name: 'BACK-FILE', whint: 0.3, right: false, json: 'string', help: 'device backing file' },
  { name: 'BACK-INO', whint: 4, right: true, json: 'number', help: 'backing file inode number' },
  { name: 'BACK-MAJ:MIN', whint: 6, right: false, json: 'string', help: 'backing file major:minor device number' },
  { name: 'MAJ:MIN', whint: 3, right: false, json: 'string', help: 'loop device major:minor number' },
  { name: 'OFFSET', whint: 5, right: true, json: 'number', help: 'offset from the beginning' },
  { name: 'PARTSCAN', whint: 1, right: true, json: 'boolean', help: 'partscan flag set' },
  { name: 'RO', whint: 1, right: true, json: 'boolean', help: 'read-only device' },
  { name: 'SIZELIMIT', whint: 5, right: true, json: 'number', help: 'size limit of the file in bytes' },
  { name: 'DIO', whint: 1, right: true, json: 'boolean', help: 'access backing file with direct-io' },
  { name: 'LOG-SEC', whint: 4, right: true, json: 'number', help: 'logical sector size in bytes' },
];

/**
 * loopfs's own columns: only shown when named with -O (never by default or
 * by --output-all, which stay util-linux's).
 */
export const EXTRA_COLUMNS: readonly ColumnInfo[] = [
  { name: 'OVERLAY', whint: 0.3, right: false, json: 'string', help: 'copy-on-write overlay file ("(temporary)" when unnamed)' },
  { name: 'OVERLAY-CHANGED', whint: 5, right: true, json: 'number', help: 'bytes the overlay changed (whole blocks)' },
];

/** `losetup --list` without -O. */
export const DEFAULT_COLUMNS: readonly string[] = ['NAME', 'SIZELIMIT', 'OFFSET', 'AUTOCLEAR', 'RO', 'BACK-FILE', 'DIO', 'LOG-SEC'];

export function columnByName(name: string): ColumnInfo | undefined {
  const n = name.toUpperCase();
  return COLUMNS.find((c) => c.name === n) ?? EXTRA_COLUMNS.find((c) => c.name === n);
}

/**
 * The text util-linux puts in one cell ('' = no data: an empty cell, null in
 * JSON). An unbound device (only ever shown when named: `losetup -l DEV`)
 * has no backing file, offset or size limit, as with util-linux.
 */
export function cellValue(col: string, d: DeviceInfo): string {
  const flag = (b: boolean): string => (b ? '1' : '0');
  switch (col) {
    case 'NAME':
      return d.path;
    case 'AUTOCLEAR':
      return flag(d.bound && d.autoclear);
    case 'BACK-FILE':
      return d.bound ? d.backFile ?? '' : '';
    case 'BACK-INO':
      return d.bound && d.backIno ? String(d.backIno) : '';
    case 'BACK-MAJ:MIN':
      // util-linux: "%8u:%-3u" — the padding is part of the value, JSON included.
      return d.bound && d.backDev
        ? `${String(devMajor(d.backDev)).padStart(8)}:${String(devMinor(d.backDev)).padEnd(3)}`
        : '';
    case 'MAJ:MIN':
      // util-linux fills this only for a block device of the loop major (7).
      // A loopfs device entry is a regular file on the instance's FUSE mount,
      // not a block device, so by the same rule the cell is empty (JSON null);
      // printing the FUSE mount's st_dev would send scripts that look up
      // /sys/dev/block/MAJ:MIN to an unrelated device.
      return '';
    case 'OFFSET':
      return d.bound ? String(d.offset) : '';
    case 'PARTSCAN':
      // An unbound kernel loop device reports whether the driver supports
      // partition scanning (it does, and so does loopfs).
      return flag(d.bound ? d.partscan : true);
    case 'RO':
      return flag(d.bound && d.readOnly);
    case 'SIZELIMIT':
      return d.bound ? String(d.sizelimit) : '';
    case 'DIO':
      return flag(d.bound && d.directIo);
    case 'LOG-SEC':
      return String(d.sectorSize || 512);
    case 'OVERLAY':
      return d.bound && d.overlay ? d.overlay.delta ?? '(temporary)' : '';
    case 'OVERLAY-CHANGED':
      return d.bound && d.overlay ? String(d.overlay.changedBytes) : '';
    default:
      throw new Error(`unknown losetup column ${col}`);
  }
}

/** The old `losetup -a` / `losetup DEV` line of a bound device. */
export function formatOldLine(d: DeviceInfo): string {
  const dev = d.backDev ?? 0;
  const ino = d.backIno ?? 0;
  let s = !dev && !ino
    ? `${d.path}: []: (${d.backFile ?? ''})`
    : `${d.path}: [${String(dev).padStart(4, '0')}]:${ino} (${d.backFile ?? ''})`;
  if (d.offset) s += `, offset ${d.offset}`;
  if (d.sizelimit) s += `, sizelimit ${d.sizelimit}`;
  return `${s}\n`;
}

export type TableFormat = 'human' | 'raw' | 'json';

export interface TableOptions {
  format: TableFormat;
  noHeadings: boolean;
  /** stdout is a terminal: libsmartcols then fits the table into termWidth. */
  isTerm: boolean;
  termWidth: number;
  /** UTF-8 locale (see isUtf8Locale). */
  utf8: boolean;
}

/** The whole table, ending with a newline; '' for a table without rows (JSON: an empty array). */
export function formatTable(cols: readonly ColumnInfo[], rows: readonly string[][], opt: TableOptions): string {
  if (opt.format === 'json') return formatJson(cols, rows);
  if (rows.length === 0) return '';
  if (opt.format === 'raw') {
    const lines = rows.map((r) => r.map(rawEncode).join(' '));
    if (!opt.noHeadings) lines.unshift(cols.map((c) => rawEncode(c.name)).join(' '));
    return `${lines.join('\n')}\n`;
  }
  return formatHuman(cols, rows, opt);
}

function formatJson(cols: readonly ColumnInfo[], rows: readonly string[][]): string {
  if (rows.length === 0) return '{\n   "loopdevices": [\n\n   ]\n}\n';
  // ul_jsonwrt: three-space indent, objects after the first glued on with ",{".
  const objs = rows.map((r) => {
    const fields = cols.map((c, i) => {
      const v = r[i];
      let val: string;
      if (c.json === 'boolean') val = v !== '' && v[0] !== '0' && v[0] !== 'N' && v[0] !== 'n' ? 'true' : 'false';
      else if (v === '') val = 'null';
      else val = c.json === 'number' ? v : jsonQuote(v);
      return `         ${jsonQuote(c.name.toLowerCase())}: ${val}`;
    });
    return `{\n${fields.join(',\n')}\n      }`;
  });
  return `{\n   "loopdevices": [\n      ${objs.join(',')}\n   ]\n}\n`;
}

/** libsmartcols' human table (libsmartcols/src/calculate.c and print.c, list mode, no flags but RIGHT). */
function formatHuman(cols: readonly ColumnInfo[], rows: readonly string[][], opt: TableOptions): string {
  const enc = rows.map((r) => r.map((v) => safeEncode(v, opt.utf8)));
  const head = cols.map((c) => safeEncode(c.name, opt.utf8));
  const minw = head.map((h) => Math.max(h.width, 1));
  const width = cols.map((c, i) => {
    let w = 0;
    for (const r of enc) w = Math.max(w, r[i].width);
    if (w < minw[i]) return minw[i];
    if (c.whint >= 1 && w < c.whint && minw[i] < c.whint) return c.whint;
    return w;
  });

  if (opt.isTerm) {
    let total = width.reduce((a, b) => a + b, 0) + cols.length - 1;
    // The only reduction that applies to losetup's columns (none is TRUNC or
    // WRAP): shrink the relative-width ones (NAME, BACK-FILE) one cell per
    // pass, never below their header, until the table fits.
    let progress = true;
    while (total > opt.termWidth && progress) {
      progress = false;
      for (let i = 0; i < cols.length && total > opt.termWidth; i++) {
        if (width[i] === minw[i] || width[i] === 0) continue;
        if (cols[i].whint <= 0 || cols[i].whint >= 1) continue;
        width[i]--;
        total--;
        progress = true;
      }
    }
  }

  const last = cols.length - 1;
  const line = (cells: { text: string; width: number }[]): string => {
    let out = '';
    for (let i = 0; i <= last; i++) {
      const { text, width: len } = cells[i];
      let w = width[i];
      if (i === last && len < w && !cols[i].right) w = len;
      let used = len;
      if (text !== '') {
        if (cols[i].right && len < w) {
          out += ' '.repeat(w - len);
          used = w;
        }
        out += text;
      }
      if (i === last) break;
      if (used < w) out += ' '.repeat(w - used);
      if (used > w) {
        // Too long for its column and not truncatable: the next column
        // starts on a new line, below where it belongs.
        out += '\n';
        for (let k = 0; k <= i; k++) out += ' '.repeat(width[k]) + (k === last ? '' : ' ');
      } else out += ' ';
    }
    return out;
  };

  const lines = enc.map(line);
  if (!opt.noHeadings) lines.unshift(line(head));
  return `${lines.join('\n')}\n`;
}
