import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync, execFileSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox, python } from '../helpers/cli';

// SPEC §7 / issue 9 (4): a backing fd must be open for reading. An O_PATH fd needs no
// read permission on its file, so attach refuses it (EBADF, as the kernel's LOOP_SET_FD
// does), on a root daemon and inside an unprivileged `loopfs run`, with direct I/O too.
let sb: Sandbox;
const test = sandboxSuite('attach fd access', 'fdacc', (s) => (sb = s));

const USER = 'loopfs-e2e-fdacc';

/**
 * A client speaking the control protocol by hand (core/protocol.ts): one attach request line
 * with the fd riding along (SCM_RIGHTS). argv: SOCK (or "-": the one instance of
 * $LOOPFS_RUNDIR) FILE MODE(path|rdonly|wronly) DIRECT(0|1). Prints the reply line.
 */
const CLIENT = `
import glob, json, os, socket, sys
sock, file, mode, direct = sys.argv[1:5]
if sock == '-':
    sock = glob.glob(os.environ['LOOPFS_RUNDIR'] + '/instances/*/ctl.sock')[0]
fd = os.open(file, {'path': os.O_PATH, 'rdonly': os.O_RDONLY, 'wronly': os.O_WRONLY}[mode])
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
req = {'v': 1, 'op': 'attach', 'args': {'req': {'file': file, 'directIo': direct == '1'}, 'path': file, 'writable': mode != 'rdonly'}}
socket.send_fds(s, [json.dumps(req).encode() + b'\\n'], [fd])
print(s.makefile().readline().strip())
`;

interface Reply { ok: boolean; errno?: string; reason?: string; result?: { device: { path: string } } }

function user(): number {
  if (spawnSync('id', [USER]).status !== 0) execFileSync('useradd', ['-M', '-s', '/bin/sh', USER]);
  return Number(execFileSync('id', ['-u', USER], { encoding: 'utf8' }));
}

