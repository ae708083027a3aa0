import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requiring, sandboxSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { attach, entries, instDir, kernelAttach, q, randomFile, releaseKernelState, sh, sha, shOk } from '../helpers/disk';
import { straceMissing, traceDuring } from '../helpers/trace';

// SPEC §2, §3: a loopfs device is a disk for mkfs, fsck, mount -o loop and
// dd; its window never lets a byte outside it change.
let sb: Sandbox;
const test = sandboxSuite('disk: real tools on loopfs devices', 'disk', (s) => (sb = s), releaseKernelState);
const withStrace = requiring(test, straceMissing);

test('losetup -f --show, mkfs.ext4, e2fsck clean, mount -o loop, write files, umount, detach: the image is clean and holds the files', () => {
  const img = path.join(sb.root, 'disk.img');
  shOk(`truncate -s 64M ${q(img)}`);
  const dev = attach(sb, img);
  shOk(`mkfs.ext4 -q -F ${q(dev)}`);
  const fsck = sh(`e2fsck -fn ${q(dev)}`);
  assert.is(fsck.status, 0, `e2fsck on the device: ${fsck.stdout}${fsck.stderr}`);
  assert.match(shOk(`blkid -o value -s TYPE ${q(dev)}`), /^ext4\s*$/);

  const mnt = sb.dir('mnt');
  const src = sb.dir('src');
  const files = { a: 1 << 20, b: 5 * (1 << 20) + 123, c: 4096 } as const;
  for (const [name, size] of Object.entries(files)) randomFile(path.join(src, name), size);
  shOk(`mount -o loop ${q(dev)} ${q(mnt)}`);
  for (const name of Object.keys(files)) fs.copyFileSync(path.join(src, name), path.join(mnt, name));
  fs.mkdirSync(path.join(mnt, 'dir'));
  fs.writeFileSync(path.join(mnt, 'dir', 'small'), 'hello\n');
  shOk(`umount ${q(mnt)}`);
  const detach = sb.run(['losetup', '-d', dev]);
  assert.is(detach.status, 0, detach.stderr);
  assert.is(sb.ok(['losetup', '-a']), '', 'nothing bound');

  const clean = sh(`e2fsck -fn ${q(img)}`);
  assert.is(clean.status, 0, `e2fsck on the image: ${clean.stdout}${clean.stderr}`);
  for (const name of Object.keys(files)) {
    const out = path.join(sb.root, `out-${name}`);
    shOk(`debugfs -R ${q(`dump /${name} ${out}`)} ${q(img)} 2>/dev/null`);
    assert.is(sha(out), sha(path.join(src, name)), `file ${name} in the image`);
  }
  assert.is(shOk(`debugfs -R 'cat /dir/small' ${q(img)} 2>/dev/null`), 'hello\n');
});

test('a window (-o + --sizelimit): reads equal dd of the file, a write at the end fails ENOSPC, bytes outside never change', () => {
  const img = randomFile(path.join(sb.root, 'w.img'), 8 << 20);
  // An offset that is not even 512-aligned: the window is byte-exact.
  const offset = (1 << 20) + 1000;
  const limit = 3 << 20;
  const tail = offset + limit;
  const dev = attach(sb, img, ['-o', String(offset), '--sizelimit', String(limit)]);
  assert.is(fs.statSync(dev).size, limit);
  assert.is(
    shOk(`cat ${q(dev)} | sha256sum`),
    shOk(`dd if=${q(img)} iflag=skip_bytes,count_bytes skip=${offset} count=${limit} status=none | sha256sum`),
    'the device reads as the window of the file',
  );
  const head = sha(img, 0, offset);
  const rest = sha(img, tail);

  // At the end: dd fails with ENOSPC, python sees errno 28.
  const ddEnd = sh(`dd if=/dev/zero of=${q(dev)} bs=512 count=1 seek=${limit / 512} conv=notrunc status=none`);
  assert.is.not(ddEnd.status, 0, 'dd at the end of the device');
  assert.match(ddEnd.stderr, /No space left on device/);
  const pyEnd = sh(`python3 -c ${q(`
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
try:
    os.pwrite(fd, b'x' * 4096, ${limit})
    print('wrote')
except OSError as e:
    print(e.errno)
print(os.pwrite(fd, b'y' * 4096, ${limit - 1024}))
`)} ${q(dev)}`);
  assert.is(pyEnd.stdout, '28\n1024\n', `pwrite at and across the end: ${pyEnd.stderr}`);

  // Write-heavy: random data over the whole device, several block sizes (one odd, so requests straddle pages).
  for (const bs of ['4096', '1M', '1000']) {
    const data = randomFile(path.join(sb.root, `data-${bs}`), limit);
    shOk(`dd if=${q(data)} of=${q(dev)} bs=${bs} conv=notrunc,fsync status=none`);
    assert.is(sha(img, offset, limit), sha(data), `bs=${bs}: the window holds what was written`);
    assert.is(shOk(`sha256sum < ${q(dev)}`).split(' ')[0], sha(data), `bs=${bs}: the device reads back what was written`);
  }
  assert.is(sha(img, 0, offset), head, 'the bytes before the window are unchanged');
  assert.is(sha(img, tail), rest, 'the bytes after the window are unchanged');
  assert.is(fs.statSync(img).size, 8 << 20, 'the file did not grow');
});

