import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { attach, randomFile, releaseKernelState, sha, shOk } from '../helpers/disk';

// An instance that serves no device I/O costs no I/O thread (each is a V8
// isolate of its own): its daemon reads /dev/fuse on the main thread until
// a device is opened, and then starts the threads, which serve the I/O.
let sb: Sandbox;
const test = sandboxSuite('idle instance: the I/O threads start with the first open device', 'idle', (s) => (sb = s), releaseKernelState);

const MiB = 1 << 20;
const WORKERS = 4; // SessionOptions.workers' default

function threads(pid: number): number {
  return Number(/^Threads:\s+(\d+)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.unreachable(`${what} within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('bound devices start no thread; the first open starts one, a sustained load the others, and the threads serve its I/O', async () => {
  const img = randomFile(path.join(sb.root, 'a.img'), 4 * MiB);
  // The default instance starts; its control socket and lookups are served without the threads.
  const first = attach(sb, img);
  const [pid] = sb.daemons();
  assert.ok(pid);
  const idle = threads(pid!);
  const devs = [first, attach(sb, img), attach(sb, img)];
  assert.equal(sb.ok(['losetup', '-a']).split('\n').length, 3);
  assert.is(threads(pid!), idle, 'attaching starts no thread');
  // An offset window (not passthrough): its reads are FUSE READs.
  const win = attach(sb, img, ['-o', String(MiB)]);
  assert.is(sha(win), sha(img, MiB));
  // 3 MiB read ahead in 128 KiB requests: a light load, one thread.
  await until('the first I/O thread started', () => threads(pid!) >= idle + 1);
  assert.is(threads(pid!), idle + 1, 'one thread for a few requests');
  // 1024 requests of 4 KiB: more than the first thread serves alone (GROW_AFTER).
  shOk(`dd if=${devs[1]} of=${sb.root}/copy bs=4k iflag=direct status=none`);
  assert.is(sha(path.join(sb.root, 'copy')), sha(img));
  await until(`${WORKERS} I/O threads started`, () => threads(pid!) >= idle + WORKERS);
  sb.ok(['losetup', '-D']);
});

test.run();
