import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { Device } from '../../src/engine/device';
import { FileIO } from '../../src/engine/file';
import { Overlay, tmpDelta, OVERLAY_MAGIC, type DeltaFile } from '../../src/engine/overlay';
import { LoopfsError, type Errno } from '../../src/base/errors';

const test = suite('engine: copy-on-write overlays over a read-only base');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-overlay-'));
test.after(() => fs.rmSync(dir, { recursive: true, force: true }));

let seq = 0;
function file(bytes: Buffer | number): string {
  const p = path.join(dir, `f${seq++}.img`);
  fs.writeFileSync(p, typeof bytes === 'number' ? randomBytes(bytes) : bytes);
  return p;
}

function sha(b: Buffer | string): string {
  return createHash('sha256').update(typeof b === 'string' ? fs.readFileSync(b) : b).digest('hex');
}

function baseIO(p: string): FileIO {
  return new FileIO(fs.openSync(p, 'r'), p);
}

function named(p: string): DeltaFile {
  return { fd: fs.openSync(p, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600), path: p, named: true };
}

async function rejects(p: Promise<unknown>, errno: Errno, what = ''): Promise<LoopfsError> {
  try {
    await p;
  } catch (e) {
    assert.instance(e, LoopfsError, `${what}: a LoopfsError`);
    assert.is((e as LoopfsError).errno, errno, `${what}: errno (${(e as Error).message})`);
    return e as LoopfsError;
  }
  assert.unreachable(`${what}: should have failed with ${errno}`);
  throw new Error('unreachable');
}

async function readAll(o: Overlay, size: number): Promise<Buffer> {
  const out = Buffer.alloc(size);
  assert.is(await o.read(out, size, 0), size);
  return out;
}

/** Random writes, discards and reads across block boundaries, checked against an in-memory model. */
async function exercise(o: Overlay, model: Buffer, rounds: number, bs: number): Promise<void> {
  const size = model.length;
  for (let i = 0; i < rounds; i++) {
    const pos = randomInt(size);
    // lengths from 1 byte to a few blocks: partial heads and tails, whole blocks in between
    const len = Math.min(size - pos, 1 + randomInt(3 * bs));
    const op = randomInt(10);
    if (op < 6) {
      const data = randomBytes(len);
      assert.is(await o.write(data, len, pos), len, `write ${len} at ${pos}`);
      data.copy(model, pos);
    } else if (op < 8) {
      await o.discard(pos, len);
      model.fill(0, pos, pos + len);
    } else {
      const got = Buffer.alloc(len);
      assert.is(await o.read(got, len, pos), len);
      assert.ok(got.equals(model.subarray(pos, pos + len)), `read ${len} at ${pos} after ${i} ops`);
    }
  }
  assert.ok((await readAll(o, size)).equals(model), 'whole device equals the model');
}

test('reads and writes across block boundaries and discards match a model; the base never changes', async () => {
  // a size that ends inside a block: the last block is short
  const size = (1 << 20) + 3 * 512;
  const base = file(size);
  const before = sha(base);
  for (const bs of [4096, 65536]) {
    const b = baseIO(base);
    const o = await Overlay.open(b, size, named(path.join(dir, `model-${bs}.delta`)), bs);
    const model = fs.readFileSync(base);
    assert.ok((await readAll(o, size)).equals(model), 'a fresh overlay reads the base');
    await exercise(o, model, 400, bs);
    await o.sync(true);
    assert.is(sha(base), before, 'base unchanged');
    await o.close();
    await b.close();
  }
  assert.is(sha(base), before, 'base unchanged after close');
});

test('concurrent partial writes into one absent block all land (one copy-up at a time)', async () => {
  const size = 1 << 18;
  const base = file(size);
  const b = baseIO(base);
  const o = await Overlay.open(b, size, tmpDelta(dir), 65536);
  const model = fs.readFileSync(base);
  const writes: Promise<number>[] = [];
  for (let k = 0; k < 16; k++) {
    const data = randomBytes(1000);
    const pos = 65536 + k * 4000 + 7;
    data.copy(model, pos);
    writes.push(o.write(data, data.length, pos));
  }
  await Promise.all(writes);
  assert.ok((await readAll(o, size)).equals(model));
  assert.is(o.status().blocks, 1);
  await o.close();
  await b.close();
});

