import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { LoopfsError, type Errno } from './errors';
import { ensureRunDir, ensurePrivateDir, instancesDir, defaultMountpoint } from './rundir';
import { daemonAlive, findInstance, listInstances, type InstanceRecord } from './registry';
import { ControlClient, request } from './client';
import { LOG_FILE } from './state';
import { waiting } from './progress';
import { PARENTS_FILE } from './limits';
import { flock, LOCK_EX, LOCK_UN } from '../sys/libc';
import { isMounted, unmountFuse } from '../fuse/mount';
import type { DeviceRef, InstanceClient, InstanceSelector } from './api';

/** Finding, starting and stopping instances: what every command stands on. */

export const DEFAULT_MAX = 1_048_576;
export const DEFAULT_ID = 'default';

export interface StartOptions {
  max?: number;
  uid?: number;
  gid?: number;
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

/** Mounts a new instance at `mountpoint` and returns once its daemon serves it. */
export async function startInstance(runDirOpt: string | undefined, mountpoint: string, opts: StartOptions, id?: string): Promise<InstanceRecord> {
  const runDir = ensureRunDir(runDirOpt);
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
    const instId = id ?? randomBytes(4).toString('hex');
    const stateDir = path.join(instancesDir(runDir), instId);
    ensurePrivateDir(stateDir);
    const uid = opts.uid ?? process.getuid?.() ?? 0;
    const gid = opts.gid ?? process.getgid?.() ?? 0;
    const log = fs.openSync(path.join(stateDir, LOG_FILE), 'a', 0o600);
    // Inside `loopfs run` the daemon gets a mount namespace of its own (see sandboxMountpoint).
    const sandboxed = fs.existsSync(path.join(runDir, PARENTS_FILE));
    const bound = sandboxed ? sandboxMountpoint(runDir, mountpoint) : false;
    const daemonArgv = [...selfCommand(), '__daemon', '--id', instId, '--mountpoint', mountpoint, '--state', stateDir, '--max', String(opts.max ?? DEFAULT_MAX), '--uid', String(uid), '--gid', String(gid), '--run-dir', runDir, ...(isDefault ? ['--remove-mountpoint'] : []), ...(bound ? ['--bound-mountpoint'] : [])];
    const argv = sandboxed ? ['unshare', '--mount', '--propagation', 'unchanged', '--', ...daemonArgv] : daemonArgv;
    const child = spawn(argv[0]!, argv.slice(1), {
      detached: true,
      stdio: ['ignore', log, log, 'pipe'],
      env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16' },
    });
    fs.closeSync(log);
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
    fs.rmSync(stateDir, { recursive: true, force: true });
    if (bound) spawnSync('umount', ['-n', mountpoint]);
    if (isDefault) rmdirQuiet(mountpoint);
    throw err;
  });
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
    const r = spawnSync('mount', ['-n', ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new LoopfsError('EPERM', mountpoint, `cannot prepare the mountpoint: ${(r.stderr ?? '').trim()}`);
  }
  return true;
}

function checkMountpoint(runDir: string, dir: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    throw new LoopfsError(((e as NodeJS.ErrnoException).code as Errno) ?? 'ENOENT', dir, 'mountpoint does not exist');
  }
  if (!st.isDirectory()) throw new LoopfsError('ENOTDIR', dir, 'mountpoint is not a directory');
  const holder = findInstance(runDir, dir);
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
export async function selectInstance(sel: InstanceSelector, startDefault = true): Promise<InstanceRecord> {
  const runDir = ensureRunDir(sel.runDir);
  const name = sel.instance ?? process.env.LOOPFS ?? DEFAULT_ID;
  const rec = findInstance(runDir, name);
  if (rec?.alive && rec.state) return rec;
  if (name === DEFAULT_ID || (rec?.id === DEFAULT_ID)) {
    if (!startDefault) throw new LoopfsError('ENOENT', DEFAULT_ID, 'the default instance is not running');
    return startInstance(sel.runDir, defaultMountpoint(runDir), {}, DEFAULT_ID);
  }
  if (rec) throw new LoopfsError('ESRCH', name, rec.problem ?? 'the instance daemon is not running (loopfs gc removes it)');
  throw new LoopfsError('ENOENT', name, 'no such loopfs instance');
}

export async function openInstance(sel: InstanceSelector): Promise<InstanceClient> {
  const rec = await selectInstance(sel);
  return new ControlClient(rec.id, rec.state!.mountpoint, rec.stateDir);
}

const DEVICE_NAME = /^loop(\d+)(?:p(\d+))?$/;

/**
 * A device named on the command line: DIR/loopN[pM] of a running instance,
 * or a bare loopN[pM] of the current instance. Anything else (/dev/loop0, a
 * regular file) is not a loopfs device.
 */
export async function resolveDevice(arg: string, sel: InstanceSelector): Promise<DeviceRef> {
  if (!arg.includes('/')) {
    const m = DEVICE_NAME.exec(arg);
    if (!m) throw new LoopfsError('EINVAL', arg, 'not a loopfs device name');
    const client = await openInstance(sel);
    return { client, index: Number(m[1]), ...(m[2] ? { partition: Number(m[2]) } : {}) };
  }
  const abs = path.resolve(arg);
  const dir = path.dirname(abs);
  const name = path.basename(abs);
  const runDir = ensureRunDir(sel.runDir);
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

/** Unmounts an instance through its daemon and waits until the daemon and its state are gone. */
export async function stopInstance(rec: InstanceRecord, lazy: boolean): Promise<void> {
  if (!rec.alive || !rec.state) return reap(rec);
  await request(rec.stateDir, 'umount', { lazy });
  if (lazy) return;
  // Done means done: the state is removed and the daemon process has exited.
  const { pid, id } = rec.state;
  const gone = (): boolean => !fs.existsSync(rec.stateDir) && !daemonAlive(pid, id);
  const deadline = Date.now() + 10_000;
  await waiting(`waiting for the instance daemon of ${rec.state.mountpoint} to finish`, async () => {
    while (!gone() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  });
  if (!gone()) throw new LoopfsError('ETIMEDOUT', rec.state.mountpoint, 'the daemon did not finish within 10 s');
  if (rec.state.boundMountpoint) spawnSync('umount', ['-n', rec.state.mountpoint]);
}

/** Removes what a dead daemon left: its (dead) mount and its state. */
export async function reap(rec: InstanceRecord): Promise<void> {
  if (rec.alive) throw new LoopfsError('EBUSY', rec.id, 'the daemon is alive');
  if (rec.state && isMounted(rec.state.mountpoint)) await unmountFuse(rec.state.mountpoint, true);
  if (rec.state?.boundMountpoint) spawnSync('umount', ['-n', rec.state.mountpoint]);
  fs.rmSync(rec.stateDir, { recursive: true, force: true });
  if (rec.state?.removeMountpoint) rmdirQuiet(rec.state.mountpoint);
}
