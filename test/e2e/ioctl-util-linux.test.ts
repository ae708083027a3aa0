import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { releaseKernelLoops } from '../helpers/ioctl';
import { randomFile, shOk, q } from '../helpers/disk';

/*
 * Issue 10: util-linux's own losetup (2.38, /sbin/losetup) pointed at the
 * entries of a loopfs instance. What works is set-up, `losetup [opts] DIR/loopN
 * FILE`: it opens the entry and binds it with LOOP_CONFIGURE, which the
 * daemon answers. Everything that names an existing device (-d, -c, showing
 * one device, --direct-io, -b on a bound device) first asks is_loopdev() —
 * a block device of major 7 — and refuses a loopfs entry; the listings
 * (-a, -l, -j) read /sys/block, where no loopfs device is; -f asks
 * /dev/loop-control, the kernel's. See loopfs(8), UTIL-LINUX LOSETUP.
 */
let sb: Sandbox;
let inst: string;
const made = (s: Sandbox): void => {
  sb = s;
  inst = sb.dir('inst');
  sb.ok(['mount', inst]);
};
const test = sandboxSuite('util-linux losetup on loopfs entries', 'ioctl-ul', made, () => {
  sb.run(['--instance', inst, 'losetup', '-D']);
  releaseKernelLoops(sb.root);
});

const COLS = 'SIZELIMIT,OFFSET,AUTOCLEAR,RO,BACK-FILE,DIO,LOG-SEC,PARTSCAN';

/** util-linux losetup ARGS; status and messages with `dev` written DEV. */
function ul(args: string[], dev?: string): string {
  const r = spawnSync('losetup', args, { encoding: 'utf8', timeout: 30_000 });
  const norm = (s: string): string => (dev ? s.split(dev).join('DEV') : s).trim();
  return `exit ${r.status}; out ${JSON.stringify(norm(r.stdout ?? ''))}; err ${JSON.stringify(norm(r.stderr ?? ''))}`;
}

/** A free kernel loop device bound by `losetup ARGS /dev/loopK FILE`; retried when another program takes K first. */
function kernelSetup(args: string[], file: string): { dev: string; out: string } {
  for (let i = 0; ; i++) {
    const dev = shOk('losetup -f').trim();
    const out = ul([...args, dev, file], dev);
    if (!out.includes('Device or resource busy') || i === 5) return { dev, out };
  }
}

test('set-up works: losetup [-o N --sizelimit N -r -b 4096 -P --show] DIR/loopN FILE, as on /dev/loopK', () => {
  const file = randomFile(path.join(sb.root, 'f.img'), 8 << 20);
  const mbr = path.join(sb.root, 'mbr.img');
  fs.writeFileSync(mbr, '');
  fs.truncateSync(mbr, 8 << 20);
  shOk(`sfdisk -q ${q(mbr)}`, { input: 'label: dos\n,2MiB\n' });
  const setups: [string[], string][] = [
    [[], file],
    [['--show', '-o', '1048576', '--sizelimit', '4194304', '-r'], file],
    [['-b', '4096'], file],
    [['-P'], mbr],
    [['--direct-io=on'], file],
  ];
  for (const [n, [args, f]] of setups.entries()) {
    const mine = path.join(inst, `loop${n}`);
    sb.ok(['--instance', inst, 'ctl', 'add', String(n)]);
    const k = kernelSetup(args, f);
    assert.is(ul([...args, mine, f], mine), k.out, `losetup ${args.join(' ')} DEV FILE`);
    assert.ok(k.out.startsWith('exit 0'), k.out);
    // What the device is now: util-linux's listing of the kernel device, loopfs's of its own.
    const theirs = JSON.parse(shOk(`losetup -J -O ${COLS} ${q(k.dev)}`)).loopdevices;
    const ours = JSON.parse(sb.ok(['--instance', inst, 'losetup', '-J', '-O', COLS, mine])).loopdevices;
    assert.equal(ours, theirs, `losetup ${args.join(' ')}: the device as set up`);
    shOk(`losetup -d ${q(k.dev)}`);
  }
  assert.ok(fs.existsSync(path.join(inst, 'loop3p1')), '-P published loop3p1');
  // The bytes are the file's, through the device util-linux bound.
  assert.equal(fs.readFileSync(path.join(inst, 'loop0')), fs.readFileSync(file));
});

test('set-up on a bound entry fails EBUSY with util-linux\'s message; on a missing entry ENOENT', () => {
  const file = randomFile(path.join(sb.root, 'f.img'), 1 << 20);
  const other = randomFile(path.join(sb.root, 'g.img'), 1 << 20);
  sb.ok(['--instance', inst, 'ctl', 'add', '0']);
  const mine = path.join(inst, 'loop0');
  assert.ok(ul([mine, file], mine).startsWith('exit 0'));
  const k = kernelSetup([], file);
  assert.ok(k.out.startsWith('exit 0'), k.out);
  assert.is(ul([mine, other], mine), ul([k.dev, other], k.dev));
  assert.match(ul([mine, other], mine), /failed to set up loop device: Device or resource busy/);
  // util-linux creates a missing device through /dev/loop-control — the kernel's, so a missing
  // loopfs entry stays missing. (Number 0: the kernel's loop0 exists, so nothing is added there.)
  sb.ok(['--instance', inst, 'losetup', '-d', mine]);
  sb.ok(['--instance', inst, 'ctl', 'remove', '0']);
  assert.is(ul([mine, file], mine), `exit 1; out ""; err "losetup: DEV: failed to set up loop device: No such file or directory"`);
});

test('what cannot work: losetup -d, -c, DEV, -l DEV, --direct-io DEV, -b N DEV refuse a loopfs entry (not a block device)', () => {
  const file = randomFile(path.join(sb.root, 'f.img'), 1 << 20);
  const mine = sb.ok(['--instance', inst, 'losetup', '-f', '--show', file]);
  const refused = `exit 1; out ""; err "losetup: DEV: failed to use device: No such device"`;
  for (const args of [['-d', mine], ['-c', mine], [mine], ['-l', mine], ['--direct-io=on', mine], ['-b', '4096', mine]]) {
    assert.is(ul(args, mine), refused, `losetup ${args.join(' ')}`);
  }
  // Still bound: the refusals changed nothing; the device is detached through loopfs (or LOOP_CLR_FD).
  assert.match(sb.ok(['--instance', inst, 'losetup', mine]), /f\.img/);
  // -f names a kernel device: it asked the kernel's /dev/loop-control.
  const free = shOk('losetup -f').trim();
  const st = fs.statSync(free);
  assert.ok(st.isBlockDevice() && free.startsWith('/dev/loop'), free);
  assert.not.ok(free.startsWith(inst));
});

test.run();
