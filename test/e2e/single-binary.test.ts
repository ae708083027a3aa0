import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sandboxSuite } from '../helpers/e2e';
import { spawnSync, execFileSync } from 'node:child_process';
import { Sandbox, REPO, python, fuseMountsAt } from '../helpers/cli';

// Issue 2: `npm run build` makes dist/loopfs; copied alone into an empty
// directory (no node_modules, no node on the path it needs) it runs the flows.
let sb: Sandbox;
const made = (s: Sandbox): void => {
  sb = s;
  const dir = sb.dir('bin');
  const bin = path.join(dir, 'loopfs');
  fs.copyFileSync(path.join(REPO, 'dist', 'loopfs'), bin);
  fs.chmodSync(bin, 0o755);
  assert.equal(fs.readdirSync(dir), ['loopfs']);
  sb.bin = [bin];
  // No node_modules anywhere above the copy, and no NODE_PATH to find one.
  sb.env = { NODE_PATH: '', PATH: `${dir}:/usr/sbin:/usr/bin:/sbin:/bin` };
};
const test = sandboxSuite('single binary', 'sea', made);

test('the copied binary mounts, answers loop-control ioctls, attaches a file, and tears down', () => {
  const a = sb.dir('a');
  assert.is(sb.ok(['mount', '-o', 'max=4', a]), a);
  assert.is(sb.ok(['--instance', a, 'ctl', 'add', '2']), '2');
  assert.is(python(`import fcntl, os\nprint(fcntl.ioctl(os.open(${JSON.stringify(path.join(a, 'loop-control'))}, os.O_RDWR), 0x4C82))`).trim(), '2');
  const img = path.join(sb.root, 'img');
  fs.writeFileSync(img, Buffer.alloc(1 << 20, 0x5a));
  const dev = sb.ok(['--instance', a, 'losetup', '-f', '--show', img]);
  assert.is(dev, path.join(a, 'loop2'));
  assert.ok(fs.readFileSync(dev).equals(fs.readFileSync(img)));
  const listed = JSON.parse(sb.ok(['--instance', a, 'losetup', '-J'])) as { loopdevices: { 'back-file': string }[] };
  assert.is(listed.loopdevices[0]!['back-file'], img);
  sb.ok(['--instance', a, 'losetup', '-d', dev]);
  sb.ok(['umount', a]);
  assert.is(fuseMountsAt(a), 0);
  assert.equal(sb.daemons(), []);
});

test('the copied binary runs a self-cleaning sandbox', () => {
  const img = path.join(sb.root, 'img');
  fs.writeFileSync(img, Buffer.alloc(1 << 20));
  const r = sb.run(['run', '--', 'sh', '-c', `d=$(loopfs losetup -f --show ${img}) && printf x | dd of="$d" conv=notrunc status=none && loopfs losetup -d "$d" && echo ok`]);
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout.trim(), 'ok');
  assert.is(fs.readFileSync(img)[0], 0x78);
  assert.equal(sb.daemons(), []);
});

// Issue 9 (2): the native module is loaded from an unnamed file, so nothing in a shared
// TMPDIR can be squatted: root's use does not break a user's `run` (the old cache was
// keyed by the uid seen inside the user namespace: 0), and another user's entries under
// every name loopfs ever used neither break it nor are followed.
test('root and an unprivileged `loopfs run` share a TMPDIR squatted by a third user, and neither uses or leaves anything there', () => {
  const user = 'loopfs-e2e-seausr';
  const squatter = 'loopfs-e2e-squat';
  const made: string[] = [];
  for (const u of [user, squatter]) {
    if (spawnSync('id', [u]).status !== 0) {
      execFileSync('useradd', ['-M', '-s', '/bin/sh', u]);
      made.push(u);
    }
  }
  const fuseMode = fs.statSync('/dev/fuse').mode & 0o777;
  try {
    const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }));
    const sq = Number(execFileSync('id', ['-u', squatter], { encoding: 'utf8' }));
    fs.chmodSync(sb.root, 0o755);
    const tmp = sb.dir('tmp');
    fs.chmodSync(tmp, 0o1777);
    const bait = sb.dir('bait');
    fs.chownSync(bait, sq, sq);
    // The squatter moves first: directories, files and symlinks under the names of root and of the user.
    const asSquatter = (cmd: string): void => {
      execFileSync('setpriv', ['--reuid', String(sq), '--regid', String(sq), '--clear-groups', 'sh', '-c', cmd], { cwd: tmp });
    };
    asSquatter(`mkdir -m 777 loopfs-0 && ln -s ${bait} loopfs-${uid} && echo x > loopfs-65534 && ln -s ${bait}/x loopfs-${sq} && mkdir loopfs-0/koffi`);
    const squatted = fs.readdirSync(tmp).sort();
    // Root uses the single binary.
    const a = sb.dir('a');
    sb.ok(['mount', a], { env: { TMPDIR: tmp } });
    assert.is(sb.ok(['--instance', a, 'ctl', 'add'], { env: { TMPDIR: tmp } }), '0');
    assert.is(sb.ok(['list'], { env: { TMPDIR: tmp } }).split('\n').length, 2, 'the header and the instance');
    // An ordinary user's sandbox, with the same TMPDIR.
    const home = sb.dir('home');
    fs.chownSync(home, uid, uid);
    fs.chmodSync('/dev/fuse', 0o666);
    const r = spawnSync('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'env', `HOME=${home}`, `XDG_RUNTIME_DIR=${home}`, `TMPDIR=${tmp}`,
      'PATH=/usr/sbin:/usr/bin:/sbin:/bin', ...sb.bin, 'run', '--', 'sh', '-c', 'truncate -s 1M "$HOME/img" && d=$(loopfs losetup -f --show "$HOME/img") && loopfs ctl get-free && echo "$d"'],
    { encoding: 'utf8', cwd: home, env: {} });
    assert.is(r.status, 0, r.stderr);
    assert.match(r.stdout.trim(), /^1\n.*\/loop0$/);
    // And with the host's own /tmp, whatever root's loopfs (of any version) left there.
    const plain = spawnSync('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'env', `HOME=${home}`, `XDG_RUNTIME_DIR=${home}`,
      'PATH=/usr/sbin:/usr/bin:/sbin:/bin', ...sb.bin, 'run', '--', 'loopfs', 'ctl', 'get-free'], { encoding: 'utf8', cwd: home, env: {} });
    assert.is(plain.status, 0, plain.stderr);
    assert.is(plain.stdout.trim(), '0');
    sb.ok(['umount', a], { env: { TMPDIR: tmp } });
    assert.equal(fs.readdirSync(tmp).sort(), squatted, 'nothing added to the shared TMPDIR');
    assert.equal(fs.readdirSync(bait), [], 'no symlink was followed');
    assert.equal(fs.readdirSync(path.join(tmp, 'loopfs-0')), ['koffi']);
  } finally {
    fs.chmodSync('/dev/fuse', fuseMode);
    for (const u of made) spawnSync('userdel', [u]);
  }
});

test.run();
