import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox, errnoOf, fuseMountsAt, mountsUnder } from '../helpers/cli';

// SPEC §4: bad input gets one line naming the problem and the errno, a
// non-zero exit, and leaves nothing behind.
let sb: Sandbox;
const test = sandboxSuite('bad input (instances)', 'bad', (s) => (sb = s));

function expectError(args: string[], errno: string, status: number, mention: RegExp): void {
  const r = sb.run(args);
  const label = `loopfs ${args.join(' ')}`;
  assert.is(r.status, status, `${label}: exit status (stderr: ${r.stderr})`);
  assert.is(r.stdout, '', `${label}: nothing on stdout`);
  const lines = r.stderr.trim().split('\n');
  assert.is(lines.length, 1, `${label}: one line, got: ${r.stderr}`);
  assert.match(lines[0]!, new RegExp(`^loopfs ${args[args[0] === '--instance' ? 2 : 0]}: `), label);
  assert.is(errnoOf(r), errno, `${label}: ${r.stderr}`);
  assert.match(lines[0]!, mention, label);
  assert.not.match(r.stderr, /\n\s+at /, `${label}: no stack trace`);
}

function nothingLeft(): void {
  assert.equal(sb.daemons(), [], 'no daemon');
  assert.equal(mountsUnder(sb.root), [], 'no mount');
  const inst = path.join(sb.runDir, 'instances');
  assert.equal(fs.existsSync(inst) ? fs.readdirSync(inst) : [], [], 'no instance state');
}

test('mount: missing, non-empty, non-directory DIR; bad -o values; unknown options', () => {
  const empty = sb.dir('empty');
  const full = sb.dir('full');
  fs.writeFileSync(path.join(full, 'f'), 'x');
  expectError(['mount', path.join(sb.root, 'missing')], 'ENOENT', 1, /missing/);
  expectError(['mount', full], 'ENOTEMPTY', 1, /not empty/);
  expectError(['mount', path.join(full, 'f')], 'ENOTDIR', 1, /not a directory/);
  expectError(['mount', '-o', 'max=0', empty], 'EINVAL', 2, /max=0/);
  expectError(['mount', '-o', 'max=-1', empty], 'EINVAL', 2, /max=-1/);
  expectError(['mount', '-o', 'max=abc', empty], 'EINVAL', 2, /max=abc/);
  expectError(['mount', '-o', 'max=99999999999999999999', empty], 'ERANGE', 2, /max=/);
  expectError(['mount', '-o', 'colour=blue', empty], 'EINVAL', 2, /colour=blue/);
  expectError(['mount', '--frobnicate', empty], 'EINVAL', 2, /frobnicate/);
  expectError(['mount'], 'EINVAL', 2, /missing required/);
  assert.equal(fs.readdirSync(full), ['f'], 'the non-empty directory is untouched');
  nothingLeft();
});

test('mount: a DIR that already holds an instance is EBUSY and the instance keeps working', () => {
  const a = sb.dir('a');
  sb.ok(['mount', a]);
  expectError(['mount', a], 'EBUSY', 1, /already holds/);
  assert.is(fuseMountsAt(a), 1);
  assert.is(sb.daemons().length, 1);
  assert.is(sb.ok(['--instance', a, 'ctl', 'add']), '0');
  sb.ok(['umount', a]);
  nothingLeft();
});

test('ctl: add -1, add abc, remove 99999999, unknown operation; umount and rm of what is not loopfs', () => {
  const a = sb.dir('a');
  sb.ok(['mount', a]);
  expectError(['--instance', a, 'ctl', 'add', '-1'], 'EINVAL', 2, /-1/);
  expectError(['--instance', a, 'ctl', 'add', 'abc'], 'EINVAL', 2, /abc/);
  expectError(['--instance', a, 'ctl', 'add', '1048576'], 'ERANGE', 2, /1048576/);
  expectError(['--instance', a, 'ctl', 'remove', '99999999'], 'ENODEV', 1, /loop99999999/);
  expectError(['--instance', a, 'ctl', 'remove'], 'EINVAL', 2, /number/);
  expectError(['--instance', a, 'ctl', 'frob'], 'EINVAL', 2, /frob/);
  expectError(['--instance', path.join(sb.root, 'nowhere'), 'ctl', 'get-free'], 'ENOENT', 1, /nowhere/);
  expectError(['rm', '/dev/loop0'], 'EINVAL', 1, /not a loopfs device/);
  expectError(['rm', path.join(a, 'loop9')], 'ENOENT', 1, /loop9/);
  expectError(['umount', sb.dir('plain')], 'EINVAL', 1, /not a loopfs instance/);
  assert.equal(fs.readdirSync(a), ['loop-control'], 'no device was made by the bad calls');
  sb.ok(['umount', a]);
  nothingLeft();
});

test('a run directory open to others, or owned by someone else, is refused', () => {
  fs.mkdirSync(sb.runDir, { mode: 0o700 });
  fs.chmodSync(sb.runDir, 0o777);
  expectError(['list'], 'EPERM', 1, /writable by group or others/);
  fs.chmodSync(sb.runDir, 0o700);
  fs.chownSync(sb.runDir, 1234, 1234);
  expectError(['list'], 'EPERM', 1, /owned by uid 1234/);
  fs.chownSync(sb.runDir, 0, 0);
  assert.is(sb.run(['list']).status, 0);
});

test('a state file that does not parse, or is a symlink, is reported and left alone (SPEC §7)', () => {
  sb.ok(['list']);
  const inst = path.join(sb.runDir, 'instances');
  fs.mkdirSync(path.join(inst, 'garbled'), { mode: 0o700 });
  fs.writeFileSync(path.join(inst, 'garbled', 'state.json'), '{"version": 1, "pid": ');
  fs.mkdirSync(path.join(inst, 'linked'), { mode: 0o700 });
  fs.symlinkSync('/etc/passwd', path.join(inst, 'linked', 'state.json'));
  const listed = JSON.parse(sb.ok(['list', '--json'])) as { id: string; health: string; problem?: string }[];
  const byId = Object.fromEntries(listed.map((i) => [i.id, i]));
  assert.is(byId.garbled!.health, 'broken');
  assert.match(byId.garbled!.problem!, /does not parse/);
  assert.is(byId.linked!.health, 'broken');
  assert.match(byId.linked!.problem!, /symbolic link/);
  const r = sb.run(['gc']);
  assert.is(r.status, 1);
  const lines = r.stderr.trim().split('\n');
  assert.is(lines.length, 2);
  assert.match(lines.find((l) => l.includes('garbled'))!, /^loopfs gc: .*garbled\/state\.json: state file does not parse; left alone \(EINVAL\)$/);
  assert.match(lines.find((l) => l.includes('linked'))!, /\(ELOOP\)$/);
  assert.equal(fs.readdirSync(inst).sort(), ['garbled', 'linked'], 'left alone');
  assert.is(fs.readFileSync(path.join(inst, 'garbled', 'state.json'), 'utf8'), '{"version": 1, "pid": ');
});

test.run();
