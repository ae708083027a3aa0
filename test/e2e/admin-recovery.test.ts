import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox, waitFor, errnoOf, type Result } from '../helpers/cli';

// Issue 9 (items 3, 6, 9): an instance can always be found and stopped — by
// its mount and daemon pid when its socket or run directory is gone, by abort
// of its FUSE connection when its daemon is wedged — and umount acts on the
// instance's own mount, never on whatever its path leads to later.
let sb: Sandbox;
const test = sandboxSuite('admin-recovery', 'adm', (s) => (sb = s));

interface Mnt { mountpoint: string; fstype: string; dev: string }

function mounts(): Mnt[] {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).map((l) => {
    const f = l.split(' ');
    const dash = f.indexOf('-');
    return { mountpoint: f[4]!, fstype: f[dash + 1]!, dev: f[2]! };
  });
}

function loopfsMountAt(dir: string): Mnt | undefined {
  return mounts().find((m) => m.mountpoint === dir && m.fstype === 'fuse.loopfs');
}

/** Never leave a wedged mount behind: abort its FUSE connection (from the mount table, without touching the mount). */
function abortMountAt(dir: string): void {
  for (const m of mounts().filter((x) => x.mountpoint === dir && x.fstype.startsWith('fuse'))) {
    const conn = m.dev.split(':')[1];
    if (!fs.existsSync('/sys/fs/fuse/connections/' + conn)) spawnSync('mount', ['-t', 'fusectl', 'fusectl', '/sys/fs/fuse/connections']);
    try {
      fs.writeFileSync(`/sys/fs/fuse/connections/${conn}/abort`, '1');
    } catch {
      /* gone */
    }
  }
}

function release(pid: number | undefined): void {
  if (!pid) return;
  for (const sig of ['SIGCONT', 'SIGKILL'] as const) {
    try {
      process.kill(pid, sig);
    } catch {
      /* gone */
    }
  }
}

function procState(pid: number): string | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

/** loopfs with a hard limit: SIGKILL (a FUSE wait is killable) after 30 s, so a hang fails the test instead of hanging it. */
function timed(args: string[]): Result & { ms: number } {
  const t0 = Date.now();
  const r = spawnSync(sb.bin[0]!, [...sb.bin.slice(1), ...args], {
    encoding: 'utf8', env: { ...process.env, LOOPFS_RUNDIR: sb.runDir }, timeout: 30_000, killSignal: 'SIGKILL', cwd: sb.root,
  });
  return { status: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '', ms: Date.now() - t0 };
}

/**
 * A reader looping O_DIRECT reads over the device (O_DIRECT keeps it off
 * FUSE passthrough: every read is a request the daemon must answer). It
 * prints "reading" once reads flow, and the errno it finally gets.
 */
