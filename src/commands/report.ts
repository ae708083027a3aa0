import { toLoopfsError } from '../base/errors';
import { paint } from './ui';

/**
 * Prints an error as the one line of SPEC §4 — `loopfs <cmd>: <what>:
 * <reason> (<ERRNO>)` — and returns the exit status (2 for usage errors).
 * Stack traces only with LOOPFS_DEBUG=1. The one place a LoopfsError
 * becomes what the user reads (losetup's util-linux lines aside:
 * losetupErrorText).
 */
export function reportError(cmd: string, err: unknown): number {
  if (process.env.LOOPFS_DEBUG === '1' && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  const e = toLoopfsError(err);
  const c = paint(process.stderr);
  const text = e.reason ? `${e.what}: ${e.reason}` : e.what;
  process.stderr.write(`${c.red(c.bold(cmd ? `loopfs ${cmd}` : 'loopfs'))}: ${text} (${c.bold(e.errno)})\n`);
  return e.usage ? 2 : 1;
}
