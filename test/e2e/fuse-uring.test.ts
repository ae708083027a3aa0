import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { attach, randomFile, releaseKernelState, sha, shOk } from '../helpers/disk';

// FUSE over io_uring is used where the administrator switched it on
// (/sys/module/fuse/parameters/enable_uring) and nowhere else; these tests
// never flip the switch, they check what the daemon does in the state the
// machine is in (npm test is run with the switch on and off).
let sb: Sandbox;
const test = sandboxSuite('fuse over io_uring: used exactly where enable_uring is on', 'uring', (s) => (sb = s), releaseKernelState);

const MiB = 1 << 20;
const PARAM = '/sys/module/fuse/parameters/enable_uring';

function switchedOn(): boolean {
  try {
    return fs.readFileSync(PARAM, 'utf8').trim() === 'Y';
  } catch {
    return false; // a kernel without CONFIG_FUSE_IO_URING
  }
}

/** The daemon's io_uring instances and the completions each has seen (fdinfo CqHead). */
function rings(pid: number): number[] {
  const heads: number[] = [];
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (target !== 'anon_inode:[io_uring]') continue;
    heads.push(Number(/^CqHead:\s+(\d+)$/m.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))![1]));
  }
  return heads;
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.unreachable(`${what} within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Writes and reads a device (O_DIRECT, 4 KiB and 64 KiB, a partial last block) and checks every byte. */
function exercise(dev: string, img: string): void {
  const src = randomFile(path.join(sb.root, 'src'), 3 * MiB + 4096);
  shOk(`dd if=${src} of=${dev} bs=64k oflag=direct conv=notrunc status=none`);
  shOk(`dd if=${dev} of=${sb.root}/back bs=4k count=${(3 * MiB + 4096) / 4096} iflag=direct status=none`);
  assert.is(sha(path.join(sb.root, 'back')), sha(src));
  assert.is(sha(img, 0, 3 * MiB + 4096), sha(src), 'the backing file has what was written');
}

test('the I/O goes through rings exactly when enable_uring is on, and every byte is right', async () => {
  const on = switchedOn();
  const img = randomFile(path.join(sb.root, 'a.img'), 4 * MiB);
  const dev = attach(sb, img);
  const [pid] = sb.daemons();
  assert.ok(pid);
  exercise(dev, img);
  // Buffered I/O through the page cache, and a write crossing the end: short, as ever.
  shOk(`dd if=${img} of=${sb.root}/copy bs=1M status=none && cmp ${sb.root}/copy ${dev}`);
  const r = shOk(`head -c 8192 /dev/urandom | dd of=${dev} bs=8192 seek=${4 * MiB - 4096} oflag=direct,seek_bytes conv=notrunc 2>&1 || true`);
  assert.match(r, /No space left|4096 bytes/);
  if (on) {
    await until('a ring per I/O thread', () => rings(pid!).length > 0);
    // 48 reads of 64 KiB, at least one completion each.
    const before = rings(pid!).reduce((a, b) => a + b, 0);
    shOk(`dd if=${dev} of=/dev/null bs=64k count=48 iflag=direct status=none`);
    const after = rings(pid!).reduce((a, b) => a + b, 0);
    assert.ok(after - before >= 48, `completions on the daemon's rings: ${after - before} for 48 reads`);
  } else {
    assert.equal(rings(pid!), [], 'no io_uring where the switch is off');
  }
  sb.ok(['losetup', '-d', dev]);
});

test('LOOPFS_URING=0 keeps /dev/fuse whatever the switch says', async () => {
  sb.env.LOOPFS_URING = '0';
  const img = randomFile(path.join(sb.root, 'b.img'), 4 * MiB);
  const dev = attach(sb, img);
  const [pid] = sb.daemons();
  assert.ok(pid);
  exercise(dev, img);
  assert.equal(rings(pid!), []);
  sb.ok(['losetup', '-d', dev]);
});

test.run();
