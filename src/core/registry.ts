import * as fs from 'node:fs';
import * as path from 'node:path';
import { LoopfsError, type Errno } from '../base/errors';
import { instancesDir } from './rundir';
import { readState, readPrivateFile, SOCKET_FILE, type InstanceState } from './state';
import { readMountinfo } from '../fuse/mount';

/** The instances of a run directory, as their state files and /proc tell. */

export interface InstanceRecord {
  id: string;
  stateDir: string;
  state?: InstanceState;
  /** Why the state could not be used, "FILE: reason" (it is then left alone), and its errno. */
  problem?: string;
  problemErrno?: Errno;
  /** The daemon process named in the state is alive and is a loopfs daemon. */
  alive: boolean;
  /** A FUSE mount of loopfs is at the mountpoint. */
  mounted: boolean;
  /**
   * The daemon is alive but cannot be reached through its control socket
   * (why: the socket or the whole state directory is gone); it was found
   * by its process, and is stopped by signal and through its mount.
   */
  orphaned?: string;
  /** The mountpoint as it was named on `loopfs mount`'s command line, when that differs from the one resolved. */
  alias?: string;
}

/** The file of a state directory that keeps the mountpoint as given on the command line. */
export const ALIAS_FILE = 'given-mountpoint';

/** What a daemon's command line says (loopfs __daemon --id … --mountpoint … --state … --run-dir …). */
export interface DaemonProcess {
  pid: number;
  id: string;
  mountpoint: string;
  stateDir: string;
  runDir: string;
  uid: number;
  gid: number;
  max: number;
  removeMountpoint: boolean;
  boundMountpoint: boolean;
}

function parseDaemonCmdline(pid: number, cmd: string[]): DaemonProcess | undefined {
  if (!cmd.includes('__daemon')) return undefined;
  const get = (k: string): string | undefined => {
    const i = cmd.indexOf(`--${k}`);
    return i >= 0 ? cmd[i + 1] : undefined;
  };
  const id = get('id');
  const mountpoint = get('mountpoint');
  const stateDir = get('state');
  const runDir = get('run-dir');
  if (!id || !mountpoint || !stateDir || !runDir) return undefined;
  return {
    pid, id, mountpoint, stateDir, runDir,
    uid: Number(get('uid') ?? 0), gid: Number(get('gid') ?? 0), max: Number(get('max') ?? 0),
    removeMountpoint: cmd.includes('--remove-mountpoint'), boundMountpoint: cmd.includes('--bound-mountpoint'),
  };
}

/** The daemons serving instances of `runDir`, found in /proc whatever is left of their state. */
export function findDaemons(runDir: string): DaemonProcess[] {
  const out: DaemonProcess[] = [];
  let pids: string[];
  try {
    pids = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p));
  } catch {
    return out;
  }
  const uid = process.getuid?.() ?? 0;
  // Reading a command line takes the process's memory lock, which a process stuck in a page fault on a wedged
  // FUSE mount can hold: only programs that can be a daemon (by name, which needs no lock) are read.
  const names = new Set(['node', 'nodejs', 'loopfs', path.basename(process.execPath).slice(0, 15)]);
  for (const p of pids) {
    let cmd: string[];
    try {
      // Only our own processes: anyone can run a program whose command line says "__daemon --run-dir OURS".
      if (fs.statSync(`/proc/${p}`).uid !== uid) continue;
      if (!names.has(fs.readFileSync(`/proc/${p}/comm`, 'utf8').trim())) continue;
      cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    const d = parseDaemonCmdline(Number(p), cmd);
    if (d && d.runDir === runDir) out.push(d);
  }
  return out;
}

function lexists(file: string): boolean {
  try {
    fs.lstatSync(file);
    return true;
  } catch {
    return false;
  }
}

function readAlias(stateDir: string): string | undefined {
  try {
    return readPrivateFile(path.join(stateDir, ALIAS_FILE))?.trim() || undefined;
  } catch {
    return undefined;
  }
}

