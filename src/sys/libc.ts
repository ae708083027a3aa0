import { koffi } from './ffi';
import { LoopfsError, errnoName, type Errno } from '../base/errors';

/**
 * The few libc calls Node lacks. Each wrapper throws LoopfsError with the
 * errno the call set, so callers never look at raw return codes.
 */

type Fn = ((...args: unknown[]) => number) & { async: (...args: unknown[]) => void };

let lib: Record<string, Fn> | undefined;

function libc(): Record<string, Fn> {
  if (lib) return lib;
  const k = koffi();
  const l = k.load('libc.so.6');
  lib = {
    ioctl_ptr: l.func('int ioctl(int fd, unsigned long req, _Inout_ uint8_t *arg)') as Fn,
    fallocate: l.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)') as Fn,
    flock: l.func('int flock(int fd, int op)') as Fn,
    umount2: l.func('int umount2(const char *target, int flags)') as Fn,
    mount: l.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)') as Fn,
    fcntl_ptr: l.func('int fcntl(int fd, int cmd, _Inout_ uint8_t *arg)') as Fn,
    fcntl_int: l.func('int fcntl(int fd, int cmd, int arg)') as Fn,
    statx: l.func('int statx(int dirfd, const char *path, int flags, unsigned int mask, _Inout_ uint8_t *buf)') as Fn,
    ...vmCalls(k, l),
    syscall: l.func('long syscall(long, ...)') as Fn,
  };
  return lib;
}

function vmCalls(k: ReturnType<typeof koffi>, l: ReturnType<ReturnType<typeof koffi>['load']>): Record<string, Fn> {
  // struct iovec: the local side points at a Buffer, the remote side is an address in the other process.
  const local = k.pointer(k.struct('loopfs_local_iovec', { base: 'void *', len: 'size_t' }));
  const remote = k.pointer(k.struct('loopfs_remote_iovec', { base: 'uint64_t', len: 'size_t' }));
  const args = ['int', local, 'unsigned long', remote, 'unsigned long', 'unsigned long'];
  return {
    process_vm_readv: l.func('process_vm_readv', 'intptr_t', args) as Fn,
    process_vm_writev: l.func('process_vm_writev', 'intptr_t', args) as Fn,
  };
}

function check(rc: number, what: string): number {
  if (rc < 0) {
    const e = koffi().errno();
    const name: Errno = errnoName(e) ?? 'EIO';
    throw new LoopfsError(name, what);
  }
  return rc;
}

/** ioctl whose argument is a buffer the kernel reads and/or fills in. */
export function ioctlBuf(fd: number, req: number, buf: Buffer): number {
  return check(libc().ioctl_ptr!(fd, req, buf), `ioctl 0x${req.toString(16)}`);
}

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** fallocate(2), run on the libuv pool so a slow punch never blocks the loop. */
export function fallocate(fd: number, mode: number, offset: number, len: number): Promise<void> {
  return new Promise((resolve, reject) => {
    libc().fallocate!.async(fd, mode, offset, len, (err: unknown, rc: number) => {
      if (err) return reject(err);
      try {
        check(rc, 'fallocate');
        resolve();
      } catch (e) {
        reject(e);
      }
    });
  });
}

/** Punches a hole (discard): the range reads as zeros and frees its blocks. */
export function punchHole(fd: number, offset: number, len: number): Promise<void> {
  return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
}

/** punchHole, synchronous: for a caller that holds locks other threads wait on. */
export function punchHoleSync(fd: number, offset: number, len: number): void {
  check(libc().fallocate!(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len) as number, 'fallocate');
}

export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

/** flock(2), blocking unless LOCK_NB is given (then EWOULDBLOCK → EAGAIN). */
export function flock(fd: number, op: number): void {
  check(libc().flock!(fd, op), 'flock');
}

export const MNT_DETACH = 2;

export function umount2(target: string, flags: number): void {
  check(libc().umount2!(target, flags), `umount ${target}`);
}

// <sys/mount.h>
export const MS_SHARED = 1 << 20;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;

/** mount(2): what mount(8) does without its helpers and mtab (mount -i -n), minus a process start. */
export function mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): void {
  check(libc().mount!(source, target, fstype, flags, data), `mount ${target}`);
}

const AT_EMPTY_PATH = 0x1000;
const AT_STATX_DONT_SYNC = 0x4000;
const STATX_TYPE = 1;

/**
 * The device (major, minor) of the filesystem open file `fd` is on, from
 * statx(2) with AT_STATX_DONT_SYNC: the attributes the kernel has cached, so
 * no request reaches the filesystem (a FUSE daemon may ask this of a file of
 * its own, or of a filesystem whose server does not answer).
 */
export function deviceOfFd(fd: number): { major: number; minor: number } {
  // struct statx: stx_dev_major at 136, stx_dev_minor at 140 (256 bytes in all).
  const buf = Buffer.alloc(256);
  check(libc().statx!(fd, '', AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE, buf), 'statx');
  return { major: buf.readUInt32LE(136), minor: buf.readUInt32LE(140) };
}

const F_GETFL = 3;

