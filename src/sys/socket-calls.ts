import { koffi } from './ffi';
import type { TypeObject } from 'koffi';
import { LoopfsError, errnoName, type Errno } from '../base/errors';

/**
 * The libc side of sys/unixsock.ts: the socket calls Node lacks, bound with
 * koffi, their constants, errno handling, and the native scratch memory
 * their message headers are built in.
 */

// <sys/socket.h>, <bits/socket.h>, <poll.h>, <sys/eventfd.h> (Linux, x86_64 and arm64 alike)
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_PEERCRED = 17;
export const SCM_RIGHTS = 1;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;
export const SHUT_RDWR = 2;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const O_NONBLOCK = 0o4000;
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
export const SCM_MAX_FD = 253;     // the kernel's limit of fds in one message
export const BACKLOG = 512;
export const CHUNK = 256 * 1024;   // largest single sendmsg/recvmsg

type Fn = ((...args: unknown[]) => number) & { async: (...args: unknown[]) => void };
export type Ptr = bigint;

interface Sys {
  k: ReturnType<typeof koffi>;
  f: Record<'socket' | 'bind' | 'listen' | 'accept4' | 'connect' | 'sendmsg' | 'recvmsg' | 'getsockopt'
    | 'shutdown' | 'close' | 'poll' | 'eventfd' | 'socketpair' | 'fcntl', Fn>;
  t: Record<'sockaddr_un' | 'iovec' | 'msghdr' | 'cmsghdr' | 'ucred' | 'pollfd', TypeObject>;
}

let sysCache: Sys | undefined;

export function sys(): Sys {
  if (sysCache) return sysCache;
  const k = koffi();
  const l = k.load('libc.so.6');
  // Named types are global in koffi: anonymous structs keep us clear of other modules.
  const t = {
    sockaddr_un: k.struct({ sun_family: 'uint16_t', sun_path: k.array('char', 108) }),
    iovec: k.struct({ iov_base: 'void *', iov_len: 'size_t' }),
    msghdr: k.struct({
      msg_name: 'void *', msg_namelen: 'uint32_t', msg_iov: 'void *', msg_iovlen: 'size_t',
      msg_control: 'void *', msg_controllen: 'size_t', msg_flags: 'int',
    }),
    cmsghdr: k.struct({ cmsg_len: 'size_t', cmsg_level: 'int', cmsg_type: 'int' }),
    ucred: k.struct({ pid: 'int32_t', uid: 'uint32_t', gid: 'uint32_t' }),
    pollfd: k.struct({ fd: 'int', events: 'short', revents: 'short' }),
  };
  const f = {
    socket: l.func('int socket(int domain, int type, int protocol)'),
    bind: l.func('int bind(int fd, void *addr, uint32_t len)'),
    listen: l.func('int listen(int fd, int backlog)'),
    accept4: l.func('int accept4(int fd, void *addr, void *len, int flags)'),
    connect: l.func('int connect(int fd, void *addr, uint32_t len)'),
    sendmsg: l.func('intptr_t sendmsg(int fd, void *msg, int flags)'),
    recvmsg: l.func('intptr_t recvmsg(int fd, void *msg, int flags)'),
    getsockopt: l.func('int getsockopt(int fd, int level, int name, void *val, void *len)'),
    shutdown: l.func('int shutdown(int fd, int how)'),
    close: l.func('int close(int fd)'),
    poll: l.func('int poll(void *fds, unsigned long nfds, int timeout)'),
    eventfd: l.func('int eventfd(unsigned int initval, int flags)'),
    socketpair: l.func('int socketpair(int domain, int type, int protocol, _Out_ int32_t *sv)'),
    fcntl: l.func('int fcntl(int fd, int cmd, int arg)'),
  } as unknown as Sys['f'];
  // The offsets below assume the LP64 Linux layout (x86_64, arm64).
  if (k.sizeof(t.msghdr) !== 56 || k.sizeof(t.cmsghdr) !== CMSG_HDR || k.sizeof(t.iovec) !== 16 || k.sizeof(t.pollfd) !== 8) {
    throw new LoopfsError('ENOSYS', 'unix sockets', `unsupported ABI (${process.arch})`);
  }
  sysCache = { k, f, t };
  return sysCache;
}

export function lastErrno(): Errno {
  return errnoName(sys().k.errno()) ?? 'EIO';
}

/** Runs a non-blocking call, retrying EINTR; returns the result or the errno. */
export function call(fn: () => number): number | Errno {
  for (;;) {
    const rc = Number(fn());
    if (rc >= 0) return rc;
    const e = lastErrno();
    if (e !== 'EINTR') return e;
  }
}

export function must(r: number | Errno, what: string): number {
  if (typeof r === 'string') throw new LoopfsError(r, what);
  return r;
}

export const cmsgAlign = (n: number) => (n + 7) & ~7;   // CMSG_ALIGN: to sizeof(size_t)

export const CMSG_HDR = 16;                                      // sizeof(struct cmsghdr), already aligned
export const CTL_SPACE = CMSG_HDR + cmsgAlign(4 * SCM_MAX_FD);   // CMSG_SPACE(SCM_MAX_FD * sizeof(int))

/**
 * Native memory for the synchronous calls (they never overlap: main thread
 * only), so the kernel never sees a pointer into the JS heap. Layout:
 * msghdr | iovec | aux (cmsgs, ucred + its length, or sockaddr_un) | data.
 */
export class Scratch {
  ptr: Ptr = 0n;
  buf = Buffer.alloc(0);
  static readonly IOV = 64;
  static readonly AUX = 128;
  static readonly DATA = 128 + 1152; // aux holds CTL_SPACE (1032) and sockaddr_un (110)

  ensure(dataLen: number): void {
    const need = Scratch.DATA + dataLen;
    if (this.buf.length >= need) return;
    const k = sys().k;
    if (this.ptr) k.free(this.ptr);
    this.ptr = k.alloc('uint8_t', need) as Ptr;
    this.buf = Buffer.from(k.view(this.ptr, need));
  }
}

export const scratch = new Scratch();

export function encodeAddr(path: string, what: string): { ptr: Ptr; len: number } {
  const { k, t } = sys();
  if (Buffer.byteLength(path) > 107) throw new LoopfsError('ENAMETOOLONG', what);
  scratch.ensure(0);
  scratch.buf.fill(0, Scratch.AUX, Scratch.DATA);
  k.encode(scratch.ptr, Scratch.AUX, t.sockaddr_un, { sun_family: AF_UNIX, sun_path: path });
  return { ptr: scratch.ptr + BigInt(Scratch.AUX), len: k.sizeof(t.sockaddr_un) };
}

export function fillMsg(dataLen: number, controlLen: number): Ptr {
  const { k, t } = sys();
  const base = scratch.ptr;
  k.encode(base, Scratch.IOV, t.iovec, { iov_base: base + BigInt(Scratch.DATA), iov_len: dataLen });
  k.encode(base, 0, t.msghdr, {
    msg_name: null, msg_namelen: 0, msg_iov: base + BigInt(Scratch.IOV), msg_iovlen: 1,
    msg_control: controlLen ? base + BigInt(Scratch.AUX) : null, msg_controllen: controlLen, msg_flags: 0,
  });
  return base;
}

export function closeFd(fd: number): void {
  // Linux frees the fd even when close reports EINTR: never retry.
  sys().f.close(fd);
}

/** Closes fds the caller will not take (e.g. after an error). */
export function closeFds(fds: number[]): void {
  for (const fd of fds) closeFd(fd);
}