function asUser(uid: number, argv: string[], env: Record<string, string> = {}): string {
  const r = spawnSync('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'env', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...argv], { encoding: 'utf8', cwd: '/' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} as uid ${uid} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

function socketOf(mountpoint: string): string {
  const listed = JSON.parse(sb.ok(['list', '--json'])) as { id: string; mountpoint: string }[];
  return path.join(sb.runDir, 'instances', listed.find((i) => i.mountpoint === mountpoint)!.id, 'ctl.sock');
}

/** A file of root's that nobody else may read, in a directory anybody may search. */
function secret(): string {
  const f = path.join(sb.root, 'secret.img');
  fs.writeFileSync(f, Buffer.alloc(1 << 20, 0x53));
  fs.chmodSync(f, 0o600);
  fs.chmodSync(sb.root, 0o755);
  return f;
}

test('the kernel refuses an O_PATH fd in LOOP_SET_FD with EBADF, and so does a root daemon, even for root', () => {
  const f = secret();
  const kernel = python(`
import errno, fcntl, os
lc = os.open('/dev/loop-control', os.O_RDWR)
n = fcntl.ioctl(lc, 0x4C82)
lfd = os.open('/dev/loop%d' % n, os.O_RDWR)
try:
    fcntl.ioctl(lfd, 0x4C00, os.open(${JSON.stringify(f)}, os.O_PATH))
    fcntl.ioctl(lfd, 0x4C01)
    print('attached')
except OSError as e:
    print(errno.errorcode[e.errno])
finally:
    os.close(lfd)
    fcntl.ioctl(lc, 0x4C81, n)
`).trim();
  assert.is(kernel, 'EBADF');
  const a = sb.dir('a');
  sb.ok(['mount', a]);
  const sock = socketOf(a);
  for (const direct of ['0', '1']) {
    const r = JSON.parse(python(`${CLIENT}`.replace('sys.argv[1:5]', JSON.stringify([sock, f, 'path', direct])))) as Reply;
    assert.equal([r.ok, r.errno], [false, kernel], `direct=${direct}: ${JSON.stringify(r)}`);
    assert.match(r.reason!, /O_PATH/);
  }
  // The same client with a readable fd is served: the refusal is about the fd, not the request.
  const ok = JSON.parse(python(`${CLIENT}`.replace('sys.argv[1:5]', JSON.stringify([sock, f, 'rdonly', '0'])))) as Reply;
  assert.is(ok.ok, true, JSON.stringify(ok));
  assert.ok(fs.readFileSync(ok.result!.device.path).equals(fs.readFileSync(f)));
  sb.ok(['--instance', a, 'losetup', '-D']);
  sb.ok(['umount', a]);
});

test('a user served by a root daemon cannot attach a file they cannot read through an O_PATH or write-only fd', () => {
  const uid = user();
  try {
    const f = secret();
    const own = path.join(sb.root, 'write-only.img');
    fs.writeFileSync(own, Buffer.alloc(1 << 20, 0x57));
    fs.chownSync(own, uid, uid);
    fs.chmodSync(own, 0o200);
    const a = sb.dir('a');
    sb.ok(['mount', '-o', `uid=${uid},gid=${uid}`, a]);
    const sock = socketOf(a);
    for (const d of [sb.runDir, path.join(sb.runDir, 'instances'), path.dirname(sock)]) fs.chmodSync(d, 0o755);
    fs.chmodSync(sock, 0o666);
    const ask = (file: string, mode: string, direct: string): Reply => JSON.parse(asUser(uid, ['python3', '-c', CLIENT, sock, file, mode, direct])) as Reply;
    for (const direct of ['0', '1']) {
      const r = ask(f, 'path', direct);
      assert.equal([r.ok, r.errno], [false, 'EBADF'], `O_PATH, direct=${direct}: ${JSON.stringify(r)}`);
      const w = ask(own, 'wronly', direct);
      assert.equal([w.ok, w.errno], [false, 'EBADF'], `O_WRONLY, direct=${direct}: ${JSON.stringify(w)}`);
      assert.match(w.reason!, /not opened for reading/);
    }
    // Nothing was attached, nothing created.
    assert.equal(fs.readdirSync(a), ['loop-control']);
    assert.is(sb.ok(['--instance', a, 'losetup', '-a']), '');
    // Made readable, the user's own file attaches through the same client.
    fs.chmodSync(own, 0o600);
    const ok = ask(own, 'rdonly', '0');
    assert.is(ok.ok, true, JSON.stringify(ok));
    sb.ok(['--instance', a, 'losetup', '-D']);
    sb.ok(['umount', a]);
  } finally {
    spawnSync('userdel', [USER]);
  }
});

test('inside an unprivileged `loopfs run`, an O_PATH fd of a file the user cannot read is refused', () => {
  const uid = user();
  const fuseMode = fs.statSync('/dev/fuse').mode & 0o777;
  try {
    const f = secret();
    const home = sb.dir('home');
    fs.chownSync(home, uid, uid);
    const mine = path.join(home, 'mine.img');
    fs.writeFileSync(mine, Buffer.alloc(1 << 20, 0x4d));
    fs.chownSync(mine, uid, uid);
    fs.chmodSync('/dev/fuse', 0o666);
    const script = `python3 -c "$CLIENT" - ${f} path 0; python3 -c "$CLIENT" - ${f} path 1; python3 -c "$CLIENT" - ${mine} rdonly 0; loopfs losetup -a`;
    const out = asUser(uid, [...sb.bin, 'run', '--', 'sh', '-c', script], { HOME: home, XDG_RUNTIME_DIR: home, PATH: '/usr/sbin:/usr/bin:/sbin:/bin', CLIENT }).trim().split('\n');
    const [p0, p1, ok] = out.slice(0, 3).map((l) => JSON.parse(l) as Reply);
    assert.equal([p0!.ok, p0!.errno], [false, 'EBADF'], JSON.stringify(p0));
    assert.equal([p1!.ok, p1!.errno], [false, 'EBADF'], JSON.stringify(p1));
    assert.is(ok!.ok, true, JSON.stringify(ok));
    assert.is(out.length, 4, out.join('\n'));
    assert.match(out[3]!, new RegExp(`/loop0: .*${mine}`));
  } finally {
    fs.chmodSync('/dev/fuse', fuseMode);
    spawnSync('userdel', [USER]);
  }
});

test('a user\'s own daemon on the host (mounted through fusermount3) refuses an O_PATH fd of a file the user cannot read', () => {
  const uid = user();
  const fuseMode = fs.statSync('/dev/fuse').mode & 0o777;
  const xdg = sb.dir('xdg');
  const inst = sb.dir('uinst');
  try {
    const f = secret();
    fs.chownSync(xdg, uid, uid);
    fs.chmodSync(xdg, 0o700);
    fs.chownSync(inst, uid, uid);
    const mine = path.join(xdg, 'mine.img');
    fs.writeFileSync(mine, Buffer.alloc(1 << 20, 0x4d));
    fs.chownSync(mine, uid, uid);
    fs.chmodSync('/dev/fuse', 0o666);
    const env = { HOME: xdg, XDG_RUNTIME_DIR: xdg, PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };
    asUser(uid, [...sb.bin, 'mount', inst], env);
    const sock = path.join(xdg, 'loopfs', 'instances', fs.readdirSync(path.join(xdg, 'loopfs', 'instances'))[0]!, 'ctl.sock');
    const ask = (file: string, mode: string, direct: string): Reply => JSON.parse(asUser(uid, ['python3', '-c', CLIENT, sock, file, mode, direct], env)) as Reply;
    for (const direct of ['0', '1']) {
      const r = ask(f, 'path', direct);
      assert.equal([r.ok, r.errno], [false, 'EBADF'], `direct=${direct}: ${JSON.stringify(r)}`);
    }
    const ok = ask(mine, 'rdonly', '0');
    assert.is(ok.ok, true, JSON.stringify(ok));
    assert.match(asUser(uid, [...sb.bin, '--instance', inst, 'losetup', '-a'], env), new RegExp(`^${inst}/loop0: .*${mine}`));
    asUser(uid, [...sb.bin, '--instance', inst, 'losetup', '-D'], env);
    asUser(uid, [...sb.bin, 'umount', inst], env);
  } finally {
    fs.chmodSync('/dev/fuse', fuseMode);
    spawnSync('umount', ['-l', inst]);
    spawnSync('userdel', [USER]);
  }
});

test.run();
