import * as fs from 'node:fs';
import { LoopfsError } from '../base/errors';
import { PIDFD_THREAD, fileStatusFlags, pidfdGetfd, pidfdOpen, processVmRead, processVmWrite } from './libc';

const O_PATH = 0o10000000;

/**
 * The process behind a request, reached from outside it: its memory (for
 * ioctl arguments that are pointers the kernel does not copy for us) and its
 * descriptors (taken, as the kernel's fget() would take them, with the
 * rights they were opened with). `tid` is the calling thread's id in our pid
 * namespace; 0 means the caller is not visible from here.
 *
 * Every failure is a LoopfsError with a plain errno: memory that cannot be
 * read or written is EFAULT, as copy_from_user/copy_to_user give it.
 */
export class Caller {
  constructor(readonly tid: number) {}

  read(address: bigint, length: number): Buffer {
    if (this.tid <= 0) throw new LoopfsError('EFAULT', 'caller memory', 'the caller is not visible in the daemon\'s pid namespace');
    try {
      return processVmRead(this.tid, address, length);
    } catch (e) {
      throw asFault(e, address, length);
    }
  }

  write(address: bigint, data: Buffer): void {
    if (this.tid <= 0) throw new LoopfsError('EFAULT', 'caller memory', 'the caller is not visible in the daemon\'s pid namespace');
    try {
      processVmWrite(this.tid, address, data);
    } catch (e) {
      throw asFault(e, address, data.length);
    }
  }

  /**
   * A duplicate of the caller's descriptor `fd` (close-on-exec; ours to
   * close) and its status flags (F_GETFL). EBADF when the caller has no such
   * descriptor, or only an O_PATH one: what the kernel's fget() refuses.
   */
  takeFd(fd: number): { fd: number; flags: number } {
    const dup = this.dupFd(fd);
    try {
      const flags = fileStatusFlags(dup);
      if (flags & O_PATH) throw new LoopfsError('EBADF', `descriptor ${fd}`, 'an O_PATH descriptor gives no access to the file');
      return { fd: dup, flags };
    } catch (e) {
      fs.closeSync(dup);
      throw e;
    }
  }

  private dupFd(fd: number): number {
    if (this.tid <= 0) throw new LoopfsError('EPERM', `descriptor ${fd}`, 'the caller is not visible in the daemon\'s pid namespace');
    if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw new LoopfsError('EBADF', `descriptor ${fd}`, 'not a descriptor number');
    const pidfd = this.pidfd();
    try {
      return pidfdGetfd(pidfd, fd);
    } catch (e) {
      if (e instanceof LoopfsError && e.errno === 'ESRCH') throw new LoopfsError('EBADF', `descriptor ${fd}`, 'the caller is gone');
      throw e;
    } finally {
      fs.closeSync(pidfd);
    }
  }

  /** Whether the caller has capability `cap` in its effective set (CapEff of /proc/TID/status). */
  capable(cap: number): boolean {
    if (this.tid <= 0) return false;
    try {
      const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync(`/proc/${this.tid}/status`, 'utf8'));
      return m !== null && ((BigInt(`0x${m[1]}`) >> BigInt(cap)) & 1n) === 1n;
    } catch {
      return false;
    }
  }

  /** A pidfd of the thread (Linux ≥ 6.9), else of its thread group (Tgid from /proc). */
  private pidfd(): number {
    try {
      return pidfdOpen(this.tid, PIDFD_THREAD);
    } catch (e) {
      if (!(e instanceof LoopfsError) || e.errno !== 'EINVAL') throw gone(e);
    }
    let tgid = this.tid;
    try {
      const m = /^Tgid:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/${this.tid}/status`, 'utf8'));
      if (m) tgid = Number(m[1]);
    } catch {
      // no /proc entry: try the id itself
    }
    try {
      return pidfdOpen(tgid);
    } catch (e) {
      throw gone(e);
    }
  }
}

function gone(e: unknown): unknown {
  if (e instanceof LoopfsError && e.errno === 'ESRCH') return new LoopfsError('EBADF', 'caller', 'the caller is gone');
  return e;
}

function asFault(e: unknown, address: bigint, length: number): unknown {
  if (!(e instanceof LoopfsError)) return e;
  return new LoopfsError('EFAULT', `caller memory at 0x${address.toString(16)}`, `${length} bytes not accessible (${e.errno})`);
}

/** <linux/capability.h> */
export const CAP_SYS_ADMIN = 21;
