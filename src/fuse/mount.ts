import * as fs from 'node:fs';
import { spawn } from 'node:child_process';

/**
 * Mounting a FUSE filesystem without libfuse: open /dev/fuse, hand the fd to
 * mount(8) as fd 3, and pass `fd=3` in the options. `-i` keeps mount(8) from
 * looking for a /sbin/mount.fuse helper.
 */

export interface MountOptions {
  /** Shown as the source in /proc/self/mountinfo. */
  source: string;
  /** fuse.<subtype> is the filesystem type. */
  subtype: string;
  uid: number;
  gid: number;
  allowOther?: boolean;
}

export interface Mounted {
  fd: number;
  mountpoint: string;
}

export async function mountFuse(mountpoint: string, opts: MountOptions): Promise<Mounted> {
  let fd: number;
  try {
    fd = fs.openSync('/dev/fuse', fs.constants.O_RDWR);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    const why = code === 'EACCES' ? 'permission denied (it needs read-write access for this user)' : code === 'ENOENT' ? 'no such device (is the fuse module loaded?)' : code;
    throw Object.assign(new Error(`cannot open /dev/fuse: ${why}`), { code });
  }
  const options = [
    'fd=3',
    'rootmode=40000',
    `user_id=${opts.uid}`,
    `group_id=${opts.gid}`,
    'default_permissions',
    ...(opts.allowOther ? ['allow_other'] : []),
    'nosuid',
    'nodev',
  ].join(',');
  try {
    await run('mount', ['-i', '-n', '-t', `fuse.${opts.subtype}`, '-o', options, opts.source, mountpoint], fd);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  return { fd, mountpoint };
}

/** Unmounts with umount(8); lazy detaches now and lets open files finish. */
export function unmountFuse(mountpoint: string, lazy = false): Promise<void> {
  return run('umount', [...(lazy ? ['-l'] : []), '-n', mountpoint]);
}

function run(cmd: string, args: string[], passFd?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const stdio: ('ignore' | 'pipe' | number)[] = ['ignore', 'ignore', 'pipe'];
    if (passFd !== undefined) stdio.push(passFd);
    const child = spawn(cmd, args, { stdio });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) return resolve();
      const msg = err.trim().split('\n').pop() ?? `${cmd} failed`;
      const e = Object.assign(new Error(`${cmd}: ${msg}`), { code: /busy/i.test(msg) ? 'EBUSY' : /not mounted|no mount point/i.test(msg) ? 'EINVAL' : /permission|not permitted/i.test(msg) ? 'EPERM' : 'EIO' });
      reject(e);
    });
  });
}

/** True when `dir` is a mount point in this mount namespace (from /proc/self/mountinfo). */
export function isMounted(dir: string): boolean {
  return mountsAt(dir).length > 0;
}

export interface MountInfo {
  mountpoint: string;
  fstype: string;
  source: string;
}

export function mountsAt(dir: string): MountInfo[] {
  return readMountinfo().filter((m) => m.mountpoint === dir);
}

export function readMountinfo(): MountInfo[] {
  let text: string;
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 0) continue;
    out.push({ mountpoint: unescape(f[4]!), fstype: f[dash + 1]!, source: unescape(f[dash + 2]!) });
  }
  return out;
}

function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}
