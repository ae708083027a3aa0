import { constants } from 'node:os';

/** An errno name as the kernel spells it: 'ENOENT', 'EBUSY', … */
export type Errno = keyof typeof constants.errno;

/**
 * The one error type of loopfs. `what` names the thing that was wrong
 * ("loop5", "max=abc"), `reason` says why (default: the errno's text). Only
 * main.ts turns it into the line `loopfs <cmd>: <what>: <reason> (<ERRNO>)`.
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
 * Turns a thrown error into a LoopfsError about `what`. A Node syscall error
 * (err.syscall set) is described by its errno alone; any other error with
 * an errno code (a failed mount(8), say) keeps its own message as the reason.
 */
export function fromSystemError(err: unknown, what: string): LoopfsError {
  if (err instanceof LoopfsError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = (e && typeof e.code === 'string' && e.code in constants.errno ? e.code : 'EIO') as Errno;
  const own = e && !e.syscall && typeof e.message === 'string' && e.message ? e.message : undefined;
  return new LoopfsError(code, what, own);
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
