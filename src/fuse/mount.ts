import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as ChildProcess from 'node:child_process';
import { socketPair } from '../sys/unixsock';
import { closeFds } from '../sys/socket-calls';
import { mount, umount2, MNT_DETACH, MS_NODEV, MS_NOSUID } from '../sys/libc';
import { LoopfsError, errnoOf, type Errno } from '../base/errors';

/** node:child_process (and node:net under it) is loaded on first use: most commands never spawn. */
const cp = (): typeof ChildProcess => require('node:child_process') as typeof ChildProcess;

/**
 * Mounting a FUSE filesystem without libfuse. As root: open /dev/fuse and
 * mount(2) with `fd=N` in the options (what mount(8) would do, without
 * starting it). As an ordinary user: through the setuid helper fusermount3,
 * as libfuse does (see mountFuseUser).
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
  /**
   * Call once the session is over (the fd read ENODEV, or the daemon gives
   * up): mounts made through fusermount3 have a watcher that unmounts them if
   * the daemon dies without calling this. No-op for mount(8) mounts.
   */
  release(): void;
}

/** Root mounts with mount(2) itself; anyone else through fusermount3. */
export function isRoot(): boolean {
  return (process.geteuid?.() ?? 0) === 0;
}

export async function mountFuse(mountpoint: string, opts: MountOptions): Promise<Mounted> {
  if (!isRoot()) return mountFuseUser(mountpoint, opts);
  let fd: number;
  try {
    fd = fs.openSync('/dev/fuse', fs.constants.O_RDWR);
  } catch (e) {
    const code = errnoOf(e) ?? 'EIO';
    const why = code === 'EACCES' ? 'permission denied (it needs read-write access for this user)' : code === 'ENOENT' ? 'no such device (is the fuse module loaded?)' : code;
    throw new LoopfsError(code, mountpoint, `cannot open /dev/fuse: ${why}`);
  }
  const options = [
    `fd=${fd}`,
    'rootmode=40000',
    `user_id=${opts.uid}`,
    `group_id=${opts.gid}`,
    'default_permissions',
    ...(opts.allowOther ? ['allow_other'] : []),
  ].join(',');
  try {
    mount(opts.source, mountpoint, `fuse.${opts.subtype}`, MS_NOSUID | MS_NODEV, options);
  } catch (e) {
    fs.closeSync(fd);
    const err = e instanceof LoopfsError ? e : new LoopfsError(errnoOf(e) ?? 'EIO', mountpoint);
    throw new LoopfsError(err.errno, mountpoint, `cannot mount the FUSE filesystem: ${err.reason}`);
  }
  return { fd, mountpoint, release: () => {} };
}

/** Unmounts with umount(8) (fusermount3 -u when not root); lazy detaches now and lets open files finish. */
export function unmountFuse(mountpoint: string, lazy = false): Promise<void> {
  if (!isRoot()) return unmountFuseUser(mountpoint, lazy);
  return run('umount', [...(lazy ? ['-l'] : []), '-n', mountpoint], mountpoint);
}

/** Runs a mount tool on `what` (the mountpoint); its failure is toolError's. */
function run(cmd: string, args: string[], what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const stdio: ('ignore' | 'pipe')[] = ['ignore', 'ignore', 'pipe'];
    // argv[0] the bare name, so the tool's messages start with it.
    const child = cp().spawn(cmd, args, { stdio, argv0: path.basename(cmd) });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) return resolve();
      reject(toolError(cmd, err, what));
    });
  });
}

/**
 * The error of a failed mount(8), umount(8) or fusermount3: its whole
 * message on one line (never only its last line, which for mount(8) is the
 * "dmesg(1) may have more information" hint), with an errno read from it,
 * about `what` (the mountpoint).
 */
export function toolError(cmd: string, stderr: string, what: string): LoopfsError {
  const name = path.basename(cmd);
  let msg = stderr.split('\n').map((l) => l.trim()).filter(Boolean).join(' ');
  if (!msg) msg = `${name} failed`;
  else if (!msg.startsWith(`${name}:`)) msg = `${name}: ${msg}`;
  const code: Errno = /busy/i.test(msg) ? 'EBUSY'
    : /not mounted|no mount point|not found in \/etc\/mtab/i.test(msg) ? 'EINVAL'
    : /permission denied|no write access|not owned by user/i.test(msg) ? 'EACCES'
    : /not permitted|not allowed|only allowed/i.test(msg) ? 'EPERM'
    : /wrong fs type|bad option|invalid argument/i.test(msg) ? 'EINVAL'
    : /no such file or directory/i.test(msg) ? 'ENOENT'
    : 'EIO';
  return new LoopfsError(code, what, msg);
}

