import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sandboxSuite, requiring } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { attach, kernelAttach, q, randomFile, releaseKernelState, shOk, sustainUntilThreads, threadsOf } from '../helpers/disk';
import { straceMissing, traceDuring } from '../helpers/trace';

// The I/O threads reply to a READ of a plain file range with splice(2)
// (fuse/splice.ts): the data goes from the page cache through a pipe into
// /dev/fuse. LOOPFS_SPLICE=0 in the daemon's environment turns it off. Seen
// here with strace on the daemon, and every byte checked against the file and
// a kernel loop device; the reads that splicing gives back to the ordinary
// path (a file that ends inside the request) answer as the kernel does.
// Splicing is for requests read from /dev/fuse: where the administrator
// switched FUSE over io_uring on, requests come in ring entries and are
// answered there (fuse-uring.test.ts), so these tests keep the daemon on
// /dev/fuse (LOOPFS_URING=0) whatever the switch says.
let sb: Sandbox;
const test = sandboxSuite('READ replies spliced from the backing file', 'splice', (s) => (sb = s), releaseKernelState);
const withStrace = requiring(test, straceMissing);

const MiB = 1 << 20;

/** The splice(2) calls the daemon `pid` makes while `work` runs. */
async function splicesDuring(pid: number, work: () => void): Promise<number> {
  return (await traceDuring(sb.root, pid, 'splice', work)).split('\n').filter((l) => /\bsplice\(/.test(l)).length;
}

for (const on of [true, false]) {
  withStrace(`${on ? 'by default' : 'not with LOOPFS_SPLICE=0'}: O_DIRECT and buffered reads of a whole-file device and a window at -o 512 ${on ? 'are' : 'are not'} spliced, every byte right`, async () => {
    sb.env.LOOPFS_URING = '0';
    if (!on) sb.env.LOOPFS_SPLICE = '0';
    const img = randomFile(path.join(sb.root, 'a.img'), 8 * MiB + 512);
    const whole = attach(sb, img);
    const win = attach(sb, img, ['-o', '512']);
    const kwin = kernelAttach(img, ['-o', '512']);
    const [pid] = sb.daemons();
    assert.ok(pid, 'the daemon runs');
    // Splicing is the I/O threads' (the main thread serves a light load without): a load starts them first.
    const before = threadsOf(pid!);
    sustainUntilThreads(pid!, whole, before + 4);
    assert.is(threadsOf(pid!), before + 4, 'the four I/O threads run');
    const n = await splicesDuring(pid!, () => {
      // 1 MiB O_DIRECT requests reach the daemon as 128 KiB READs; the buffered ones as read-ahead.
      shOk(`dd if=${q(whole)} of=${q(sb.root)}/direct bs=1M count=8 iflag=direct status=none`);
      shOk(`cmp -n ${8 * MiB} ${q(sb.root)}/direct ${q(img)}`);
      shOk(`dd if=${q(win)} of=${q(sb.root)}/window bs=1M iflag=direct status=none`);
      shOk(`cmp ${q(sb.root)}/window ${q(kwin)}`);
      shOk(`cmp ${q(whole)} ${q(img)}`);
    });
    if (on) assert.ok(n >= 2 * 64, `splice calls of the daemon: ${n} (at least two for each of 64 READs of 128 KiB)`);
    else assert.is(n, 0, 'no splice with LOOPFS_SPLICE=0');
    sb.ok(['losetup', '-d', whole, win]);
  });
}

// The file shrinks to 300 KiB + 100 while an O_DIRECT reader holds the device; READs of 128 KiB inside, across and
// past its end (splicing gives the ones across and past back to the ordinary path). Inside and past: what the kernel
// loop device answers (data; EIO). Across: the same count as the kernel, the file's bytes and then zeros (the
// engine's rule: engine/transfer.ts); the kernel's bytes after the end are neither the old data nor zeros here.
const END = 300 * 1024 + 100;
const SHRINK = `
import os, sys, json, hashlib, mmap, errno
dev, img, end = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = os.open(dev, os.O_RDONLY | os.O_DIRECT)
os.truncate(img, end)
b = mmap.mmap(-1, 131072)
out = {}
for pos in (0, 131072, 262144, 393216, 524288):
    try:
        n = os.preadv(d, [b], pos)
        out[str(pos)] = [n, hashlib.sha256(b[:n]).hexdigest()]
        if pos == 262144:
            open(sys.argv[4], 'wb').write(b[:n])
    except OSError as e:
        out[str(pos)] = errno.errorcode[e.errno]
print(json.dumps(out, sort_keys=True))
`;

test('a READ the shrunk file ends inside, or that starts past its end: as on a kernel loop device (EIO past it), zeros after the end', () => {
  const k = randomFile(path.join(sb.root, 'k.img'), MiB);
  const l = path.join(sb.root, 'l.img');
  fs.copyFileSync(k, l);
  const old = fs.readFileSync(l);
  shOk(`cat ${q(l)} > /dev/null`);
  const run = (dev: string, img: string, across: string): Record<string, [number, string] | string> => {
    const r = spawnSync('python3', ['-c', SHRINK, dev, img, String(END), across], { encoding: 'utf8', timeout: 60_000 });
    assert.is(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as Record<string, [number, string] | string>;
  };
  const kernel = run(kernelAttach(k), k, path.join(sb.root, 'k.across'));
  const mine = run(attach(sb, l), l, path.join(sb.root, 'l.across'));
  for (const pos of ['0', '131072', '393216', '524288']) assert.equal(mine[pos], kernel[pos], `read at ${pos}`);
  assert.is(kernel['393216'], 'EIO', 'the kernel fails a read past the file end');
  assert.is((mine['262144'] as [number, string])[0], (kernel['262144'] as [number, string])[0], 'the count of the read across the end');
  const across = fs.readFileSync(path.join(sb.root, 'l.across'));
  const inside = END - 262144;
  assert.ok(across.subarray(0, inside).equals(old.subarray(262144, END)), 'the file bytes up to its end');
  assert.ok(across.subarray(inside).equals(Buffer.alloc(131072 - inside)), 'zeros after the end');
});

test.run();
