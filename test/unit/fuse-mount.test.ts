import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { findFusermount, toolError } from '../../src/fuse/mount';

/**
 * How an ordinary user's mount finds fusermount3 (PATH first, then the fixed
 * directories), and how a failed mount(8), umount(8) or fusermount3 becomes
 * one error line: whole, never just the last line of its message.
 */
const test = suite('fuse mount helpers');

let root: string;
test.before.each(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-unit-fm-'));
});
test.after.each(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

function dir(name: string, fusermount?: { mode: number } | 'dir'): string {
  const d = path.join(root, name);
  fs.mkdirSync(d);
  if (fusermount === 'dir') fs.mkdirSync(path.join(d, 'fusermount3'));
  else if (fusermount) fs.writeFileSync(path.join(d, 'fusermount3'), '#!/bin/sh\n', { mode: fusermount.mode });
  return d;
}

test('PATH comes first, in its order, then the fixed directories', () => {
  const a = dir('a', { mode: 0o755 });
  const b = dir('b', { mode: 0o755 });
  const fixed = dir('fixed', { mode: 0o755 });
  assert.is(findFusermount(`${a}:${b}`, [fixed]), path.join(a, 'fusermount3'));
  assert.is(findFusermount(`${b}:${a}`, [fixed]), path.join(b, 'fusermount3'));
  assert.is(findFusermount(dir('empty'), [fixed]), path.join(fixed, 'fusermount3'));
  assert.is(findFusermount('', [fixed]), path.join(fixed, 'fusermount3'));
});

test('not executable, not a file, relative PATH entries: skipped; none at all: undefined', () => {
  const noexec = dir('noexec', { mode: 0o644 });
  const isdir = dir('isdir', 'dir');
  const good = dir('good', { mode: 0o755 });
  // A relative entry would depend on the daemon's working directory.
  const rel = path.relative(process.cwd(), good);
  assert.is(findFusermount(`${noexec}:${isdir}:${rel}`, [good]), path.join(good, 'fusermount3'));
  // Even root may not execute a file without any x bit.
  assert.is(findFusermount(`${noexec}:${isdir}:${rel}`, []), undefined);
  assert.is(findFusermount(`${noexec}:${isdir}`, [path.join(root, 'missing')]), undefined);
});

test('mount(8)\'s whole message, not its dmesg hint', () => {
  const e = toolError('mount', 'mount: /x: wrong fs type, bad option, bad superblock on loopfs, missing codepage or helper program, or other error.\n       dmesg(1) may have more information after failed mount system call.\n', '/x');
  assert.is(e.reason, 'mount: /x: wrong fs type, bad option, bad superblock on loopfs, missing codepage or helper program, or other error. dmesg(1) may have more information after failed mount system call.');
  assert.is(e.errno, 'EINVAL');
});

test('fusermount3 messages: named once, errno read from them', () => {
  const cases: [string, string][] = [
    ['fusermount3: failed to open /dev/fuse: Permission denied\n', 'EACCES'],
    ['fusermount3: failed to unmount /x: Device or resource busy\n', 'EBUSY'],
    ['fusermount3: entry for /x not found in /etc/mtab\n', 'EINVAL'],
    ['fusermount3: user has no write access to mountpoint /x\n', 'EACCES'],
    ['fusermount3: option allow_other only allowed if \'user_allow_other\' is set in /etc/fuse.conf\n', 'EPERM'],
  ];
  for (const [text, code] of cases) {
    const e = toolError('/usr/bin/fusermount3', text, '/x');
    assert.is(e.reason, text.trim());
    assert.is(e.errno, code, text);
  }
  assert.is(toolError('/usr/bin/fusermount3', '', '/x').reason, 'fusermount3 failed');
  assert.is(toolError('umount', 'umount: /x: not mounted.\n', '/x').reason, 'umount: /x: not mounted.');
});

test.run();
