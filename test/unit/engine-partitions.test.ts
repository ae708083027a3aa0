import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { Device, type AttachOptions } from '../../src/engine/device';
import { scanPartitions, PartitionWindow } from '../../src/engine/partitions';
import { LoopfsError, type Errno } from '../../src/base/errors';
import type { PartitionInfo } from '../../src/base/types';

const test = suite('engine: partition tables (MBR, GPT) and partition windows');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-parts-'));
test.after(() => fs.rmSync(dir, { recursive: true, force: true }));

let seq = 0;
/**
 * A sparse image partitioned by the real tools from an sfdisk script. sfdisk
 * 2.38 (Debian 12) has no --sector-size, so for other sector sizes fdisk -b
 * loads the same script (its `I` command) on the plain file.
 */
function image(size: number, script: string, sectorSize = 512): string {
  // A name not ending in a digit, so partition nodes are NAME1, not NAMEp1.
  const p = path.join(dir, `disk${seq++}.img`);
  fs.writeFileSync(p, '');
  fs.truncateSync(p, size);
  const s = script.replaceAll('IMG', p);
  if (sectorSize === 512) {
    execFileSync('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', p], { input: s, stdio: ['pipe', 'ignore', 'pipe'] });
  } else {
    fs.writeFileSync(`${p}.script`, s);
    execFileSync('fdisk', ['-b', String(sectorSize), p], { input: `I\n${p}.script\nw\n`, stdio: ['pipe', 'ignore', 'pipe'] });
  }
  return p;
}

type Truth = { label: string; parts: (PartitionInfo & { type: string })[] };

/** What the partitioning tools themselves say, in bytes: sfdisk -J, or fdisk -l -b N for other sector sizes. */
function truth(p: string, sectorSize = 512): Truth {
  if (sectorSize === 512) {
    const t = JSON.parse(execFileSync('sfdisk', ['-J', p], { encoding: 'utf8' })).partitiontable as {
      label: string;
      sectorsize: number;
      partitions: { node: string; start: number; size: number; type: string }[];
    };
    assert.is(t.sectorsize, 512);
    return {
      label: t.label,
      parts: t.partitions.map((x) => ({ number: Number(x.node.slice(p.length)), start: x.start * 512, size: x.size * 512, type: x.type })),
    };
  }
  const out = execFileSync('fdisk', ['-l', '-b', String(sectorSize), '-o', 'Device,Start,Sectors,Type', p], { encoding: 'utf8' });
  assert.match(out, `Sector size (logical/physical): ${sectorSize} bytes`);
  const label = /Disklabel type: (\w+)/.exec(out)![1]!;
  const parts = out
    .split('\n')
    .filter((l) => l.startsWith(p))
    .map((l) => l.slice(p.length).trim().split(/\s+/))
    .map(([n, start, size, ...type]) => ({ number: Number(n), start: Number(start) * sectorSize, size: Number(size) * sectorSize, type: type.join(' ') }));
  return { label, parts };
}

function attach(p: string, opts: AttachOptions = {}): Promise<Device> {
  return Device.attach({ fd: fs.openSync(p, 'r+'), path: p, writable: true }, opts);
}

async function scanFile(p: string, opts: AttachOptions = {}) {
  const d = await attach(p, opts);
  try {
    return await scanPartitions(d);
  } finally {
    await d.close();
  }
}

