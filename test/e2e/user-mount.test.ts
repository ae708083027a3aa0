import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync, execFileSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox, errnoOf, waitFor, mountsUnder, type Result } from '../helpers/cli';
import { FUSERMOUNT_DIRS } from '../../src/fuse/mount';

// An ordinary user on the host gets `loopfs mount DIR` and the default
// instance without root, through the setuid helper fusermount3 (issue 12).
// The users are made here and removed after; /dev/fuse is made usable for
// them (the kernel creates it 0666, this machine has 0600) and restored.
let sb: Sandbox;
const made = (s: Sandbox): void => {
  sb = s;
  fs.chmodSync(sb.root, 0o755);
  for (const u of users) {
    u.home = sb.dir(`home-${u.name}`);
    u.xdg = sb.dir(`xdg-${u.name}`);
    fs.chownSync(u.home, u.uid, u.gid);
    fs.chownSync(u.xdg, u.uid, u.gid);
    fs.chmodSync(u.xdg, 0o700);
  }
  fs.chmodSync('/dev/fuse', 0o666);
};
const test = sandboxSuite('user mount', 'user-mount', made, () => {
  fs.chmodSync('/dev/fuse', fuseMode);
  // The users' daemons and fusermount3 watchers are not under the sandbox's run directory.
  for (const p of procsUnder(sb.root)) {
    try {
      process.kill(Number(p.split(' ')[0]), 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

const PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

interface User { name: string; uid: number; gid: number; home: string; xdg: string; made: boolean }

const USERS = ['loopfs-e2e-um-a', 'loopfs-e2e-um-b'];
const users: User[] = [];
let fuseMode = 0;

test.before(() => {
  fuseMode = fs.statSync('/dev/fuse').mode & 0o7777;
  for (const name of USERS) {
    let made = false;
    if (spawnSync('id', [name]).status !== 0) {
      execFileSync('useradd', ['-M', '-s', '/bin/sh', name]);
      made = true;
    }
    const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }));
    const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }));
    users.push({ name, uid, gid, home: '', xdg: '', made });
  }
});

test.after(() => {
  fs.chmodSync('/dev/fuse', fuseMode);
  for (const u of users) if (u.made) spawnSync('userdel', ['-r', u.name], { stdio: 'ignore' });
});

/** Live processes whose command line names something under `dir`: daemons, fusermount3, watchers. */
function procsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const p of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    if (Number(p) === process.pid) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(dir)) out.push(`${p} ${cmd}`);
    } catch {
      /* gone */
    }
  }
  return out;
}

/** setpriv … env -i: the user's own ids and a clean environment; `pre` runs first, as root (a namespace). */
function userArgv(u: User, argv: string[]): string[] {
  return ['setpriv', '--reuid', String(u.uid), '--regid', String(u.gid), '--clear-groups', 'env', '-i', `HOME=${u.home}`, `XDG_RUNTIME_DIR=${u.xdg}`, `PATH=${PATH}`, ...argv];
}

