import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { binary } from '../helpers/cli';

// Issue 5: every command's --help shows its usage, its options and two examples.
const COMMANDS = ['mount', 'umount', 'losetup', 'overlay', 'ctl', 'rm', 'run', 'list', 'sysctl', 'gc'];

function help(cmd: string): string {
  const [bin, ...pre] = binary();
  const r = spawnSync(bin!, [...pre, cmd, '--help'], { encoding: 'utf8', env: { ...process.env, LOOPFS_RUNDIR: '/nonexistent-never-created' } });
  assert.is(r.status, 0, `${cmd} --help exits 0`);
  assert.is(r.stderr, '', `${cmd} --help writes nothing to stderr`);
  return r.stdout;
}

for (const cmd of COMMANDS.filter((c) => c !== 'losetup')) {
  test(`loopfs ${cmd} --help: usage, options, two examples`, () => {
    const out = help(cmd);
    assert.match(out, new RegExp(`Usage:\\n  \\$ loopfs ${cmd}`));
    assert.match(out, /Options:\n(\s+-.*\n)+/);
    assert.match(out, /-h, --help/);
    const examples = out.slice(out.indexOf('Examples:')).split('\n').filter((l) => l.startsWith(`loopfs ${cmd}`));
    assert.ok(out.includes('Examples:') && examples.length >= 2, `${cmd}: ${examples.length} examples`);
  });
}

// Issue 11: losetup's help is util-linux's (its examples are in the man page), loopfs's options marked.
test('loopfs losetup --help and -h: util-linux\'s usage, its options, loopfs\'s additions marked', () => {
  for (const flag of ['--help', '-h']) {
    const [bin, ...pre] = binary();
    const r = spawnSync(bin!, [...pre, 'losetup', flag], { encoding: 'utf8', env: { ...process.env, LOOPFS_RUNDIR: '/nonexistent-never-created' } });
    assert.is(r.status, 0);
    assert.is(r.stderr, '');
    const out = r.stdout;
    assert.match(out, /^\nUsage:\n loopfs losetup \[options\] \[<loopdev>\]\n loopfs losetup \[options\] -f \| <loopdev> <file>\n/);
    assert.match(out, /\nOptions:\n -a, --all {21}list all used devices\n/);
    assert.match(out, /\n -h, --help {20}display this help\n -V, --version {17}display version\n/);
    assert.match(out, /\nloopfs additions:\n {5}--instance <dir\|id> .*\n {5}--run-dir <dir> .*\n/);
    assert.match(out, /\nFor more details see loopfs-losetup\(8\)\.\n$/);
  }
});

test('loopfs --help lists every command', () => {
  const [bin, ...pre] = binary();
  const out = spawnSync(bin!, [...pre, '--help'], { encoding: 'utf8' }).stdout;
  for (const cmd of COMMANDS) assert.match(out, new RegExp(`^  ${cmd}\\b`, 'm'));
});

test.run();
