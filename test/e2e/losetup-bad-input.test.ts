import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox, errnoOf } from '../helpers/cli';
import { attach, entries, instDir, randomFile, releaseKernelState, sha } from '../helpers/disk';

// SPEC §3, §4, issue 11: bad input to `loopfs losetup` gets util-linux's
// line on stderr (its words, strerror and all, with no "(ERRNO)"), exit
// status 1, and changes nothing: no device entry appears or goes, no
// binding changes, no backing file changes.
let sb: Sandbox;
const test = sandboxSuite('losetup: bad input', 'lbad', (s) => (sb = s), releaseKernelState);

test('a missing file, a directory, bad offsets, sizes and sector sizes, unbound or non-loopfs devices: util-linux\'s line, exit 1, nothing changed', () => {
  const img = randomFile(path.join(sb.root, 'd.img'), 1 << 20);
  fs.mkdirSync(path.join(sb.root, 'dir'));
  const bound = attach(sb, img, ['-o', '4096']);
  const dir = instDir(sb);
  // An unbound device too (what -f alone finds).
  assert.is(sb.ok(['losetup', '-f']), path.join(dir, 'loop1'));
  const unbound = path.join(dir, 'loop1');
  const before = { entries: entries(dir), list: sb.ok(['losetup', '-l', '-a']), sum: sha(img) };

  // [args, util-linux's line after "loopfs losetup: ", errno that line names (undefined: util-linux's errx, none)]
  const cases: [string[], string, string | undefined][] = [
    [['-f', '--show', 'missing.img'], 'missing.img: failed to set up loop device: No such file or directory', 'ENOENT'],
    [['-f', '--show', 'dir'], 'dir: failed to set up loop device: Is a directory', 'EISDIR'],
    [[unbound, 'dir'], 'dir: failed to set up loop device: Is a directory', 'EISDIR'],
    [['-f', '--show', '-o', '-1', 'd.img'], "failed to parse offset: '-1': Invalid argument", 'EINVAL'],
    [['-f', '--show', '-o', 'abc', 'd.img'], "failed to parse offset: 'abc': Invalid argument", 'EINVAL'],
    [['-f', '--show', '-o', '12qb', 'd.img'], "failed to parse offset: '12qb': Invalid argument", 'EINVAL'],
    [['-f', '--show', '-o', '99999999999999999999', 'd.img'], "failed to parse offset: '99999999999999999999': Numerical result out of range", 'ERANGE'],
    [['-f', '--show', '-o', '16E', 'd.img'], "failed to parse offset: '16E': Numerical result out of range", 'ERANGE'],
    [['-f', '--show', '--sizelimit', '-512', 'd.img'], "failed to parse size: '-512': Invalid argument", 'EINVAL'],
    [['-f', '--show', '--sizelimit', 'lots', 'd.img'], "failed to parse size: 'lots': Invalid argument", 'EINVAL'],
    [['-f', '--show', '--sizelimit', '99999999999999999999', 'd.img'], "failed to parse size: '99999999999999999999': Numerical result out of range", 'ERANGE'],
    [['-f', '--show', '-b', '1000', 'd.img'], 'd.img: failed to set up loop device: Invalid argument', 'EINVAL'],
    [['-f', '--show', '-b', '256', 'd.img'], 'd.img: failed to set up loop device: Invalid argument', 'EINVAL'],
    [['-f', '--show', '-b', '131072', 'd.img'], 'd.img: failed to set up loop device: Invalid argument', 'EINVAL'],
    [['-f', '--show', '-b', 'x', 'd.img'], "failed to parse logical block size: 'x': Invalid argument", 'EINVAL'],
    [['-d', unbound], `${unbound}: detach failed: No such device or address`, 'ENXIO'],
    [['-d', path.join(dir, 'loop9')], `${path.join(dir, 'loop9')}: failed to use device: No such device`, 'ENODEV'],
    [['-d', '/dev/loop0'], '/dev/loop0: failed to use device: No such device', 'ENODEV'],
    [['-d', path.join(sb.root, 'd.img')], `${path.join(sb.root, 'd.img')}: failed to use device: No such device`, 'ENODEV'],
    [['-d', 'd.img'], 'd.img: failed to use device: No such device', 'ENODEV'],
    [['-d', `${bound}p1`], `${bound}p1: failed to use device: No such device`, 'ENODEV'],
    [['-c', '/dev/loop0'], '/dev/loop0: failed to use device: No such device', 'ENODEV'],
    [['-c', unbound], `${unbound}: set capacity failed: No such device or address`, 'ENXIO'],
    [['/dev/no-such-loop', 'd.img'], '/dev/no-such-loop: failed to set up loop device: No such file or directory', 'ENOENT'],
    [[path.join(sb.root, 'd.img'), 'd.img'], 'd.img: failed to set up loop device: Inappropriate ioctl for device', 'ENOTTY'],
    [['x.img', 'd.img'], '/dev/x.img: failed to set up loop device: No such file or directory', 'ENOENT'],
    [[bound, 'd.img'], 'd.img: failed to set up loop device: Device or resource busy', 'EBUSY'],
    [['-L', '-f', '-o', '8192', 'd.img'], 'd.img: overlapping loop device exists', undefined],
    [['-J', '--raw'], 'mutually exclusive arguments: --json --raw', undefined],
    [['-O', 'FOO', bound], 'unknown column: FOO', undefined],
  ];
  for (const [args, line, errno] of cases) {
    const label = `loopfs losetup ${args.join(' ')}`;
    const r = sb.run(['losetup', ...args], { cwd: sb.root });
    assert.is(r.status, 1, `${label}: exit status (stderr: ${r.stderr})`);
    assert.is(r.stdout, '', `${label}: nothing on stdout`);
    assert.is(r.stderr, `loopfs losetup: ${line}\n`, label);
    assert.is(errnoOf(r), errno, `${label}: ${r.stderr}`);
    assert.equal(entries(dir), before.entries, `${label}: no device entry appeared or went`);
  }
  // Usage errors: getopt's line and util-linux's second one.
  for (const [args, line] of [[['--x'], "unrecognized option '--x'"], [['-q'], "invalid option -- 'q'"], [['-o'], "option requires an argument -- 'o'"]] as const) {
    const r = sb.run(['losetup', ...args]);
    assert.is(r.status, 1, args.join(' '));
    assert.is(r.stdout, '');
    assert.is(r.stderr, `loopfs losetup: ${line}\nTry 'loopfs losetup --help' for more information.\n`);
  }
  assert.is(sb.ok(['losetup', '-l', '-a']), before.list, 'no binding changed');
  assert.is(sha(img), before.sum, 'the backing file is unchanged');
  assert.is(sb.daemons().length, 1);
});

