import { LoopfsError, type Errno } from '../../base/errors';
import { strerror } from './strerror';

/**
 * util-linux's strtosize() (lib/strutils.c parse_size): a number in C's
 * strtoumax base 0 (decimal, 0x hex, 0 octal), optionally followed by
 * K/M/G/T/P/E/Z/Y (or k…y), "KiB" (powers of 1024) or "KB" (powers of 1000),
 * with an optional decimal fraction ("1.5M"). No minus sign. Returns the
 * value or the errno util-linux would report (EINVAL, ERANGE above 2^64-1).
 */
export function parseSize(str: string): bigint | Errno {
  const MAX = (1n << 64n) - 1n;
  let p = 0;
  while (p < str.length && ' \t\n\v\f\r'.includes(str[p])) p++;
  if (str === '' || str[p] === '-') return 'EINVAL';

  const num = strtoumax(str, 0);
  if (num === undefined) return 'EINVAL';
  if (num.overflow) return 'ERANGE';
  let x = num.value;
  p = num.end;
  if (p >= str.length) return x;

  let base = 1024n;
  let frac = 0n;
  let fracZeros = 0;
  const at = (i: number): string => (i < str.length ? str[i] : '\0');
  for (;;) {
    if (at(p + 1) === 'i' && (at(p + 2) === 'B' || at(p + 2) === 'b') && at(p + 3) === '\0') base = 1024n;
    else if ((at(p + 1) === 'B' || at(p + 1) === 'b') && at(p + 2) === '\0') base = 1000n;
    else if (at(p + 1) !== '\0') {
      if (frac === 0n && str[p] === '.') {
        let f = p + 1;
        while (at(f) === '0') { fracZeros++; f++; }
        let end = f;
        if (/[0-9]/.test(at(f))) {
          const fr = strtoumax(str, f);
          if (fr === undefined) return 'EINVAL';
          if (fr.overflow) return 'ERANGE';
          frac = fr.value;
          end = fr.end;
        }
        if (frac && end >= str.length) return 'EINVAL';
        // "1.0": nothing after the zeros; C reads past the string here, we refuse.
        if (end >= str.length) return 'EINVAL';
        p = end;
        continue;
      }
      return 'EINVAL';
    }
    break;
  }

  let pwr = 'KMGTPEZY'.indexOf(at(p)) + 1;
  if (!pwr) pwr = 'kmgtpezy'.indexOf(at(p)) + 1;
  if (!pwr || at(p) === '\0') return 'EINVAL';

  for (let i = 0; i < pwr; i++) {
    if (MAX / base < x) return 'ERANGE';
    x *= base;
  }
  if (frac) {
    let fracBase = 1n;
    for (let i = 0; i < pwr; i++) fracBase *= base;
    let fracDiv = 10n;
    let fracPoz = 1n;
    while (fracDiv < frac) {
      if (fracDiv <= MAX / 10n) fracDiv *= 10n;
      else frac /= 10n;
    }
    for (let i = 0; i < fracZeros; i++) {
      if (fracDiv <= MAX / 10n) fracDiv *= 10n;
      else frac /= 10n;
    }
    do {
      const seg = frac % 10n;
      const segDiv = fracDiv / fracPoz;
      frac /= 10n;
      fracPoz *= 10n;
      if (seg && segDiv / seg) x += fracBase / (segDiv / seg);
    } while (frac);
  }
  return x;
}

/** C strtoumax(str + from, &end, 0); undefined when no digits were converted. */
function strtoumax(str: string, from: number): { value: bigint; end: number; overflow: boolean } | undefined {
  const MAX = (1n << 64n) - 1n;
  let i = from;
  while (i < str.length && ' \t\n\v\f\r'.includes(str[i])) i++;
  let neg = false;
  if (str[i] === '+' || str[i] === '-') { neg = str[i] === '-'; i++; }
  let radix = 10;
  if (str[i] === '0' && (str[i + 1] === 'x' || str[i + 1] === 'X') && /[0-9a-fA-F]/.test(str[i + 2] ?? '')) {
    radix = 16;
    i += 2;
  } else if (str[i] === '0') radix = 8;
  const digits = radix === 16 ? /[0-9a-fA-F]/ : radix === 8 ? /[0-7]/ : /[0-9]/;
  const start = i;
  let value = 0n;
  let overflow = false;
  while (i < str.length && digits.test(str[i])) {
    value = value * BigInt(radix) + BigInt(parseInt(str[i], radix));
    if (value > MAX) overflow = true;
    i++;
  }
  if (i === start) return undefined;
  if (neg && !overflow) value = (-value) & MAX;
  return { value, end: i, overflow };
}

/**
 * strtosize_or_err(): a size argument or the error util-linux prints,
 * "<msg>: '<arg>': <strerror>". loopfs handles byte counts as JavaScript
 * numbers, so values above 2^53-1 (which util-linux would accept up to
 * 2^64-1 and the kernel then refuse) are ERANGE here.
 */
export function sizeOrError(arg: string, msg: string): number {
  const r = parseSize(arg);
  if (typeof r === 'string') throw new LoopfsError(r, `${msg}: '${arg}'`, strerror(r));
  if (r > BigInt(Number.MAX_SAFE_INTEGER)) throw new LoopfsError('ERANGE', `${msg}: '${arg}'`, strerror('ERANGE'));
  return Number(r);
}