// ---- ordinary users: fusermount3 ----

/** Where fusermount3 is looked for after the directories of $PATH. */
export const FUSERMOUNT_DIRS = ['/bin', '/usr/bin'];

/**
 * The fusermount3 to run: the first executable regular file of that name in
 * the absolute directories of `pathEnv`, then in `fixedDirs`.
 */
export function findFusermount(pathEnv = process.env.PATH ?? '', fixedDirs = FUSERMOUNT_DIRS): string | undefined {
  const dirs = [...pathEnv.split(':').filter((d) => path.isAbsolute(d)), ...fixedDirs];
  for (const dir of dirs) {
    const file = path.join(dir, 'fusermount3');
    try {
      if (!fs.statSync(file).isFile()) continue;
      fs.accessSync(file, fs.constants.X_OK);
      return file;
    } catch {
      /* not here */
    }
  }
  return undefined;
}

/** The fusermount3 to run for `what` (a mountpoint), or ENOENT. */
function needFusermount(what: string): string {
  const fm = findFusermount();
  if (fm) return fm;
  throw new LoopfsError('ENOENT', what, `fusermount3 not found (looked on PATH and in ${FUSERMOUNT_DIRS.join(', ')}): an ordinary user mounts FUSE through this setuid helper; install the distribution's fuse3 package, or use \`loopfs run\``);
}

/**
 * The watcher of a fusermount3 mount, for when the daemon dies without
 * unmounting (SIGKILL). fusermount3's own `auto_unmount` watcher cannot do it
 * before libfuse 3.15 (Debian 12 has 3.14): it checks the dead mount by
 * opening it as root, which a mount without allow_other refuses (EACCES), and
 * then leaves it. So this one, a shell in a session of its own, waits on a
 * socket only the daemon holds: "done" means the daemon finished with the
 * mount gone; end of file without it means the daemon died, and the mount is
 * lazily unmounted as the user (fusermount3 -u only unmounts the user's own
 * FUSE mounts). No one else can mount at DIR while the daemon lives (the
 * mount or the instance's state holds it), so the path still names our mount.
 */
const WATCHER = 'read -r word; [ "$word" = done ] || exec "$1" -u -z -q -- "$2"';

/**
 * Mounts through fusermount3 as libfuse's fuse_mount_fusermount does: a
 * socketpair, one end given to fusermount3 as fd 3 with _FUSE_COMMFD=3; it
 * opens /dev/fuse with the user's rights, mounts DIR (which the user must be
 * able to write) with user_id/group_id the user's, nosuid and nodev, and
 * sends the fd back with SCM_RIGHTS. With auto_unmount it stays, in a session
 * of its own, until its socket closes (the daemon's exit) and unmounts a mount
 * left dead (libfuse >= 3.15; see WATCHER for older ones). No allow_other: it
 * needs user_allow_other in /etc/fuse.conf, and only the owner should reach a
 * user's instance; default_permissions makes the kernel check the entries'
 * modes as well.
 */