interface SfdiskPart {
  node: string;
  start: number;
  size: number;
  type: string;
}

function sfdiskParts(img: string): SfdiskPart[] {
  return (JSON.parse(shOk(`sfdisk -J ${q(img)}`)) as { partitiontable: { partitions: SfdiskPart[] } }).partitiontable.partitions;
}

const EXTENDED_TYPES = new Set(['5', 'f', '85']);

/**
 * A partitioned image through `losetup -P`: entries loopNpM with sfdisk's
 * sizes (an extended partition as Linux publishes it: its first 2 sectors),
 * each reading as its range of the image; mkfs on `target` leaves every byte
 * outside it unchanged; detach removes the entries.
 */
function partitionedDisk(table: string, target: number): void {
  const img = randomFile(path.join(sb.root, 'p.img'), 64 << 20);
  shOk(`sfdisk -q ${q(img)}`, { input: table });
  const parts = sfdiskParts(img);
  assert.ok(parts.length >= 3, `sfdisk made the table: ${JSON.stringify(parts)}`);
  const r = sb.run(['losetup', '-P', '-f', '--show', img]);
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stderr, '', 'no warning for a good table');
  const dev = r.stdout.trim();
  const dir = path.dirname(dev);
  const name = path.basename(dev);
  const num = (p: SfdiskPart): number => Number(/(\d+)$/.exec(p.node)![1]);
  assert.equal(entries(dir), ['loop-control', name, ...parts.map((p) => `${name}p${num(p)}`)].sort(), 'one entry per partition');
  for (const p of parts) {
    const entry = path.join(dir, `${name}p${num(p)}`);
    const ext = EXTENDED_TYPES.has(p.type);
    const size = ext ? 1024 : p.size * 512;
    assert.is(fs.statSync(entry).size, size, `${entry} size (sfdisk: ${p.size} sectors${ext ? ', extended' : ''})`);
    assert.is(shOk(`sha256sum < ${q(entry)}`).split(' ')[0], sha(img, p.start * 512, size), `${entry} reads as its range of the image`);
  }
  assert.is(sb.ok(['losetup', '-n', '-O', 'PARTSCAN', dev]), '1');

  const t = parts.find((p) => num(p) === target)!;
  const before = sha(img, 0, t.start * 512);
  const after = sha(img, (t.start + t.size) * 512);
  const others = parts.filter((p) => p !== t && !EXTENDED_TYPES.has(p.type)).map((p) => sha(img, p.start * 512, p.size * 512));
  const tp = path.join(dir, `${name}p${target}`);
  shOk(`mkfs.ext4 -q -F -E nodiscard ${q(tp)}`);
  assert.is(sh(`e2fsck -fn ${q(tp)}`).status, 0, 'the new filesystem is clean');
  assert.match(shOk(`blkid -o value -s TYPE ${q(tp)}`), /^ext4\s*$/);
  assert.is(sha(img, 0, t.start * 512), before, 'bytes before the partition unchanged');
  assert.is(sha(img, (t.start + t.size) * 512), after, 'bytes after the partition unchanged');
  assert.equal(parts.filter((p) => p !== t && !EXTENDED_TYPES.has(p.type)).map((p) => sha(img, p.start * 512, p.size * 512)), others, 'the other partitions unchanged');
  assert.equal(sfdiskParts(img), parts, 'the table itself unchanged');

  assert.is(sb.run(['losetup', '-d', dev]).status, 0);
  assert.equal(entries(dir), ['loop-control', name], 'detach removed the partition entries');
  assert.not.ok(fs.existsSync(tp));
}

