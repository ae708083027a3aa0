import * as path from 'node:path';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { LoopfsError, toLoopfsError } from '../base/errors';
import { PROTOCOL_VERSION, type Op, type Requests, type Response } from './protocol';
import { SOCKET_FILE } from './state';
import { connect } from '../sys/unixsock';
import { readLine } from '../sys/lines';
import { closeFds } from '../sys/socket-calls';
import type { AttachRequest, AttachResult, InstanceClient, OverlayAction } from './api';
import type { DeviceIndex, DeviceInfo, OverlayInfo } from '../base/types';

type Conn = Awaited<ReturnType<typeof connect>>;

/** A connection to the control socket of the instance whose state is `stateDir`; ESRCH when no daemon listens. */
async function connectTo(stateDir: string): Promise<Conn> {
  try {
    return await connect(path.join(stateDir, SOCKET_FILE));
  } catch (e) {
    if (e instanceof LoopfsError && (e.errno === 'ECONNREFUSED' || e.errno === 'ENOENT')) {
      throw new LoopfsError('ESRCH', path.basename(stateDir), 'the instance daemon is not running (see loopfs list, loopfs gc)');
    }
    throw e;
  }
}

/** Sends one request line (with `fds`) and reads its answer; the connection is closed after. */
async function exchange<K extends Op>(conn: Conn, who: string, op: K, args: Requests[K]['args'], fds: number[]): Promise<Requests[K]['result']> {
  try {
    await conn.send(Buffer.from(`${JSON.stringify({ v: PROTOCOL_VERSION, op, args })}\n`), fds);
    const r = await readLine(conn);
    closeFds(r.fds);
    if (r.line === null) throw new LoopfsError('EPIPE', who, 'the daemon closed the connection without answering');
    const res = JSON.parse(r.line) as Response<K>;
    if (!res.ok) throw new LoopfsError(res.errno, res.what, res.reason);
    return res.result;
  } finally {
    conn.close();
  }
}

/** One request over an instance's control socket. */
export async function request<K extends Op>(stateDir: string, op: K, args: Requests[K]['args'], fds: number[] = []): Promise<Requests[K]['result']> {
  if (fds.length === 0) return plainExchange(stateDir, op, args);
  return exchange(await connectTo(stateDir), path.basename(stateDir), op, args, fds);
}

/**
 * A request that carries no descriptor, through Node's own socket: the
 * libc sockets of sys/unixsock (needed to pass descriptors) load koffi,
 * which costs a short command much of its start. Same line protocol, same
 * errors; the daemon passes no descriptor back.
 */
function plainExchange<K extends Op>(stateDir: string, op: K, args: Requests[K]['args']): Promise<Requests[K]['result']> {
  const who = path.basename(stateDir);
  const file = path.join(stateDir, SOCKET_FILE);
  const line = `${JSON.stringify({ v: PROTOCOL_VERSION, op, args })}\n`;
  return new Promise((resolve, reject) => {
    // A full backlog is EAGAIN for AF_UNIX: retried for a while, as connect() of sys/unixsock does.
    const attempt = (delay: number, waited: number): void => {
      let buf = '';
      let done = false;
      const finish = (f: () => void): void => {
        if (done) return;
        done = true;
        sock.destroy();
        f();
      };
      const sock = net.createConnection(file, () => sock.write(line));
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => {
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        finish(() => {
          try {
            const res = JSON.parse(buf.slice(0, nl)) as Response<K>;
            if (res.ok) resolve(res.result);
            else reject(new LoopfsError(res.errno, res.what, res.reason));
          } catch (e) {
            reject(e);
          }
        });
      });
      sock.on('close', () => finish(() => reject(new LoopfsError('EPIPE', who, 'the daemon closed the connection without answering'))));
      sock.on('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'EAGAIN' && waited <= 10_000 && !done) {
          done = true;
          sock.destroy();
          setTimeout(() => attempt(Math.min(delay * 2, 200), waited + delay), delay);
          return;
        }
        finish(() => {
          if (e.code === 'ECONNREFUSED' || e.code === 'ENOENT') reject(new LoopfsError('ESRCH', who, 'the instance daemon is not running (see loopfs list, loopfs gc)'));
          else if (e.code === 'EAGAIN') reject(new LoopfsError('ETIMEDOUT', file, 'server does not accept connections'));
          else reject(toLoopfsError(e, file));
        });
      });
    };
    attempt(5, 0);
  });
}

/**
 * One request that must be answered within `ms`: a stopped or deadlocked
 * daemon accepts the connection (the kernel does, into the backlog) but never
 * answers. Then the connection is closed and ETIMEDOUT thrown, so an admin
 * command never waits on the instance it manages. `worthWaiting(elapsedMs)`,
 * asked every 100 ms, may give up sooner (the daemon is stopped, say).
 */
