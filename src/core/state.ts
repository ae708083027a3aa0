import * as fs from 'node:fs';
import * as path from 'node:path';
import { LoopfsError } from '../base/errors';

/**
 * The state an instance keeps under RUNDIR/instances/<id>/: state.json (this
 * file's format), ctl.sock (the control socket), daemon.log. Files are
 * written atomically and opened without following symlinks; a state file
 * that does not parse is reported and never trusted (SPEC §7).
 */

export const STATE_FILE = 'state.json';
export const SOCKET_FILE = 'ctl.sock';
export const LOG_FILE = 'daemon.log';

export interface InstanceState {
  version: 1;
  id: string;
  mountpoint: string;
  pid: number;
  uid: number;
  gid: number;
  max: number;
  /** The daemon made the mountpoint (the default instance) and removes it on exit. */
  removeMountpoint: boolean;
  /** Inside a sandbox: the mountpoint was bound onto itself (and is unmounted after the daemon). */
  boundMountpoint?: boolean;
  created: string;
}

/** The record of an instance whose daemon is `pid`. */
export function instanceState(d: Pick<InstanceState, 'id' | 'mountpoint' | 'uid' | 'gid' | 'max' | 'removeMountpoint' | 'boundMountpoint'>, pid: number): InstanceState {
  return { version: 1, id: d.id, mountpoint: d.mountpoint, pid, uid: d.uid, gid: d.gid, max: d.max, removeMountpoint: d.removeMountpoint, boundMountpoint: d.boundMountpoint, created: new Date().toISOString() };
}

export function writeState(dir: string, st: InstanceState): void {
  const tmp = path.join(dir, `.${STATE_FILE}.${process.pid}`);
  const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
  try {
    fs.writeSync(fd, `${JSON.stringify(st, null, 2)}\n`);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, path.join(dir, STATE_FILE));
}

/**
 * Reads a small file of the run directory without following a symlink
 * (ELOOP: not trusted). Returns undefined when it does not exist.
 */
export function readPrivateFile(file: string): string | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    throw new LoopfsError(code === 'ELOOP' ? 'ELOOP' : code === 'EACCES' ? 'EACCES' : 'EIO', file, code === 'ELOOP' ? 'is a symbolic link; not trusted' : undefined);
  }
  try {
    return fs.readFileSync(fd, 'utf8');
  } finally {
    fs.closeSync(fd);
  }
}

export function readState(dir: string): InstanceState {
  const file = path.join(dir, STATE_FILE);
  const text = readPrivateFile(file);
  if (text === undefined) throw new LoopfsError('ENOENT', file);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new LoopfsError('EINVAL', file, 'state file does not parse; left alone');
  }
  const s = v as Partial<InstanceState>;
  const ok = s && s.version === 1 && typeof s.id === 'string' && typeof s.mountpoint === 'string' && Number.isInteger(s.pid)
    && Number.isInteger(s.uid) && Number.isInteger(s.gid) && Number.isInteger(s.max);
  if (!ok) throw new LoopfsError('EINVAL', file, 'state file is not a loopfs state (version 1); left alone');
  return s as InstanceState;
}
