import * as fs from 'node:fs';
import { constants } from 'node:os';
import { LoopfsError, type Errno } from '../core/errors';
import { PROTOCOL_VERSION, type InstanceStatus, type Op, type Request, type Requests, type Response } from '../core/protocol';
import { UnixServer, readLine, closeFds, type UnixConn } from '../sys/unixsock';
import type { Instance } from './instance';

/**
 * The control socket of one daemon: mode 0600 in a 0700 directory, and each
 * peer's credentials checked (SO_PEERCRED) — only the instance owner, the
 * daemon's own uid, or root get an answer.
 */

export interface ControlHooks {
  status(): InstanceStatus;
  remount(max: number): void;
  umount(lazy: boolean): Promise<void>;
}

type Handlers = { [K in Op]: (args: Requests[K]['args'], fds: number[]) => Promise<Requests[K]['result']> | Requests[K]['result'] };

export class ControlServer {
  private readonly server: UnixServer;
  private readonly handlers: Handlers;
  private readonly pending = new Set<Promise<void>>();

  constructor(path: string, private readonly inst: Instance, hooks: ControlHooks, private readonly log: (s: string) => void) {
    this.server = UnixServer.listen(path, 0o600);
    this.handlers = {
      status: () => hooks.status(),
      list: () => inst.list(),
      add: (a) => inst.addDevice(a.index),
      remove: (a) => (inst.removeDevice(a.index), null),
      getFree: () => inst.getFree(),
      attach: (a, fds) => {
        const fd = fds.shift();
        if (fd === undefined) throw new LoopfsError('EBADF', a.path, 'no backing file descriptor came with the request');
        // How the fd may be used is read from the fd itself, not taken from the client's word.
        let delta: { fd: number; path: string } | undefined;
        if (a.req.overlay?.delta !== undefined) {
          const dfd = fds.shift();
          if (dfd === undefined || !fdWritable(dfd)) {
            closeFds(dfd === undefined ? [fd] : [fd, dfd]);
            throw new LoopfsError('EBADF', a.req.overlay.delta, 'no writable overlay file descriptor came with the request');
          }
          delta = { fd: dfd, path: a.req.overlay.delta };
        }
        return inst.attach(a.req, { fd, path: a.path, writable: fdWritable(fd) }, undefined, delta);
      },
      detach: async (a) => (await inst.detach(a.index), null),
      detachAll: async () => (await inst.detachAll(), null),
      setCapacity: (a) => inst.setCapacity(a.index),
      setDirectIo: (a) => inst.setDirectIo(a.index, a.on),
      setSectorSize: (a) => inst.setSectorSize(a.index, a.size),
      remount: (a) => (hooks.remount(a.max), null),
      umount: async (a) => (await hooks.umount(a.lazy), null),
      overlay: (a, fds) => {
        // The base's fd stays in fds: closed after the answer.
        const fd = a.action === 'commit' ? fds[0] : undefined;
        if (a.action === 'commit' && (fd === undefined || !fdWritable(fd))) throw new LoopfsError('EBADF', `loop${a.index}`, 'no writable base file descriptor came with the request');
        return inst.overlayOp(a.index, a.action, fd);
      },
    };
  }

  async serve(): Promise<void> {
    for (;;) {
      let conn: UnixConn;
      try {
        conn = await this.server.accept();
      } catch (e) {
        if (e instanceof LoopfsError && e.errno === 'ECANCELED') return;
        this.log(`accept: ${(e as Error).message}`);
        continue;
      }
      const p = this.handle(conn);
      this.pending.add(p);
      void p.finally(() => this.pending.delete(p));
    }
  }

  /** Stops accepting and resolves when every request in flight has been answered (umount's own reply among them). */
  async close(): Promise<void> {
    this.server.close();
    await Promise.allSettled([...this.pending]);
  }

  private allowed(uid: number): boolean {
    return uid === 0 || uid === this.inst.owner.uid || uid === process.getuid?.();
  }

  private async handle(conn: UnixConn): Promise<void> {
    let fds: number[] = [];
    let reply: Response;
    try {
      const cred = conn.peerCred();
      const r = await readLine(conn);
      fds = r.fds;
      if (r.line === null) return;
      if (!this.allowed(cred.uid)) throw new LoopfsError('EACCES', this.inst.mountpoint, `uid ${cred.uid} may not control this instance`);
      const req = JSON.parse(r.line) as Request;
      if (req.v !== PROTOCOL_VERSION) throw new LoopfsError('EPROTONOSUPPORT', 'control request', `protocol version ${req.v} (daemon speaks ${PROTOCOL_VERSION})`);
      const h = this.handlers[req.op] as ((a: unknown, f: number[]) => unknown) | undefined;
      if (!h) throw new LoopfsError('EINVAL', `operation ${String(req.op)}`, 'unknown control operation');
      reply = { v: PROTOCOL_VERSION, ok: true, result: (await h(req.args ?? {}, fds)) as never };
    } catch (e) {
      reply = errorReply(e);
      if (!(e instanceof LoopfsError)) this.log(`control: ${(e as Error)?.stack ?? e}`);
    } finally {
      closeFds(fds);
    }
    try {
      await conn.send(Buffer.from(`${JSON.stringify(reply)}\n`));
    } catch {
      /* the client went away */
    } finally {
      conn.close();
    }
  }
}

function errorReply(e: unknown): Response {
  if (e instanceof LoopfsError) return { v: PROTOCOL_VERSION, ok: false, errno: e.errno, what: e.what, reason: e.reason };
  const n = e as NodeJS.ErrnoException;
  const errno: Errno = typeof n?.code === 'string' && n.code in constants.errno ? (n.code as Errno) : 'EIO';
  return { v: PROTOCOL_VERSION, ok: false, errno, what: n?.path ?? 'daemon', reason: (n?.message ?? String(e)).replace(/^E[A-Z]+: /, '') };
}

/** Whether an fd was opened for writing: the access mode in /proc/self/fdinfo ("flags: 0100002"). */
function fdWritable(fd: number): boolean {
  const m = /^flags:\s*([0-7]+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return m ? (parseInt(m[1]!, 8) & 3) !== 0 : false;
}
