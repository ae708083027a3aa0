import type { InstanceSelector } from './api';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LoopfsError, toLoopfsError } from '../base/errors';

/**
 * The run directory (SPEC §1): --run-dir, else $LOOPFS_RUNDIR, else
 * /run/loopfs for root, else $XDG_RUNTIME_DIR/loopfs. Created 0700; refused
 * when owned by someone else or open to group/other.
 */

export function runDirPath(explicit?: string): string {
  if (explicit) return path.resolve(explicit);
  if (process.env.LOOPFS_RUNDIR) return path.resolve(process.env.LOOPFS_RUNDIR);
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return '/run/loopfs';
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (!xdg) throw new LoopfsError('ENOENT', 'run directory', 'XDG_RUNTIME_DIR is not set; give --run-dir or LOOPFS_RUNDIR');
  return path.join(xdg, 'loopfs');
}

/** An InstanceSelector whose run directory is resolved and ready: what core's functions take. */
export interface Selection {
  instance?: string;
  runDir: RunDir;
}

/** An InstanceSelector with its run directory resolved and made ready (the one ensureRunDir of a command). */
export function resolveSelector(sel: InstanceSelector): Selection {
  return { ...sel, runDir: ensureRunDir(sel.runDir) };
}

export function instancesDir(runDir: string): string {
  return path.join(runDir, 'instances');
}

export function defaultMountpoint(runDir: string): string {
  return path.join(runDir, 'default');
}

/** Makes sure `dir` exists as a private directory of ours; returns it. */
export function ensurePrivateDir(dir: string): string {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    const err = toLoopfsError(e, dir);
    throw new LoopfsError(err.errno, dir, `cannot create the run directory: ${err.reason}`);
  }
  checkPrivateDir(dir);
  return dir;
}

export function checkPrivateDir(dir: string): void {
  const st = fs.lstatSync(dir);
  const uid = process.getuid?.() ?? 0;
  if (st.isSymbolicLink()) throw new LoopfsError('ELOOP', dir, 'is a symbolic link; refused');
  if (!st.isDirectory()) throw new LoopfsError('ENOTDIR', dir, 'is not a directory');
  if (st.uid !== uid) throw new LoopfsError('EPERM', dir, `owned by uid ${st.uid}, not by uid ${uid}; refused`);
  if ((st.mode & 0o022) !== 0) throw new LoopfsError('EPERM', dir, `writable by group or others (mode ${(st.mode & 0o777).toString(8)}); refused`);
}

declare const READY: unique symbol;
/**
 * A run directory that ensureRunDir resolved and made ready: what core's
 * functions take. A command resolves it once and passes it on as a value.
 */
export type RunDir = string & { readonly [READY]: true };

/** The run directory with its fixed layout: instances/, lock (instance creation), limits (max_loop_devices). */
export function ensureRunDir(explicit?: string): RunDir {
  const dir = ensurePrivateDir(runDirPath(explicit)) as RunDir;
  ensurePrivateDir(instancesDir(dir));
  for (const f of ['lock', 'limits']) {
    fs.closeSync(fs.openSync(path.join(dir, f), fs.constants.O_RDONLY | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600));
  }
  return dir;
}