/** fcntl(F_GETFL): the open file's status flags (access mode, O_PATH, O_DIRECT, …). */
export function fileStatusFlags(fd: number): number {
  return check(libc().fcntl_int!(fd, F_GETFL, 0), 'fcntl(F_GETFL)');
}

// Open file description locks (<fcntl.h>): owned by the open file, not the
// process, and dropped by the kernel when the file is closed — however the
// holder dies.
const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
export const F_WRLCK = 1;
export const F_UNLCK = 2;

function flockStruct(type: number, start: number, len: number): Buffer {
  // struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
  const b = Buffer.alloc(32);
  b.writeInt16LE(type, 0);
  b.writeInt16LE(0, 2); // SEEK_SET
  b.writeBigInt64LE(BigInt(start), 8);
  b.writeBigInt64LE(BigInt(len), 16);
  return b;
}

/** Sets (F_WRLCK) or clears (F_UNLCK) an OFD lock on [start, start+len); never waits (EAGAIN if held). */
export function ofdSetLock(fd: number, type: number, start: number, len: number): void {
  check(libc().fcntl_ptr!(fd, F_OFD_SETLK, flockStruct(type, start, len)), 'fcntl(F_OFD_SETLK)');
}

/** The first lock held by another open file that would block a write lock on [start, start+len), if any. */
export function ofdGetLock(fd: number, start: number, len: number): { start: number; len: number } | undefined {
  const b = flockStruct(F_WRLCK, start, len);
  check(libc().fcntl_ptr!(fd, F_OFD_GETLK, b), 'fcntl(F_OFD_GETLK)');
  if (b.readInt16LE(0) === F_UNLCK) return undefined;
  return { start: Number(b.readBigInt64LE(8)), len: Number(b.readBigInt64LE(16)) };
}

// <asm/unistd_64.h> (the same numbers on every architecture since 5.3's unified table).
const SYS_pidfd_open = 434;
const SYS_pidfd_getfd = 438;
/** <linux/pidfd.h>: a pidfd of one thread, not of its thread group (Linux ≥ 6.9). */
export const PIDFD_THREAD = 0o200;

/**
 * process_vm_readv(2): `length` bytes at `address` in process (or thread)
 * `pid`. A short read is EFAULT, as the kernel's copy_from_user would be.
 */
export function processVmRead(pid: number, address: bigint, length: number): Buffer {
  const buf = Buffer.alloc(length);
  if (length === 0) return buf;
  const n = check(Number(libc().process_vm_readv!(pid, [{ base: buf, len: length }], 1, [{ base: address, len: length }], 1, 0)), `process_vm_readv ${pid}`);
  if (n !== length) throw new LoopfsError('EFAULT', `process_vm_readv ${pid}`, `${n} of ${length} bytes readable`);
  return buf;
}

/** process_vm_writev(2): writes `data` at `address` in process (or thread) `pid`; short is EFAULT. */
export function processVmWrite(pid: number, address: bigint, data: Buffer): void {
  if (data.length === 0) return;
  const n = check(Number(libc().process_vm_writev!(pid, [{ base: data, len: data.length }], 1, [{ base: address, len: data.length }], 1, 0)), `process_vm_writev ${pid}`);
  if (n !== data.length) throw new LoopfsError('EFAULT', `process_vm_writev ${pid}`, `${n} of ${data.length} bytes writable`);
}

/** pidfd_open(2). Returns a descriptor (close-on-exec) the caller closes. */
export function pidfdOpen(pid: number, flags = 0): number {
  return check(Number(libc().syscall!(SYS_pidfd_open, 'int', pid, 'unsigned int', flags)), `pidfd_open ${pid}`);
}

/** pidfd_getfd(2): a duplicate, in this process, of descriptor `fd` of the pidfd's process (close-on-exec). */
export function pidfdGetfd(pidfd: number, fd: number): number {
  return check(Number(libc().syscall!(SYS_pidfd_getfd, 'int', pidfd, 'int', fd, 'unsigned int', 0)), `pidfd_getfd ${fd}`);
}

// <fcntl.h>
const F_SETFD = 2;
const FD_CLOEXEC = 1;

/** Marks an inherited fd close-on-exec (Node opens its own so, but not those it inherits). */
export function setCloexec(fd: number): void {
  check(libc().fcntl_int!(fd, F_SETFD, FD_CLOEXEC), 'fcntl(F_SETFD)');
}

const SYS_eventfd2 = 290;
const EFD_CLOEXEC = 0o2000000;

/** eventfd(2), close-on-exec, counting from 0: one thread's wake-up call from another. */
export function eventfd(): number {
  return check(Number(libc().syscall!(SYS_eventfd2, 'unsigned int', 0, 'int', EFD_CLOEXEC)), 'eventfd');
}

let trimFn: ((pad: number) => number) | undefined;

/** malloc_trim(3): gives the C heap's free pages (in every arena) back to the system. */
export function mallocTrim(): void {
  trimFn ??= koffi().load('libc.so.6').func('int malloc_trim(size_t pad)') as (pad: number) => number;
  trimFn(0);
}