function startReader(dev: string): { child: ChildProcess; out: () => string } {
  const code = `
import os, sys, errno, mmap
fd = os.open(${JSON.stringify(dev)}, os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
n = 0
try:
    while True:
        os.preadv(fd, [buf], (n % 1024) * 4096)
        n += 1
        if n == 10:
            print("reading", flush=True)
except OSError as e:
    print("error", errno.errorcode[e.errno], flush=True)
`;
  const child = spawn('python3', ['-c', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  return { child, out: () => out };
}

function exited(child: ChildProcess): Promise<boolean> {
  return waitFor(() => child.exitCode !== null || child.signalCode !== null, 5000);
}

/** A mounted instance with one device bound to a 4 MiB file; returns the mountpoint, the device and the daemon pid. */
function instanceWithDevice(name: string): { dir: string; dev: string; pid: number } {
  const dir = sb.dir(name);
  sb.ok(['mount', dir]);
  const img = path.join(sb.root, `${name}.img`);
  fs.writeFileSync(img, Buffer.alloc(4 << 20, 7));
  const dev = sb.ok(['--instance', dir, 'losetup', '-f', '--show', img]);
  const listed = JSON.parse(sb.ok(['list', '--json'])) as { mountpoint: string; pid: number }[];
  const pid = listed.find((i) => i.mountpoint === dir)!.pid;
  return { dir, dev, pid };
}

for (const via of ['umount', 'gc'] as const) {
  test(`a stopped daemon with a reader blocked on its device: ${via} returns within 10 s, the reader gets an error, nothing is left`, async () => {
    const { dir, dev, pid } = instanceWithDevice('m');
    const reader = startReader(dev);
    try {
      assert.ok(await waitFor(() => reader.out().includes('reading'), 10_000), `reader: ${reader.out()}`);
      process.kill(pid, 'SIGSTOP');
      // The reader's next request waits for the stopped daemon (D: a killable FUSE wait).
      assert.ok(await waitFor(() => procState(reader.child.pid!) === 'D', 5000), `reader state ${procState(reader.child.pid!)}`);
      await new Promise((r) => setTimeout(r, 300));
      assert.is(procState(reader.child.pid!), 'D');
      // umount is given a symlink to the mountpoint: resolving it must not touch the wedged mount either.
      const link = path.join(sb.root, 'link');
      fs.symlinkSync(dir, link);
      const r = timed(via === 'umount' ? ['umount', link] : ['gc']);
      assert.is(r.status, 0, r.stderr);
      assert.ok(r.ms < 10_000, `${via} took ${r.ms} ms`);
      assert.match(via === 'umount' ? r.stderr : r.stdout, /did not answer within 3 s/);
      // The reader got an error instead of waiting for good.
      assert.ok(await exited(reader.child), `reader still running: ${reader.out()}`);
      assert.match(reader.out(), /^error (ENOTCONN|EIO|ECONNABORTED)$/m);
      // Gone: no mount, no daemon, no state, nothing listed.
      assert.is(loopfsMountAt(dir), undefined);
      assert.ok(await waitFor(() => procState(pid) === undefined || procState(pid) === 'Z'), `daemon state ${procState(pid)}`);
      assert.equal(sb.daemons(), []);
      assert.equal(JSON.parse(sb.ok(['list', '--json'])), []);
      assert.equal(fs.readdirSync(path.join(sb.runDir, 'instances')), []);
      // The directory is an ordinary directory again, and can be mounted anew.
      assert.equal(fs.readdirSync(dir), []);
      sb.ok(['mount', dir]);
      sb.ok(['umount', dir]);
    } finally {
      abortMountAt(dir);
      release(pid);
      reader.child.kill('SIGKILL');
    }
  });
}

test('list calls a stopped daemon unresponsive within its deadline; umount -l of it returns too', async () => {
  const { dir, pid } = instanceWithDevice('m');
  try {
    process.kill(pid, 'SIGSTOP');
    const l = timed(['list', '--json']);
    assert.is(l.status, 0, l.stderr);
    assert.ok(l.ms < 10_000, `list took ${l.ms} ms`);
    const listed = JSON.parse(l.stdout) as { mountpoint: string; health: string }[];
    assert.equal(listed.map((i) => [i.mountpoint, i.health]), [[dir, 'unresponsive']]);
    const u = timed(['umount', '-l', dir]);
    assert.is(u.status, 0, u.stderr);
    assert.ok(u.ms < 10_000, `umount -l took ${u.ms} ms`);
    assert.is(loopfsMountAt(dir), undefined);
    assert.equal(sb.daemons(), []);
    assert.equal(JSON.parse(sb.ok(['list', '--json'])), []);
  } finally {
    abortMountAt(dir);
    release(pid);
  }
});

for (const lost of ['ctl.sock', 'run directory'] as const) {
  test(`with its ${lost} removed an instance is listed orphaned, and umount and gc stop it cleanly`, async () => {
    const a = instanceWithDevice('a');
    const b = instanceWithDevice('b');
    try {
      // A device stays open on a until the end: the daemon must finish it cleanly, not be killed.
      const fdA = fs.openSync(a.dev, 'r');
      if (lost === 'ctl.sock') {
        for (const id of fs.readdirSync(path.join(sb.runDir, 'instances'))) fs.unlinkSync(path.join(sb.runDir, 'instances', id, 'ctl.sock'));
      } else {
        fs.rmSync(sb.runDir, { recursive: true });
      }
      const listed = JSON.parse(sb.ok(['list', '--json'])) as { mountpoint: string; health: string; pid: number }[];
      assert.equal(listed.map((i) => [i.mountpoint, i.health, i.pid]).sort(), [[a.dir, 'orphaned', a.pid], [b.dir, 'orphaned', b.pid]].sort());
      assert.match(sb.ok(['list']), /orphaned/);
      // Its mountpoint is not free: a new instance there is refused, and b's mount stays as it was.
      const again = sb.run(['mount', b.dir]);
      assert.is(again.status, 1, again.stdout);
      assert.is(errnoOf(again), 'EBUSY');
      assert.ok(loopfsMountAt(b.dir));
      // Commands that need the socket say what is wrong, and what to do.
      const add = sb.run(['--instance', a.dir, 'ctl', 'add', '1']);
      assert.is(add.status, 1);
      assert.is(errnoOf(add), 'ESRCH');
      assert.match(add.stderr, /runs but cannot be reached.*loopfs umount or loopfs gc stops it/);
      // umount without -l: the kernel refuses while a device is open, and nothing changes.
      const busy = sb.run(['umount', a.dir]);
      assert.is(busy.status, 1);
      assert.is(errnoOf(busy), 'EBUSY');
      assert.ok(loopfsMountAt(a.dir));
      assert.equal(fs.readFileSync(a.dev).subarray(0, 4), Buffer.alloc(4, 7));
      fs.closeSync(fdA);
      const r = timed(['umount', a.dir]);
      assert.is(r.status, 0, r.stderr);
      assert.is(r.stderr, '');
      assert.is(loopfsMountAt(a.dir), undefined);
      assert.ok(await waitFor(() => procState(a.pid) === undefined || procState(a.pid) === 'Z'));
      const g = timed(['gc']);
      assert.is(g.status, 0, g.stderr);
      assert.match(g.stdout, new RegExp(`stopped \\w+ \\(${b.dir}\\): orphaned`));
      assert.is(loopfsMountAt(b.dir), undefined);
      assert.ok(await waitFor(() => sb.daemons().length === 0));
      assert.equal(JSON.parse(sb.ok(['list', '--json'])), []);
      assert.equal(timed(['gc']).stdout, '');
    } finally {
      for (const i of [a, b]) {
        abortMountAt(i.dir);
        release(i.pid);
      }
    }
  });
}

test('an orphaned daemon that is also stopped: umount and gc still end it within 10 s, its reader gets an error', async () => {
  const a = instanceWithDevice('a');
  const b = instanceWithDevice('b');
  const readers = [startReader(a.dev), startReader(b.dev)];
  try {
    for (const r of readers) assert.ok(await waitFor(() => r.out().includes('reading'), 10_000), r.out());
    fs.rmSync(sb.runDir, { recursive: true });
    process.kill(a.pid, 'SIGSTOP');
    process.kill(b.pid, 'SIGSTOP');
    for (const r of readers) assert.ok(await waitFor(() => procState(r.child.pid!) === 'D', 5000), `reader state ${procState(r.child.pid!)}`);
    const u = timed(['umount', a.dir]);
    assert.is(u.status, 0, u.stderr);
    assert.ok(u.ms < 10_000, `umount took ${u.ms} ms`);
    assert.match(u.stderr, /the daemon is stopped; its FUSE connection was aborted/);
    const g = timed(['gc']);
    assert.is(g.status, 0, g.stderr);
    assert.ok(g.ms < 10_000, `gc took ${g.ms} ms`);
    assert.match(g.stdout, new RegExp(`aborted \\w+ \\(${b.dir}\\): the daemon is stopped`));
    for (const r of readers) {
      assert.ok(await exited(r.child), `reader still running: ${r.out()}`);
      assert.match(r.out(), /^error (ENOTCONN|EIO|ECONNABORTED)$/m);
    }
    assert.is(loopfsMountAt(a.dir), undefined);
    assert.is(loopfsMountAt(b.dir), undefined);
    assert.equal(sb.daemons(), []);
    assert.equal(JSON.parse(sb.ok(['list', '--json'])), []);
  } finally {
    for (const i of [a, b]) {
      abortMountAt(i.dir);
      release(i.pid);
    }
    for (const r of readers) r.child.kill('SIGKILL');
  }
});

test('a directory on the way moved and replaced by a symlink to another mount: umount of the recorded path unmounts only the instance', () => {
  const otherParent = sb.dir('o');
  const other = sb.dir('o/mnt');
  withUserAndTmpfs(other, path.join(sb.root, 'home', 'd2', 'mnt'), (uid, home, asUser) => {
    const d = path.join(home, 'd');
    const mnt = path.join(d, 'mnt');
    asUser('mkdir', '-p', mnt);
    assert.is(sb.ok(['mount', '-o', `uid=${uid}`, mnt]), mnt);
    // The user moves the directory holding the mount away and puts a symlink to the other mount's parent in its place.
    asUser('mv', d, path.join(home, 'd2'));
    asUser('ln', '-s', otherParent, d);
    assert.is(fs.realpathSync(mnt), other);
    assert.ok(loopfsMountAt(path.join(home, 'd2', 'mnt')));
    const r = sb.run(['umount', mnt]);
    assert.is(r.status, 0, r.stderr);
    assert.is(loopfsMountAt(path.join(home, 'd2', 'mnt')), undefined);
    assert.ok(mounts().some((m) => m.mountpoint === other && m.fstype === 'tmpfs'), 'the tmpfs was unmounted');
    assert.is(fs.readFileSync(path.join(other, 'keep'), 'utf8'), 'kept');
    assert.equal(sb.daemons(), []);
    assert.equal(JSON.parse(sb.ok(['list', '--json'])), []);
  });
});

test('inside loopfs run: umount, and umount -l with a device open, leave nothing mounted at the directory', () => {
  const x = sb.dir('x');
  const count = `grep -c " ${x} " /proc/self/mountinfo`;
  const script = [
    `loopfs mount ${x} >/dev/null && loopfs --instance ${x} ctl add 0 >/dev/null`,
    `echo "mounted $(${count})"`,
    `loopfs umount ${x} && echo "umount $(${count})"`,
    `loopfs mount ${x} >/dev/null && loopfs --instance ${x} ctl add 0 >/dev/null`,
    `exec 3<${x}/loop0`,
    `loopfs umount -l ${x} && echo "lazy $(${count})"`,
    'loopfs list --json | grep -c \'"unmounted"\' | sed "s/^/detached /"',
    'exec 3<&-',
    'for i in $(seq 50); do loopfs list --json | grep -q \'"unmounted"\' || break; sleep 0.1; done',
    'loopfs list --json | grep -c \'"mountpoint"\' | sed "s/^/left /"',
  ].join('\n');
  const r = sb.run(['run', '--', 'sh', '-c', script]);
  assert.is(r.status, 0, r.stderr);
  // Mounted: the bind of the directory onto itself, and the instance on it.
  assert.match(r.stdout, /^mounted 2$/m);
  assert.match(r.stdout, /^umount 0$/m);
  assert.match(r.stdout, /^lazy 0$/m);
  assert.match(r.stdout, /^detached 1$/m);
  // Only the default instance of the sandbox is left.
  assert.match(r.stdout, /^left 1$/m);
});

/**
 * Runs `body` as the set-up of an attack by an ordinary user: the user (made
 * for the test when missing) owns SANDBOX/home, and a tmpfs holding a file
 * "keep" is mounted at `other` — the unrelated filesystem the attack aims at.
 * Whatever happens, the instance's mount at `instance` is aborted, the tmpfs
 * unmounted and a user made here removed.
 */
function withUserAndTmpfs(other: string, instance: string, body: (uid: number, home: string, asUser: (...argv: string[]) => void) => void): void {
  const user = 'loopfs-e2e-adm';
  let made = false;
  if (spawnSync('id', [user]).status !== 0) {
    execFileSync('useradd', ['-M', '-s', '/bin/sh', user]);
    made = true;
  }
  let tmpfs = false;
  try {
    const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }));
    fs.chmodSync(sb.root, 0o755);
    const home = sb.dir('home');
    fs.chownSync(home, uid, uid);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', other]);
    tmpfs = true;
    fs.writeFileSync(path.join(other, 'keep'), 'kept');
    body(uid, home, (...argv) => {
      execFileSync('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', ...argv]);
    });
  } finally {
    abortMountAt(instance);
    if (tmpfs) spawnSync('umount', [other]);
    if (made) spawnSync('userdel', [user]);
  }
}

