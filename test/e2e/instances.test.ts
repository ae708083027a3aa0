import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox, fuseMountsAt, waitFor, errnoOf } from '../helpers/cli';

// SPEC §1, §2, §4 (mount, umount, ctl, rm, list, gc): private instances.
let sb: Sandbox;
const test = sandboxSuite('instances', 'inst', (s) => (sb = s));

function sh(cmd: string): { status: number; stderr: string } {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8' });
  return { status: r.status ?? 128, stderr: r.stderr };
}

test('two instances side by side each have their own loop0 and only their own entries', () => {
  const a = sb.dir('a');
  const b = sb.dir('b');
  assert.is(sb.ok(['mount', a]), a);
  assert.is(sb.ok(['mount', b]), b);
  assert.is(sb.ok(['--instance', a, 'ctl', 'add', '0']), '0');
  assert.is(sb.ok(['--instance', b, 'ctl', 'add', '0']), '0');
  assert.is(sb.ok(['--instance', a, 'ctl', 'add', '3']), '3');
  assert.equal(fs.readdirSync(a).sort(), ['loop-control', 'loop0', 'loop3']);
  assert.equal(fs.readdirSync(b).sort(), ['loop-control', 'loop0']);
  assert.not.ok(fs.existsSync(path.join(b, 'loop3')));
  // Inodes as SPEC §2 gives them.
  assert.is(fs.statSync(a).ino, 1);
  assert.is(fs.statSync(path.join(a, 'loop-control')).ino, 2);
  assert.is(fs.statSync(path.join(a, 'loop3')).ino, 6);
  assert.is(fs.statSync(path.join(a, 'loop0')).mode & 0o777, 0o600);
  assert.is(fs.statSync(path.join(a, 'loop-control')).mode & 0o777, 0o600);
  // An unbound device: size 0, reads give end-of-file, writes fail ENXIO.
  assert.is(fs.statSync(path.join(a, 'loop0')).size, 0);
  assert.is(fs.readFileSync(path.join(a, 'loop0')).length, 0);
  assert.throws(() => fs.writeFileSync(path.join(a, 'loop0'), 'x', { flag: 'r+' }), /ENXIO/);
  // statfs answers.
  assert.is(sh(`df ${a} >/dev/null`).status, 0);
  const list = JSON.parse(sb.ok(['list', '--json'])) as { mountpoint: string; devices: number; health: string }[];
  assert.equal(list.map((i) => [i.mountpoint, i.devices, i.health]).sort(), [[a, 2, 'alive'], [b, 1, 'alive']].sort());
});

test('entry rules: loop-control cannot be removed or renamed onto; nothing can be created; rm removes an unbound device', () => {
  const a = sb.dir('a');
  sb.ok(['mount', a]);
  sb.ok(['--instance', a, 'ctl', 'add', '0']);
  sb.ok(['--instance', a, 'ctl', 'add', '5']);
  for (const cmd of [`rm -f ${a}/loop-control`, `mv ${a}/loop0 ${a}/loop-control`, `mv ${a}/loop-control ${a}/x`]) {
    const r = sh(cmd);
    assert.is.not(r.status, 0, cmd);
    assert.match(r.stderr, /Operation not permitted/, cmd);
  }
  for (const cmd of [`touch ${a}/x`, `mkdir ${a}/d`, `ln -s /etc/passwd ${a}/l`, `mknod ${a}/n c 1 3`, `ln ${a}/loop0 ${a}/h`]) {
    const r = sh(cmd);
    assert.is.not(r.status, 0, cmd);
    assert.match(r.stderr, /Operation not permitted/, cmd);
  }
  assert.is(sh(`rm ${a}/loop5`).status, 0);
  assert.equal(fs.readdirSync(a).sort(), ['loop-control', 'loop0']);
  assert.is(sh(`mv ${a}/loop0 ${a}/disk`).status, 0);
  assert.equal(fs.readdirSync(a).sort(), ['disk', 'loop-control']);
  // The renamed device is still device 0 for loop-control.
  const r = sb.run(['--instance', a, 'ctl', 'add', '0']);
  assert.is(errnoOf(r), 'EEXIST');
  assert.is(sb.ok(['--instance', a, 'ctl', 'get-free']), '0');
  // loopfs rm removes too, by path or bare name.
  sb.ok(['--instance', a, 'ctl', 'add', '2']);
  sb.ok(['rm', path.join(a, 'loop2')]);
  assert.equal(fs.readdirSync(a).sort(), ['disk', 'loop-control']);
});