async function mountFuseUser(mountpoint: string, opts: MountOptions): Promise<Mounted> {
  const fm = needFusermount(mountpoint);
  const options = [`fsname=${opts.source}`, `subtype=${opts.subtype}`, 'default_permissions', ...(opts.allowOther ? ['allow_other'] : []), 'nosuid', 'nodev', 'auto_unmount'].join(',');
  const { ours, theirs } = socketPair();
  let stderr = '';
  let fd: number;
  try {
    const child = cp().spawn(fm, ['-o', options, '--', mountpoint], { stdio: ['ignore', 'ignore', 'pipe', theirs], argv0: 'fusermount3', env: { ...process.env, _FUSE_COMMFD: '3' } });
    closeFds([theirs]);
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const ended = new Promise<number | null>((resolve) => {
      child.on('error', (e) => {
        stderr += `${fm}: ${e.message}`;
        resolve(null);
      });
      child.on('close', (code) => resolve(code));
    });
    // One byte with the fd, or end of file when fusermount3 failed and exited.
    const got = await ours.recv(1);
    if (got.fds.length === 0) {
      await ended;
      const e = toolError(fm, stderr, mountpoint);
      if (e.errno === 'EACCES' && /open \/dev\/fuse/.test(e.reason)) throw new LoopfsError('EACCES', mountpoint, `${e.reason} (this user needs read-write access to /dev/fuse)`);
      throw e;
    }
    closeFds(got.fds.slice(1));
    fd = got.fds[0]!;
    // It stays as the auto_unmount watcher: never wait for it, never read its stderr again.
    child.stderr!.destroy();
    child.unref();
  } catch (e) {
    ours.close();
    throw e;
  }
  const watch = socketPair();
  try {
    const watcher = cp().spawn('/bin/sh', ['-c', WATCHER, 'loopfs-watch', fm, mountpoint], { stdio: [watch.theirs, 'ignore', 'ignore'], detached: true });
    watcher.on('error', () => {});
    watcher.unref();
  } finally {
    closeFds([watch.theirs]);
  }
  let released = false;
  return {
    fd,
    mountpoint,
    release: () => {
      if (released) return;
      released = true;
      // Written synchronously: the daemon exits right after.
      if (!mountsAt(mountpoint).some((m) => m.fstype === `fuse.${opts.subtype}`)) {
        try {
          fs.writeSync(watch.ours.fd, 'done\n');
        } catch {
          /* the watcher is gone */
        }
      }
      watch.ours.close();
      ours.close();
    },
  };
}

/** `fusermount3 -u [-z] DIR`: unmounts a FUSE mount of this user (lazily with -z). */
function unmountFuseUser(mountpoint: string, lazy: boolean): Promise<void> {
  let fm: string;
  try {
    fm = needFusermount(mountpoint);
  } catch (e) {
    return Promise.reject(e);
  }
  return run(fm, ['-u', ...(lazy ? ['-z'] : []), '--', mountpoint], mountpoint);
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
 * The FUSE connection a /dev/fuse descriptor of this process serves, as its
 * fdinfo names it ("fuse_connection: N", Linux 6.x); undefined where the
 * kernel does not say.
 */
export function connectionOfDeviceFd(fd: number): number | undefined {
  try {
    const m = /^fuse_connection:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
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
  // Mounted only for this write, and unmounted after it: the host's mount table is left as it was.
  const mounted = !fs.existsSync(file) && !readMountinfo().some((m) => m.fstype === 'fusectl')
    && cp().spawnSync('mount', ['-n', '-t', 'fusectl', 'fusectl', FUSECTL], { stdio: 'ignore', timeout: 5000 }).status === 0;
  try {
    fs.writeFileSync(file, '1');
    return true;
  } catch {
    return false;
  } finally {
    if (mounted) cp().spawnSync('umount', ['-n', FUSECTL], { stdio: 'ignore', timeout: 5000 });
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
    throw new LoopfsError(errnoOf(e) ?? 'EIO', m.mountpoint, `cannot open ${m.mountpoint}: ${(e as Error).message}`);
  }
  try {
    const id = /^mnt_id:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
    if (Number(id) !== m.id) throw new LoopfsError('ESTALE', m.mountpoint, `${m.mountpoint} does not lead to the mount it should any more`);
    if (lazy) {
      try {
        umount2(`/proc/self/fd/${fd}`, MNT_DETACH);
        return;
      } catch (e) {
        const code = errnoOf(e) ?? 'EIO';
        if (code !== 'EPERM') throw new LoopfsError(code, m.mountpoint, `cannot unmount ${m.mountpoint}`);
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
    const code = errnoOf(e) ?? 'EIO';
    if (code !== 'EPERM') throw new LoopfsError(code, mountpoint, `cannot unmount ${mountpoint}`);
  }
  const fm = needFusermount(mountpoint);
  const r = cp().spawnSync(fm, ['-u', ...(lazy ? ['-z'] : []), '--', mountpoint], { encoding: 'utf8', timeout: 5000, argv0: 'fusermount3' });
  if (r.status !== 0) throw toolError(fm, r.stderr ?? '', mountpoint);
}