function run(argv: string[], cwd: string): Result {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', cwd, timeout: 60_000 });
  return { status: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

function asUser(u: User, argv: string[]): Result {
  return run(userArgv(u, argv), u.home);
}

function loopfs(u: User, args: string[]): Result {
  return asUser(u, [...sb.bin, ...args]);
}

function ok(u: User, args: string[]): string {
  const r = loopfs(u, args);
  if (r.status !== 0) throw new Error(`${u.name}: loopfs ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout.trim();
}

function sh(u: User, script: string): Result {
  return asUser(u, ['sh', '-c', script]);
}

interface Listed { id: string; mountpoint: string; pid: number; health: string }

function list(u: User): Listed[] {
  return JSON.parse(ok(u, ['list', '--json'])) as Listed[];
}

function mountLine(dir: string): string | undefined {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === dir);
}

/** Nothing of a user's instances left: no mount, no process, no state, no default mountpoint. */
async function assertNothingLeft(u: User): Promise<void> {
  assert.ok(await waitFor(() => procsUnder(sb.root).length === 0, 5000), `processes left: ${procsUnder(sb.root).join('; ')}`);
  assert.equal(mountsUnder(sb.root), []);
  const inst = path.join(u.xdg, 'loopfs', 'instances');
  if (fs.existsSync(inst)) assert.equal(fs.readdirSync(inst), []);
  assert.not.ok(fs.existsSync(path.join(u.xdg, 'loopfs', 'default')), 'default mountpoint left');
}

test('an ordinary user: default instance, losetup, mkfs.ext4, e2fsck; loopfs mount, ctl add, LOOP_CTL_GET_FREE; umount; nothing left', async () => {
  const u = users[0]!;
  const img = path.join(u.home, 'img');
  assert.is(sh(u, `truncate -s 32M ${img} && truncate -s 1M ${img}2`).status, 0);
  const dev = ok(u, ['losetup', '-f', '--show', img]);
  const defaultDir = path.join(u.xdg, 'loopfs', 'default');
  assert.is(dev, path.join(defaultDir, 'loop0'));
  // A FUSE mount of the user's, made by fusermount3: user_id/group_id theirs, nosuid, nodev, no allow_other.
  const line = mountLine(defaultDir)!;
  assert.ok(line, 'the default instance is mounted');
  assert.match(line, new RegExp(` - fuse\\.loopfs loopfs rw,user_id=${u.uid},group_id=${u.gid},default_permissions$`));
  assert.match(line.split(' ')[5]!, /nosuid,nodev/);
  // The devices are the user's.
  assert.is(sh(u, `stat -c %u:%g:%a ${dev} ${defaultDir}/loop-control`).stdout, `${u.uid}:${u.gid}:600\n${u.uid}:${u.gid}:600\n`);
  const mk = sh(u, `mkfs.ext4 -q -F ${dev} && e2fsck -fn ${dev}`);
  assert.is(mk.status, 0, mk.stderr + mk.stdout);
  const l = ok(u, ['losetup', '-l']);
  assert.match(l, new RegExp(`^${dev} +0 +0 +0 +0 ${img} +0 +512$`, 'm'));
  // The user binds only files they can open: a root file of mode 0600 is refused.
  const secret = path.join(sb.root, 'secret');
  fs.writeFileSync(secret, Buffer.alloc(1 << 20), { mode: 0o600 });
  const denied = loopfs(u, ['losetup', '-f', secret]);
  assert.is(denied.status, 1);
  assert.is(errnoOf(denied), 'EACCES', denied.stderr);
  // max_loop_devices counts the user's devices across their instances.
  ok(u, ['sysctl', 'max_loop_devices=1']);
  const over = loopfs(u, ['losetup', '-f', '--show', `${img}2`]);
  assert.is(over.status, 1);
  assert.is(errnoOf(over), 'ENOSPC', over.stderr);
  ok(u, ['sysctl', 'max_loop_devices=255']);
  ok(u, ['losetup', '-d', dev]);
  assert.is(ok(u, ['losetup', '-l']), '');

  const inst = path.join(u.home, 'inst');
  assert.is(sh(u, `mkdir ${inst}`).status, 0);
  assert.is(ok(u, ['mount', inst]), inst);
  assert.match(mountLine(inst)!, new RegExp(`user_id=${u.uid},group_id=${u.gid},default_permissions$`));
  assert.is(ok(u, ['--instance', inst, 'ctl', 'add']), '0');
  const py = asUser(u, ['python3', '-c', `import fcntl, os; fd = os.open('${inst}/loop-control', os.O_RDWR); print(fcntl.ioctl(fd, 0x4C82))`]);
  assert.is(py.stdout.trim(), '0', py.stderr);
  // Its daemon, fusermount3 staying as the auto_unmount watcher, and loopfs's own watcher (for fusermount3 < 3.15).
  const procs = procsUnder(inst).map((p) => p.split(' ').slice(1).join(' '));
  assert.is(procs.length, 3, procs.join('; '));
  assert.ok(procs.some((p) => p.includes('__daemon')) && procs.some((p) => p.startsWith('fusermount3 ')) && procs.some((p) => p.includes('loopfs-watch')), procs.join('; '));
  // Root cannot look in: without allow_other the kernel lets only the owner through.
  assert.throws(() => fs.readdirSync(inst), /EACCES/);
  ok(u, ['umount', inst]);
  assert.is(mountLine(inst), undefined);
  ok(u, ['umount', defaultDir]);
  await assertNothingLeft(u);
  assert.equal(list(u), []);
});

test('SIGKILL of a user\'s daemon: its mount is gone within 2 s; list and gc agree', async () => {
  const u = users[0]!;
  const inst = path.join(u.home, 'inst');
  assert.is(sh(u, `mkdir ${inst} && truncate -s 4M img`).status, 0);
  ok(u, ['mount', inst]);
  ok(u, ['--instance', inst, 'losetup', '-f', path.join(u.home, 'img')]);
  ok(u, ['losetup', '-f', '--show', path.join(u.home, 'img')]);
  const before = list(u);
  assert.is(before.length, 2);
  const victim = before.find((i) => i.mountpoint === inst)!;
  process.kill(victim.pid, 'SIGKILL');
  assert.ok(await waitFor(() => mountLine(inst) === undefined, 2000), 'the mount of the killed daemon is still there after 2 s');
  const after = list(u);
  assert.equal(after.map((i) => [i.id, i.health]).sort(), [[victim.id, 'dead'], ['default', 'alive']].sort());
  assert.match(ok(u, ['gc']), new RegExp(`removed ${victim.id}`));
  assert.equal(list(u).map((i) => i.id), ['default']);
  // The other instance is untouched and still serves.
  assert.is(sh(u, `head -c 4096 ${path.join(u.xdg, 'loopfs', 'default', 'loop0')} | wc -c`).stdout.trim(), '4096');
  ok(u, ['umount', path.join(u.xdg, 'loopfs', 'default')]);
  await assertNothingLeft(u);
  assert.ok(fs.existsSync(inst), 'a mountpoint the user made stays');
});

test('a dead mount no watcher removed (they were killed first): the user\'s umount and gc remove it through fusermount3 -u -z', async () => {
  const u = users[0]!;
  for (const how of ['umount', 'gc']) {
    const inst = path.join(u.home, `inst-${how}`);
    assert.is(sh(u, `mkdir ${inst}`).status, 0);
    ok(u, ['mount', inst]);
    const procs = procsUnder(inst).map((p) => ({ pid: Number(p.split(' ')[0]), cmd: p.split(' ').slice(1).join(' ') }));
    const daemon = procs.find((p) => p.cmd.includes('__daemon'))!;
    for (const p of procs.filter((q) => q !== daemon)) process.kill(p.pid, 'SIGKILL');
    assert.ok(await waitFor(() => procsUnder(inst).length === 1), procsUnder(inst).join('; '));
    process.kill(daemon.pid, 'SIGKILL');
    assert.ok(await waitFor(() => procsUnder(inst).length === 0));
    // Nothing unmounts it now: a dead mount (ENOTCONN for its owner).
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(mountLine(inst), 'the dead mount stays while no one removes it');
    assert.match(sh(u, `ls ${inst}`).stderr, /Transport endpoint is not connected/);
    if (how === 'umount') ok(u, ['umount', inst]);
    else assert.match(ok(u, ['gc']), /removed /);
    assert.is(mountLine(inst), undefined);
    assert.equal(list(u), []);
  }
  await assertNothingLeft(u);
});

test('a user cannot see or reach root\'s instances or another user\'s; root\'s commands are unaffected', async () => {
  const [a, b] = users as [User, User];
  const rootInst = sb.dir('rootinst');
  sb.ok(['mount', rootInst]);
  sb.ok(['--instance', rootInst, 'ctl', 'add', '0']);
  const instA = path.join(a.home, 'inst');
  assert.is(sh(a, `mkdir ${instA}`).status, 0);
  ok(a, ['mount', instA]);
  ok(a, ['--instance', instA, 'ctl', 'add', '0']);
  const runA = path.join(a.xdg, 'loopfs');
  // Homes readable by others, so only loopfs itself stands in the way.
  fs.chmodSync(a.home, 0o755);

  // A: root's run directory and devices are closed; A's own list does not show them.
  let r = loopfs(a, ['--run-dir', sb.runDir, 'list']);
  assert.is(r.status, 1);
  assert.match(r.stderr, /\((EACCES|EPERM)\)$/m);
  r = sh(a, `cat ${rootInst}/loop0`);
  assert.is.not(r.status, 0);
  assert.match(r.stderr, /Permission denied/);
  assert.equal(list(a).map((i) => i.mountpoint), [instA]);
  // B: A's instance cannot even be listed (owner-only FUSE mount), nor its run directory read.
  r = sh(b, `ls ${instA}`);
  assert.is.not(r.status, 0);
  assert.match(r.stderr, /Permission denied/);
  r = loopfs(b, ['--run-dir', runA, 'list']);
  assert.is(r.status, 1);
  assert.match(r.stderr, /\((EACCES|EPERM)\)$/m);
  r = loopfs(b, ['--instance', instA, 'ctl', 'add']);
  assert.is(r.status, 1);
  r = sh(b, `python3 -c "import os; os.open('${instA}/loop-control', os.O_RDWR)"`);
  assert.is.not(r.status, 0);
  assert.match(r.stderr, /PermissionError/);
  // Root: its list shows only its own instance, and its instance works as before.
  const rootList = JSON.parse(sb.ok(['list', '--json'])) as Listed[];
  assert.equal(rootList.map((i) => i.mountpoint), [rootInst]);
  assert.is(sb.ok(['--instance', rootInst, 'ctl', 'add']), '1');
  assert.match(mountLine(rootInst)!, /user_id=0,group_id=0,default_permissions,allow_other$/);
  sb.ok(['umount', rootInst]);
  ok(a, ['umount', instA]);
  await assertNothingLeft(a);
});

/** Every fusermount3 the lookup could find with this PATH (and the fixed directories), by real path. */
function fusermountCopies(): string[] {
  const seen = new Set<string>();
  for (const d of [...PATH.split(':'), ...FUSERMOUNT_DIRS]) {
    try {
      seen.add(fs.realpathSync(path.join(d, 'fusermount3')));
    } catch {
      /* none there */
    }
  }
  return [...seen];
}

test('without fusermount3, or without /dev/fuse: one line saying what is missing and the ways out, exit 1, nothing left', async () => {
  const u = users[0]!;
  const inst = path.join(u.home, 'inst');
  assert.is(sh(u, `mkdir ${inst} && truncate -s 4M img`).status, 0);
  const copies = fusermountCopies();
  assert.ok(copies.length > 0, 'fusermount3 is installed (package fuse3)');
  // Root-made setup: a mount namespace where every copy is covered by an empty root file, then the user.
  const empty = path.join(sb.root, 'empty');
  fs.writeFileSync(empty, '', { mode: 0o600 });
  const hidden = (argv: string[]): Result => run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c', `${copies.map((c) => `mount --bind ${empty} ${c}`).join(' && ')} && exec "$@"`, 'sh', ...userArgv(u, argv)], u.home);
  const seen = hidden(['sh', '-c', 'command -v fusermount3; test -x /bin/fusermount3 || test -x /usr/bin/fusermount3; echo $?']);
  assert.is(seen.stdout, '1\n', 'fusermount3 is hidden from the user');
  for (const args of [['losetup', '-f', '--show', path.join(u.home, 'img')], ['mount', inst]]) {
    const r = hidden([...sb.bin, ...args]);
    assert.is(r.status, 1, r.stderr);
    assert.is(r.stdout, '');
    const lines = r.stderr.trim().split('\n');
    assert.is(lines.length, 1, r.stderr);
    assert.match(lines[0]!, new RegExp(`^loopfs ${args[0]}: .*: fusermount3 not found .*install the distribution's fuse3 package, or use \`loopfs run\` \\(ENOENT\\)$`));
    await assertNothingLeft(u);
  }
  // /dev/fuse closed to the user: fusermount3 opens it with the user's rights.
  fs.chmodSync('/dev/fuse', 0o600);
  const r = loopfs(u, ['mount', inst]);
  assert.is(r.status, 1);
  assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /fusermount3: failed to open \/dev\/fuse: Permission denied \(this user needs read-write access to \/dev\/fuse\) \(EACCES\)$/m);
  await assertNothingLeft(u);
  assert.equal(fs.readdirSync(inst), []);
});

