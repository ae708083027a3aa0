import { LoopfsError, toLoopfsError } from '../base/errors';
import { PROTOCOL_VERSION, type InstanceStatus, type Op, type Request, type Requests, type Response } from '../core/protocol';
import { UnixServer, type UnixConn } from '../sys/unixsock';
import { readLine } from '../sys/lines';
import { closeFds } from '../sys/socket-calls';
import type { Instance } from './instance';
import { backingAccess } from './backing';

/**
 * The control socket of one daemon: mode 0600 in a 0700 directory, and each
 * peer's credentials checked (SO_PEERCRED) — only the instance owner, the
 * daemon's own uid, or root get an answer.
 *
 * No client can hold the daemon: every connection is closed on every path;
 * its request line must arrive whole within REQUEST_TIMEOUT_MS and its reply
 * be taken within REPLY_TIMEOUT_MS; at most MAX_WAITING connections wait for
 * their request (more push out the one waiting longest); when accept()
 * runs out of descriptors (EMFILE, ENFILE) the daemon frees one the same way
 * and backs off instead of spinning. What it logs about clients is capped.
 */
export const REQUEST_TIMEOUT_MS = 5000;
export const REPLY_TIMEOUT_MS = 10_000;
export const MAX_WAITING = 128;
/** A request is a small JSON object; the longest (attach) carries one path. */
const MAX_REQUEST_BYTES = 64 * 1024;
/** Log lines about clients per minute; the rest are counted and reported as one line. */
const LOG_BUDGET = 20;
/** How long a connection may wait for its request before it can be pushed out by others. */
const DROP_GRACE_MS = 250;

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
  /** Connections still waiting for their request line, oldest first, with when they were accepted. */
  private readonly waiting = new Map<UnixConn, number>();
  private closing = false;
  private wake: (() => void) | undefined;
  private logWindow = { start: 0, lines: 0, dropped: 0 };

  /** `server`: the instance's control socket, listening (bound by the daemon or by the process that started it). */
  constructor(server: UnixServer, private readonly inst: Instance, hooks: ControlHooks, private readonly log: (s: string) => void) {
    this.server = server;
    this.handlers = {
      status: () => hooks.status(),
      list: () => inst.list(),
      add: (a) => inst.addDevice(a.index),
      remove: (a) => (inst.removeDevice(a.index), null),
      getFree: () => inst.getFree(),
      attach: (a, fds) => {
        const fd = fds.shift();
        if (fd === undefined) throw new LoopfsError('EBADF', a.path, 'no backing file descriptor came with the request');
        // How the fds may be used is read from the fds themselves (Instance.attach, backingAccess), not taken from the client's word.
        let delta: { fd: number; path: string } | undefined;
        if (a.req.overlay?.delta !== undefined) {
          const dfd = fds.shift();
          if (dfd === undefined || !writableFd(dfd, a.req.overlay.delta)) {
            closeFds(dfd === undefined ? [fd] : [fd, dfd]);
            throw new LoopfsError('EBADF', a.req.overlay.delta, 'no writable overlay file descriptor came with the request');
          }
          delta = { fd: dfd, path: a.req.overlay.delta };
        }
        return inst.attach(a.req, { fd, path: a.path, writable: true }, undefined, delta);
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
        if (a.action === 'commit' && (fd === undefined || !writableFd(fd, `loop${a.index}`))) throw new LoopfsError('EBADF', `loop${a.index}`, 'no writable base file descriptor came with the request');
        return inst.overlayOp(a.index, a.action, fd);
      },
    };
  }

  async serve(): Promise<void> {
    let failures = 0;
    let dropped = false;
    for (;;) {
      if (this.closing) return;
      if (this.waiting.size >= MAX_WAITING && !this.dropOldest()) {
        // All are young: wait until the oldest may be pushed out.
        const oldest = this.waiting.values().next().value ?? 0;
        await this.pause(Math.max(5, oldest + DROP_GRACE_MS - Date.now()));
        continue;
      }
      let conn: UnixConn;
      try {
        conn = await this.server.accept();
      } catch (e) {
        if (e instanceof LoopfsError && e.errno === 'ECANCELED') return;
        // Out of descriptors: free one that a client holds and try again at once.
        const shortage = e instanceof LoopfsError && (e.errno === 'EMFILE' || e.errno === 'ENFILE');
        if (shortage && !dropped && this.dropOldest()) {
          dropped = true;
          continue;
        }
        dropped = false;
        // The connection stays queued, so retrying at once would spin: wait, longer
        // each time (20 ms … 1 s). Said once, not per try.
        if (failures++ === 0) this.note(`accept: ${(e as Error).message}; backing off until it works again`);
        await this.pause(Math.min(1000, 10 * 2 ** Math.min(failures, 7)));
        continue;
      }
      if (failures) this.note(`accept: works again after ${failures} failed attempt(s)`);
      failures = 0;
      dropped = false;
      const p = this.handle(conn);
      this.pending.add(p);
      void p.finally(() => this.pending.delete(p));
    }
  }

  /** Stops accepting and resolves when every request in flight has been answered (umount's own reply among them). */
  async close(): Promise<void> {
    this.closing = true;
    this.server.close();
    this.wake?.();
    for (const c of this.waiting.keys()) c.close();
    await Promise.allSettled([...this.pending]);
  }

  private pause(ms: number): Promise<void> {
    if (this.closing) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done(): void {
        clearTimeout(t);
        resolve();
      }
      this.wake = done;
    });
  }

  /**
   * Closes the connection that has waited longest for its request line (its
   * handler sees ECANCELED), if it has waited DROP_GRACE_MS: a client that
   * was just accepted is about to send.
   */
  private dropOldest(): boolean {
    const oldest = this.waiting.entries().next();
    if (oldest.done || Date.now() - oldest.value[1] < DROP_GRACE_MS) return false;
    this.waiting.delete(oldest.value[0]);
    oldest.value[0].close();
    return true;
  }

  /** Logs, at most LOG_BUDGET lines a minute: a client must not be able to fill the disk. */
  private note(s: string): void {
    const now = Date.now();
    const w = this.logWindow;
    if (now - w.start >= 60_000) {
      if (w.dropped) this.log(`control: ${w.dropped} more message(s) in the last minute not logged`);
      this.logWindow = { start: now, lines: 0, dropped: 0 };
    }
    if (this.logWindow.lines++ < LOG_BUDGET) this.log(s);
    else this.logWindow.dropped++;
  }

  private allowed(uid: number): boolean {
    return uid === 0 || uid === this.inst.owner.uid || uid === process.getuid?.();
  }

  /** Serves one connection; whatever happens, the connection is closed at the end. */
  private async handle(conn: UnixConn): Promise<void> {
    this.waiting.set(conn, Date.now());
    let timer = setTimeout(() => conn.close(), REQUEST_TIMEOUT_MS);
    let fds: number[] = [];
    try {
      let reply: Response;
      try {
        const cred = conn.peerCred();
        const r = await readLine(conn, MAX_REQUEST_BYTES);
        clearTimeout(timer);
        this.waiting.delete(conn);
        fds = r.fds;
        if (r.line === null) return;
        reply = await this.answer(cred.uid, r.line, fds);
      } catch (e) {
        // Dropped (too slow, pushed out, shutting down): nobody to answer.
        if (e instanceof LoopfsError && e.errno === 'ECANCELED') return;
        reply = errorReply(e);
      } finally {
        closeFds(fds);
      }
      clearTimeout(timer);
      timer = setTimeout(() => conn.close(), REPLY_TIMEOUT_MS);
      await conn.send(Buffer.from(`${JSON.stringify(reply)}\n`));
    } catch {
      /* the client went away, or did not take its reply */
    } finally {
      clearTimeout(timer);
      this.waiting.delete(conn);
      conn.close();
    }
  }

  private async answer(uid: number, line: string, fds: number[]): Promise<Response> {
    try {
      if (!this.allowed(uid)) throw new LoopfsError('EACCES', this.inst.mountpoint, `uid ${uid} may not control this instance`);
      const req = parseRequest(line);
      if (req.v !== PROTOCOL_VERSION) throw new LoopfsError('EPROTONOSUPPORT', 'control request', `protocol version ${req.v} (daemon speaks ${PROTOCOL_VERSION})`);
      const h = this.handlers[req.op] as ((a: unknown, f: number[]) => unknown) | undefined;
      if (!h) throw new LoopfsError('EINVAL', `operation ${String(req.op)}`, 'unknown control operation');
      return { v: PROTOCOL_VERSION, ok: true, result: (await h(req.args ?? {}, fds)) as never };
    } catch (e) {
      if (!(e instanceof LoopfsError)) this.note(`control: ${(e as Error)?.stack ?? e}`);
      return errorReply(e);
    }
  }
}

function parseRequest(line: string): Request {
  let req: unknown;
  try {
    req = JSON.parse(line);
  } catch {
    throw new LoopfsError('EINVAL', 'control request', 'not JSON');
  }
  if (typeof req !== 'object' || req === null || Array.isArray(req)) throw new LoopfsError('EINVAL', 'control request', 'not a JSON object');
  return req as Request;
}

function errorReply(err: unknown): Response {
  const e = toLoopfsError(err);
  return { v: PROTOCOL_VERSION, ok: false, errno: e.errno, what: e.what, reason: e.reason };
}

/** Whether an fd handed over is open for reading and writing (an overlay's delta, a base to commit into). */
function writableFd(fd: number, what: string): boolean {
  try {
    return backingAccess(fd, what).writable;
  } catch {
    return false;
  }
}
