import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { e2eSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { kernelReadsMbr, releaseKernelLoops } from '../helpers/ioctl';
import { attach, kernelAttach, sh, shOk, q } from '../helpers/disk';

/*
 * Issue 10: util-linux `blockdev` on a loopfs device, a window and a
 * partition gives what it gives on a kernel loop device over the same file
 * with the same options: every value, every exit status, every message.
 *
 * blockdev does not check that its argument is a block device: it opens it
 * and issues the ioctl (disk-utils/blockdev.c), so on a loopfs entry each
 * command stands or falls with the ioctl. Only --getsz falls back to the size
 * of a regular file (lib/blkdev.c) and so worked before issue 10.
 */
const test = e2eSuite('blockdev on loopfs devices, side by side with kernel loop devices');
let sb: Sandbox;
let img: string;
let parts: { start: number; size: number }[];
let kernelParts: boolean;

const MiB = 1 << 20;
test.before(() => {
  sb = new Sandbox('ioctl-blockdev');
  const probe = sb.dir('probe');
  try {
    kernelParts = kernelReadsMbr(probe);
  } finally {
    releaseKernelLoops(probe);
  }
  img = path.join(sb.root, 'disk.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 64 * MiB);
  // Two partitions; the second's size is not a multiple of 4 KiB, which changes BLKBSZGET.
  shOk(`sfdisk -q ${q(img)}`, { input: 'label: dos\nstart=2048, size=40960, type=83\nstart=43008, size=8195, type=83\n' });
  parts = JSON.parse(shOk(`sfdisk -J ${q(img)}`)).partitiontable.partitions.map((p: { start: number; size: number }) => ({ start: p.start, size: p.size }));
  assert.is(parts.length, 2);
});
test.after(() => {
  releaseKernelLoops(sb.root);
  sb.cleanup();
});
test.after.each(() => {
  sb.run(['losetup', '-D']);
  releaseKernelLoops(sb.root);
});

const QUERIES = ['--getsize64', '--getsz', '--getsize', '--getss', '--getpbsz', '--getbsz', '--getiomin', '--getioopt', '--getmaxsect', '--getro', '--flushbufs', '--rereadpt'];
// Run in this order on one device: each step sees the state the previous one left.
// 'write' is a one-sector dd onto the device: refused (EPERM) while --setro holds, as on the kernel's.
const STEPS: string[][] = [...QUERIES.map((c) => [c]), ['--setro', '--getro'], ['--getro'], ['write'], ['--setrw', '--getro'], ['--getro'], ['write'],
  // Read-ahead: each device starts with its own (the kernel's follows the backing file's I/O size, loopfs's is
  // the block layer's 128 KiB), so it is compared once set; kept in whole pages (1001 sectors read back as 1000).
  ['--setra', '1001', '--getra', '--getfra'], ['--setfra', '2048', '--getra'], ['--report']];

/** Every step's exit status, output and messages, the device's path written as DEV. */
function blockdev(dev: string): string[] {
  return STEPS.map((args) => {
    // The write puts sector 1 back onto itself: the image (and its partition table) stays as it is.
    const cmd = args[0] === 'write'
      ? `dd if=${q(dev)} of=${q(dev)} bs=512 skip=1 seek=1 count=1 conv=notrunc status=none`
      : `blockdev ${args.join(' ')} ${q(dev)}`;
    const r = sh(cmd);
    const norm = (s: string): string => s.split(dev).join('DEV').trim();
    return `${cmd.split(dev).join('DEV')} → exit ${r.status}; out ${JSON.stringify(norm(r.stdout))}; err ${JSON.stringify(norm(r.stderr))}`;
  });
}

function sideBySide(args: string[]): void {
  const k = kernelAttach(img, args);
  const l = attach(sb, img, args);
  const want = blockdev(k);
  assert.ok(want.some((s) => /--getsize64 'DEV' → exit 0; out "\d+"/.test(s)), want.join('\n'));
  assert.equal(blockdev(l), want);
}

test('a whole device', () => sideBySide([]));
test('a whole device with -b 4096', () => sideBySide(['-b', '4096']));
test('a whole device with -b 65536 (a block larger than a page: Linux 6.15 and later)', () => {
  const k = sh(`losetup -b 65536 -f --show ${q(img)}`);
  if (k.status !== 0) {
    // Named, not silent: a kernel before 6.15 makes no such device, so there is nothing to compare with.
    assert.match(k.stderr, /Invalid argument/);
    console.log('  excluded: -b 65536 — this kernel refuses a block size above the page size (before Linux 6.15)');
    return;
  }
  sh(`losetup -d ${q(k.stdout.trim())}`);
  sideBySide(['-b', '65536']);
});
test('a window: -o 1 MiB --sizelimit 10 MiB + 1536 (not a multiple of 4 KiB)', () => sideBySide(['-o', String(MiB), '--sizelimit', String(10 * MiB + 1536)]));
test('a window with -b 4096', () => sideBySide(['-b', '4096', '-o', String(MiB), '--sizelimit', String(10 * MiB)]));

/** blockdev on partition N of a device attached with -P, against the kernel's partition (or its stand-in). */
function partition(n: number): void {
  const p = parts[n - 1]!;
  const l = attach(sb, img, ['-P']);
  const lp = `${l}p${n}`;
  assert.ok(fs.existsSync(lp), `${lp} exists`);
  let want: string[];
  if (kernelParts) {
    const k = kernelAttach(img, ['-P']);
    for (let t = 0; t < 100 && !fs.existsSync(`${k}p${n}`); t++) sh('sleep 0.05');
    want = blockdev(`${k}p${n}`);
    sh(`losetup -d ${q(k)}`);
  } else {
    // This kernel reads no MBR (CONFIG_MSDOS_PARTITION unset): the kernel device that stands for
    // the partition is a window on the same extent, which answers these ioctls as a partition does
    // (BLKRRPART included: EINVAL on a partition, EINVAL on a device without partscan).
    const k = kernelAttach(img, ['-o', String(p.start * 512), '--sizelimit', String(p.size * 512)]);
    want = blockdev(k);
    sh(`losetup -d ${q(k)}`);
  }
  assert.ok(want.some((s) => s.includes("--getsize64 'DEV' → exit 0; out \"" + p.size * 512 + '"')), want.join('\n'));
  assert.equal(blockdev(lp), want, `partition ${n}`);
}

test('partition 1 of a device attached with -P (sfdisk MBR; 20 MiB)', () => partition(1));
test('partition 2 of a device attached with -P (8195 sectors, not a multiple of 4 KiB)', () => partition(2));

test('--rereadpt on a device attached with -P re-reads a table changed in the backing file', () => {
  const k = kernelAttach(img, ['-P']);
  const l = attach(sb, img, ['-P']);
  try {
    const kr = sh(`blockdev --rereadpt ${q(k)}`);
    const lr = sh(`blockdev --rereadpt ${q(l)}`);
    assert.equal([lr.status, lr.stderr], [kr.status, kr.stderr]);
    assert.is(lr.status, 0, lr.stderr);
    // A third partition, written into the file behind the device's back: only the re-read shows it.
    shOk(`echo 'start=55296, size=2048, type=83' | sfdisk -q --append --no-reread ${q(img)}`);
    assert.not.ok(fs.existsSync(`${l}p3`), `${l}p3 before --rereadpt`);
    assert.is(sh(`blockdev --rereadpt ${q(l)}`).status, 0);
    assert.ok(fs.existsSync(`${l}p3`), `${l}p3 after --rereadpt`);
    assert.is(shOk(`blockdev --getsize64 ${q(`${l}p3`)}`).trim(), String(2048 * 512));
  } finally {
    sh(`losetup -d ${q(k)}`);
  }
});

test.run();