/** sfdisk -J gives the MBR type byte in hex, fdisk -l its name. */
const isExtended = (type: string) => /^(5|f|85|extended|w95 ext'd \(lba\)|linux extended)$/i.test(type);

const MBR_SCRIPT = [
  'label: dos',
  'start=2048, size=20480, type=83',
  'start=22528, size=10240, type=82',
  'start=34816, type=5',
  'start=36864, size=8192, type=83',
  'start=47104, size=4096, type=83',
  '',
].join('\n');

test('MBR: 2 primaries + extended with 2 logicals, as sfdisk -J says (logicals from 5)', async () => {
  const p = image(64 << 20, MBR_SCRIPT);
  const want = truth(p);
  assert.is(want.label, 'dos');
  assert.equal(want.parts.map((x) => x.number), [1, 2, 3, 5, 6]);
  const t = await scanFile(p);
  assert.is(t.type, 'dos');
  assert.is(t.warning, undefined);
  // Linux publishes the extended partition itself as only 2 sectors (1 KiB), "room for LILO".
  assert.equal(
    t.partitions,
    want.parts.map((x) => ({ number: x.number, start: x.start, size: isExtended(x.type) ? 1024 : x.size })),
  );
});

test('MBR on a 4096-byte-sector device (fdisk -b 4096): sectors scale with the logical sector size', async () => {
  const script = ['label: dos', 'start=256, size=2560, type=83', 'start=2816, type=5', 'start=3072, size=1024, type=83', 'start=4352, size=512, type=83', ''].join('\n');
  const p = image(32 << 20, script, 4096);
  const want = truth(p, 4096);
  const t = await scanFile(p, { sectorSize: 4096 });
  assert.is(t.type, 'dos');
  assert.is(t.warning, undefined);
  assert.equal(t.partitions, want.parts.map((x) => ({ number: x.number, start: x.start, size: isExtended(x.type) ? 4096 : x.size })));
  assert.equal(t.partitions.map((x) => x.number), [1, 2, 5, 6]);
});

const GPT_SCRIPT = [
  'label: gpt',
  'start=2048, size=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4',
  'start=8192, size=8192, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F',
  // an empty entry (3) and (4) between: numbering is entry index + 1
  'IMG5 : start=20480, size=10240, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4',
  '',
].join('\n');

function gptImage(size = 32 << 20, sectorSize = 512): string {
  const script = sectorSize === 512 ? GPT_SCRIPT : GPT_SCRIPT.replace(/start=(\d+), size=(\d+)/g, (_m, s: string, n: string) => `start=${Number(s) / 8}, size=${Number(n) / 8}`);
  return image(size, script, sectorSize);
}

test('GPT: 3 partitions (numbers 1, 2, 5), as sfdisk -J says', async () => {
  const p = gptImage();
  const want = truth(p);
  assert.is(want.label, 'gpt');
  assert.equal(want.parts.map((x) => x.number), [1, 2, 5]);
  const t = await scanFile(p);
  assert.is(t.type, 'gpt');
  assert.is(t.warning, undefined);
  assert.equal(t.partitions, want.parts.map(({ number, start, size }) => ({ number, start, size })));
});

test('GPT on a 4096-byte-sector device (fdisk -b 4096): LBAs are 4096 bytes', async () => {
  const p = gptImage(32 << 20, 4096);
  const want = truth(p, 4096);
  assert.equal(want.parts.map((x) => x.start), [1048576, 4194304, 10485760]);
  const t = await scanFile(p, { sectorSize: 4096 });
  assert.is(t.type, 'gpt');
  assert.is(t.warning, undefined);
  assert.equal(t.partitions, want.parts.map(({ number, start, size }) => ({ number, start, size })));
  // Read with the wrong sector size, the header is not at LBA 1: a warning, no partitions.
  const wrong = await scanFile(p);
  assert.is(wrong.type, null);
  assert.equal(wrong.partitions, []);
  assert.match(wrong.warning ?? '', /GPT/);
});

function corrupt(p: string, at: number): void {
  const fd = fs.openSync(p, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, at);
  b[0] = b[0]! ^ 0xff;
  fs.writeSync(fd, b, 0, 1, at);
  fs.closeSync(fd);
}

test('GPT: a broken primary header CRC falls back to the backup header', async () => {
  const p = gptImage();
  const want = (await scanFile(p)).partitions;
  corrupt(p, 512 + 60); // inside the disk GUID of the primary header: its CRC no longer matches
  const t = await scanFile(p);
  assert.is(t.type, 'gpt');
  assert.equal(t.partitions, want);
  assert.match(t.warning ?? '', /primary header is invalid \(header CRC32 mismatch\); using the backup/);
});

test('GPT: a broken primary entry array falls back to the backup', async () => {
  const p = gptImage();
  const want = (await scanFile(p)).partitions;
  corrupt(p, 2 * 512 + 40); // ending LBA of entry 1 in the primary array
  const t = await scanFile(p);
  assert.is(t.type, 'gpt');
  assert.equal(t.partitions, want);
  assert.match(t.warning ?? '', /entry array CRC32 mismatch/);
});

test('GPT: primary and backup headers both broken: no partitions, a warning', async () => {
  const p = gptImage();
  const size = fs.statSync(p).size;
  corrupt(p, 512 + 60);
  corrupt(p, size - 512 + 60);
  const t = await scanFile(p);
  assert.is(t.type, null);
  assert.equal(t.partitions, []);
  assert.match(t.warning ?? '', /primary header is invalid.*and so is the backup/);
});

test('GPT: a broken backup is reported, the primary used', async () => {
  const p = gptImage();
  const want = (await scanFile(p)).partitions;
  corrupt(p, fs.statSync(p).size - 512 + 60);
  const t = await scanFile(p);
  assert.is(t.type, 'gpt');
  assert.equal(t.partitions, want);
  assert.match(t.warning ?? '', /backup header is invalid/);
});

test('no table: random garbage, zeros, a boot sector, a tiny device — no partitions, no warning', async () => {
  const garbage = randomBytes(1 << 20);
  garbage[510] = 0; // (random bytes carry the 55AA signature once in 65536)
  const bootSector = randomBytes(1 << 20);
  bootSector.writeUInt16LE(0xaa55, 510);
  bootSector[0x1be] = 0x12; // boot indicator neither 0 nor 0x80: a filesystem's boot sector, not a table
  for (const [name, bytes] of [['garbage', garbage], ['zeros', Buffer.alloc(1 << 20)], ['boot sector', bootSector], ['tiny', Buffer.alloc(511)]] as const) {
    const p = path.join(dir, `img${seq++}`);
    fs.writeFileSync(p, bytes);
    const t = await scanFile(p);
    assert.equal(t, { type: null, partitions: [] }, name);
  }
});

test('an empty MBR is a dos table without partitions; a misplaced 0xEE entry is a warning', async () => {
  const b = Buffer.alloc(1 << 20);
  b.writeUInt16LE(0xaa55, 510);
  const p = path.join(dir, `img${seq++}`);
  fs.writeFileSync(p, b);
  assert.equal(await scanFile(p), { type: 'dos', partitions: [] });
  b[0x1be + 4] = 0xee;
  b.writeUInt32LE(2048, 0x1be + 8);
  b.writeUInt32LE(100, 0x1be + 12);
  fs.writeFileSync(p, b);
  const t = await scanFile(p);
  assert.is(t.type, null);
  assert.equal(t.partitions, []);
  assert.match(t.warning ?? '', /protective MBR/);
});

test('partitions beyond the end of the device are truncated or dropped, as Linux does', async () => {
  const p = image(64 << 20, MBR_SCRIPT);
  // 30000 sectors: p1 (2048..22527) fits, p2 (22528..32767) is cut, the extended and its logicals start past the end.
  const t = await scanFile(p, { sizelimit: 30000 * 512 });
  assert.is(t.type, 'dos');
  assert.equal(t.partitions, [
    { number: 1, start: 2048 * 512, size: 20480 * 512 },
    { number: 2, start: 22528 * 512, size: (30000 - 22528) * 512 },
  ]);
  assert.match(t.warning ?? '', /partition 2 extends beyond the end of the device; truncated/);
  assert.match(t.warning ?? '', /partition 3 starts beyond the end/);
  // A GPT whose usable range passes the device's end is not valid at all (efi.c).
  const g = gptImage();
  const tg = await scanFile(g, { sizelimit: 16 << 20 });
  assert.is(tg.type, null);
  assert.equal(tg.partitions, []);
  assert.ok(tg.warning);
});

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

async function rejects(p: Promise<unknown>, errno: Errno): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.instance(e, LoopfsError);
    assert.is((e as LoopfsError).errno, errno);
    return;
  }
  assert.unreachable(`should have failed with ${errno}`);
}

