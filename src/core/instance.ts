import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as ChildProcess from 'node:child_process';
import { LoopfsError, errnoOf, toLoopfsError, type Errno } from '../base/errors';
import { MAX_DEVICES } from '../base/loopdev';
import { ensurePrivateDir, instancesDir, defaultMountpoint, type RunDir, type Selection } from './rundir';
import { ALIAS_FILE, O_PATH, daemonAlive, findInstance, listInstances, type InstanceRecord } from './registry';
import { ControlClient, requestWithin } from './client';
import type { Op, Requests } from './protocol';
import { LOG_FILE, SOCKET_FILE, instanceState, writeState } from './state';
import { waiting } from './progress';
import { PARENTS_FILE, checkLevels, levelsFor } from './limits';
import { flock, umount2, LOCK_EX, LOCK_UN, MNT_DETACH } from '../sys/libc';
import { UnixServer } from '../sys/unixsock';
import { isMounted, isRoot, mountFuse, readMountinfo, detachExactMount, abortFuseConnection, fuseConnection, fuseConnectionsOf, type MountInfo } from '../fuse/mount';
import type { DeviceRef, InstanceClient } from './api';

/** node:child_process (and node:net under it) is loaded on first use: most commands never spawn. */
const cp = (): typeof ChildProcess => require('node:child_process') as typeof ChildProcess;

/** Finding, starting and stopping instances: what every command stands on. */

export const DEFAULT_ID = 'default';

export interface StartOptions {
  max?: number;
  uid?: number;
  gid?: number;
  /** The mountpoint as named on the command line, when it resolved to another path (kept for `loopfs umount NAME`). */
  alias?: string;
}

/** Serializes instance creation in a run directory (two `losetup -f` starting the default instance at once). */
async function withRunDirLock<T>(runDir: string, fn: () => Promise<T>): Promise<T> {
  const fd = fs.openSync(path.join(runDir, 'lock'), fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
  try {
    flock(fd, LOCK_EX);
    return await fn();
  } finally {
    try {
      flock(fd, LOCK_UN);
    } finally {
      fs.closeSync(fd);
    }
  }
}

/**
 * Variables Node reads at every start that loopfs's own processes (a daemon,
 * a sandbox's init) have no use for: NODE_EXTRA_CA_CERTS makes each start
 * load a CA bundle for TLS (~40 ms here), and they make no TLS connection.
 */
export const STARTUP_ONLY_ENV = ['NODE_EXTRA_CA_CERTS'];

/** The environment for one of loopfs's own processes: `env` without STARTUP_ONLY_ENV, plus `extra`. */
export function ownProcessEnv(env: NodeJS.ProcessEnv, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...env, ...extra };
  for (const k of STARTUP_ONLY_ENV) delete out[k];
  return out;
}

/** argv that runs this same program: the single executable, or node + the bundle. */
export function selfCommand(): string[] {
  let sea = false;
  try {
    sea = (require('node:sea') as { isSea(): boolean }).isSea();
  } catch {
    sea = false;
  }
  return sea ? [process.execPath] : [process.execPath, process.argv[1]!];
}

/**
 * Mounts a new instance at `mountpoint` and returns once it is mounted and
 * its daemon started (as root: handOver) or serving (an ordinary user).
 */