test('a failed mount says the kernel\'s or the helper\'s reason whole (a /dev/fuse that is not the FUSE device)', async () => {
  const u = users[0]!;
  const inst = path.join(u.home, 'inst');
  assert.is(sh(u, `mkdir ${inst}`).status, 0);
  const rootDir = sb.dir('rootdir');
  const notFuse = (argv: string[]): Result => run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c', 'mount --bind /dev/null /dev/fuse && exec "$@"', 'sh', ...argv], sb.root);
  // Root: the kernel's answer to mount(2), on one line.
  let r = notFuse(['env', `LOOPFS_RUNDIR=${sb.runDir}`, ...sb.bin, 'mount', rootDir]);
  assert.is(r.status, 1);
  assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`^loopfs mount: ${rootDir}: cannot mount the FUSE filesystem: Invalid argument \\(EINVAL\\)$`, 'm'));
  // A user: fusermount3's message.
  r = notFuse(userArgv(u, [...sb.bin, 'mount', inst]));
  assert.is(r.status, 1);
  assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /^loopfs mount: .*: fusermount3: mount failed: Invalid argument \(EINVAL\)$/m);
  assert.equal(mountsUnder(sb.root), []);
  assert.equal(fs.readdirSync(path.join(sb.runDir, 'instances')), []);
  await assertNothingLeft(u);
});

test.run();
