import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { e2eSuite } from '../helpers/e2e';
import { Sandbox, errnoOf } from '../helpers/cli';
import { attach, entries, instDir, randomFile, releaseKernelState, sha } from './disk-helpers';

// SPEC §3, §4: bad input to `loopfs losetup` gets one clear line on stderr,
// exit status 1, and changes nothing: no device entry appears or goes, no
// binding changes, no backing file changes.
const test = e2eSuite('losetup: bad input');
let sb: Sandbox;
test.before.each(() => {
  sb = new Sandbox('lbad');
});
test.after.each(() => {
  releaseKernelState(sb);
  sb.cleanup();
});

test('a missing file, a directory, bad offsets, sizes and sector sizes, unbound or non-loopfs devices: one line, exit 1, nothing changed', () => {
  const img = randomFile(path.join(sb.root, 'd.img'), 1 << 20);
  fs.mkdirSync(path.join(sb.root, 'dir'));
  const bound = attach(sb, img, ['-o', '4096']);
  const dir = instDir(sb);
  // An unbound device too (what -f alone finds).
  assert.is(sb.ok(['losetup', '-f']), path.join(dir, 'loop1'));
  const unbound = path.join(dir, 'loop1');
  const before = { entries: entries(dir), list: sb.ok(['losetup', '-l', '-a']), sum: sha(img) };

  const cases: [string[], string, RegExp][] = [
    [['-f', '--show', 'missing.img'], 'ENOENT', /missing\.img: failed to set up loop device/],
    [['-f', '--show', 'dir'], 'EISDIR', /dir: failed to set up loop device/],
    [[unbound, 'dir'], 'EISDIR', /dir: failed to set up loop device/],
    [['-f', '--show', '-o', '2M', 'd.img'], 'EINVAL', /offset 2097152 is beyond the end of the file/],
    [['-f', '--show', '-o', String((1 << 20) + 1), 'd.img'], 'EINVAL', /beyond the end of the file/],
    [[unbound, '-o', '2M', 'd.img'], 'EINVAL', /beyond the end of the file/],
    [['-f', '--show', '-o', '-1', 'd.img'], 'EINVAL', /failed to parse offset: '-1'/],
    [['-f', '--show', '-o', 'abc', 'd.img'], 'EINVAL', /failed to parse offset: 'abc'/],
    [['-f', '--show', '-o', '12qb', 'd.img'], 'EINVAL', /failed to parse offset: '12qb'/],
    [['-f', '--show', '-o', '99999999999999999999', 'd.img'], 'ERANGE', /failed to parse offset: '99999999999999999999'/],
    [['-f', '--show', '-o', '16E', 'd.img'], 'ERANGE', /failed to parse offset/],
    [['-f', '--show', '--sizelimit', '-512', 'd.img'], 'EINVAL', /failed to parse size: '-512'/],
    [['-f', '--show', '--sizelimit', 'lots', 'd.img'], 'EINVAL', /failed to parse size: 'lots'/],
    [['-f', '--show', '--sizelimit', '99999999999999999999', 'd.img'], 'ERANGE', /failed to parse size/],
    [['-f', '--show', '--sizelimit', '1000', 'd.img'], 'EINVAL', /size limit 1000 is not a multiple of 512/],
    [['-f', '--show', '-b', '1000', 'd.img'], 'EINVAL', /sector size 1000 is not a power of 2/],
    [['-f', '--show', '-b', '256', 'd.img'], 'EINVAL', /sector size 256/],
    [['-f', '--show', '-b', '131072', 'd.img'], 'EINVAL', /sector size 131072/],
    [['-f', '--show', '-b', 'x', 'd.img'], 'EINVAL', /failed to parse logical block size: 'x'/],
    [['-d', unbound], 'ENXIO', /loop1: detach failed/],
    [['-d', path.join(dir, 'loop9')], 'ENODEV', /loop9: failed to use device/],
    [['-d', '/dev/loop0'], 'EINVAL', /\/dev\/loop0: failed to use device: not a loopfs device/],
    [['-d', path.join(sb.root, 'd.img')], 'EINVAL', /d\.img: failed to use device: not a loopfs device/],
    [['-d', 'd.img'], 'EINVAL', /d\.img: failed to use device: not a loopfs device/],
    [['-d', `${bound}p1`], 'ENODEV', /loop0p1: failed to use device/],
    [['-c', '/dev/loop0'], 'EINVAL', /not a loopfs device/],
    [['-c', unbound], 'ENXIO', /loop1: set capacity failed/],
    [['/dev/loop0', 'd.img'], 'EINVAL', /\/dev\/loop0: failed to use device: not a loopfs device/],
    [[path.join(sb.root, 'd.img'), 'd.img'], 'EINVAL', /not a loopfs device/],
    [[bound, 'd.img'], 'EBUSY', /d\.img: failed to set up loop device/],
  ];
  for (const [args, errno, mention] of cases) {
    const label = `loopfs losetup ${args.join(' ')}`;
    const r = sb.run(['losetup', ...args]);
    assert.is(r.status, 1, `${label}: exit status (stderr: ${r.stderr})`);
    assert.is(r.stdout, '', `${label}: nothing on stdout`);
    const lines = r.stderr.replace(/\n$/, '').split('\n');
    assert.is(lines.length, 1, `${label}: one line, got: ${r.stderr}`);
    assert.match(lines[0]!, /^loopfs losetup: /, label);
    assert.match(lines[0]!, mention, `${label}: ${lines[0]}`);
    assert.is(errnoOf(r), errno, `${label}: ${r.stderr}`);
    assert.not.match(r.stderr, /\n\s+at /, `${label}: no stack trace`);
    assert.equal(entries(dir), before.entries, `${label}: no device entry appeared or went`);
  }
  assert.is(sb.ok(['losetup', '-l', '-a']), before.list, 'no binding changed');
  assert.is(sha(img), before.sum, 'the backing file is unchanged');
  assert.is(sb.daemons().length, 1);
});

test('-d of several devices: the bad ones are reported one line each, the good ones detached, exit 1', () => {
  const img = randomFile(path.join(sb.root, 'd.img'), 1 << 20);
  const a = attach(sb, img);
  const b = attach(sb, img, ['-o', '4096']);
  const r = sb.run(['losetup', '-d', a, '/dev/loop0', b]);
  assert.is(r.status, 1, r.stderr);
  assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /\/dev\/loop0: failed to use device/);
  assert.is(sb.ok(['losetup', '-a']), '', 'both loopfs devices detached');
});

test.run();
