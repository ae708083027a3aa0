import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { e2eSuite } from '../helpers/e2e';
import { Sandbox, REPO, python, fuseMountsAt } from '../helpers/cli';

// Issue 2: `npm run build` makes dist/loopfs; copied alone into an empty
// directory (no node_modules, no node on the path it needs) it runs the flows.
const test = e2eSuite('single binary');
let sb: Sandbox;
test.before.each(() => {
  sb = new Sandbox('sea');
  const dir = sb.dir('bin');
  const bin = path.join(dir, 'loopfs');
  fs.copyFileSync(path.join(REPO, 'dist', 'loopfs'), bin);
  fs.chmodSync(bin, 0o755);
  assert.equal(fs.readdirSync(dir), ['loopfs']);
  sb.bin = [bin];
  // No node_modules anywhere above the copy, and no NODE_PATH to find one.
  sb.env = { NODE_PATH: '', PATH: `${dir}:/usr/sbin:/usr/bin:/sbin:/bin` };
});
test.after.each(() => {
  sb.cleanup();
});

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

test.run();
