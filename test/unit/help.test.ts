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

for (const cmd of COMMANDS) {
  test(`loopfs ${cmd} --help: usage, options, two examples`, () => {
    const out = help(cmd);
    assert.match(out, new RegExp(`Usage:\\n  \\$ loopfs ${cmd}`));
    assert.match(out, /Options:\n(\s+-.*\n)+/);
    assert.match(out, /-h, --help/);
    const examples = out.slice(out.indexOf('Examples:')).split('\n').filter((l) => l.startsWith(`loopfs ${cmd}`));
    assert.ok(out.includes('Examples:') && examples.length >= 2, `${cmd}: ${examples.length} examples`);
  });
}

test('loopfs --help lists every command', () => {
  const [bin, ...pre] = binary();
  const out = spawnSync(bin!, [...pre, '--help'], { encoding: 'utf8' }).stdout;
  for (const cmd of COMMANDS) assert.match(out, new RegExp(`^  ${cmd}\\b`, 'm'));
});

test.run();