export function daemonAlive(pid: number, id: string): boolean {
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = cmd.indexOf('__daemon');
    return i >= 0 && cmd[cmd.indexOf('--id') + 1] === id;
  } catch {
    return false;
  }
}

/**
 * `orphans`: also look through /proc for live daemons whose state is gone
 * (a read of every process's name: the costly part on a busy host).
 */
export function listInstances(runDir: string, orphans = true): InstanceRecord[] {
  const dir = instancesDir(runDir);
  let names: string[];
  try {
    names = fs.readdirSync(dir).filter((n) => !n.startsWith('.')).sort();
  } catch {
    return [];
  }
  const mounts = readMountinfo().filter((m) => m.fstype === 'fuse.loopfs');
  const isMounted = (mp: string): boolean => mounts.some((m) => m.mountpoint === mp);
  const records: InstanceRecord[] = names.map((id) => {
    const stateDir = path.join(dir, id);
    try {
      const state = readState(stateDir);
      const alive = daemonAlive(state.pid, state.id);
      const alias = readAlias(stateDir);
      const rec: InstanceRecord = { id, stateDir, state, alive, mounted: isMounted(state.mountpoint), ...(alias ? { alias } : {}) };
      if (alive && !lexists(path.join(stateDir, SOCKET_FILE))) rec.orphaned = 'its control socket is gone';
      return rec;
    } catch (e) {
      return { id, stateDir, problem: e instanceof LoopfsError ? e.message : String(e), problemErrno: e instanceof LoopfsError ? e.errno : 'EIO', alive: false, mounted: false };
    }
  });
  // A live daemon whose state directory is gone (or the whole run directory) is still an instance: its command
  // line tells what it serves. (A state directory without state.json is a daemon still starting: left as it is.)
  for (const d of orphans ? findDaemons(runDir) : []) {
    if (d.stateDir !== path.join(dir, d.id) || lexists(d.stateDir) || records.some((r) => r.id === d.id)) continue;
    const state: InstanceState = { version: 1, id: d.id, mountpoint: d.mountpoint, pid: d.pid, uid: d.uid, gid: d.gid, max: d.max, removeMountpoint: d.removeMountpoint, boundMountpoint: d.boundMountpoint, created: '' };
    records.push({ id: d.id, stateDir: d.stateDir, state, alive: true, mounted: isMounted(d.mountpoint), orphaned: 'its state directory is gone' });
  }
  return records.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/**
 * By id, or by mountpoint (any path that resolves to it). `orphans`: also
 * among live daemons whose state is gone (a look through /proc).
 */
export function findInstance(runDir: string, what: string, orphans = true): InstanceRecord | undefined {
  // An instance with its state in place is found without the look through /proc: only the orphans need it.
  const served = pick(listInstances(runDir, false), what);
  return (served?.alive && !served.orphaned) || !orphans ? served : pick(listInstances(runDir), what);
}

function pick(all: InstanceRecord[], what: string): InstanceRecord | undefined {
  const byId = all.find((r) => r.id === what);
  if (byId) return byId;
  // As named when it was mounted (a symlink then, wherever it points now), or as recorded.
  const abs = path.resolve(what);
  const named = all.find((r) => r.state && (r.state.mountpoint === abs || r.alias === abs));
  if (named) return named;
  const real = resolveOnce(abs);
  return real === undefined ? undefined : all.find((r) => r.state && r.state.mountpoint === real);
}

/** O_PATH (<fcntl.h>, the same on x86_64 and arm64): a handle on the path itself, no open(2) of the file. */
export const O_PATH = 0o10000000;

/**
 * The absolute path `p` resolves to, symlinks followed once, without asking
 * any filesystem on the way for more than the lookup: an O_PATH open (no
 * FUSE open, no getattr of a mount's root — a realpath or stat of a wedged
 * FUSE mountpoint would hang) and the kernel's name of the result.
 */
export function resolveOnce(p: string): string | undefined {
  let fd: number;
  try {
    fd = fs.openSync(p, O_PATH);
  } catch {
    return undefined;
  }
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } finally {
    fs.closeSync(fd);
  }
}