test('sfdisk MBR with primaries, an extended and logical partitions: -P shows loopNpM with the exact sizes; mkfs on one leaves the others unchanged; detach removes them', () => {
  partitionedDisk('label: dos\n,8M,L\n,6M,L\n,,E\n,10M,L\n,12M,L\n,,L\n', 6);
});

test('sfdisk GPT: -P shows loopNpM with the exact sizes; mkfs on one leaves the others unchanged; detach removes them', () => {
  partitionedDisk('label: gpt\n,8M,L\n,20M,L\n,3M,L\n,,L\n', 2);
});

test('-b 4096 -P: tables in 4096-byte sectors (written by sfdisk through a kernel loop device with -b 4096) give the same partitions', () => {
  for (const table of ['label: gpt\n,8M,L\n,,L\n', 'label: dos\n,8M,L\n,,E\n,4M,L\n,,L\n']) {
    const img = path.join(sb.root, `s${table.length}.img`);
    shOk(`truncate -s 64M ${q(img)}`);
    const k = kernelAttach(img, ['-b', '4096']);
    sh(`sfdisk -q ${q(k)}`, { input: table }); // (it cannot make the kernel re-read: no partition support needed)
    const parts = sfdiskParts(k);
    shOk(`losetup -d ${q(k)}`);
    const dev = attach(sb, img, ['-b', '4096', '-P']);
    const name = path.basename(dev);
    const num = (p: SfdiskPart): number => Number(/(\d+)$/.exec(p.node)![1]);
    assert.equal(entries(path.dirname(dev)).filter((e) => e.startsWith(`${name}p`)), parts.map((p) => `${name}p${num(p)}`).sort());
    for (const p of parts) {
      // An extended partition is published as one logical sector, as Linux does for sectors over 512 bytes.
      const size = EXTENDED_TYPES.has(p.type) ? 4096 : p.size * 4096;
      assert.is(fs.statSync(`${dev}p${num(p)}`).size, size, `${table.split('\n')[0]} p${num(p)}`);
      assert.is(shOk(`sha256sum < ${q(`${dev}p${num(p)}`)}`).split(' ')[0], sha(img, p.start * 4096, size));
    }
  }
});

test('partitioning an attached -P device: the partitions appear when sfdisk closes it (the kernel re-reads on BLKRRPART), not while one is open', () => {
  const img = path.join(sb.root, 'blank.img');
  shOk(`truncate -s 32M ${q(img)}`);
  const dev = attach(sb, img, ['-P']);
  const dir = path.dirname(dev);
  const name = path.basename(dev);
  const parts = (): string[] => entries(dir).filter((e) => e.startsWith(`${name}p`));
  assert.equal(parts(), [], 'a blank image has no partitions');
  const sizes = (): number[] => parts().map((p) => fs.statSync(path.join(dir, p)).size);

  // The usual script: partition the device, then use its partitions right away.
  shOk(`sfdisk -q ${q(dev)} && mkfs.ext4 -q ${q(`${dev}p1`)}`, { input: 'label: dos\n,8M,L\n,,L\n' });
  assert.equal(parts(), [`${name}p1`, `${name}p2`]);
  assert.equal(sizes(), sfdiskParts(img).map((p) => p.size * 512));
  assert.match(shOk(`blkid -o value -s TYPE ${q(`${dev}p1`)}`), /^ext4\s*$/);

  // While a partition is open the table is not re-read (BLKRRPART: EBUSY) ...
  const held = fs.openSync(`${dev}p1`, 'r');
  try {
    shOk(`sfdisk -q ${q(dev)}`, { input: 'label: gpt\n,4M,L\n,4M,L\n,,L\n' });
    assert.equal(parts(), [`${name}p1`, `${name}p2`], 'unchanged while p1 is open');
    assert.is(fs.statSync(`${dev}p1`).size, 8 << 20);
  } finally {
    fs.closeSync(held);
  }
  // ... and is at the next close of a writer of the whole device.
  shOk(`sfdisk -q ${q(dev)}`, { input: 'label: gpt\n,4M,L\n,4M,L\n,,L\n' });
  assert.equal(parts(), [`${name}p1`, `${name}p2`, `${name}p3`]);
  assert.equal(sizes(), sfdiskParts(img).map((p) => p.size * 512));
  assert.is(shOk(`sha256sum < ${q(`${dev}p3`)}`).split(' ')[0], sha(img, sfdiskParts(img)[2]!.start * 512, sfdiskParts(img)[2]!.size * 512));
  // Wiping the table removes them; a reader closing changes nothing.
  shOk(`dd if=/dev/zero of=${q(dev)} bs=1M count=1 conv=notrunc status=none`);
  assert.equal(parts(), []);
  shOk(`cat ${q(dev)} > /dev/null`);
  assert.equal(parts(), []);
  assert.is(sb.run(['losetup', '-d', dev]).status, 0);
});