test('aligned runs of whole blocks go to the delta in one write; a partial write into the run, issued after it, lands on top', async () => {
  const bs = 65536;
  const size = 16 * bs;
  const base = file(size);
  const b = baseIO(base);
  const o = await Overlay.open(b, size, tmpDelta(dir), bs);
  const model = fs.readFileSync(base);
  const run = randomBytes(5 * bs + 100);
  const small = randomBytes(3000);
  const p1 = o.write(run, run.length, 2 * bs);
  const p2 = o.write(small, small.length, 3 * bs + 500);
  await Promise.all([p1, p2]);
  run.copy(model, 2 * bs);
  small.copy(model, 3 * bs + 500);
  assert.ok((await readAll(o, size)).equals(model));
  assert.is(o.status().blocks, 6);
  await o.close();
  await b.close();
});

test('discard punches the delta and masks the base: zeros read, space freed', async () => {
  const size = 1 << 20;
  const base = file(size);
  const b = baseIO(base);
  const o = await Overlay.open(b, size, named(path.join(dir, 'discard.delta')), 65536);
  await o.write(randomBytes(size), size, 0);
  const full = o.status().allocatedBytes;
  assert.ok(full >= size, `delta holds the data (${full})`);
  await o.discard(0, size / 2);
  const zeros = Buffer.alloc(size / 2);
  const got = Buffer.alloc(size / 2);
  await o.read(got, got.length, 0);
  assert.ok(got.equals(zeros), 'discarded range reads zeros');
  assert.ok(o.status().allocatedBytes <= full - size / 2, `space freed (${o.status().allocatedBytes} of ${full})`);
  // the last blocks, discarded without ever being written, read zeros (not past the delta's end)
  const o3 = await Overlay.open(b, size, named(path.join(dir, 'tail.delta')), 65536);
  await o3.discard(size - 3 * 65536, 3 * 65536);
  const tail = Buffer.alloc(3 * 65536, 1);
  assert.is(await o3.read(tail, tail.length, size - tail.length), tail.length);
  assert.ok(tail.equals(Buffer.alloc(3 * 65536)), 'tail reads zeros');
  await o3.close();
  // a discard of a block never written masks the base too
  const o2 = await Overlay.open(b, size, tmpDelta(dir), 65536);
  await o2.discard(100, 70000);
  const m = fs.readFileSync(base);
  m.fill(0, 100, 70100);
  assert.ok((await readAll(o2, size)).equals(m));
  await o2.close();
  await o.close();
  await b.close();
});

test('a named delta persists: re-opened, it shows the same bytes; status counts changed blocks', async () => {
  const size = 3 * 65536 + 12345;
  const base = file(size);
  const before = sha(base);
  const deltaPath = path.join(dir, 'persist.delta');
  let b = baseIO(base);
  let o = await Overlay.open(b, size, named(deltaPath), 65536);
  const model = fs.readFileSync(base);
  await exercise(o, model, 200, 65536);
  const st = o.status();
  await o.close();
  await b.close();
  assert.is(fs.readFileSync(deltaPath).toString('latin1', 0, 8), OVERLAY_MAGIC);
  b = baseIO(base);
  // the delta's own block size wins over the one asked
  o = await Overlay.open(b, size, named(deltaPath), 4096);
  assert.is(o.blockSize, 65536);
  assert.ok((await readAll(o, size)).equals(model), 'same bytes after re-open');
  assert.equal(o.status().blocks, st.blocks);
  assert.is(o.status().changedBytes, st.blocks * 65536);
  // one user at a time
  await rejects(Overlay.open(b, size, named(deltaPath)), 'EBUSY', 'second open of a delta in use');
  await o.close();
  // another base is refused
  const other = file(size);
  const ob = baseIO(other);
  await rejects(Overlay.open(ob, size, named(deltaPath)), 'EINVAL', 'delta over another base');
  await ob.close();
  const small = file(size - 512);
  const sb = baseIO(small);
  await rejects(Overlay.open(sb, size - 512, named(deltaPath)), 'EINVAL', 'delta over a base of another size');
  await sb.close();
  // not an overlay file
  const junk = file(4096);
  await rejects(Overlay.open(b, size, named(junk)), 'EINVAL', 'a file that is not a delta');
  await b.close();
  assert.is(sha(base), before);
});

