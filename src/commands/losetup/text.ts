/**
 * The three ways util-linux 2.38 puts a cell on the screen, byte for byte:
 * libsmartcols' "safe" encoding for the human table (lib/mbsalign.c
 * mbs_safe_encode_to_buffer), the raw format's escaping (include/carefulputc.h
 * fputs_nonblank) and its JSON string quoting (lib/jsonwrt.c).
 *
 * The safe encoding depends on the locale, as it does for util-linux: in a
 * UTF-8 locale a valid printable character is shown as is and counts its
 * display width; elsewhere (C/POSIX) every byte >= 0x80 is shown as \xNN.
 */

/** True when LC_ALL / LC_CTYPE / LANG (the first one set) names a UTF-8 locale. */
export function isUtf8Locale(env: Record<string, string | undefined>): boolean {
  const loc = env.LC_ALL || env.LC_CTYPE || env.LANG || '';
  return /utf-?8/i.test(loc);
}

const hex = (b: number): string => `\\x${b.toString(16).padStart(2, '0')}`;

/** Decodes one UTF-8 sequence at b[i]; undefined when it is not valid (mbrtowc → -1/-2). */
function decodeUtf8(b: Uint8Array, i: number): { cp: number; len: number } | undefined {
  const c = b[i];
  let len: number, cp: number, min: number;
  if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; min = 0x80; }
  else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; min = 0x800; }
  else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; min = 0x10000; }
  else return undefined;
  if (i + len > b.length) return undefined;
  for (let k = 1; k < len; k++) {
    const d = b[i + k];
    if ((d & 0xc0) !== 0x80) return undefined;
    cp = (cp << 6) | (d & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return undefined;
  return { cp, len };
}

const NOT_PRINTABLE = /[\p{Cc}\p{Cs}\p{Cn}\p{Zl}\p{Zp}]/u;
const ZERO_WIDTH = /[\p{Mn}\p{Me}\p{Cf}]/u;

/**
 * Display width of a printable code point, after glibc's wcwidth: 0 for
 * combining marks and format characters, 2 for East Asian wide and
 * full-width characters (and the wide emoji blocks), 1 otherwise.
 */
export function charWidth(cp: number): number {
  if (cp === 0x00ad) return 1;
  if (cp >= 0x1160 && cp <= 0x11ff) return 0;
  if (ZERO_WIDTH.test(String.fromCodePoint(cp))) return 0;
  if (
    (cp >= 0x1100 && cp <= 0x115f) ||
    cp === 0x2329 || cp === 0x232a ||
    (cp >= 0x2e80 && cp <= 0xa4cf && cp !== 0x303f) ||
    (cp >= 0xac00 && cp <= 0xd7a3) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0xfe10 && cp <= 0xfe19) ||
    (cp >= 0xfe30 && cp <= 0xfe6f) ||
    (cp >= 0xff00 && cp <= 0xff60) ||
    (cp >= 0xffe0 && cp <= 0xffe6) ||
    (cp >= 0x1f300 && cp <= 0x1f64f) ||
    (cp >= 0x1f900 && cp <= 0x1f9ff) ||
    (cp >= 0x20000 && cp <= 0x2fffd) ||
    (cp >= 0x30000 && cp <= 0x3fffd)
  ) return 2;
  return 1;
}

/**
 * libsmartcols' safe encoding: control characters, "\x" (so an encoded
 * sequence can be told from a literal one) and what the locale cannot print
 * become \xNN. Returns the text and its width in screen cells.
 */
export function safeEncode(s: string, utf8: boolean): { text: string; width: number } {
  const b = Buffer.from(s, 'utf8');
  let text = '';
  let width = 0;
  let i = 0;
  while (i < b.length) {
    const c = b[i];
    if (c === 0) break;
    if ((c === 0x5c && b[i + 1] === 0x78) || c < 0x20 || c === 0x7f) {
      text += hex(c);
      width += 4;
      i++;
      continue;
    }
    if (c < 0x80) {
      text += String.fromCharCode(c);
      width++;
      i++;
      continue;
    }
    const d = utf8 ? decodeUtf8(b, i) : undefined;
    if (!d) {
      text += hex(c);
      width += 4;
      i++;
      continue;
    }
    const ch = String.fromCodePoint(d.cp);
    if (NOT_PRINTABLE.test(ch)) {
      for (let k = 0; k < d.len; k++) text += hex(b[i + k]);
      width += 4 * d.len;
    } else {
      text += ch;
      width += charWidth(d.cp);
    }
    i += d.len;
  }
  return { text, width };
}

/** The raw format: blanks, backslashes and anything not printable ASCII become \xNN. */
export function rawEncode(s: string): string {
  const b = Buffer.from(s, 'utf8');
  let out = '';
  for (const c of b) {
    if (c === 0) break;
    if (c === 0x20 || c === 0x09 || c === 0x5c || c < 0x20 || c >= 0x7f) out += hex(c);
    else out += String.fromCharCode(c);
  }
  return out;
}

/** A JSON string as util-linux writes it: only `"`, `\` and control characters are escaped. */
export function jsonQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0) ?? 0;
    if (c === 0) break;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (c >= 0x20) out += ch;
    else if (ch === '\b') out += '\\b';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\r') out += '\\r';
    else out += `\\u00${c.toString(16).padStart(2, '0')}`;
  }
  return `${out}"`;
}
