import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { socketPair, closeFds } from '../sys/unixsock';

/**
 * Mounting a FUSE filesystem without libfuse. As root: open /dev/fuse, hand
 * the fd to mount(8) as fd 3, and pass `fd=3` in the options (`-i` keeps
 * mount(8) from looking for a /sbin/mount.fuse helper). As an ordinary user:
 * through the setuid helper fusermount3, as libfuse does (see mountFuseUser).
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

/** Root mounts with mount(8); anyone else through fusermount3. */
function isRoot(): boolean {
  return (process.geteuid?.() ?? 0) === 0;
}

export async function mountFuse(mountpoint: string, opts: MountOptions): Promise<Mounted> {
  if (!isRoot()) return mountFuseUser(mountpoint, opts);
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
  return { fd, mountpoint, release: () => {} };
}

/** Unmounts with umount(8) (fusermount3 -u when not root); lazy detaches now and lets open files finish. */
export function unmountFuse(mountpoint: string, lazy = false): Promise<void> {
  if (!isRoot()) return unmountFuseUser(mountpoint, lazy);
  return run('umount', [...(lazy ? ['-l'] : []), '-n', mountpoint]);
}

function run(cmd: string, args: string[], passFd?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const stdio: ('ignore' | 'pipe' | number)[] = ['ignore', 'ignore', 'pipe'];
    if (passFd !== undefined) stdio.push(passFd);
    // argv[0] the bare name, so the tool's messages start with it.
    const child = spawn(cmd, args, { stdio, argv0: path.basename(cmd) });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) return resolve();
      reject(toolError(cmd, err));
    });
  });
}

/**
 * The error of a failed mount(8), umount(8) or fusermount3: its whole
 * message on one line (never only its last line, which for mount(8) is the
 * "dmesg(1) may have more information" hint), with an errno read from it.
 */
export function toolError(cmd: string, stderr: string): Error {
  const name = path.basename(cmd);
  let msg = stderr.split('\n').map((l) => l.trim()).filter(Boolean).join(' ');
  if (!msg) msg = `${name} failed`;
  else if (!msg.startsWith(`${name}:`)) msg = `${name}: ${msg}`;
  const code = /busy/i.test(msg) ? 'EBUSY'
    : /not mounted|no mount point|not found in \/etc\/mtab/i.test(msg) ? 'EINVAL'
    : /permission denied|no write access|not owned by user/i.test(msg) ? 'EACCES'
    : /not permitted|not allowed|only allowed/i.test(msg) ? 'EPERM'
    : /wrong fs type|bad option|invalid argument/i.test(msg) ? 'EINVAL'
    : /no such file or directory/i.test(msg) ? 'ENOENT'
    : 'EIO';
  return Object.assign(new Error(msg), { code });
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

function needFusermount(): string {
  const fm = findFusermount();
  if (fm) return fm;
  throw Object.assign(new Error(`fusermount3 not found (looked on PATH and in ${FUSERMOUNT_DIRS.join(', ')}): an ordinary user mounts FUSE through this setuid helper; install the distribution's fuse3 package, or use \`loopfs run\``), { code: 'ENOENT' });
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
  const fm = needFusermount();
  const options = [`fsname=${opts.source}`, `subtype=${opts.subtype}`, 'default_permissions', ...(opts.allowOther ? ['allow_other'] : []), 'nosuid', 'nodev', 'auto_unmount'].join(',');
  const { ours, theirs } = socketPair();
  let stderr = '';
  let fd: number;
  try {
    const child = spawn(fm, ['-o', options, '--', mountpoint], { stdio: ['ignore', 'ignore', 'pipe', theirs], argv0: 'fusermount3', env: { ...process.env, _FUSE_COMMFD: '3' } });
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
      const e = toolError(fm, stderr);
      if ((e as NodeJS.ErrnoException).code === 'EACCES' && /open \/dev\/fuse/.test(e.message)) e.message += ' (this user needs read-write access to /dev/fuse)';
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
    const watcher = spawn('/bin/sh', ['-c', WATCHER, 'loopfs-watch', fm, mountpoint], { stdio: [watch.theirs, 'ignore', 'ignore'], detached: true });
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
    fm = needFusermount();
  } catch (e) {
    return Promise.reject(e);
  }
  return run(fm, ['-u', ...(lazy ? ['-z'] : []), '--', mountpoint]);
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
