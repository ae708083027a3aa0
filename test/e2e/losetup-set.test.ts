import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox, errnoOf } from '../helpers/cli';

// `losetup -b N DEV` and `losetup --direct-io=on|off DEV` on a bound device
// (util-linux's LOOP_SET_BLOCK_SIZE and LOOP_SET_DIRECT_IO).
let sb: Sandbox;
const test = sandboxSuite('losetup: change a bound device', 'set', (s) => (sb = s), () => {
  if (ramfs) spawnSync('umount', ['-l', ramfs]);
  ramfs = undefined;
});
let ramfs: string | undefined;

function cols(dev: string): { 'log-sec': number; dio: boolean } {
  return (JSON.parse(sb.ok(['losetup', '-J', '-l', '-O', 'LOG-SEC,DIO', dev])) as { loopdevices: { 'log-sec': number; dio: boolean }[] }).loopdevices[0]!;
}

test('-b 4096 DEV rounds the size down and sets LOG-SEC; a bad size is EINVAL and changes nothing', () => {
  const img = path.join(sb.root, 'b.img');
  fs.writeFileSync(img, Buffer.alloc(4096 * 10 + 1000));
  const dev = sb.ok(['losetup', '-f', '--show', img]);
  assert.is(fs.statSync(dev).size, 41472);
  sb.ok(['losetup', '-b', '4096', dev]);
  assert.is(fs.statSync(dev).size, 40960);
  assert.is(cols(dev)['log-sec'], 4096);
  const r = sb.run(['losetup', '-b', '1000', dev]);
  assert.is(r.status, 1);
  assert.is(errnoOf(r), 'EINVAL');
  assert.match(r.stderr, /set logical block size failed/);
  assert.is(cols(dev)['log-sec'], 4096);
  sb.ok(['losetup', '-d', dev]);
});

test('--direct-io=on|off DEV switches DIO; where O_DIRECT is impossible it is EINVAL and stays off', () => {
  const img = path.join(sb.root, 'd.img');
  fs.writeFileSync(img, Buffer.alloc(1 << 20, 7));
  const dev = sb.ok(['losetup', '-f', '--show', img]);
  assert.is(cols(dev).dio, false);
  sb.ok(['losetup', '--direct-io=on', dev]);
  assert.is(cols(dev).dio, true);
  assert.ok(fs.readFileSync(dev).equals(fs.readFileSync(img)), 'data reads the same through O_DIRECT');
  sb.ok(['losetup', '--direct-io=off', dev]);
  assert.is(cols(dev).dio, false);
  // ramfs has no O_DIRECT.
  ramfs = sb.dir('ramfs');
  assert.is(spawnSync('mount', ['-t', 'ramfs', 'none', ramfs]).status, 0);
  fs.writeFileSync(path.join(ramfs, 'r.img'), Buffer.alloc(1 << 20));
  const rdev = sb.ok(['losetup', '-f', '--show', path.join(ramfs, 'r.img')]);
  const r = sb.run(['losetup', '--direct-io=on', rdev]);
  assert.is(r.status, 1);
  assert.is(errnoOf(r), 'EINVAL');
  assert.is(r.stderr.trim().split('\n').length, 1);
  assert.not.match(r.stderr, /\(EINVAL\).*\(EINVAL\)/);
  assert.is(cols(rdev).dio, false);
  sb.ok(['losetup', '-D']);
});

test.run();
