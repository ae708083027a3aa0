import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { e2eSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { releaseKernelLoops } from '../helpers/ioctl';
import { attach, kernelAttach, shOk, q, sparseImage } from '../helpers/disk';

/*
 * Issue 11: the logical sector size of a `-b 4096` device reaches the tools
 * that ask the device for it (BLKSSZGET, BLKPBSZGET, st_blksize), as it does
 * on a kernel loop device made with `-b 4096` over the same file.
 *
 * libfdisk (sfdisk, fdisk) and libparted ask no ioctl of a regular file: they
 * take 512 for it (strace shows no BLKSSZGET), and a loopfs entry is a
 * regular file to the kernel. So for them the size is given by hand
 * (`fdisk -b 4096`; sfdisk 2.38 has no such option), as loopfs-losetup(8)
 * says; the table they then write through the device is read in 4096-byte
 * sectors by the partition scan.
 */
const test = e2eSuite('a -b 4096 device: tools learn 4096-byte sectors');
let sb: Sandbox;
const MiB = 1 << 20;

test.before(() => {
  sb = new Sandbox('sector-size');
});
test.after(() => {
  releaseKernelLoops(sb.root);
  sb.cleanup();
});
test.after.each(() => {
  sb.run(['losetup', '-D']);
  releaseKernelLoops(sb.root);
});

const image = (name: string, size: number): string => sparseImage(path.join(sb.root, name), size);

test('BLKSSZGET, BLKPBSZGET and st_blksize say 4096, as on a kernel loop device with -b 4096', () => {
  const img = image('ask.img', 64 * MiB);
  const k = kernelAttach(img, ['-b', '4096']);
  const l = attach(sb, img, ['-b', '4096']);
  const ask = (dev: string): string => shOk(`blockdev --getss --getpbsz --getiomin ${q(dev)}`).trim();
  assert.is(ask(l), ask(k));
  assert.is(ask(l), '4096\n4096\n4096');
  assert.is(shOk(`stat -c %o ${q(l)}`).trim(), '4096');
});

test('mkfs.ext4 picks the same block size on both (a 64 MiB ext4 would otherwise get 1 KiB blocks)', () => {
  const blockSize = (dev: string): string => {
    shOk(`mkfs.ext4 -q -F ${q(dev)}`);
    return /^Block size:\s+(\d+)$/m.exec(shOk(`dumpe2fs -h ${q(dev)} 2>/dev/null`))?.[1] ?? '?';
  };
  const ki = image('k.img', 64 * MiB);
  const li = image('l.img', 64 * MiB);
  const k = kernelAttach(ki, ['-b', '4096']);
  const l = attach(sb, li, ['-b', '4096']);
  assert.is(blockSize(l), blockSize(k));
  assert.is(blockSize(l), '4096');
  shOk(`e2fsck -fn ${q(l)}`);
});

test('a GPT written through a -P -b 4096 device in 4096-byte sectors: the partitions appear with the sizes a kernel -b 4096 device reads, and p1 takes a clean ext4', () => {
  const img = image('gpt.img', 64 * MiB);
  const l = attach(sb, img, ['-P', '-b', '4096']);
  // fdisk's dialogue: a new GPT, partitions 1 (16 MiB) and 2 (32 MiB) at the default starts, write.
  shOk(`fdisk -b 4096 ${q(l)}`, { input: 'g\nn\n1\n\n+16M\nn\n2\n\n+32M\nw\n' });
  const dir = path.dirname(l);
  const name = path.basename(l);
  assert.ok(fs.existsSync(`${l}p1`) && fs.existsSync(`${l}p2`), fs.readdirSync(dir).join(' '));
  // The kernel device asks BLKSSZGET itself: sfdisk needs no --sector-size there.
  const k = kernelAttach(img, ['-b', '4096']);
  const table = JSON.parse(shOk(`sfdisk -J ${q(k)}`)).partitiontable;
  assert.is(table.sectorsize, 4096);
  const sizes = table.partitions.map((p: { size: number }) => p.size * 4096);
  assert.equal(sizes, [4096 * 4096, 8192 * 4096]);
  assert.equal([fs.statSync(`${l}p1`).size, fs.statSync(`${l}p2`).size], sizes, `${name}p1, ${name}p2`);
  shOk(`losetup -d ${q(k)}`);
  shOk(`mkfs.ext4 -q -F ${q(`${l}p1`)}`);
  shOk(`e2fsck -fn ${q(`${l}p1`)}`);
});

test.run();
