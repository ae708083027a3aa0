import * as fs from 'node:fs';
import { LoopfsError } from '../base/errors';

/**
 * What a backing descriptor handed to the daemon (over the control socket or
 * by LOOP_SET_FD/LOOP_CONFIGURE) was opened for, read from the descriptor
 * itself (/proc/self/fdinfo "flags:"), never taken from the client's word.
 */

// <asm-generic/fcntl.h>
const O_ACCMODE = 0o3;
const O_WRONLY = 0o1;
const O_PATH = 0o10000000;

export interface FdAccess {
  writable: boolean;
}

/**
 * The access a backing fd grants. An O_PATH descriptor grants none (it needs
 * no read permission on the file, and reopening it would read with the
 * daemon's rights), nor does one opened write-only: both are EBADF, the
 * kernel's answer to LOOP_SET_FD with an O_PATH descriptor.
 */
export function backingAccess(fd: number, path: string): FdAccess {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  } catch {
    throw new LoopfsError('EBADF', path, 'not an open file descriptor');
  }
  const m = /^flags:\s*([0-7]+)/m.exec(text);
  if (!m) throw new LoopfsError('EBADF', path, 'cannot tell how the backing file was opened');
  const flags = parseInt(m[1]!, 8);
  if (flags & O_PATH) throw new LoopfsError('EBADF', path, 'the backing file descriptor is O_PATH, not opened for reading');
  if ((flags & O_ACCMODE) === O_WRONLY) throw new LoopfsError('EBADF', path, 'the backing file descriptor is not opened for reading');
  return { writable: (flags & O_ACCMODE) !== 0 };
}
