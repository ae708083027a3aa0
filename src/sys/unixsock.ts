import * as fs from 'node:fs';
import { koffi } from './ffi';
import type { TypeObject } from 'koffi';
import { LoopfsError, errnoName, type Errno } from '../base/errors';

/**
 * AF_UNIX stream sockets with fd passing (SCM_RIGHTS) and peer credentials
 * (SO_PEERCRED): the two things Node's `net` cannot do, done through libc.
 *
 * Every socket is non-blocking, so the libc calls made on the main thread
 * return at once. Waiting for readiness happens in ONE place: a single poll(2)
 * run on the libuv pool (koffi `.async`) over every fd someone waits on, plus
 * an eventfd that wakes it when the set changes. So however many servers and
 * connections wait, at most one pool thread is occupied, and none when
 * nobody waits.
 *
 * Ownership: fds received from recv/readLine belong to the caller (they are
 * O_CLOEXEC), who must close them. close() of a server or connection rejects
 * its pending operations with LoopfsError ECANCELED; it never unlinks the
 * socket path.
 */

export interface PeerCred { pid: number; uid: number; gid: number }

// <sys/socket.h>, <bits/socket.h>, <poll.h>, <sys/eventfd.h> (Linux, x86_64 and arm64 alike)
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const SCM_RIGHTS = 1;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const SHUT_RDWR = 2;
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;
const POLLIN = 0x1;
const POLLOUT = 0x4;
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
const SCM_MAX_FD = 253;     // the kernel's limit of fds in one message
const BACKLOG = 512;
const CHUNK = 256 * 1024;   // largest single sendmsg/recvmsg

type Fn = ((...args: unknown[]) => number) & { async: (...args: unknown[]) => void };
type Ptr = bigint;

interface Sys {
  k: ReturnType<typeof koffi>;
  f: Record<'socket' | 'bind' | 'listen' | 'accept4' | 'connect' | 'sendmsg' | 'recvmsg' | 'getsockopt'
    | 'shutdown' | 'close' | 'poll' | 'eventfd' | 'socketpair' | 'fcntl', Fn>;
  t: Record<'sockaddr_un' | 'iovec' | 'msghdr' | 'cmsghdr' | 'ucred' | 'pollfd', TypeObject>;
}

let sysCache: Sys | undefined;