test('max: the third add fails ENOSPC, and succeeds after remount,max=3', () => {
  const a = sb.dir('a');
  sb.ok(['mount', '-o', 'max=2', a]);
  sb.ok(['--instance', a, 'ctl', 'add']);
  sb.ok(['--instance', a, 'ctl', 'add']);
  const r = sb.run(['--instance', a, 'ctl', 'add']);
  assert.is(r.status, 1);
  assert.is(errnoOf(r), 'ENOSPC');
  assert.match(r.stderr, /max=2/);
  assert.is(r.stderr.trim().split('\n').length, 1);
  sb.ok(['mount', '-o', 'remount,max=3', a]);
  assert.is(sb.ok(['--instance', a, 'ctl', 'add']), '2');
  const listed = JSON.parse(sb.ok(['list', '--json'])) as { max: number }[];
  assert.is(listed[0]!.max, 3);
});

test('umount leaves no mount, no daemon and no state; EBUSY while a device is open; -l finishes on last close', async () => {
  const a = sb.dir('a');
  sb.ok(['mount', a]);
  sb.ok(['--instance', a, 'ctl', 'add', '0']);
  assert.is(sb.daemons().length, 1);
  const fd = fs.openSync(path.join(a, 'loop0'), 'r');
  let r = sb.run(['umount', a]);
  assert.is(r.status, 1);
  assert.is(errnoOf(r), 'EBUSY');
  assert.is(fuseMountsAt(a), 1);
  // Lazy: gone from the namespace at once, daemon ends when the opener closes.
  sb.ok(['umount', '-l', a]);
  assert.is(fuseMountsAt(a), 0);
  assert.is(sb.daemons().length, 1);
  fs.closeSync(fd);
  assert.ok(await waitFor(() => sb.daemons().length === 0), 'daemon exits after the last close');
  assert.ok(await waitFor(() => fs.readdirSync(path.join(sb.runDir, 'instances')).length === 0), 'state removed');
  // And the plain case.
  sb.ok(['mount', a]);
  sb.ok(['umount', a]);
  assert.is(fuseMountsAt(a), 0);
  assert.is(sb.daemons().length, 0);
  assert.equal(fs.readdirSync(path.join(sb.runDir, 'instances')), []);
  assert.equal(JSON.parse(sb.ok(['list', '--json'])), []);
  r = sb.run(['umount', a]);
  assert.is(r.status, 1);
  assert.is(errnoOf(r), 'EINVAL');
});

test('SIGKILL of a daemon: list shows it dead, gc unmounts and removes it', async () => {
  const a = sb.dir('a');
  sb.ok(['mount', a]);
  const [pid] = sb.daemons();
  assert.ok(pid);
  process.kill(pid!, 'SIGKILL');
  assert.ok(await waitFor(() => sb.daemons().length === 0));
  const listed = JSON.parse(sb.ok(['list', '--json'])) as { health: string; pid: number }[];
  assert.is(listed.length, 1);
  assert.is(listed[0]!.health, 'dead');
  assert.is(listed[0]!.pid, pid);
  assert.match(sb.ok(['list']), /dead/);
  assert.match(sb.ok(['gc']), /removed/);
  assert.is(fuseMountsAt(a), 0);
  assert.equal(JSON.parse(sb.ok(['list', '--json'])), []);
  // The directory can hold a new instance again.
  sb.ok(['mount', a]);
  sb.ok(['umount', a]);
});

test('the default instance: started on first use at RUNDIR/default, $LOOPFS selects another', () => {
  assert.is(sb.ok(['ctl', 'get-free']), '0');
  const def = path.join(sb.runDir, 'default');
  assert.equal(fs.readdirSync(def).sort(), ['loop-control', 'loop0']);
  const a = sb.dir('a');
  sb.ok(['mount', a]);
  assert.is(sb.ok(['ctl', 'add', '7'], { env: { LOOPFS: a } }), '7');
  assert.ok(fs.existsSync(path.join(a, 'loop7')));
  assert.not.ok(fs.existsSync(path.join(def, 'loop7')));
  sb.ok(['umount', def]);
  assert.not.ok(fs.existsSync(def), 'the default mountpoint is removed with its instance');
  sb.ok(['umount', a]);
});

test.run();