test('a corrupt partition table attaches with a warning on stderr and no partitions', () => {
  // GPT whose primary and backup headers both fail their CRC.
  const gpt = randomFile(path.join(sb.root, 'gpt.img'), 16 << 20);
  shOk(`sfdisk -q ${q(gpt)}`, { input: 'label: gpt\n,4M,L\n,,L\n' });
  shOk(`printf 'XXXX' | dd of=${q(gpt)} bs=1 seek=${512 + 16} conv=notrunc status=none`);
  shOk(`printf 'XXXX' | dd of=${q(gpt)} bs=1 seek=${(16 << 20) - 512 + 16} conv=notrunc status=none`);
  // MBR whose only partition starts beyond the end of the device.
  const mbr = randomFile(path.join(sb.root, 'mbr.img'), 8 << 20);
  shOk(`sfdisk -q ${q(mbr)}`, { input: 'label: dos\n,4M,L\n' });
  shOk(`printf '\\x00\\x00\\x01\\x00' | dd of=${q(mbr)} bs=1 seek=${0x1be + 8} conv=notrunc status=none`);
  for (const [img, why] of [[gpt, /GPT/], [mbr, /beyond the end/]] as const) {
    const sum = sha(img);
    const r = sb.run(['losetup', '-P', '-f', '--show', img]);
    assert.is(r.status, 0, r.stderr);
    const dev = r.stdout.trim();
    const lines = r.stderr.trim().split('\n');
    assert.is(lines.length, 1, `one warning line: ${r.stderr}`);
    assert.match(lines[0]!, /^loopfs losetup: /);
    assert.match(lines[0]!, why);
    assert.equal(entries(path.dirname(dev)).filter((e) => e.startsWith(`${path.basename(dev)}p`)), [], 'no partitions');
    assert.is(shOk(`sha256sum < ${q(dev)}`).split(' ')[0], sum, 'the device works');
    assert.is(sha(img), sum, 'the image is unchanged');
  }
});

test('-b 4096: LOG-SEC 4096, the size rounded down to 4096', () => {
  const img = randomFile(path.join(sb.root, 'b.img'), 4096 * 10 + 1000);
  const dev = attach(sb, img, ['-b', '4096']);
  assert.is(fs.statSync(dev).size, 40960);
  assert.is(sb.ok(['losetup', '-n', '-O', 'LOG-SEC', dev]), '4096');
  const json = JSON.parse(sb.ok(['losetup', '-J', '-l', dev])) as { loopdevices: { 'log-sec': number }[] };
  assert.is(json.loopdevices[0]!['log-sec'], 4096);
  assert.is(shOk(`sha256sum < ${q(dev)}`).split(' ')[0], sha(img, 0, 40960));
  const w = sh(`dd if=/dev/zero of=${q(dev)} bs=512 count=1 seek=80 conv=notrunc status=none`);
  assert.match(w.stderr, /No space left on device/, 'the partial last sector is not part of the device');
});