test('crash: a copy of the delta taken at any moment shows each block old or new, and synced blocks new', async () => {
  const bs = 4096;
  const size = 64 * bs;
  const base = file(size);
  const old = fs.readFileSync(base);
  const deltaPath = path.join(dir, 'crash.delta');
  const b = baseIO(base);
  const o = await Overlay.open(b, size, named(deltaPath), bs);
  const synced = Buffer.from(old);
  // first half written and synced
  const a = randomBytes(size / 2);
  await o.write(a, a.length, 0);
  a.copy(synced, 0);
  await o.sync(true);
  // then unsynced writes over everything, with copies of the file taken in between (as a SIGKILL would leave it)
  const latest = Buffer.from(synced);
  const snaps: { file: string; state: Buffer }[] = [];
  for (let k = 0; k < 8; k++) {
    const pos = randomInt(size - 3 * bs);
    const d = randomBytes(3 * bs - randomInt(bs));
    await o.write(d, d.length, pos);
    d.copy(latest, pos);
    const s = path.join(dir, `crash-${k}.delta`);
    fs.copyFileSync(deltaPath, s);
    snaps.push({ file: s, state: Buffer.from(latest) });
  }
  await o.close();
  let fellBack = 0;
  for (const { file: s, state } of snaps) {
    const c = await Overlay.open(b, size, named(s), bs);
    const got = await readAll(c, size);
    for (let blk = 0; blk < size / bs; blk++) {
      const r = [blk * bs, (blk + 1) * bs] as const;
      const g = got.subarray(...r);
      if (g.equals(state.subarray(...r))) continue;
      // not the newest: then the base's block, and only for a block never synced
      assert.ok(g.equals(old.subarray(...r)), `block ${blk} of ${s} is neither old nor new`);
      assert.ok(blk >= size / 2 / bs, `synced block ${blk} of ${s} fell back to the base`);
      fellBack++;
    }
    await c.close();
  }
  // the test can tell: unsynced blocks were seen falling back (the map had not been written yet)
  assert.ok(fellBack > 0, 'some unsynced block read the base in a snapshot');
  await b.close();
  assert.ok(fs.readFileSync(base).equals(old), 'base untouched');
});

test('reset throws the changes away; commit writes them into the base and empties the overlay', async () => {
  const size = 8 * 65536;
  const base = file(size);
  const before = sha(base);
  const b = baseIO(base);
  const deltaPath = path.join(dir, 'commit.delta');
  let o = await Overlay.open(b, size, named(deltaPath), 65536);
  await o.write(randomBytes(100000), 100000, 30000);
  await o.reset();
  assert.is(o.status().blocks, 0);
  assert.ok((await readAll(o, size)).equals(fs.readFileSync(base)), 'reads the base again');
  await o.close();
  o = await Overlay.open(b, size, named(deltaPath), 65536);
  assert.is(o.status().blocks, 0, 'the reset persisted');
  const model = fs.readFileSync(base);
  await exercise(o, model, 100, 65536);
  assert.is(sha(base), before);
  const rw = fs.openSync(base, 'r+');
  await o.commit(rw);
  fs.closeSync(rw);
  assert.ok(fs.readFileSync(base).equals(model), 'the base now holds what the overlay showed');
  assert.is(o.status().blocks, 0);
  assert.ok((await readAll(o, size)).equals(model));
  await o.close();
  // the committed base still matches the delta (its first block changed, the header followed)
  o = await Overlay.open(b, size, named(deltaPath), 65536);
  assert.is(o.status().blocks, 0);
  await o.close();
  await b.close();
});

test('commit wants the base to itself: another overlay of it (its own open) makes it EBUSY', async () => {
  const size = 4 * 65536;
  const base = file(size);
  const before = sha(base);
  const b1 = baseIO(base);
  const b2 = baseIO(base);
  const o1 = await Overlay.open(b1, size, tmpDelta(dir));
  const o2 = await Overlay.open(b2, size, tmpDelta(dir));
  await o1.write(Buffer.alloc(100, 9), 100, 0);
  const rw = fs.openSync(base, 'r+');
  await rejects(o1.commit(rw), 'EBUSY', 'commit while another overlay holds the base');
  assert.is(sha(base), before);
  assert.is(o1.status().blocks, 1, 'nothing thrown away');
  await o2.close();
  await b2.close();
  await o1.commit(rw);
  fs.closeSync(rw);
  assert.ok(fs.readFileSync(base).subarray(0, 100).equals(Buffer.alloc(100, 9)));
  // while o1 holds the base, a third overlay can open it again (shared)
  const b3 = baseIO(base);
  const o3 = await Overlay.open(b3, size, tmpDelta(dir));
  await o3.close();
  await b3.close();
  await o1.close();
  await b1.close();
});