export async function startInstance(runDir: RunDir, mountpoint: string, opts: StartOptions, id?: string): Promise<InstanceRecord> {
  const isDefault = id === DEFAULT_ID;
  return withRunDirLock(runDir, async () => {
    if (isDefault) {
      const existing = findInstance(runDir, DEFAULT_ID);
      if (existing?.alive) return existing;
      if (existing) await reap(existing);
      fs.mkdirSync(mountpoint, { recursive: true, mode: 0o755 });
    } else {
      checkMountpoint(runDir, mountpoint);
    }
    const instId = id ?? (require('node:crypto') as typeof import('node:crypto')).randomBytes(4).toString('hex');
    const stateDir = path.join(instancesDir(runDir), instId);
    ensurePrivateDir(stateDir);
    if (opts.alias) writeAlias(stateDir, opts.alias);
    const uid = opts.uid ?? process.getuid?.() ?? 0;
    const gid = opts.gid ?? process.getgid?.() ?? 0;
    // Inside `loopfs run` the daemon gets a mount namespace of its own (see sandboxMountpoint).
    const sandboxed = fs.existsSync(path.join(runDir, PARENTS_FILE));
    const bound = sandboxed ? sandboxMountpoint(runDir, mountpoint) : false;
    const spec = { id: instId, mountpoint, uid, gid, max: opts.max ?? MAX_DEVICES, removeMountpoint: isDefault, boundMountpoint: bound };
    // What a start that fails leaves: nothing (the mount, if made, is undone by whoever made it).
    const undo = (): void => {
      fs.rmSync(stateDir, { recursive: true, force: true });
      if (bound) cp().spawnSync('umount', ['-n', mountpoint]);
      if (isDefault) rmdirQuiet(mountpoint);
    };
    // As root the mount and the control socket are made here and handed to the daemon.
    let handed: Handover | undefined;
    try {
      checkLevels(levelsFor(runDir, uid));
      handed = isRoot() ? await handOver(stateDir, spec) : undefined;
    } catch (e) {
      undo();
      throw e;
    }
    const daemonArgv = [...selfCommand(), '__daemon', '--id', instId, '--mountpoint', mountpoint, '--state', stateDir, '--max', String(spec.max), '--uid', String(uid), '--gid', String(gid), '--run-dir', runDir,
      ...(isDefault ? ['--remove-mountpoint'] : []), ...(bound ? ['--bound-mountpoint'] : []), ...(handed ? ['--fuse-fd', '3', '--control-fd', '4'] : [])];
    const argv = sandboxed ? ['unshare', '--mount', '--propagation', 'unchanged', '--', ...daemonArgv] : daemonArgv;
    const log = fs.openSync(path.join(stateDir, LOG_FILE), 'a', 0o600);
    let child: ChildProcess.ChildProcess;
    try {
      child = cp().spawn(argv[0]!, argv.slice(1), {
        detached: true,
        stdio: ['ignore', log, log, ...(handed ? [handed.fuseFd, handed.controlFd] : ['pipe' as const])],
        // Two malloc arenas: memory one pool thread frees serves the next (one arena per thread keeps it all).
        env: ownProcessEnv(process.env, { UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16', MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '2' }),
      });
    } finally {
      fs.closeSync(log);
      handed?.close();
    }
    if (handed) {
      // The daemon holds the mount and the socket now; its record names it. A spawn that failed
      // (no pid) has left the connection with nobody: the kernel aborted it, the mount goes.
      child.on('error', () => { /* reported below, by the missing pid */ });
      if (child.pid === undefined) {
        handed.unmount();
        undo();
        throw new LoopfsError('EIO', mountpoint, 'cannot start the instance daemon');
      }
      writeState(stateDir, instanceState(spec, child.pid));
      child.unref();
      const rec = findInstance(runDir, instId);
      if (rec) return rec;
      throw new LoopfsError('EIO', mountpoint, 'the instance daemon left no state');
    }
    const line = await waiting(`starting the loopfs instance at ${mountpoint}`, () => firstLine(child.stdio[3] as NodeJS.ReadableStream));
    child.unref();
    (child.stdio[3] as unknown as { destroy(): void }).destroy();
    if (line === 'ready') {
      const rec = findInstance(runDir, instId);
      if (rec) return rec;
      throw new LoopfsError('EIO', mountpoint, 'daemon reported ready but left no state');
    }
    // The daemon failed before serving: it mounted nothing; remove what we made.
    const m = /^error (\S+) (.*)$/.exec(line ?? '');
    let err: LoopfsError;
    if (m) {
      const d = JSON.parse(m[2]!) as { what: string; reason: string };
      err = new LoopfsError(m[1] as Errno, d.what, d.reason);
    } else {
      const logText = readTail(path.join(stateDir, LOG_FILE));
      err = new LoopfsError('EIO', mountpoint, `the daemon exited before it was ready${logText ? `: ${logText}` : ''}`);
    }
    undo();
    throw err;
  });
}

interface Handover {
  /** /dev/fuse of the mount made, and the control socket listening. */
  fuseFd: number;
  controlFd: number;
  /** Closes this process's copies (after the daemon got its own). */
  close(): void;
  /** Takes the mount down again (the daemon could not be started). */
  unmount(): void;
}

/**
 * A root start makes the FUSE mount and the control socket itself and hands
 * both to the daemon: from then on the kernel holds the filesystem's first
 * requests (INIT, then what callers ask) and the socket's backlog holds the
 * control clients until the daemon serves them, so a start returns without
 * waiting for the daemon's runtime to come up. Errors of the mount (no
 * /dev/fuse, a refused mount) are the starter's, told at once.
 */
async function handOver(stateDir: string, spec: { mountpoint: string; uid: number; gid: number }): Promise<Handover> {
  const { fd: fuseFd } = await mountFuse(spec.mountpoint, { source: 'loopfs', subtype: 'loopfs', uid: spec.uid, gid: spec.gid, allowOther: true });
  const unmount = (): void => {
    try {
      umount2(spec.mountpoint, MNT_DETACH);
    } catch {
      /* gone already */
    }
  };
  let controlFd: number;
  try {
    controlFd = UnixServer.listen(path.join(stateDir, SOCKET_FILE), 0o600).fd;
  } catch (e) {
    fs.closeSync(fuseFd);
    unmount();
    throw e;
  }
  return {
    fuseFd, controlFd, unmount,
    // Closed, not shut down (UnixServer.close): a shutdown(2) would stop the daemon's copy listening too.
    close: () => {
      fs.closeSync(fuseFd);
      fs.closeSync(controlFd);
    },
  };
}

function writeAlias(stateDir: string, alias: string): void {
  const fd = fs.openSync(path.join(stateDir, ALIAS_FILE), fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
  try {
    fs.writeSync(fd, `${alias}\n`);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * `loopfs mount DIR`: DIR is resolved once — opened O_PATH|O_DIRECTORY, its
 * symlinks followed that one time — and the instance is mounted at the path
 * the kernel gives for that directory (/proc/self/fd/N), never at DIR again.
 * Once the daemon is ready the pinned directory is checked to be the one
 * the mount covers (same place, the mount's parent); if someone moved a
 * directory on the way meanwhile, the instance is stopped and EBUSY
 * returned. DIR itself is kept as an alias, so `loopfs umount DIR` finds
 * the instance by the name it was mounted with, wherever DIR points later.
 */
export async function mountPinned(runDir: RunDir, dir: string, opts: StartOptions): Promise<InstanceRecord> {
  const abs = path.resolve(dir);
  let fd: number;
  try {
    fd = fs.openSync(abs, O_PATH | fs.constants.O_DIRECTORY);
  } catch (e) {
    const err = toLoopfsError(e, dir);
    throw new LoopfsError(err.errno, dir, err.errno === 'ENOENT' ? 'mountpoint does not exist' : err.errno === 'ENOTDIR' ? 'mountpoint is not a directory' : err.reason);
  }
  try {
    const real = fs.readlinkSync(`/proc/self/fd/${fd}`);
    const rec = await startInstance(runDir, real, { ...opts, ...(real !== abs ? { alias: abs } : {}) });
    const mount = instanceMount(rec);
    const parentMount = /^mnt_id:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
    const pinnedAt = fs.readlinkSync(`/proc/self/fd/${fd}`);
    // Inside a sandbox the mountpoint was first bound onto itself (sandboxMountpoint): then that bind is the parent.
    const bind = readMountinfo().find((m) => m.id === mount?.parent && m.mountpoint === real);
    const parentOk = String(mount?.parent) === parentMount || (!!bind && String(bind.parent) === parentMount);
    if (!mount || mount.mountpoint !== real || pinnedAt !== real || !parentOk) {
      await stopInstance(rec, true).catch(() => undefined);
      throw new LoopfsError('EBUSY', dir, 'the mountpoint was moved while it was being mounted; nothing is left mounted');
    }
    return rec;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A daemon must never be the last process of a mount namespace in which
 * something is mounted on top of its own devices: its exit would unmount
 * that filesystem, whose final sync waits on FUSE writes only the dying
 * daemon could answer — a kernel-level deadlock that a SIGKILLed sandbox
 * hits. So inside a sandbox the daemon runs in a mount namespace of its own,
 * and its mountpoint sits on a shared mount so that the FUSE mount it makes
 * there still appears in the sandbox. The sandbox's run directory is shared
 * from the start (core/sandbox.ts); any other mountpoint is bound onto itself
 * and made shared. Returns whether such a bind was made.
 */
function sandboxMountpoint(runDir: string, mountpoint: string): boolean {
  if (path.dirname(mountpoint) === runDir) return false;
  for (const args of [['--bind', mountpoint, mountpoint], ['--make-shared', mountpoint]]) {
    const r = cp().spawnSync('mount', ['-n', ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new LoopfsError('EPERM', mountpoint, `cannot prepare the mountpoint: ${(r.stderr ?? '').trim()}`);
  }
  return true;
}

function checkMountpoint(runDir: string, dir: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    throw new LoopfsError(errnoOf(e) ?? 'ENOENT', dir, 'mountpoint does not exist');
  }
  if (!st.isDirectory()) throw new LoopfsError('ENOTDIR', dir, 'mountpoint is not a directory');
  // An orphaned daemon (its state gone) serving at DIR is found by the mount check below, without a look through /proc.
  const holder = findInstance(runDir, dir, false);
  if (holder?.state && (holder.alive || holder.mounted)) throw new LoopfsError('EBUSY', dir, `already holds loopfs instance ${holder.id}`);
  if (isMounted(dir)) throw new LoopfsError('EBUSY', dir, 'something is already mounted there');
  if (fs.readdirSync(dir).length > 0) throw new LoopfsError('ENOTEMPTY', dir, 'mountpoint is not empty');
}

function firstLine(stream: NodeJS.ReadableStream): Promise<string | undefined> {
  return new Promise((resolve) => {
    let buf = '';
    stream.on('data', (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) resolve(buf.slice(0, nl));
    });
    stream.on('end', () => resolve(buf.length ? buf : undefined));
    stream.on('error', () => resolve(undefined));
  });
}

function readTail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-1)[0] ?? '';
  } catch {
    return '';
  }
}

function rmdirQuiet(dir: string): void {
  try {
    fs.rmdirSync(dir);
  } catch {
    /* not ours to force */
  }
}

/** The instance a command works on: --instance, else $LOOPFS, else the default one (started on first use). */
export async function selectInstance(sel: Selection, startDefault = true): Promise<InstanceRecord> {
  const runDir = sel.runDir;
  const name = sel.instance ?? process.env.LOOPFS ?? DEFAULT_ID;
  const rec = findInstance(runDir, name);
  if (rec?.alive && rec.orphaned) throw new LoopfsError('ESRCH', name, `the instance daemon runs but cannot be reached: ${rec.orphaned} (loopfs umount or loopfs gc stops it)`);
  if (rec?.alive && rec.state) return rec;
  if (name === DEFAULT_ID || (rec?.id === DEFAULT_ID)) {
    if (!startDefault) throw new LoopfsError('ENOENT', DEFAULT_ID, 'the default instance is not running');
    return startInstance(runDir, defaultMountpoint(runDir), {}, DEFAULT_ID);
  }
  if (rec) throw new LoopfsError('ESRCH', name, rec.problem ?? 'the instance daemon is not running (loopfs gc removes it)');
  throw new LoopfsError('ENOENT', name, 'no such loopfs instance');
}

export async function openInstance(sel: Selection): Promise<InstanceClient> {
  const rec = await selectInstance(sel);
  return new ControlClient(rec.id, rec.state!.mountpoint, rec.stateDir);
}

const DEVICE_NAME = /^loop(\d+)(?:p(\d+))?$/;

/**
 * A device named on the command line: DIR/loopN[pM] of a running instance,
 * or a bare loopN[pM] of the current instance. Anything else (/dev/loop0, a
 * regular file) is not a loopfs device.
 */
export async function resolveDevice(arg: string, sel: Selection): Promise<DeviceRef> {
  if (!arg.includes('/')) {
    const m = DEVICE_NAME.exec(arg);
    if (!m) throw new LoopfsError('EINVAL', arg, 'not a loopfs device name');
    const client = await openInstance(sel);
    return { client, index: Number(m[1]), ...(m[2] ? { partition: Number(m[2]) } : {}) };
  }
  const abs = path.resolve(arg);
  const dir = path.dirname(abs);
  const name = path.basename(abs);
  const runDir = sel.runDir;
  let realDir = dir;
  try {
    realDir = fs.realpathSync(dir);
  } catch {
    /* compare as given */
  }
  const rec = listInstances(runDir).find((r) => r.state && (r.state.mountpoint === dir || r.state.mountpoint === realDir));
  if (!rec || !rec.state) throw new LoopfsError('EINVAL', arg, 'not a loopfs device (no loopfs instance is mounted at its directory)');
  if (!rec.alive) throw new LoopfsError('ESRCH', arg, 'the instance daemon is not running');
  const client = new ControlClient(rec.id, rec.state.mountpoint, rec.stateDir);
  const m = DEVICE_NAME.exec(name);
  if (m) return { client, index: Number(m[1]), ...(m[2] ? { partition: Number(m[2]) } : {}) };
  // A renamed entry: ask the instance which device carries that name.
  const dev = (await client.list()).find((d) => path.basename(d.path) === name);
  if (!dev) throw new LoopfsError('ENOENT', arg, 'no such loop device');
  return { client, index: dev.index };
}

/**
 * How long a daemon may take to answer its control socket before an admin
 * command gives up on it: a stopped one (SIGSTOP, a debugger) is given up
 * after ANSWER_DEADLINE_MS, a running one that does not answer (deadlocked,
 * or only very busy) after ANSWER_LIMIT_MS.
 */
export const ANSWER_DEADLINE_MS = 3000;
export const ANSWER_LIMIT_MS = 8000;

/** A control request under those deadlines; ETIMEDOUT says why it gave up. */
function ask<K extends Op>(rec: InstanceRecord, op: K, args: Requests[K]['args']): Promise<Requests[K]['result']> {
  const pid = rec.state?.pid ?? 0;
  return requestWithin(rec.stateDir, op, args, ANSWER_LIMIT_MS, (t) => t < ANSWER_DEADLINE_MS || !processStopped(pid)).catch((e: unknown) => {
    if (e instanceof LoopfsError && e.errno === 'ETIMEDOUT' && processStopped(pid)) throw new LoopfsError('ETIMEDOUT', e.what, `${e.reason} (it is stopped)`);
    throw e;
  });
}

/** How an instance was stopped: by its daemon, by us through its mount, or by force (`why` says why). */
export interface Stopped {
  how: 'daemon' | 'unmounted' | 'reaped' | 'aborted';
  why?: string;
}

/**
 * The instance's FUSE mount as this process sees it, identified by its
 * connection: the kernel names the connection of the daemon's /dev/fuse
 * descriptor (or, on kernels that do not, the daemon's own mount table says
 * which connection is mounted at its mountpoint); ours says where that
 * connection is mounted here, wherever that is now. Without a live daemon:
 * the loopfs mount at the recorded path.
 */
export function instanceMount(rec: InstanceRecord): MountInfo | undefined {
  if (!rec.state) return undefined;
  const ours = readMountinfo().filter((m) => m.fstype === 'fuse.loopfs');
  const conns = rec.alive ? fuseConnectionsOf(rec.state.pid) : [];
  if (conns.length > 0) {
    const served = ours.filter((m) => conns.includes(fuseConnection(m) ?? -1));
    return served.find((m) => m.mountpoint === rec.state!.mountpoint) ?? served[served.length - 1];
  }
  const table = rec.alive ? readMountinfo(rec.state.pid) : [];
  if (table.length > 0) {
    const theirs = table.find((m) => m.fstype === 'fuse.loopfs' && m.mountpoint === rec.state!.mountpoint);
    if (!theirs) return undefined;
    const same = ours.filter((m) => m.dev === theirs.dev);
    return same.find((m) => m.mountpoint === rec.state!.mountpoint) ?? same[same.length - 1];
  }
  const at = ours.filter((m) => m.mountpoint === rec.state!.mountpoint);
  return at[at.length - 1];
}

/**
 * Stops an instance and waits until its daemon and its state are gone. A
 * daemon that answers unmounts itself (EBUSY while a device is open, unless
 * lazy). An orphaned one (no control socket, no state) is unmounted by us
 * through its mount, after which it exits by itself. A daemon that does not
 * answer within ANSWER_DEADLINE_MS, or does not finish, is aborted (forceStop).
 * Nothing here touches the mount through FUSE.
 */
export async function stopInstance(rec: InstanceRecord, lazy: boolean): Promise<Stopped> {
  if (!rec.alive || !rec.state) {
    await reap(rec);
    return { how: 'reaped' };
  }
  const { pid, id, mountpoint } = rec.state;
  // The instance's own mount, found by its FUSE connection: what is unmounted, wherever its path leads now.
  const mount = instanceMount(rec);
  let how: Stopped['how'] = 'daemon';
  let orphaned = rec.orphaned;
  if (!orphaned) {
    // Asked first: an answer shows the daemon is not wedged, and says whether a device is open.
    try {
      const st = await ask(rec, 'status', {});
      if (!lazy && st.open > 0) throw new LoopfsError('EBUSY', mountpoint, `${st.open} device(s) open`);
    } catch (e) {
      if (!(e instanceof LoopfsError)) throw e;
      if (e.errno === 'ETIMEDOUT') return forceStop(rec, e.reason);
      if (e.errno !== 'ESRCH' && e.errno !== 'EPIPE') throw e;
      orphaned = 'its control socket is gone';
    }
  }
  if (orphaned) {
    how = 'unmounted';
    // Unmounted, a stopped daemon would never see its session end.
    if (processStopped(pid)) return forceStop(rec, 'the daemon is stopped');
  }
  if (mount) {
    // The daemon sees its session end when the mount goes, and removes its state itself.
    try {
      detachExactMount(mount, lazy);
    } catch (e) {
      const err = toLoopfsError(e);
      throw new LoopfsError(err.errno, mountpoint, err.errno === 'EBUSY' ? `${err.reason} (loopfs umount -l detaches now)` : err.reason);
    }
  } else {
    // Not mounted any more (unmounted lazily before): the daemon finishes when its last opener closes.
    if (lazy) return { how };
    if (!(await waitUntil(() => !daemonAlive(pid, id), 1000, `waiting for the instance daemon of ${mountpoint} to finish`))) {
      throw new LoopfsError('EBUSY', mountpoint, 'already unmounted; its daemon finishes when the last open device closes');
    }
  }
  if (lazy && !rec.orphaned) {
    // Inside a sandbox the bind under the mountpoint (sandboxMountpoint) goes too, lazily like the mount.
    if (rec.state.boundMountpoint) {
      const top = readMountinfo().filter((m) => m.mountpoint === mountpoint).pop();
      if (top && top.fstype !== 'fuse.loopfs') {
        try {
          detachExactMount(top, true);
        } catch {
          /* gone meanwhile */
        }
      }
    }
    return { how };
  }
  // Done means done: the state is removed and the daemon process has exited.
  const gone = (): boolean => !fs.existsSync(rec.stateDir) && !daemonAlive(pid, id);
  const finished = await waitUntil(gone, lazy ? ANSWER_DEADLINE_MS : 10_000, `waiting for the instance daemon of ${mountpoint} to finish`);
  if (finished) {
    if (rec.state.boundMountpoint) cp().spawnSync('umount', ['-n', mountpoint], { timeout: 5000 });
    return { how };
  }
  if (lazy) return { how }; // detached; an orphan finishes when its last opener closes
  if (processStopped(pid) || !daemonAlive(pid, id) || how === 'daemon') return forceStop(rec, 'the daemon did not finish within 10 s');
  throw new LoopfsError('ETIMEDOUT', mountpoint, 'the daemon did not finish within 10 s');
}

async function waitUntil(cond: () => boolean, ms: number, what: string): Promise<boolean> {
  const deadline = Date.now() + ms;
  await waiting(what, async () => {
    while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  });
  return cond();
}

/** The process is stopped (SIGSTOP, a debugger): state T or t in /proc/PID/stat. */
function processStopped(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return /^[Tt]$/.test(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? '');
  } catch {
    return false;
  }
}

/**
 * The way out of a wedged daemon: abort its FUSE connection (every waiter,
 * and every later request, gets ENOTCONN), kill it (SIGKILL ends a stopped
 * process too), lazily unmount its mount wherever this namespace has it,
 * and remove its state.
 */
export async function forceStop(rec: InstanceRecord, why: string): Promise<Stopped> {
  const st = rec.state!;
  const mount = instanceMount(rec);
  const conn = mount ? fuseConnection(mount) : undefined;
  if (conn !== undefined) abortFuseConnection(conn);
  if (daemonAlive(st.pid, st.id)) {
    try {
      process.kill(st.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    await waitUntil(() => !daemonAlive(st.pid, st.id), 5000, `waiting for the instance daemon of ${st.mountpoint} to die`);
  }
  const mounts = mount ? readMountinfo().filter((m) => m.fstype === 'fuse.loopfs' && m.dev === mount.dev).reverse() : [];
  for (const m of mounts) {
    try {
      detachExactMount(m, true);
    } catch {
      /* gone meanwhile */
    }
  }
  if (st.boundMountpoint) cp().spawnSync('umount', ['-n', st.mountpoint], { timeout: 5000 });
  fs.rmSync(rec.stateDir, { recursive: true, force: true });
  if (st.removeMountpoint) rmdirQuiet(st.mountpoint);
  return { how: 'aborted', why };
}

/** Removes what a dead daemon left: its (dead) mount and its state. */
export async function reap(rec: InstanceRecord): Promise<void> {
  if (rec.alive) throw new LoopfsError('EBUSY', rec.id, 'the daemon is alive');
  const mount = rec.state ? instanceMount(rec) : undefined;
  if (mount) {
    // The kernel aborted the connection when the dead daemon's /dev/fuse closed; only the mount is left.
    try {
      detachExactMount(mount, true);
    } catch {
      /* gone meanwhile */
    }
  }
  if (rec.state?.boundMountpoint) cp().spawnSync('umount', ['-n', rec.state.mountpoint], { timeout: 5000 });
  fs.rmSync(rec.stateDir, { recursive: true, force: true });
  if (rec.state?.removeMountpoint) rmdirQuiet(rec.state.mountpoint);
}

/**
 * Whether a live instance answers its control socket within the deadline;
 * an orphan (no socket) is reported as such, not probed.
 */
export async function probeInstance(rec: InstanceRecord): Promise<{ health: 'answers' | 'orphaned' | 'unresponsive'; why?: string }> {
  if (rec.orphaned) return { health: 'orphaned', why: rec.orphaned };
  try {
    await ask(rec, 'status', {});
    return { health: 'answers' };
  } catch (e) {
    if (e instanceof LoopfsError && e.errno === 'ETIMEDOUT') return { health: 'unresponsive', why: e.reason };
    if (e instanceof LoopfsError && (e.errno === 'ESRCH' || e.errno === 'EPIPE')) return { health: 'orphaned', why: e.reason };
    throw e;
  }
}
