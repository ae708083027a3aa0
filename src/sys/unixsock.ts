import * as fs from 'node:fs';
import { LoopfsError } from '../base/errors';
import {
  AF_UNIX, BACKLOG, CHUNK, CMSG_HDR, CTL_SPACE, F_GETFL, F_SETFL, MSG_CMSG_CLOEXEC, MSG_NOSIGNAL, O_NONBLOCK, POLLIN, POLLOUT,
  SCM_MAX_FD, SCM_RIGHTS, SHUT_RDWR, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, SOL_SOCKET, SO_PEERCRED,
  Scratch, call, closeFd, closeFds, cmsgAlign, encodeAddr, fillMsg, must, scratch, sys,
} from './socket-calls';
import { cancelWaiters, wait } from './poller';
import { setCloexec } from './libc';

/**
 * AF_UNIX stream sockets with fd passing (SCM_RIGHTS) and peer credentials
 * (SO_PEERCRED): the two things Node's `net` cannot do, done through libc.
 *
 * Every socket is non-blocking, so the libc calls made on the main thread
 * (socket-calls.ts) return at once. Waiting for readiness happens in ONE
 * place: poller.ts. A line protocol over a connection is lines.ts.
 *
 * Ownership: fds received from recv/readLine belong to the caller (they are
 * O_CLOEXEC), who must close them. close() of a server or connection rejects
 * its pending operations with LoopfsError ECANCELED; it never unlinks the
 * socket path.
 */

export interface PeerCred { pid: number; uid: number; gid: number }

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

  /**
   * A socket already bound and listening at `path` (by the process that
   * started this one, passed down as `fd`): made close-on-exec here, so what
   * this process starts does not inherit it.
   */
  static adopt(fd: number, path: string): UnixServer {
    setCloexec(fd);
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
  private readonly closeHooks: (() => void)[] = [];

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
    for (const hook of this.closeHooks.splice(0)) hook();
    closeFd(this.fd);
  }

  /** Runs `hook` when the connection closes (lines.ts: to close fds it buffered). */
  onClose(hook: () => void): void {
    if (this.closed) hook();
    else this.closeHooks.push(hook);
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
