import { constants } from 'node:os';

/** An errno name as the kernel spells it: 'ENOENT', 'EBUSY', … */
export type Errno = keyof typeof constants.errno;

/**
 * The one error type of loopfs. `what` names the thing that was wrong
 * ("loop5", "max=abc"), `reason` says why (default: the errno's text).
 * toLoopfsError makes one of any thrown error; commands/report.ts prints it
 * as the line `loopfs <cmd>: <what>: <reason> (<ERRNO>)`.
 */
export class LoopfsError extends Error {
  readonly errno: Errno;
  readonly what: string;
  readonly reason: string;
  /** A usage error (bad flags): exit status 2 instead of 1. */
  usage = false;
  constructor(errno: Errno, what: string, reason?: string) {
    const r = reason ?? describeErrno(errno);
    super(`${what}: ${r}`);
    this.name = 'LoopfsError';
    this.errno = errno;
    this.what = what;
    this.reason = r;
  }
  /** Negative errno number, as FUSE replies and ioctl results carry it. */
  get code(): number {
    return -errnoNumber(this.errno);
  }
}

export function errnoNumber(name: Errno): number {
  return constants.errno[name];
}

export function errnoName(num: number): Errno | undefined {
  const n = Math.abs(num);
  for (const [name, value] of Object.entries(constants.errno)) if (value === n) return name as Errno;
  return undefined;
}

/**
 * The errno name a thrown error carries as Node spells it (`code`: 'ENOENT'),
 * or its own when it is a LoopfsError; undefined when it carries none.
 */
export function errnoOf(err: unknown): Errno | undefined {
  if (err instanceof LoopfsError) return err.errno;
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' && code in constants.errno ? (code as Errno) : undefined;
}

/**
 * The one way a thrown error becomes a LoopfsError; a LoopfsError stays as
 * it is. With `what` (the thing being worked on): a Node syscall error
 * (`syscall` set) is described by its errno alone, any other error with an
 * errno `code` keeps its own message as the reason, anything else is EIO.
 * Without `what`, the error tells it itself: a Node error names its path (or
 * syscall) and keeps Node's words for the reason; cac's parse errors are
 * usage errors (EINVAL); anything else is EIO and its message, no reason.
 */
export function toLoopfsError(err: unknown, what?: string): LoopfsError {
  if (err instanceof LoopfsError) return err;
  const e = err as NodeJS.ErrnoException | null | undefined;
  const errno = errnoOf(err);
  if (what !== undefined) {
    const own = e && !e.syscall && typeof e.message === 'string' && e.message ? e.message : undefined;
    return new LoopfsError(errno ?? 'EIO', what, own);
  }
  const message = err instanceof Error ? err.message : String(err);
  // "ENOENT: no such file or directory, open '/x'" says: no such file or directory
  if (errno) return new LoopfsError(errno, e!.path ?? e!.syscall ?? 'error', message.replace(/^[A-Z0-9]+: /, '').replace(/,.*$/, ''));
  // cac's: "Unknown option `--x`", "missing required args for command `mount <dir>`"
  if (err instanceof Error && err.name === 'CACError') return usageError('EINVAL', message.replace(/`/g, "'"), '');
  return new LoopfsError('EIO', message, '');
}

const DESCRIPTIONS: Partial<Record<Errno, string>> = {
  ENOENT: 'No such file or directory',
  EEXIST: 'File exists',
  EACCES: 'Permission denied',
  EPERM: 'Operation not permitted',
  EBUSY: 'Device or resource busy',
  EINVAL: 'Invalid argument',
  ENOSPC: 'No space left on device',
  ENODEV: 'No such device',
  ENXIO: 'No such device or address',
  ENOTDIR: 'Not a directory',
  EISDIR: 'Is a directory',
  ENOTEMPTY: 'Directory not empty',
  EROFS: 'Read-only file system',
  ERANGE: 'Numerical result out of range',
  ECONNREFUSED: 'Connection refused',
  ESRCH: 'No such process',
  ENOTTY: 'Inappropriate ioctl for device',
  EIO: 'Input/output error',
  ENOSYS: 'Function not implemented',
  EAGAIN: 'Resource temporarily unavailable',
  ETIMEDOUT: 'Connection timed out',
};

export function describeErrno(name: Errno): string {
  return DESCRIPTIONS[name] ?? name;
}

/** A bad flag or argument: printed like any error, exit status 2. */
export function usageError(errno: Errno, what: string, reason?: string): LoopfsError {
  const e = new LoopfsError(errno, what, reason);
  e.usage = true;
  return e;
}