test('accepted as util-linux accepts them: --sizelimit 1000 (with its warning) and an offset past the end (a device of size 0)', () => {
  const img = randomFile(path.join(sb.root, 'd.img'), 5 << 20);
  const r = sb.run(['losetup', '-f', '--show', '--sizelimit', '1000', 'd.img'], { cwd: sb.root });
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stderr, 'loopfs losetup: d.img: Warning: file does not fit into a 512-byte sector; the end of the file will be ignored.\n');
  const a = r.stdout.trim();
  assert.is(fs.statSync(a).size, 512, 'rounded down to the sector, as the kernel does');
  assert.ok(fs.readFileSync(a).equals(fs.readFileSync(img).subarray(0, 512)));
  const b = sb.run(['losetup', '-f', '--show', '-o', '100M', 'd.img'], { cwd: sb.root });
  assert.is(b.status, 0, b.stderr);
  // util-linux's warn_size() computes file size - offset in 64 bits: it wraps to a multiple of 512 here, so no warning.
  assert.is(b.stderr, '');
  const dev = b.stdout.trim();
  assert.is(fs.statSync(dev).size, 0, 'a device of size 0');
  assert.is(fs.readFileSync(dev).length, 0, 'that reads end-of-file');
  assert.is(sb.ok(['losetup', '-n', '-O', 'OFFSET,SIZELIMIT', a]).replace(/ +/g, ' '), '0 1000');
  assert.is(sb.ok(['losetup', '-n', '-O', 'OFFSET,SIZELIMIT', dev]).replace(/ +/g, ' '), '104857600 0');
  sb.ok(['losetup', '-d', a, dev]);
});

test('-d of several devices: the bad ones are reported one line each, the good ones detached, exit 1', () => {
  const img = randomFile(path.join(sb.root, 'd.img'), 1 << 20);
  const a = attach(sb, img);
  const b = attach(sb, img, ['-o', '4096']);
  const r = sb.run(['losetup', '-d', a, '/dev/loop0', b]);
  assert.is(r.status, 1, r.stderr);
  // As util-linux: after a device it cannot use, it detaches again the one it still holds (which fails).
  assert.is(r.stderr, `loopfs losetup: /dev/loop0: failed to use device: No such device\nloopfs losetup: ${a}: detach failed: No such device or address\n`);
  assert.is(sb.ok(['losetup', '-a']), '', 'both loopfs devices detached');
});

test.run();