test('symlink swap: an ordinary user repoints the mountpoint symlink at another mount; root\'s umount DIR unmounts only the instance', () => {
  const other = sb.dir('other');
  withUserAndTmpfs(other, path.join(sb.root, 'home', 'empty'), (uid, home, asUser) => {
    const empty = path.join(home, 'empty');
    const link = path.join(home, 'link');
    asUser('mkdir', empty);
    asUser('ln', '-s', empty, link);
    // root mounts for the user at the symlink: resolved once, mounted at (and recorded as) the directory it named then.
    assert.is(sb.ok(['mount', '-o', `uid=${uid}`, link]), empty);
    assert.ok(loopfsMountAt(empty));
    assert.is(loopfsMountAt(link), undefined);
    const listed = JSON.parse(sb.ok(['list', '--json'])) as { mountpoint: string; owner: string }[];
    assert.equal(listed.map((i) => [i.mountpoint, i.owner]), [[empty, `${uid}:0`]]);
    // The user swaps the symlink for one to the other mount.
    asUser('ln', '-sfn', other, link);
    assert.is(fs.realpathSync(link), other);
    const r = sb.run(['umount', link]);
    assert.is(r.status, 0, r.stderr);
    // The instance is gone; the tmpfs is untouched.
    assert.is(loopfsMountAt(empty), undefined);
    assert.ok(mounts().some((m) => m.mountpoint === other && m.fstype === 'tmpfs'), 'the tmpfs was unmounted');
    assert.is(fs.readFileSync(path.join(other, 'keep'), 'utf8'), 'kept');
    assert.equal(sb.daemons(), []);
    assert.equal(JSON.parse(sb.ok(['list', '--json'])), []);
    // A symlink to another mount that no instance was mounted by is not an instance.
    const again = sb.run(['umount', link]);
    assert.is(again.status, 1);
    assert.match(again.stderr, /not a loopfs instance/);
    assert.ok(mounts().some((m) => m.mountpoint === other && m.fstype === 'tmpfs'));
  });
});

test.run();