test('a PartitionWindow stays inside its partition; the other partitions are unchanged', async () => {
  const p = image(64 << 20, MBR_SCRIPT);
  // Fill the data partitions (not the extended one, which holds the EBRs) with random bytes.
  const fd = fs.openSync(p, 'r+');
  for (const x of truth(p).parts) if (!isExtended(x.type)) fs.writeSync(fd, randomBytes(x.size), 0, x.size, x.start);
  fs.closeSync(fd);
  const dev = await attach(p, { offset: 0 });
  try {
    const t = await scanPartitions(dev);
    assert.equal(t.partitions.map((x) => x.number), [1, 2, 3, 5, 6], t.warning);
    const info = t.partitions.find((x) => x.number === 5)!;
    const w = new PartitionWindow(dev, info);
    assert.is(w.size, info.size);
    assert.is(w.sectorSize, 512);
    const before = fs.readFileSync(p);
    const model = Buffer.from(before.subarray(info.start, info.start + info.size));
    await rejects(w.write(Buffer.alloc(512), 512, info.size), 'ENOSPC');
    const tail = randomBytes(8192);
    assert.is(await w.write(tail, 8192, info.size - 100), 100, 'a write crossing the partition end is short');
    tail.copy(model, info.size - 100, 0, 100);
    for (let i = 0; i < 300; i++) {
      const pos = Math.floor(Math.random() * info.size);
      const len = 1 + Math.floor(Math.random() * 8192);
      const data = randomBytes(len);
      const n = await w.write(data, len, pos);
      assert.is(n, Math.min(len, info.size - pos));
      data.copy(model, pos, 0, n);
    }
    await w.sync(true);
    const after = fs.readFileSync(p);
    assert.is(sha(after.subarray(0, info.start)), sha(before.subarray(0, info.start)), 'before partition 5');
    assert.is(sha(after.subarray(info.start + info.size)), sha(before.subarray(info.start + info.size)), 'after partition 5');
    assert.equal(after.subarray(info.start, info.start + info.size), model);
    const back = Buffer.alloc(info.size + 4096);
    assert.is(await w.read(back, back.length, 0), info.size, 'reads clamp at the partition end');
    assert.equal(back.subarray(0, info.size), model);
    assert.is(await w.read(back, 1, info.size), 0);
    // Discard stays inside too.
    await w.discard(info.size - 4096, 1 << 20);
    const punched = fs.readFileSync(p);
    assert.ok(punched.subarray(info.start + info.size - 4096, info.start + info.size).equals(Buffer.alloc(4096)));
    assert.is(sha(punched.subarray(info.start + info.size)), sha(before.subarray(info.start + info.size)));
    assert.throws(() => new PartitionWindow(dev, { number: 9, start: dev.size - 512, size: 1024 }), (e: unknown) => e instanceof LoopfsError && e.errno === 'EINVAL');
  } finally {
    await dev.close();
  }
  const ro = await Device.attach({ fd: fs.openSync(p, 'r'), path: p, writable: false }, { readOnly: true });
  try {
    const w = new PartitionWindow(ro, { number: 1, start: 2048 * 512, size: 20480 * 512 });
    assert.ok(w.readOnly);
    await rejects(w.write(Buffer.alloc(512), 512, 0), 'EROFS');
  } finally {
    await ro.close();
  }
});

test.run();
