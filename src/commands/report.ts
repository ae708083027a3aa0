import { LoopfsError } from '../core/errors';

/**
 * Turns an error into the one line of SPEC §4 — `loopfs <cmd>: <what>:
 * <reason> (<ERRNO>)` — and returns the exit status (2 for usage errors).
 * Stack traces only with LOOPFS_DEBUG=1.
 */
export function reportError(cmd: string, err: unknown): number {
  if (process.env.LOOPFS_DEBUG === '1' && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  const prefix = cmd ? `loopfs ${cmd}` : 'loopfs';
  if (err instanceof LoopfsError) {
    process.stderr.write(`${prefix}: ${err.what}: ${err.reason} (${err.errno})\n`);
    return err.usage ? 2 : 1;
  }
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string' && /^E[A-Z0-9]+$/.test(e.code)) {
    const reason = e.message.replace(/^[A-Z0-9]+: /, '').replace(/,.*$/, '');
    process.stderr.write(`${prefix}: ${e.path ?? e.syscall ?? 'error'}: ${reason} (${e.code})\n`);
    return 1;
  }
  // cac's own parse errors: "Unknown option `--x`", "missing required args for command `mount <dir>`"
  if (err instanceof Error && err.name === 'CACError') {
    process.stderr.write(`${prefix}: ${err.message.replace(/`/g, "'")} (EINVAL)\n`);
    return 2;
  }
  process.stderr.write(`${prefix}: ${err instanceof Error ? err.message : String(err)} (EIO)\n`);
  return 1;
}
