import { LoopfsError } from '../base/errors';
import { paint } from './ui';

/**
 * Turns an error into the one line of SPEC §4 — `loopfs <cmd>: <what>:
 * <reason> (<ERRNO>)` — and returns the exit status (2 for usage errors).
 * Stack traces only with LOOPFS_DEBUG=1. Coloured only on a terminal.
 */
export function reportError(cmd: string, err: unknown): number {
  if (process.env.LOOPFS_DEBUG === '1' && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  const prefix = cmd ? `loopfs ${cmd}` : 'loopfs';
  if (err instanceof LoopfsError) {
    errorLine(prefix, `${err.what}: ${err.reason}`, err.errno);
    return err.usage ? 2 : 1;
  }
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string' && /^E[A-Z0-9]+$/.test(e.code)) {
    const reason = e.message.replace(/^[A-Z0-9]+: /, '').replace(/,.*$/, '');
    errorLine(prefix, `${e.path ?? e.syscall ?? 'error'}: ${reason}`, e.code);
    return 1;
  }
  // cac's own parse errors: "Unknown option `--x`", "missing required args for command `mount <dir>`"
  if (err instanceof Error && err.name === 'CACError') {
    errorLine(prefix, err.message.replace(/`/g, "'"), 'EINVAL');
    return 2;
  }
  errorLine(prefix, err instanceof Error ? err.message : String(err), 'EIO');
  return 1;
}

/** One error line on stderr: `PREFIX: TEXT (ERRNO)`. */
export function errorLine(prefix: string, text: string, errno: string): void {
  const c = paint(process.stderr);
  process.stderr.write(`${c.red(c.bold(prefix))}: ${text} (${c.bold(errno)})\n`);
}