function sys(): Sys {
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

function lastErrno(): Errno {
  return errnoName(sys().k.errno()) ?? 'EIO';
}

/** Runs a non-blocking call, retrying EINTR; returns the result or the errno. */
function call(fn: () => number): number | Errno {
  for (;;) {
    const rc = Number(fn());
    if (rc >= 0) return rc;
    const e = lastErrno();
    if (e !== 'EINTR') return e;
  }
}

function must(r: number | Errno, what: string): number {
  if (typeof r === 'string') throw new LoopfsError(r, what);
  return r;
}

const cmsgAlign = (n: number) => (n + 7) & ~7;   // CMSG_ALIGN: to sizeof(size_t)

const CMSG_HDR = 16;                                      // sizeof(struct cmsghdr), already aligned
const CTL_SPACE = CMSG_HDR + cmsgAlign(4 * SCM_MAX_FD);   // CMSG_SPACE(SCM_MAX_FD * sizeof(int))

/**
 * Native memory for the synchronous calls (they never overlap: main thread
 * only), so the kernel never sees a pointer into the JS heap. Layout:
 * msghdr | iovec | aux (cmsgs, ucred + its length, or sockaddr_un) | data.
 */
class Scratch {
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

const scratch = new Scratch();

function encodeAddr(path: string, what: string): { ptr: Ptr; len: number } {
  const { k, t } = sys();
  if (Buffer.byteLength(path) > 107) throw new LoopfsError('ENAMETOOLONG', what);
  scratch.ensure(0);
  scratch.buf.fill(0, Scratch.AUX, Scratch.DATA);
  k.encode(scratch.ptr, Scratch.AUX, t.sockaddr_un, { sun_family: AF_UNIX, sun_path: path });
  return { ptr: scratch.ptr + BigInt(Scratch.AUX), len: k.sizeof(t.sockaddr_un) };
}

function fillMsg(dataLen: number, controlLen: number): Ptr {
  const { k, t } = sys();
  const base = scratch.ptr;
  k.encode(base, Scratch.IOV, t.iovec, { iov_base: base + BigInt(Scratch.DATA), iov_len: dataLen });
  k.encode(base, 0, t.msghdr, {
    msg_name: null, msg_namelen: 0, msg_iov: base + BigInt(Scratch.IOV), msg_iovlen: 1,
    msg_control: controlLen ? base + BigInt(Scratch.AUX) : null, msg_controllen: controlLen, msg_flags: 0,
  });
  return base;
}

function closeFd(fd: number): void {
  // Linux frees the fd even when close reports EINTR: never retry.
  sys().f.close(fd);
}

/** Closes fds the caller will not take (e.g. after an error). */
export function closeFds(fds: number[]): void {
  for (const fd of fds) closeFd(fd);
}

// ---- the poller: one poll(2) on the pool for every waiting fd ----

interface Waiter { fd: number; events: number; resolve: () => void; reject: (e: Error) => void }

const waiters = new Set<Waiter>();
let polling = false;
let wakeFd = -1;
let pollPtr: Ptr = 0n;
let pollCap = 0;

function wait(fd: number, events: number): Promise<void> {
  return new Promise((resolve, reject) => {
    waiters.add({ fd, events, resolve, reject });
    kick();
  });
}

function kick(): void {
  if (!polling) return startPoll();
  // Wake the running poll so it picks up the new set (eventfd counter += 1).
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(1n);
  try { fs.writeSync(wakeFd, one); } catch { /* counter saturated: it is awake anyway */ }
}

function startPoll(): void {
  if (waiters.size === 0) return;
  const { k, f, t } = sys();
  if (wakeFd < 0) wakeFd = must(call(() => f.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)), 'eventfd');
  const snapshot = [...waiters];
  const n = snapshot.length + 1;
  const size = k.sizeof(t.pollfd);
  if (pollCap < n) {
    if (pollPtr) k.free(pollPtr);
    pollCap = Math.max(n, 2 * pollCap, 16);
    pollPtr = k.alloc('uint8_t', pollCap * size) as Ptr;
  }
  const view = Buffer.from(k.view(pollPtr, n * size));
  k.encode(pollPtr, 0, t.pollfd, { fd: wakeFd, events: POLLIN, revents: 0 });
  snapshot.forEach((w, i) => k.encode(pollPtr, (i + 1) * size, t.pollfd, { fd: w.fd, events: w.events, revents: 0 }));
  polling = true;
  f.poll.async(pollPtr, n, -1, (err: unknown, rc: number) => {
    polling = false;
    const e = rc < 0 ? lastErrno() : undefined; // errno is the worker's, inside this callback
    if (err || (e && e !== 'EINTR')) {
      // Cannot happen with valid arguments; fail the waiters rather than spin.
      const error = err instanceof Error ? err : new LoopfsError(e ?? 'EIO', 'poll');
      for (const w of snapshot) if (waiters.delete(w)) w.reject(error);
    } else if (rc > 0) {
      if (view.readInt16LE(6) !== 0) {
        try { fs.readSync(wakeFd, Buffer.alloc(8)); } catch { /* EAGAIN: already drained */ }
      }
      // Matched by identity, not fd number: a waiter removed meanwhile is not woken.
      snapshot.forEach((w, i) => {
        if (view.readInt16LE((i + 1) * size + 6) !== 0 && waiters.delete(w)) w.resolve();
      });
    }
    startPoll();
  });
}

function cancelWaiters(fd: number, what: string): void {
  let any = false;
  for (const w of waiters) {
    if (w.fd !== fd) continue;
    waiters.delete(w);
    w.reject(new LoopfsError('ECANCELED', what, 'socket closed'));
    any = true;
  }
  if (any && polling) kick();
}

// ---- server ----

export class UnixServer {
  readonly fd: number;
  readonly path: string;
  private closed = false;

  private constructor(fd: number, path: string) {
    this.fd = fd;
    this.path = path;
  }

  /** Binds and listens at `path`, then sets its mode. An existing path is EADDRINUSE: nothing is unlinked. */
  static listen(path: string, mode = 0o600): UnixServer {
    const { f } = sys();
    const fd = must(call(() => f.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)), 'socket');
    try {
      const addr = encodeAddr(path, path);
      must(call(() => f.bind(fd, addr.ptr, addr.len)), path);
      try {
        fs.chmodSync(path, mode);
        must(call(() => f.listen(fd, BACKLOG)), path);
      } catch (e) {
        fs.rmSync(path, { force: true }); // ours: we just bound it
        throw e;
      }
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    return new UnixServer(fd, path);
  }

  /** The next connection. After close(), rejects with LoopfsError ECANCELED (a pending one too). */
  async accept(): Promise<UnixConn> {
    const { f } = sys();
    for (;;) {
      if (this.closed) throw new LoopfsError('ECANCELED', this.path, 'server closed');
      const r = call(() => f.accept4(this.fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (typeof r === 'number') return new UnixConn(r);
      // A client that gave up before we accepted it: not our error.
      if (r === 'EAGAIN' || r === 'ECONNABORTED' || r === 'EPROTO') {
        if (r === 'EAGAIN') await wait(this.fd, POLLIN);
        continue;
      }
      throw new LoopfsError(r, this.path);
    }
  }

  /** Stops listening; a pending accept() rejects with ECANCELED. Idempotent. Leaves the path in place. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    sys().f.shutdown(this.fd, SHUT_RDWR);
    cancelWaiters(this.fd, this.path);
    closeFd(this.fd);
  }
}

// ---- connection ----

export class UnixConn {
  readonly fd: number;
  private closed = false;
  private sending: Promise<unknown> = Promise.resolve();
  private receiving: Promise<unknown> = Promise.resolve();

  /** @internal Wraps an already connected, non-blocking socket fd. */
  constructor(fd: number) {
    this.fd = fd;
  }

  /** The peer's pid, uid and gid, as the kernel recorded them at connect. */
  peerCred(): PeerCred {
    const { k, f, t } = sys();
    this.check('getsockopt');
    scratch.ensure(0);
    const val = scratch.ptr + BigInt(Scratch.AUX);
    const lenAt = Scratch.AUX + 64;
    scratch.buf.writeUInt32LE(k.sizeof(t.ucred), lenAt);
    must(call(() => f.getsockopt(this.fd, SOL_SOCKET, SO_PEERCRED, val, scratch.ptr + BigInt(lenAt))), 'SO_PEERCRED');
    const c = k.decode(scratch.ptr, Scratch.AUX, t.ucred) as PeerCred;
    return { pid: c.pid, uid: c.uid, gid: c.gid };
  }

  /**
   * Reads what is there (at most maxBytes), waiting if nothing is. `data`
   * empty means EOF. The fds that came with it are the caller's to close.
   */
  recv(maxBytes = 65536): Promise<{ data: Buffer; fds: number[] }> {
    const p = this.receiving.then(() => this.recvNow(Math.max(1, Math.min(maxBytes, CHUNK))));
    this.receiving = p.catch(() => undefined);
    return p;
  }

  /** Sends all of `data`; `fds` ride with the first sendmsg. The caller keeps (and closes) its fds. */
  send(data: Buffer, fds: number[] = []): Promise<void> {
    if (fds.length > SCM_MAX_FD) return Promise.reject(new LoopfsError('EINVAL', 'sendmsg', `more than ${SCM_MAX_FD} fds`));
    const p = this.sending.then(() => this.sendNow(data, fds));
    this.sending = p.catch(() => undefined);
    return p;
  }

  /**
   * Closes the socket; pending recv/send/readLine reject with ECANCELED, and
   * fds readLine buffered for lines not yet read are closed. Idempotent.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    cancelWaiters(this.fd, 'connection');
    const st = lineStates.get(this);
    if (st) dropFds(st);
    closeFd(this.fd);
  }

  private check(what: string): void {
    if (this.closed) throw new LoopfsError('ECANCELED', what, 'socket closed');
  }

  private async recvNow(max: number): Promise<{ data: Buffer; fds: number[] }> {
    const { k, f, t } = sys();
    const ctlLen = CTL_SPACE;
    for (;;) {
      this.check('recvmsg');
      scratch.ensure(max);
      const msg = fillMsg(max, ctlLen);
      const r = call(() => f.recvmsg(this.fd, msg, MSG_CMSG_CLOEXEC));
      if (r === 'EAGAIN') {
        await wait(this.fd, POLLIN);
        continue;
      }
      const n = must(r, 'recvmsg');
      const hdr = k.decode(msg, 0, t.msghdr) as { msg_controllen: number };
      const fds: number[] = [];
      // Walk the cmsgs (CMSG_FIRSTHDR/CMSG_NXTHDR); keep SCM_RIGHTS fds.
      for (let off = 0; off + CMSG_HDR <= hdr.msg_controllen;) {
        const c = k.decode(scratch.ptr, Scratch.AUX + off, t.cmsghdr) as { cmsg_len: number; cmsg_level: number; cmsg_type: number };
        if (c.cmsg_len < CMSG_HDR) break;
        if (c.cmsg_level === SOL_SOCKET && c.cmsg_type === SCM_RIGHTS) {
          for (let i = CMSG_HDR; i + 4 <= c.cmsg_len; i += 4) fds.push(scratch.buf.readInt32LE(Scratch.AUX + off + i));
        }
        off += cmsgAlign(c.cmsg_len);
      }
      return { data: Buffer.from(scratch.buf.subarray(Scratch.DATA, Scratch.DATA + n)), fds };
    }
  }

  private async sendNow(data: Buffer, fds: number[]): Promise<void> {
    const { k, f, t } = sys();
    let off = 0;
    let pending = fds;
    while (off < data.length || pending.length) {
      this.check('sendmsg');
      const len = Math.min(data.length - off, CHUNK);
      if (len === 0) throw new LoopfsError('EINVAL', 'sendmsg', 'fds need at least one byte of data');
      scratch.ensure(len);
      data.copy(scratch.buf, Scratch.DATA, off, off + len);
      let ctlLen = 0;
      if (pending.length) {
        const cmsgLen = CMSG_HDR + 4 * pending.length;
        ctlLen = cmsgAlign(cmsgLen);
        scratch.buf.fill(0, Scratch.AUX, Scratch.AUX + ctlLen);
        k.encode(scratch.ptr, Scratch.AUX, t.cmsghdr, { cmsg_len: cmsgLen, cmsg_level: SOL_SOCKET, cmsg_type: SCM_RIGHTS });
        pending.forEach((fd, i) => scratch.buf.writeInt32LE(fd, Scratch.AUX + CMSG_HDR + 4 * i));
      }
      const msg = fillMsg(len, ctlLen);
      const r = call(() => f.sendmsg(this.fd, msg, MSG_NOSIGNAL));
      if (r === 'EAGAIN') {
        await wait(this.fd, POLLOUT);
        continue;
      }
      off += must(r, 'sendmsg');
      pending = [];
    }
  }
}

/** Connects to the server at `path`. No server: ENOENT; a dead one: ECONNREFUSED. */
export async function connect(path: string): Promise<UnixConn> {
  const { f } = sys();
  const fd = must(call(() => f.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)), 'socket');
  try {
    // A full backlog is EAGAIN for AF_UNIX (never EINPROGRESS): retry for a while.
    for (let delay = 5, waited = 0; ; waited += delay, delay = Math.min(delay * 2, 200)) {
      const addr = encodeAddr(path, path);
      const r = call(() => f.connect(fd, addr.ptr, addr.len));
      if (typeof r === 'number') return new UnixConn(fd);
      if (r !== 'EAGAIN') throw new LoopfsError(r, path);
      if (waited > 10_000) throw new LoopfsError('ETIMEDOUT', path, 'server does not accept connections');
      await new Promise((res) => setTimeout(res, delay));
    }
  } catch (e) {
    closeFd(fd);
    throw e;
  }
}

/**
 * A connected pair: `ours` is a UnixConn (non-blocking, like every socket
 * here); `theirs` is a plain blocking fd, O_CLOEXEC, for a child process to
 * get as one of its stdio fds (the spawn dup2s it, which drops O_CLOEXEC).
 * The blocking mode lives in each end's own file description, so the child
 * reads its end as any program expects. The caller closes `theirs` once the
 * child has it.
 */
export function socketPair(): { ours: UnixConn; theirs: number } {
  const { f } = sys();
  const sv = new Int32Array(2);
  must(call(() => f.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)), 'socketpair');
  const a = sv[0]!;
  const b = sv[1]!;
  try {
    const flags = must(call(() => f.fcntl(a, F_GETFL, 0)), 'fcntl');
    must(call(() => f.fcntl(a, F_SETFL, flags | O_NONBLOCK)), 'fcntl');
  } catch (e) {
    closeFds([a, b]);
    throw e;
  }
  return { ours: new UnixConn(a), theirs: b };
}

// ---- line protocol ----

interface LineState {
  buf: Buffer;
  /** fds of each recv, at the offset in buf of that recv's last byte. */
  fds: { at: number; fds: number[] }[];
  chain: Promise<unknown>;
}

const lineStates = new WeakMap<UnixConn, LineState>();

/**
 * The next '\n'-terminated line (without the '\n') and the fds sent with it.
 * `line` is null on EOF before a newline; the fds of such an incomplete line
 * are closed and `fds` is empty. A line longer than `limit` bytes is EMSGSIZE
 * (its fds closed; the connection is then unusable). Leftover bytes stay with
 * the connection for the next call. Received fds are the caller's to close.
 */
export function readLine(conn: UnixConn, limit = 1 << 20): Promise<{ line: string | null; fds: number[] }> {
  let st = lineStates.get(conn);
  if (!st) lineStates.set(conn, (st = { buf: Buffer.alloc(0), fds: [], chain: Promise.resolve() }));
  const s = st;
  const p = s.chain.then(() => readLineNow(conn, s, limit));
  s.chain = p.catch(() => undefined);
  return p;
}

async function readLineNow(conn: UnixConn, s: LineState, limit: number): Promise<{ line: string | null; fds: number[] }> {
  let scanned = 0;
  for (;;) {
    const nl = s.buf.indexOf(0x0a, scanned);
    if (nl >= 0) {
      // Fds belong to the line holding the last byte of the recv they came
      // with: the kernel ends a read right after a message that carries fds.
      const fds = s.fds.filter((e) => e.at <= nl).flatMap((e) => e.fds);
      s.fds = s.fds.filter((e) => e.at > nl).map((e) => ({ at: e.at - nl - 1, fds: e.fds }));
      const line = s.buf.toString('utf8', 0, nl);
      s.buf = s.buf.subarray(nl + 1);
      return { line, fds };
    }
    scanned = s.buf.length;
    if (s.buf.length > limit) {
      dropFds(s);
      throw new LoopfsError('EMSGSIZE', 'control message', `line longer than ${limit} bytes`);
    }
    const { data, fds } = await conn.recv();
    if (data.length === 0) {
      closeFds(fds);
      dropFds(s);
      s.buf = Buffer.alloc(0);
      return { line: null, fds: [] };
    }
    s.buf = s.buf.length ? Buffer.concat([s.buf, data]) : data;
    if (fds.length) s.fds.push({ at: s.buf.length - 1, fds });
  }
}

function dropFds(s: LineState): void {
  for (const e of s.fds) closeFds(e.fds);
  s.fds = [];
}
