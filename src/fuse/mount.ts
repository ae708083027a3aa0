import * as fs from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { umount2, MNT_DETACH } from '../sys/libc';

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
  /** The mount's id (first field of mountinfo; also mnt_id in /proc/PID/fdinfo), and its parent's. */
  id: number;
  parent: number;
  /** st_dev of the mounted filesystem, "major:minor"; for FUSE the minor is the connection number. */
  dev: string;
}

export function mountsAt(dir: string): MountInfo[] {
  return readMountinfo().filter((m) => m.mountpoint === dir);
}

/** The mount table of this process, or of process `pid` (its mount namespace), from mountinfo. */
export function readMountinfo(pid: number | 'self' = 'self'): MountInfo[] {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/mountinfo`, 'utf8');
  } catch {
    return [];
  }
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 0) continue;
    out.push({ mountpoint: unescape(f[4]!), fstype: f[dash + 1]!, source: unescape(f[dash + 2]!), id: Number(f[0]), parent: Number(f[1]), dev: f[2]! });
  }
  return out;
}

function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/**
 * Administering a FUSE mount without ever sending it a request: everything
 * below works from the mount table, /sys/fs/fuse/connections and umount2(2)
 * with UMOUNT_NOFOLLOW, none of which waits for the filesystem's daemon (a
 * stat, realpath or umount(8) of the mountpoint would, and hangs for good
 * when the daemon is stopped or deadlocked).
 */

const FUSECTL = '/sys/fs/fuse/connections';
const UMOUNT_NOFOLLOW = 8;

/** The FUSE connection number of a mount: the minor of its "0:N" device. */
export function fuseConnection(m: MountInfo): number | undefined {
  const r = /^0:(\d+)$/.exec(m.dev);
  return r && m.fstype.startsWith('fuse') ? Number(r[1]) : undefined;
}

/**
 * The FUSE connections process `pid` serves: those of its open /dev/fuse
 * descriptors, which the kernel names in their fdinfo ("fuse_connection:
 * N", Linux 6.x). Empty where the kernel does not say, or the process is gone.
 */
export function fuseConnectionsOf(pid: number): number[] {
  const out = new Set<number>();
  let fds: string[];
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`);
  } catch {
    return [];
  }
  for (const fd of fds) {
    try {
      if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) !== '/dev/fuse') continue;
      const m = /^fuse_connection:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
      if (m) out.add(Number(m[1]));
    } catch {
      /* closed meanwhile */
    }
  }
  return [...out];
}

/**
 * Aborts a FUSE connection as `echo 1 > /sys/fs/fuse/connections/N/abort`
 * does: every request waiting on it fails with ENOTCONN, and so does every
 * later one. Mounts the fusectl filesystem first when it is not mounted.
 * Returns false when that is not possible (no fusectl, not privileged).
 */
export function abortFuseConnection(conn: number): boolean {
  const file = `${FUSECTL}/${conn}/abort`;
  if (!fs.existsSync(file) && !readMountinfo().some((m) => m.fstype === 'fusectl')) {
    spawnSync('mount', ['-n', '-t', 'fusectl', 'fusectl', FUSECTL], { stdio: 'ignore', timeout: 5000 });
  }
  try {
    fs.writeFileSync(file, '1');
    return true;
  } catch {
    return false;
  }
}

/**
 * Unmounts exactly the mount `m` (an entry of our mount table): its root is
 * opened O_PATH (no FUSE request: no open, no getattr) and checked by the
 * mnt_id the kernel gives for that descriptor, so a path swapped since the
 * table was read is caught (ESTALE). A lazy unmount then goes through the
 * descriptor itself (/proc/self/fd/N), pinned to that mount; a non-lazy one
 * cannot (the descriptor keeps the mount busy) and goes by the checked path,
 * as detachMount does.
 */
export function detachExactMount(m: MountInfo, lazy: boolean): void {
  let fd: number;
  try {
    fd = fs.openSync(m.mountpoint, O_PATH | fs.constants.O_NOFOLLOW | fs.constants.O_DIRECTORY);
  } catch (e) {
    throw Object.assign(new Error(`cannot open ${m.mountpoint}: ${(e as Error).message}`), { code: (e as NodeJS.ErrnoException).code ?? 'EIO' });
  }
  try {
    const id = /^mnt_id:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
    if (Number(id) !== m.id) throw Object.assign(new Error(`${m.mountpoint} does not lead to the mount it should any more`), { code: 'ESTALE' });
    if (lazy) {
      try {
        umount2(`/proc/self/fd/${fd}`, MNT_DETACH);
        return;
      } catch (e) {
        if ((e as { errno?: string }).errno !== 'EPERM') throw Object.assign(new Error(`cannot unmount ${m.mountpoint}`), { code: (e as { errno?: string }).errno ?? 'EIO' });
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  detachMount(m.mountpoint, lazy);
}

/** O_PATH (<fcntl.h>; the same on x86_64 and arm64): a handle on the path itself, no open(2) of the file. */
const O_PATH = 0o10000000;

/**
 * Unmounts the mount at `mountpoint` (an absolute path as the mount table
 * shows it) with umount2(2): MNT_DETACH when lazy, and UMOUNT_NOFOLLOW so a
 * symlink put there is never followed. The kernel answers without asking the
 * FUSE daemon (non-lazy: EBUSY while anything is open on it). Without the
 * privilege for umount2 (EPERM), fusermount3 -u does it for the mount's owner.
 */
export function detachMount(mountpoint: string, lazy: boolean): void {
  try {
    umount2(mountpoint, (lazy ? MNT_DETACH : 0) | UMOUNT_NOFOLLOW);
    return;
  } catch (e) {
    const code = (e as { errno?: string }).errno ?? 'EIO';
    if (code !== 'EPERM') throw Object.assign(new Error(`cannot unmount ${mountpoint}`), { code });
  }
  const r = spawnSync('fusermount3', ['-u', ...(lazy ? ['-z'] : []), '--', mountpoint], { encoding: 'utf8', timeout: 5000 });
  if (r.status !== 0) {
    const msg = (r.stderr ?? '').trim().split('\n').pop() ?? '';
    throw Object.assign(new Error(`cannot unmount ${mountpoint}${msg ? `: ${msg}` : ''}`), { code: /busy/i.test(msg) ? 'EBUSY' : 'EPERM' });
  }
}
