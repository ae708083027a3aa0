import * as assert from 'uvu/assert';
import * as path from 'node:path';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { attach, randomFile, releaseKernelState, sha, shOk, sustainUntilThreads, threadsOf as threads } from '../helpers/disk';

// An instance that serves no device I/O, or little, costs no I/O thread
// (each is a V8 isolate of its own): its daemon reads /dev/fuse on the main
// thread until a device is opened and a load is sustained, and then starts
// the threads, which serve the I/O.
let sb: Sandbox;
const test = sandboxSuite('idle instance: the I/O threads start with a sustained load', 'idle', (s) => (sb = s), releaseKernelState);

const MiB = 1 << 20;
const WORKERS = 4; // SessionOptions.workers' default

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.unreachable(`${what} within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('bound devices start no thread, nor does a light load; a sustained one starts them, and the threads serve its I/O', async () => {
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
  // 3 MiB read ahead in 128 KiB requests: a light load, served by the main thread (FIRST_THREAD_AFTER).
  assert.is(threads(pid!), idle, 'no thread for a few requests');
  // A sustained load starts them: past FIRST_THREAD_AFTER one, all once it has served GROW_AFTER.
  sustainUntilThreads(pid!, devs[1]!, idle + WORKERS);
  shOk(`dd if=${devs[1]} of=${sb.root}/copy bs=64k iflag=direct status=none`);
  assert.is(sha(path.join(sb.root, 'copy')), sha(img));
  await until(`${WORKERS} I/O threads started`, () => threads(pid!) >= idle + WORKERS);
  sb.ok(['losetup', '-D']);
});

test.run();
