import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { isMainThread, Worker, workerData, parentPort } from 'node:worker_threads';
import { newShare, OverlayMap, type OverlayShare } from '../../src/engine/overlay-map';

// The overlay's block map shared by threads (what the I/O threads serving one overlay device do):
// writers in several threads into the same absent blocks at once, each its own slice of every
// block. A copy-up (the base's block read, patched, written whole) racing with another writer of
// the same block would put the base's bytes back over that writer's slice; the block locks must
// prevent it. Blocks of 1 MiB make each copy-up long enough for the race to be certain without them.

const BS = 1 << 20;
const BLOCKS = 8;
const WRITERS = 6;
const SLICE = 4096;

interface Job {
  share: OverlayShare;
  k: number;
  /** Int32[0]: writers ready (a barrier, so that all start at once). */
  gate: SharedArrayBuffer;
}

function slice(k: number, b: number): Buffer {
  const h = createHash('sha256').update(`${k}:${b}`).digest();
  return Buffer.concat(Array(SLICE / h.length).fill(h));
}

/** Where writer k's slice of block b lies: apart from the others', none at the block's start or end. */
function at(k: number, b: number): number {
  return b * BS + (1 + 3 * k) * SLICE;
}

if (!isMainThread) {
  const { share, k, gate } = workerData as Job;
  const map = new OverlayMap(share);
  const g = new Int32Array(gate);
  Atomics.add(g, 0, 1);
  Atomics.notify(g, 0);
  while (Atomics.load(g, 0) < WRITERS) Atomics.wait(g, 0, Atomics.load(g, 0), 50);
  for (let b = 0; b < BLOCKS; b++) {
    const data = slice(k, b);
    assert.is(map.write(data, data.length, at(k, b)), data.length);
  }
  parentPort!.postMessage('done');
} else {
  const test = suite('engine: an overlay map shared by threads');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-overlay-threads-'));
  test.after(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('writers racing into the same absent blocks from several threads: every slice is there, the rest of each block is the base\'s', async () => {
    const size = BLOCKS * BS;
    const basePath = path.join(dir, 'base.img');
    const base = randomBytes(size);
    fs.writeFileSync(basePath, base);
    const baseFd = fs.openSync(basePath, 'r');
    const deltaFd = fs.openSync(path.join(dir, 'delta'), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    try {
      fs.ftruncateSync(deltaFd, size);
      const share = newShare({ blockSize: BS, dataOffset: 0, baseFd, deltaFd, named: false }, size, 64);
      const gate = new SharedArrayBuffer(4);
      const threads = Array.from({ length: WRITERS }, (_, k) => new Worker(__filename, { workerData: { share, k, gate } satisfies Job }));
      await Promise.all(threads.map((t) => new Promise<void>((resolve, reject) => {
        t.on('message', () => resolve());
        t.on('error', reject);
        t.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`writer exited ${code}`))));
      })));
      const map = new OverlayMap(share);
      assert.is(map.count, BLOCKS, 'every block is in the delta');
      const expected = Buffer.from(base);
      for (let k = 0; k < WRITERS; k++) for (let b = 0; b < BLOCKS; b++) slice(k, b).copy(expected, at(k, b));
      const got = Buffer.alloc(size);
      assert.is(map.read(got, size, 0), size);
      for (let b = 0; b < BLOCKS; b++) {
        assert.ok(got.subarray(b * BS, (b + 1) * BS).equals(expected.subarray(b * BS, (b + 1) * BS)), `block ${b}: every writer's slice, the base's bytes elsewhere`);
      }
      // the delta itself holds it (not a cache of ours): read it raw
      const raw = Buffer.alloc(size);
      fs.readSync(deltaFd, raw, 0, size, 0);
      assert.ok(raw.equals(expected), 'the delta file holds the blocks whole');
    } finally {
      fs.closeSync(baseFd);
      fs.closeSync(deltaFd);
    }
  });

  test.run();
}