test('an unnamed delta is invisible in its directory and gone at close', async () => {
  const size = 1 << 18;
  const base = file(size);
  const tdir = fs.mkdtempSync(path.join(dir, 'tmp-'));
  const b = baseIO(base);
  const d = tmpDelta(tdir);
  const o = await Overlay.open(b, size, d, 65536);
  await o.write(randomBytes(size), size, 0);
  assert.equal(fs.readdirSync(tdir), []);
  assert.is(o.deltaPath, undefined);
  await o.close();
  assert.throws(() => fs.fstatSync(d.fd), 'the delta fd is closed');
  await b.close();
});

test('Device with an overlay: windows stack on it, the range offered to the I/O threads carries the overlay map, the base stays as it was', async () => {
  const size = 1 << 20;
  const base = file(size);
  const before = sha(base);
  const fd = fs.openSync(base, 'r');
  const dev = await Device.attach({ fd, path: base, writable: false }, { offset: 4096, sizelimit: 512 * 1000, overlay: { delta: tmpDelta(dir) } });
  assert.is(dev.size, 512 * 1000);
  assert.is(dev.readOnly, false, 'writable through the delta although the base fd is read-only');
  assert.is(dev.warnings.length, 0);
  const range = dev.fileRange()!;
  assert.is(range.fd, fd, 'positions are the base file\'s');
  assert.is(range.start, 4096);
  assert.is(range.length, 512 * 1000);
  assert.is(range.directFd, undefined);
  assert.is(range.overlay, dev.overlay!.fileRange()!.overlay);
  assert.ok(range.overlay!.bits instanceof SharedArrayBuffer, 'the map is in shared memory');
  const data = randomBytes(70000);
  assert.is(await dev.write(data, data.length, 100), data.length);
  const got = Buffer.alloc(data.length);
  await dev.read(got, got.length, 100);
  assert.ok(got.equals(data));
  await rejects(dev.write(data, 10, dev.size), 'ENOSPC', 'past the end');
  dev.directIo = true;
  assert.is(dev.directIo, false);
  assert.match(dev.warnings.join('\n'), /overlay/);
  // The blocks the write touched, at base positions 4096 + 100 ... + 70000 (the window's offset is the base's).
  const bs = dev.overlay!.blockSize;
  assert.is(dev.overlay!.status().blocks, Math.floor((4196 + 70000 - 1) / bs) - Math.floor(4196 / bs) + 1);
  await dev.close();
  assert.is(sha(base), before);
  // -r: read-only overlay
  const ro = await Device.attach({ fd: fs.openSync(base, 'r'), path: base, writable: false }, { readOnly: true, overlay: { delta: tmpDelta(dir) } });
  await rejects(ro.write(data, 10, 0), 'EROFS', 'read-only overlay');
  await ro.close();
});

test('Device with an overlay follows its base size (losetup -c); a failing open leaves no descriptor', async () => {
  const size = 1 << 18;
  const base = file(size);
  const deltaPath = path.join(dir, 'grow.delta');
  const dev = await Device.attach({ fd: fs.openSync(base, 'r'), path: base, writable: false }, { overlay: { delta: named(deltaPath) } });
  await dev.write(Buffer.alloc(10, 1), 10, size - 10);
  fs.appendFileSync(base, randomBytes(65536 + 512));
  assert.is(await dev.refreshCapacity(), size + 65536 + 512);
  const tail = Buffer.alloc(512);
  await dev.read(tail, 512, size + 65536);
  assert.ok(tail.equals(fs.readFileSync(base).subarray(size + 65536)), 'the grown part reads the base');
  await dev.write(Buffer.alloc(512, 2), 512, size + 65536);
  await dev.close();
  // re-attach over the grown base: the delta recorded the size
  const again = await Device.attach({ fd: fs.openSync(base, 'r'), path: base, writable: false }, { overlay: { delta: named(deltaPath) } });
  const t = Buffer.alloc(512);
  await again.read(t, 512, size + 65536);
  assert.ok(t.equals(Buffer.alloc(512, 2)));
  await again.close();
  const fdsBefore = fs.readdirSync('/proc/self/fd').length;
  await rejects(Device.attach({ fd: fs.openSync(file(size), 'r'), path: 'x', writable: false }, { overlay: { delta: named(deltaPath) } }), 'EINVAL', 'wrong base');
  assert.is(fs.readdirSync('/proc/self/fd').length, fdsBefore, 'base and delta fds closed');
});

test.run();
