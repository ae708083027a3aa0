import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { MAX_DEVICES, MAX_INDEX, devMajor, devMinor, findOverlap, sizeWarning, type LoopWindow } from '../../src/base/loopdev';

// The loop device rules the CLI and the daemon share (base/loopdev.ts).
const test = suite('loopdev: the rules CLI and daemon share');

test('dev_t: major and minor as stat(1) reads them', () => {
  for (const p of ['/dev/null', '/dev/zero', '/dev/fuse']) {
    const rdev = fs.statSync(p).rdev;
    const [major, minor] = execFileSync('stat', ['-c', '%t %T', p], { encoding: 'utf8' }).trim().split(' ').map((h) => parseInt(h, 16));
    assert.equal([devMajor(rdev), devMinor(rdev)], [major, minor], p);
    assert.equal([devMajor(BigInt(rdev)), devMinor(BigInt(rdev))], [major, minor], `${p} as a bigint`);
  }
});

test('device numbers: below the kernel\'s 2^20 minors', () => {
  assert.is(MAX_DEVICES, 1_048_576);
  assert.is(MAX_INDEX, MAX_DEVICES - 1);
});

test('size warning: util-linux warn_size()', () => {
  const small = /^f: Warning: file is smaller than 512 bytes; /;
  const odd = /^f: Warning: file does not fit into a 512-byte sector; the end of the file will be ignored\.$/;
  assert.match(sizeWarning('f', undefined, 100, undefined) ?? '', small);
  assert.match(sizeWarning('f', undefined, 1000, undefined) ?? '', odd);
  assert.is(sizeWarning('f', undefined, 1024, undefined), undefined);
  assert.match(sizeWarning('f', undefined, 4096, 3700) ?? '', small, 'what is left after the offset');
  // A size limit counts alone, whatever the file (a block device's, one that cannot be stat'ed).
  assert.match(sizeWarning('f', 1000, undefined, undefined) ?? '', odd);
  assert.is(sizeWarning('f', 4096, 100, undefined), undefined);
  assert.is(sizeWarning('f', undefined, undefined, 0), undefined, 'no size to judge');
  // An offset past the end: util-linux's unsigned subtraction wraps around 2^64.
  assert.match(sizeWarning('f', undefined, 1000, 2000) ?? '', odd, '2^64 - 1000 is no multiple of 512');
  assert.is(sizeWarning('f', undefined, 1024, 1536), undefined, '2^64 - 512 is one');
});

interface Dev extends LoopWindow {
  name: string;
  file: string;
}
const dev = (name: string, file: string, offset: number, sizelimit: number, o: Partial<Dev> = {}): Dev => ({ name, file, offset, sizelimit, readOnly: false, ...o });

test('--nooverlap: reuse, read-only, overlap, as util-linux decides', () => {
  const devs = [dev('loop0', 'b', 0, 0), dev('loop1', 'a', 4096, 8192), dev('loop2', 'a', 65536, 4096, { readOnly: true }), dev('loop3', 'a', 0, 4096, { overlay: true })];
  const find = (offset: number, sizelimit: number, o: { readOnly?: boolean; overlay?: boolean; dev?: boolean } = {}): string =>
    (({ kind, device }) => `${kind} ${device.name}`)(
      findOverlap(devs, (d) => d.file === 'a', { offset, sizelimit, readOnly: !!o.readOnly, overlay: o.overlay }, !o.dev) ?? { kind: 'none', device: { name: '' } as Dev });
  assert.is(find(4096, 8192), 'reuse loop1', 'the very same window');
  assert.is(find(4096, 8192, { dev: true }), 'overlap loop1', 'DEV FILE: even the same window is refused');
  assert.is(find(4096, 0), 'overlap loop1', 'same offset, to the end');
  assert.is(find(0, 4097), 'overlap loop1');
  assert.is(find(0, 4096), 'none ', 'ends where loop1 starts (loop3, an overlay, is not compared)');
  assert.is(find(12288, 4096), 'none ', 'starts where loop1 ends');
  assert.is(find(65536, 4096), 'read-only loop2', 'a read-only twin for a writable device');
  assert.is(find(65536, 4096, { readOnly: true }), 'reuse loop2');
  assert.is(find(0, 0), 'overlap loop1', 'the whole file: the first in device order');
  assert.is(find(0, 0, { overlay: true }), 'none ', 'a new overlay device never writes its base');
});

test.run();