export async function requestWithin<K extends Op>(stateDir: string, op: K, args: Requests[K]['args'], ms: number, worthWaiting?: (elapsedMs: number) => boolean): Promise<Requests[K]['result']> {
  const who = path.basename(stateDir);
  let conn: Conn | undefined;
  let late = false;
  let timer: NodeJS.Timeout | undefined;
  const t0 = Date.now();
  const timeout = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      const elapsed = Date.now() - t0;
      if (elapsed < ms && (!worthWaiting || worthWaiting(elapsed))) return;
      late = true;
      conn?.close();
      reject(new LoopfsError('ETIMEDOUT', who, `the daemon did not answer within ${Math.round(elapsed / 1000)} s`));
    }, Math.min(100, ms));
  });
  const work = (async (): Promise<Requests[K]['result']> => {
    conn = await connectTo(stateDir);
    if (late) {
      conn.close();
      throw new LoopfsError('ETIMEDOUT', who);
    }
    return exchange(conn, who, op, args, []);
  })();
  work.catch(() => {});
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearInterval(timer);
  }
}

/** InstanceClient over the control socket. Backing files are opened here, with the caller's rights. */
export class ControlClient implements InstanceClient {
  constructor(readonly id: string, readonly mountpoint: string, private readonly stateDir: string) {}

  list(): Promise<DeviceInfo[]> {
    return request(this.stateDir, 'list', {});
  }

  async attach(req: AttachRequest): Promise<AttachResult> {
    const file = path.resolve(req.file);
    // An overlay's base is only ever read.
    const { fd, writable } = openBacking(file, !!req.readOnly || !!req.overlay);
    const fds = [fd];
    try {
      if (req.overlay?.delta !== undefined) {
        const delta = path.resolve(req.overlay.delta);
        req = { ...req, overlay: { delta } };
        fds.push(openDelta(delta));
      }
      return await request(this.stateDir, 'attach', { req: { ...req, file }, path: file, writable }, fds);
    } finally {
      for (const f of fds) fs.closeSync(f);
    }
  }

  /** `loopfs overlay`; commit sends the base opened read-write with the caller's rights. */
  async overlay(index: DeviceIndex, action: OverlayAction): Promise<OverlayInfo> {
    const fds: number[] = [];
    try {
      if (action === 'commit') {
        const info = (await this.list()).find((d) => d.index === index);
        if (!info?.bound || !info.overlay || !info.backFile) throw new LoopfsError('EINVAL', `loop${index}`, 'not an overlay device');
        fds.push(openOrThrow(info.backFile, 'r+'));
      }
      return await request(this.stateDir, 'overlay', { index, action }, fds);
    } finally {
      for (const f of fds) fs.closeSync(f);
    }
  }

  detach(index: DeviceIndex): Promise<void> {
    return request(this.stateDir, 'detach', { index }).then(() => undefined);
  }

  detachAll(): Promise<void> {
    return request(this.stateDir, 'detachAll', {}).then(() => undefined);
  }

  setCapacity(index: DeviceIndex): Promise<DeviceInfo> {
    return request(this.stateDir, 'setCapacity', { index });
  }

  setDirectIo(index: DeviceIndex, on: boolean): Promise<DeviceInfo> {
    return request(this.stateDir, 'setDirectIo', { index, on });
  }

  setSectorSize(index: DeviceIndex, size: number): Promise<DeviceInfo> {
    return request(this.stateDir, 'setSectorSize', { index, size });
  }

  addDevice(index?: DeviceIndex): Promise<DeviceIndex> {
    return request(this.stateDir, 'add', index === undefined ? {} : { index });
  }

  removeDevice(index: DeviceIndex): Promise<void> {
    return request(this.stateDir, 'remove', { index }).then(() => undefined);
  }

  getFree(): Promise<DeviceIndex> {
    return request(this.stateDir, 'getFree', {});
  }
}

/**
 * Opens a backing file as losetup does: read-write unless asked read-only,
 * falling back to read-only when writing is refused (EACCES, EROFS, EPERM).
 * A directory or anything that is not a regular file or block device is refused.
 */
export function openBacking(file: string, readOnly: boolean): { fd: number; writable: boolean } {
  let fd: number;
  let writable = !readOnly;
  try {
    fd = fs.openSync(file, readOnly ? 'r' : 'r+');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (!readOnly && (code === 'EACCES' || code === 'EROFS' || code === 'EPERM')) {
      fd = openOrThrow(file, 'r');
      writable = false;
    } else {
      throw code === 'EISDIR' ? new LoopfsError('EISDIR', file, 'is a directory') : toLoopfsError(e, file);
    }
  }
  const st = fs.fstatSync(fd);
  if (!st.isFile() && !st.isBlockDevice()) {
    fs.closeSync(fd);
    throw new LoopfsError(st.isDirectory() ? 'EISDIR' : 'EINVAL', file, 'not a regular file or block device');
  }
  return { fd, writable };
}

/** A named delta: opened read-write, created (0600) if missing; never a symlink's target. */
function openDelta(file: string): number {
  const fd = openOrThrow(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
  if (!fs.fstatSync(fd).isFile()) {
    fs.closeSync(fd);
    throw new LoopfsError('EINVAL', file, 'an overlay file must be a regular file');
  }
  return fd;
}

function openOrThrow(file: string, flags: string | number, mode?: number): number {
  try {
    return fs.openSync(file, flags, mode);
  } catch (e) {
    throw toLoopfsError(e, file);
  }
}
