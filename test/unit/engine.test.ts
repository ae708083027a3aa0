import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import { Device, type AttachOptions } from '../../src/engine/device';
import { allocAligned } from '../../src/engine/file';
import { findOverlap, sizeWarning } from '../../src/base/loopdev';
import { LoopfsError, type Errno } from '../../src/base/errors';

const test = suite('engine: devices over a backing-file window');

// /tmp is a disk filesystem here (O_DIRECT works); tmpfs would do too on Linux ≥ 6.6.
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-engine-'));
test.after(() => fs.rmSync(dir, { recursive: true, force: true }));

let seq = 0;
function file(bytes: Buffer | number): string {
  const p = path.join(dir, `f${seq++}.img`);
  fs.writeFileSync(p, typeof bytes === 'number' ? randomBytes(bytes) : bytes);
  return p;
}

function attach(p: string, opts: AttachOptions = {}, writable = true): Promise<Device> {
  const fd = fs.openSync(p, writable ? 'r+' : 'r');
  return Device.attach({ fd, path: p, writable }, opts);
}

function dd(p: string, skip: number, count: number): Buffer {
  return execFileSync('dd', [`if=${p}`, `skip=${skip}`, `count=${count}`, 'iflag=skip_bytes,count_bytes', 'status=none'], {
    maxBuffer: 1 << 28,
  });
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

async function rejects(p: Promise<unknown>, errno: Errno, what = ''): Promise<LoopfsError> {
  try {
    await p;
  } catch (e) {
    assert.instance(e, LoopfsError, `${what}: a LoopfsError`);
    assert.is((e as LoopfsError).errno, errno, `${what}: errno`);
    return e as LoopfsError;
  }
  assert.unreachable(`${what}: should have failed with ${errno}`);
  throw new Error('unreachable');
}

async function readAll(d: Device): Promise<Buffer> {
  const out = Buffer.alloc(d.size);
  const n = await d.read(out, out.length, 0);
  assert.is(n, d.size);
  return out;
}

test('offset + sizelimit: the device bytes are what dd reads from the same window', async () => {
  const p = file(1 << 20);
  const d = await attach(p, { offset: 12345, sizelimit: 300 * 512 });
  try {
    assert.is(d.size, 300 * 512);
    assert.equal(await readAll(d), dd(p, 12345, 300 * 512));
    // Reads at odd places inside match too.
    const b = Buffer.alloc(777);
    assert.is(await d.read(b, 777, 1001), 777);
    assert.equal(b, dd(p, 12345 + 1001, 777));
  } finally {
    await d.close();
  }
  const whole = await attach(p, { offset: 4097 });
  try {
    const expect = Math.floor(((1 << 20) - 4097) / 512) * 512;
    assert.is(whole.size, expect);
    assert.equal(await readAll(whole), dd(p, 4097, expect));
  } finally {
    await whole.close();
  }
});

test('reads clamp at the end: short count across it, 0 at and after it', async () => {
  const p = file(8192);
  const d = await attach(p, { offset: 1024, sizelimit: 4096 });
  try {
    const b = Buffer.alloc(1000);
    assert.is(await d.read(b, 1000, 4096 - 100), 100);
    assert.equal(b.subarray(0, 100), dd(p, 1024 + 4096 - 100, 100));
    assert.is(await d.read(b, 1000, 4096), 0);
    assert.is(await d.read(b, 1000, 10_000), 0);
    assert.is(await d.read(b, 0, 0), 0);
    await rejects(d.read(b, 2000, 0), 'EINVAL', 'length beyond the buffer');
    await rejects(d.read(b, 10, -1), 'EINVAL', 'negative position');
  } finally {
    await d.close();
  }
});

test('writes: ENOSPC at/after the end, short count across it, nothing outside the window changes', async () => {
  const size = 256 * 1024;
  const p = file(size);
  const offset = 3 * 4096 + 7;
  const limit = 100 * 512;
  const before = fs.readFileSync(p);
  const d = await attach(p, { offset, sizelimit: limit });
  try {
    const src = randomBytes(4096);
    await rejects(d.write(src, 512, limit), 'ENOSPC', 'write at the end');
    await rejects(d.write(src, 1, limit + 4096), 'ENOSPC', 'write after the end');
    assert.is(await d.write(src, 1024, limit - 512), 512, 'crossing write is short');

    // A write-heavy loop at random places, some crossing the end; a model of the window checks the content.
    const model = Buffer.from(before.subarray(offset, offset + limit));
    src.copy(model, limit - 512, 0, 512);
    for (let i = 0; i < 400; i++) {
      const pos = Math.floor(Math.random() * limit);
      const len = 1 + Math.floor(Math.random() * 3000);
      const data = randomBytes(len);
      const n = await d.write(data, len, pos);
      assert.is(n, Math.min(len, limit - pos));
      data.copy(model, pos, 0, n);
    }
    await d.sync(true);
    const after = fs.readFileSync(p);
    assert.is(sha(after.subarray(0, offset)), sha(before.subarray(0, offset)), 'bytes before the window');
    assert.is(sha(after.subarray(offset + limit)), sha(before.subarray(offset + limit)), 'bytes after the window');
    assert.is(after.length, before.length);
    assert.equal(after.subarray(offset, offset + limit), model, 'window content');
    assert.equal(await readAll(d), model, 'read back through the device');
  } finally {
    await d.close();
  }
});

test('size is rounded down to the logical sector size', async () => {
  const p = file(5 * 4096 + 3000);
  const cases: [AttachOptions, number][] = [
    [{ sectorSize: 4096 }, 5 * 4096],
    [{ sectorSize: 4096, offset: 100 }, 5 * 4096],
    [{ sectorSize: 4096, offset: 3001 }, 4 * 4096],
    [{ sectorSize: 4096, sizelimit: 9 * 512 }, 4096],
    [{ sectorSize: 512, sizelimit: 9 * 512 }, 9 * 512],
    [{ sectorSize: 65536 }, 0],
    [{ offset: 5 * 4096 + 3000 }, 0],
  ];
  for (const [opts, size] of cases) {
    const d = await attach(p, opts);
    try {
      assert.is(d.size, size, JSON.stringify(opts));
      assert.is(d.sectorSize, opts.sectorSize ?? 512);
    } finally {
      await d.close();
    }
  }
});

test('bad options: EINVAL with a message, and the fd is closed', async () => {
  const p = file(8192);
  const bad: AttachOptions[] = [
    { offset: -1 },
    { offset: NaN },
    { offset: 1.5 },
    { offset: Number.MAX_SAFE_INTEGER + 2 },
    { sizelimit: -512 },
    { sizelimit: NaN },
    { sectorSize: 1000 },
    { sectorSize: 256 },
    { sectorSize: 131072 },
    { sectorSize: 0 },
    { sectorSize: NaN },
  ];
  for (const opts of bad) {
    const fd = fs.openSync(p, 'r+');
    const e = await rejects(Device.attach({ fd, path: p, writable: true }, opts), 'EINVAL', JSON.stringify(opts));
    assert.ok(e.what.length > 0 && e.reason.length > 0);
    assert.throws(() => fs.fstatSync(fd), /EBADF/, 'fd closed');
  }
  // The edges that are fine.
  for (const opts of [{ offset: 8192 }, { sizelimit: 512 }, { sectorSize: 65536 }, { sectorSize: 512 }]) await (await attach(p, opts)).close();
  // Accepted as the kernel's loop accepts them (losetup 2.38 sets both up): the size is rounded down to the
  // sector, and an offset past the end gives a device of size 0 that reads end-of-file.
  for (const [opts, size] of [[{ sizelimit: 1000 }, 512], [{ sizelimit: 700, sectorSize: 4096 }, 0], [{ offset: 8193 }, 0], [{ offset: 99999 }, 0], [{ offset: 1000, sizelimit: 5000 }, 4608]] as const) {
    const d = await attach(p, opts);
    try {
      assert.is(d.size, size, JSON.stringify(opts));
      assert.is(await d.read(Buffer.alloc(512), 512, 0), size > 0 ? 512 : 0, `${JSON.stringify(opts)}: read`);
    } finally {
      await d.close();
    }
  }
});

test('a directory or fifo is not a backing file', async () => {
  const fd = fs.openSync(dir, 'r');
  await rejects(Device.attach({ fd, path: dir, writable: false }, {}), 'EINVAL');
});

test('read-only: writes and discards fail EROFS, the file is unchanged', async () => {
  const p = file(8192);
  const before = fs.readFileSync(p);
  const d = await attach(p, { readOnly: true });
  try {
    assert.ok(d.readOnly);
    assert.is(d.warnings.length, 0);
    await rejects(d.write(Buffer.alloc(512), 512, 0), 'EROFS');
    await rejects(d.discard(0, 4096), 'EROFS');
    assert.is(await d.read(Buffer.alloc(512), 512, 0), 512);
  } finally {
    await d.close();
  }
  // An fd that cannot write: attached read-only with a warning, as losetup does.
  const r = await attach(p, {}, false);
  try {
    assert.ok(r.readOnly);
    assert.match(r.warnings.join('\n'), /read-only/);
    await rejects(r.write(Buffer.alloc(512), 512, 0), 'EROFS');
  } finally {
    await r.close();
  }
  assert.equal(fs.readFileSync(p), before);
});

test('discard punches a hole: blocks are freed, the range reads zero, the rest is intact', async () => {
  const p = file(4 << 20);
  const before = fs.readFileSync(p);
  const offset = 1 << 20;
  const d = await attach(p, { offset, sizelimit: 2 << 20 });
  try {
    const blocks0 = fs.statSync(p).blocks;
    await d.discard(256 * 1024, 1 << 20);
    const blocks1 = fs.statSync(p).blocks;
    assert.ok(blocks1 <= blocks0 - (1 << 20) / 512, `blocks ${blocks0} -> ${blocks1}`);
    const b = Buffer.alloc(1 << 20);
    assert.is(await d.read(b, b.length, 256 * 1024), b.length);
    assert.ok(b.equals(Buffer.alloc(1 << 20)), 'punched range reads zero');
    // Clamped to the window: a discard running past the end stops at it.
    await d.discard((2 << 20) - 4096, 1 << 20);
    await d.discard(3 << 20, 4096); // wholly outside: nothing
    const after = fs.readFileSync(p);
    assert.equal(after.subarray(0, offset), before.subarray(0, offset));
    assert.equal(after.subarray(offset + (2 << 20)), before.subarray(offset + (2 << 20)));
    assert.ok(after.subarray(offset + (2 << 20) - 4096, offset + (2 << 20)).equals(Buffer.alloc(4096)));
    assert.equal(after.subarray(offset + (1 << 20) + 256 * 1024, offset + (2 << 20) - 4096), before.subarray(offset + (1 << 20) + 256 * 1024, offset + (2 << 20) - 4096));
    assert.is(after.length, before.length, 'the file keeps its size');
  } finally {
    await d.close();
  }
});

test('sync (fdatasync and fsync) resolves; after close requests fail ENXIO', async () => {
  const p = file(8192);
  const d = await attach(p);
  const src = randomBytes(512);
  assert.is(await d.write(src, 512, 512), 512);
  await d.sync(true);
  await d.sync(false);
  assert.equal(fs.readFileSync(p).subarray(512, 1024), src);
  await d.close();
  await rejects(d.read(Buffer.alloc(512), 512, 0), 'ENXIO');
  await rejects(d.write(src, 512, 0), 'ENXIO');
  await rejects(d.sync(false), 'ENXIO');
  await d.close(); // twice is fine
});

test('close waits for requests in flight', async () => {
  const p = file(1 << 20);
  const d = await attach(p);
  const b = Buffer.alloc(1 << 20);
  const r = d.read(b, b.length, 0);
  await d.close();
  assert.is(await r, 1 << 20);
  assert.equal(b, fs.readFileSync(p));
});

/** --nooverlap's rule (base/loopdev.ts) applied to one device: whether the window intersects, or is the very same. */
const overlaps = (d: Device, dev: number, ino: number, offset: number, size: number): boolean =>
  findOverlap([d], (x) => x.dev === dev && x.ino === ino, { offset, sizelimit: size, readOnly: true }, false) !== undefined;
const sameWindow = (d: Device, dev: number, ino: number, offset: number, sizelimit: number): boolean =>
  findOverlap([d], (x) => x.dev === dev && x.ino === ino, { offset, sizelimit, readOnly: true }, true)?.kind === 'reuse';

test('identity: dev and ino of the backing file; overlaps and sameWindow', async () => {
  const p = file(1 << 20);
  const q = file(4096);
  const st = fs.statSync(p);
  const d = await attach(p, { offset: 4096, sizelimit: 8192 });
  try {
    assert.is(d.path, p);
    assert.is(d.dev, st.dev);
    assert.is(d.ino, st.ino);
    assert.is(d.offset, 4096);
    assert.is(d.sizelimit, 8192);
    assert.ok(overlaps(d, st.dev, st.ino, 0, 4097));
    assert.not.ok(overlaps(d, st.dev, st.ino, 0, 4096));
    assert.ok(overlaps(d, st.dev, st.ino, 12287, 1));
    assert.not.ok(overlaps(d, st.dev, st.ino, 12288, 4096));
    assert.ok(overlaps(d, st.dev, st.ino, 0, 0), 'size 0 = to the end of the file');
    const sq = fs.statSync(q);
    assert.not.ok(overlaps(d, sq.dev, sq.ino, 0, 0), 'another file');
    assert.ok(sameWindow(d, st.dev, st.ino, 4096, 8192));
    assert.not.ok(sameWindow(d, st.dev, st.ino, 4096, 0));
  } finally {
    await d.close();
  }
  const unlimited = await attach(p, { offset: 4096 });
  try {
    assert.ok(overlaps(unlimited, st.dev, st.ino, 900_000, 512));
    assert.not.ok(overlaps(unlimited, st.dev, st.ino, 0, 4096));
  } finally {
    await unlimited.close();
  }
});

test('refreshCapacity re-reads the file size (losetup -c)', async () => {
  const p = file(8192);
  const d = await attach(p, { offset: 1024 });
  try {
    assert.is(d.size, 7168);
    fs.truncateSync(p, 1 << 20);
    assert.is(d.size, 7168, 'not before a refresh');
    assert.is(await d.refreshCapacity(), (1 << 20) - 1024);
    assert.is(d.size, (1 << 20) - 1024);
    fs.truncateSync(p, 512);
    assert.is(await d.refreshCapacity(), 0, 'offset now past the end: size 0');
  } finally {
    await d.close();
  }
});

test('setWindow moves the window (LOOP_SET_STATUS): the size is figured anew, reads follow', async () => {
  const bytes = randomBytes(16384);
  const p = file(bytes);
  const d = await attach(p);
  try {
    assert.is(d.setWindow(4096, 1000), 512, 'size limit rounded down to the sector');
    assert.is(d.offset, 4096);
    assert.is(d.sizelimit, 1000);
    const b = Buffer.alloc(1024);
    assert.is(await d.read(b, 1024, 0), 512);
    assert.equal(b.subarray(0, 512), bytes.subarray(4096, 4608));
    assert.is(d.setWindow(1000, 0), 16384 - 1000 - ((16384 - 1000) % 512), 'an odd offset: the rest, rounded down');
    assert.is(d.setWindow(1 << 30, 0), 0, 'past the end: size 0');
    assert.throws(() => d.setWindow(-1, 0), (e: unknown) => e instanceof LoopfsError && e.errno === 'EINVAL');
  } finally {
    await d.close();
  }
});

test('a file that shrank: a read starting before its end is whole (zeros after it), one starting at or past it EIO', async () => {
  const p = file(8192);
  const d = await attach(p);
  try {
    fs.truncateSync(p, 4096 + 100);
    const b = Buffer.alloc(4096, 0xff);
    assert.is(await d.read(b, 4096, 4096), 4096);
    assert.equal(b.subarray(0, 100), fs.readFileSync(p).subarray(4096));
    assert.ok(b.subarray(100).equals(Buffer.alloc(3996)));
    fs.truncateSync(p, 4096);
    await rejects(d.read(b, 512, 4096), 'EIO');
    await rejects(d.read(b, 512, 7680), 'EIO');
    assert.is(d.size, 8192, 'the size is still the one of attach');
    assert.is(await d.write(Buffer.alloc(512, 7), 512, 7680), 512, 'a write past the file end extends it');
    assert.is(fs.statSync(p).size, 8192);
  } finally {
    await d.close();
  }
});

test('size warnings as losetup gives them', async () => {
  const small = await attach(file(100));
  const odd = await attach(file(1000));
  const fine = await attach(file(1024));
  try {
    // The warning is losetup's (base/loopdev.ts sizeWarning, printed by the CLI), not the engine's.
    assert.match(sizeWarning(small.path, undefined, 100, undefined) ?? '', /smaller than 512 bytes/);
    assert.match(sizeWarning(odd.path, undefined, 1000, undefined) ?? '', /does not fit into a 512-byte sector/);
    assert.is(sizeWarning(fine.path, undefined, 1024, undefined), undefined);
    assert.equal([small.warnings, odd.warnings, fine.warnings], [[], [], []]);
    assert.is(small.size, 0);
    assert.is(odd.size, 512);
  } finally {
    await Promise.all([small.close(), odd.close(), fine.close()]);
  }
});

test('direct I/O on a disk filesystem: aligned requests go O_DIRECT, the rest still work', async () => {
  const p = file(1 << 20);
  const model = fs.readFileSync(p);
  const d = await attach(p, { directIo: true, offset: 8192, sizelimit: 512 * 1024 });
  try {
    assert.ok(d.directIo, d.warnings.join());
    assert.equal(d.warnings, []);
    const a = d.dioAlignment;
    const win = model.subarray(8192, 8192 + 512 * 1024);

    const aligned = allocAligned(64 * 1024, a);
    assert.is(await d.read(aligned, aligned.length, 4 * a), aligned.length);
    assert.equal(aligned, win.subarray(4 * a, 4 * a + aligned.length));
    let c = d.ioCounts();
    assert.is(c.direct, 1);

    const unalignedMem = allocAligned(64 * 1024 + 1, a).subarray(1);
    assert.is(await d.read(unalignedMem, unalignedMem.length, 0), unalignedMem.length);
    assert.equal(unalignedMem, win.subarray(0, unalignedMem.length));
    c = d.ioCounts();
    assert.is(c.bounced, 1);

    const odd = Buffer.alloc(1000);
    assert.is(await d.read(odd, 1000, 333), 1000);
    assert.equal(odd, win.subarray(333, 1333));
    c = d.ioCounts();
    assert.is(c.buffered, 1);

    // Writes through each path, mixed, then read back both ways.
    const w1 = allocAligned(2 * a, a).fill(0x11);
    const w2 = allocAligned(2 * a + 3, a).subarray(3).fill(0x22);
    const w3 = Buffer.alloc(777, 0x33);
    assert.is(await d.write(w1, w1.length, 0), w1.length);
    assert.is(await d.write(w2, w2.length, 2 * a), w2.length);
    assert.is(await d.write(w3, w3.length, a + 5), 777);
    c = d.ioCounts();
    assert.equal(c, { direct: 2, bounced: 2, buffered: 2 });
    const expect = Buffer.from(win);
    w1.copy(expect, 0);
    w2.copy(expect, 2 * a);
    w3.copy(expect, a + 5);
    await d.sync(false);
    assert.equal(fs.readFileSync(p).subarray(8192, 8192 + 512 * 1024), expect, 'file content');
    assert.equal(await readAll(d), expect, 'read back O_DIRECT');
    d.directIo = false;
    assert.not.ok(d.directIo);
    assert.equal(await readAll(d), expect, 'read back buffered');
  } finally {
    await d.close();
  }
});

test('direct I/O stays off with a warning when the window is not aligned for it', async () => {
  const p = file(1 << 20);
  const d = await attach(p, { directIo: true, offset: 100 });
  try {
    assert.not.ok(d.directIo);
    assert.match(d.warnings.join(), /set direct io failed/);
    const b = Buffer.alloc(4096);
    assert.is(await d.read(b, 4096, 0), 4096);
    assert.equal(b, fs.readFileSync(p).subarray(100, 4196));
    assert.equal(d.ioCounts(), { direct: 0, bounced: 0, buffered: 1 });
  } finally {
    await d.close();
  }
});

test('direct I/O stays off with a warning where the filesystem refuses O_DIRECT (ramfs)', async () => {
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-ramfs-'));
  let mounted = false;
  try {
    let p: string;
    if (spawnSync('mount', ['-t', 'ramfs', 'none', mnt], { stdio: 'ignore' }).status === 0) {
      mounted = true;
      p = path.join(mnt, 'disk.img');
      fs.writeFileSync(p, randomBytes(64 * 1024));
    } else {
      // Not root: a sysfs attribute refuses O_DIRECT as well (read-only, one page).
      p = '/sys/kernel/mm/transparent_hugepage/enabled';
      if (!fs.existsSync(p)) p = '/sys/power/state';
    }
    const d = await attach(p, { directIo: true }, mounted);
    try {
      assert.not.ok(d.directIo);
      assert.match(d.warnings.join('\n'), /set direct io failed.*EINVAL/);
      if (mounted) {
        const b = Buffer.alloc(4096);
        assert.is(await d.read(b, 4096, 4096), 4096);
        assert.equal(b, fs.readFileSync(p).subarray(4096, 8192));
      }
    } finally {
      await d.close();
    }
  } finally {
    if (mounted) spawnSync('umount', [mnt]);
    fs.rmSync(mnt, { recursive: true, force: true });
  }
});

test('concurrent requests on one device all land', async () => {
  const p = file(1 << 20);
  const d = await attach(p, { directIo: true });
  try {
    const model = Buffer.alloc(1 << 20);
    const writes: Promise<number>[] = [];
    for (let i = 0; i < 256; i++) {
      const b = Buffer.alloc(4096, i);
      b.copy(model, i * 4096);
      writes.push(d.write(b, 4096, i * 4096));
    }
    assert.ok((await Promise.all(writes)).every((n) => n === 4096));
    assert.equal(await readAll(d), model);
  } finally {
    await d.close();
  }
});

test.run();