withStrace('fsync through the device reaches the backing file; discard (fallocate -p) punches the backing file, and the range reads zero', async () => {
  const img = randomFile(path.join(sb.root, 'f.img'), 8 << 20);
  const offset = 1 << 20;
  const dev = attach(sb, img, ['-o', String(offset)]);
  const daemon = sb.daemons()[0]!;
  // The daemon's own syscalls show the fsync reach the backing file's descriptor.
  const trace = await traceDuring(sb.root, daemon, 'fsync,fdatasync', () => {
    const r = sh(`python3 -c ${q(`
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b'F' * 8192, 4096)
os.fsync(fd)
os.pwrite(fd, b'G' * 4096, 65536)
os.fdatasync(fd)
print('ok')
`)} ${q(dev)}`);
    assert.is(r.stdout, 'ok\n', r.stderr);
  });
  const synced = [...trace.matchAll(/\b(fsync|fdatasync)\((\d+)\) += 0/g)].map((m) => [m[1], fs.readlinkSync(`/proc/${daemon}/fd/${m[2]}`)]);
  assert.ok(synced.some(([call, file]) => call === 'fsync' && file === img), `the daemon fsynced the backing file: ${trace}`);
  assert.ok(synced.some(([call, file]) => call === 'fdatasync' && file === img), `the daemon fdatasynced the backing file: ${trace}`);
  assert.ok(fs.readFileSync(img).subarray(offset + 4096, offset + 4096 + 8192).equals(Buffer.alloc(8192, 'F')), 'fsynced data is in the file');
  assert.ok(fs.readFileSync(img).subarray(offset + 65536, offset + 65536 + 4096).equals(Buffer.alloc(4096, 'G')), 'fdatasynced data is in the file');

  const head = sha(img, 0, offset);
  const blocksBefore = fs.statSync(img).blocks;
  shOk(`fallocate -p -o 1M -l 2M ${q(dev)}`);
  const blocksAfter = fs.statSync(img).blocks;
  assert.ok(blocksBefore - blocksAfter >= (2 << 20) / 512, `the file lost 2 MiB of blocks: ${blocksBefore} -> ${blocksAfter}`);
  assert.is(shOk(`cmp -n ${2 << 20} <(dd if=${q(dev)} bs=1M skip=1 count=2 status=none) /dev/zero && echo zero`), 'zero\n', 'the range reads zero through the device');
  assert.is(sha(img, offset + (1 << 20), 2 << 20), sha('/dev/zero', 0, 2 << 20), 'and in the file');
  assert.is(sha(img, 0, offset), head, 'the punch stayed inside the window');
  assert.is(fs.statSync(img).size, 8 << 20, 'the file keeps its size');
});

test('detach of an open device sets autoclear; the device unbinds at its last close', async () => {
  const img = randomFile(path.join(sb.root, 'o.img'), 1 << 20);
  const dev = attach(sb, img);
  const fd = fs.openSync(dev, 'r');
  let closed = false;
  try {
    const d = sb.run(['losetup', '-d', dev]);
    assert.is(d.status, 0, d.stderr);
    assert.is(sb.ok(['losetup', '-n', '-O', 'AUTOCLEAR', dev]), '1', 'autoclear is set');
    assert.is(sb.ok(['losetup', '-n', '-O', 'BACK-FILE', '-l', '-a']), img, 'still bound while open');
    const buf = Buffer.alloc(4096);
    assert.is(fs.readSync(fd, buf, 0, 4096, 8192), 4096);
    assert.ok(buf.equals(fs.readFileSync(img).subarray(8192, 8192 + 4096)), 'the open descriptor still reads the file');
    fs.closeSync(fd);
    closed = true;
    const deadline = Date.now() + 5000;
    while (sb.ok(['losetup', '-a']) !== '' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    assert.is(sb.ok(['losetup', '-a']), '', 'unbound at last close');
    assert.is(fs.statSync(dev).size, 0, 'an unbound device has size 0');
    assert.equal(entries(instDir(sb)), ['loop-control', path.basename(dev)], 'the entry stays, unbound');
  } finally {
    if (!closed) fs.closeSync(fd);
  }
});

test.run();
