import * as fs from 'node:fs';
import * as path from 'node:path';
import { LoopfsError } from './errors';
import { instancesDir } from './rundir';
import { readState, type InstanceState } from './state';
import { readMountinfo } from '../fuse/mount';

/** The instances of a run directory, as their state files and /proc tell. */

export interface InstanceRecord {
  id: string;
  stateDir: string;
  state?: InstanceState;
  /** Why the state could not be used, "FILE: reason" (it is then left alone), and its errno. */
  problem?: string;
  problemErrno?: string;
  /** The daemon process named in the state is alive and is a loopfs daemon. */
  alive: boolean;
  /** A FUSE mount of loopfs is at the mountpoint. */
  mounted: boolean;
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

export function listInstances(runDir: string): InstanceRecord[] {
  const dir = instancesDir(runDir);
  let names: string[];
  try {
    names = fs.readdirSync(dir).filter((n) => !n.startsWith('.')).sort();
  } catch {
    return [];
  }
  const mounts = readMountinfo().filter((m) => m.fstype === 'fuse.loopfs');
  return names.map((id) => {
    const stateDir = path.join(dir, id);
    try {
      const state = readState(stateDir);
      return { id, stateDir, state, alive: daemonAlive(state.pid, state.id), mounted: mounts.some((m) => m.mountpoint === state.mountpoint) };
    } catch (e) {
      return { id, stateDir, problem: e instanceof LoopfsError ? e.message : String(e), problemErrno: e instanceof LoopfsError ? e.errno : 'EIO', alive: false, mounted: false };
    }
  });
}

/** By id, or by mountpoint (any path that resolves to it). */
export function findInstance(runDir: string, what: string): InstanceRecord | undefined {
  const all = listInstances(runDir);
  const byId = all.find((r) => r.id === what);
  if (byId) return byId;
  let real: string;
  try {
    real = fs.realpathSync(what);
  } catch {
    real = path.resolve(what);
  }
  return all.find((r) => r.state && (r.state.mountpoint === real || r.state.mountpoint === path.resolve(what)));
}
