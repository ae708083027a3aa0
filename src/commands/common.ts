import { usageError } from '../base/errors';
import type { InstanceSelector } from '../core/api';
import type { Selection } from '../core/rundir';

/** Helpers every command shares: the global options and strict number parsing. */

export interface GlobalFlags {
  instance?: string;
  runDir?: string;
}

export function selector(flags: GlobalFlags): InstanceSelector {
  return { ...(flags.instance ? { instance: String(flags.instance) } : {}), ...(flags.runDir ? { runDir: String(flags.runDir) } : {}) };
}

/**
 * The command's selector with its run directory resolved and made ready
 * (core/rundir.ts resolveSelector), once: the first call resolves it, later
 * ones get the same value; a failure is tried, and reported, again.
 */
export function selection(flags: GlobalFlags): () => Promise<Selection> {
  let sel: Selection | undefined;
  return async () => (sel ??= (await import('../core/rundir')).resolveSelector(selector(flags)));
}

/** A non-negative decimal integer, as the user typed it (cac may have made it a number already). */
export function parseCount(value: unknown, what: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const s = String(value ?? '').trim();
  if (!/^\d+$/.test(s)) throw usageError('EINVAL', `${what}=${s}`, 'not a non-negative integer');
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < min || n > max) throw usageError(n > max ? 'ERANGE' : 'EINVAL', `${what}=${s}`, `must be between ${min} and ${max}`);
  return n;
}

/** cac turns "-o 5" into a number and repeated flags into arrays; commands want the raw string. */
export function str(v: unknown): string | undefined {
  if (v === undefined || v === null || v === false) return undefined;
  if (Array.isArray(v)) return str(v[v.length - 1]);
  return String(v);
}
