import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { requiring, sandboxSuite } from '../helpers/e2e';
import { Sandbox, errnoOf, waitFor } from '../helpers/cli';
import { attach, q, randomFile, releaseKernelState, sh, sha, shOk } from '../helpers/disk';
import { straceMissing, traceDuring } from '../helpers/trace';

// SPEC §8: copy-on-write devices over a shared base (losetup --overlay, loopfs overlay).
let sb: Sandbox;
const test = sandboxSuite('overlay: copy-on-write devices over a shared base', 'overlay', (s) => (sb = s), releaseKernelState);
const withStrace = requiring(test, straceMissing);
const withFio = requiring(test, spawnSync('fio', ['--version']).error ? 'fio is missing (apt-get install fio; .ci/run installs it)' : undefined);

/** A 64 MiB ext4 image holding a few files (mke2fs -d). */
function goldenImage(name = 'golden.img'): string {
  const src = sb.dir('golden-src');
  fs.writeFileSync(path.join(src, 'motd'), 'golden\n');
  randomFile(path.join(src, 'blob'), 3 << 20);
  const img = path.join(sb.root, name);
  shOk(`truncate -s 64M ${q(img)} && mkfs.ext4 -q -F -d ${q(src)} ${q(img)}`);
  return img;
}

function exited(pid: number): boolean {
  try {
    return /^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return true;
  }
}

function fsckClean(dev: string, what: string): void {
  const r = sh(`e2fsck -fn ${q(dev)}`);
  assert.is(r.status, 0, `e2fsck -fn ${what}: ${r.stdout}${r.stderr}`);
}

test('mkfs, fsck and mount through an overlay: the job sees its changes, the base does not change, a second overlay of it sees none of them', () => {
  const img = goldenImage();
  const before = sha(img);
  const a = attach(sb, img, ['--overlay']);
  const b = attach(sb, img, ['--overlay']);
  fsckClean(a, 'on the overlay of the golden image');
  const ma = sb.dir('ma');
  const mb = sb.dir('mb');
  shOk(`mount -o loop ${q(a)} ${q(ma)}`);
  shOk(`mount -o loop ${q(b)} ${q(mb)}`);
  assert.is(fs.readFileSync(path.join(ma, 'motd'), 'utf8'), 'golden\n');
  fs.writeFileSync(path.join(ma, 'motd'), 'changed by a\n');
  randomFile(path.join(ma, 'new'), 5 << 20);
  fs.rmSync(path.join(ma, 'blob'));
  shOk(`sync -f ${q(path.join(ma, 'motd'))}`);
  // b, mounted at the same time, sees the base only
  assert.is(fs.readFileSync(path.join(mb, 'motd'), 'utf8'), 'golden\n');
  assert.not.ok(fs.existsSync(path.join(mb, 'new')));
  assert.ok(fs.existsSync(path.join(mb, 'blob')));
  shOk(`umount ${q(ma)}`);
  shOk(`umount ${q(mb)}`);
  fsckClean(a, 'on overlay a after the job');
  fsckClean(b, 'on overlay b');
  assert.is(sha(img), before, 'the base is unchanged');
  // and the job's changes are there when mounted again
  shOk(`mount -o loop,ro ${q(a)} ${q(ma)}`);
  assert.is(fs.readFileSync(path.join(ma, 'motd'), 'utf8'), 'changed by a\n');
  assert.not.ok(fs.existsSync(path.join(ma, 'blob')));
  shOk(`umount ${q(ma)}`);
  // a fresh filesystem made on b (mkfs discards the whole device first: masks the base)
  shOk(`mkfs.ext4 -q -F -L fresh ${q(b)}`);
  fsckClean(b, 'after mkfs');
  assert.is(shOk(`blkid -p -o value -s LABEL ${q(b)}`).trim(), 'fresh');
  assert.is(shOk(`blkid -p -o value -s LABEL ${q(img)} || true`).trim(), '', 'the base keeps its (empty) label');
  assert.is(sha(img), before, 'the base is unchanged');
  // the base was opened read-only: the device is writable all the same, and -l says nothing new by default
  const list = sb.ok(['losetup', '-l', '-n', '-O', 'NAME,RO,OVERLAY']);
  assert.match(list, new RegExp(`${a} +0 \\(temporary\\)`));
  assert.not.match(sb.ok(['losetup', '-l']), /temporary/);
  assert.not.match(sb.ok(['losetup', '-l', '--output-all']), /temporary/);
  sb.ok(['losetup', '-d', a, b]);
  assert.is(sha(img), before);
});

test('a named delta persists: write, detach, re-attach, the data is there; status, discard, commit', () => {
  const img = goldenImage();
  const before = sha(img);
  const delta = path.join(sb.root, 'job.delta');
  let dev = attach(sb, img, [`--overlay=${delta}`]);
  const data = randomFile(path.join(sb.root, 'data'), (1 << 20) + 12345);
  // at an odd offset: partial blocks at both ends
  shOk(`dd if=${q(data)} of=${q(dev)} bs=1M seek=5000000 oflag=seek_bytes conv=notrunc,fsync status=none`);
  const shown = sha(dev);
  sb.ok(['losetup', '-d', dev]);
  assert.is(sha(img), before);
  dev = attach(sb, img, [`--overlay=${delta}`]);
  assert.is(sha(dev), shown, 'the changes are back after re-attach');
  // status: text and JSON
  const st = JSON.parse(sb.ok(['overlay', 'status', '--json', dev])) as { overlays: { name: string; overlay: string; changed: number; 'block-size': number; allocated: number }[] };
  assert.is(st.overlays.length, 1);
  assert.is(st.overlays[0]!.overlay, delta);
  // 1 MiB + 12345 bytes at 5000000: the blocks it touched (4 KiB: 1220..1479), whole
  const bs = st.overlays[0]!['block-size'];
  assert.is(bs, 4096);
  const blocks = Math.floor((5000000 + (1 << 20) + 12345 - 1) / bs) - Math.floor(5000000 / bs) + 1;
  assert.is(st.overlays[0]!.changed, blocks * bs);
  assert.match(sb.ok(['overlay', 'status', dev]), new RegExp(`${delta}, ${blocks * bs} bytes changed \\(${blocks} blocks of ${bs} bytes\\)`));
  const json = JSON.parse(sb.ok(['losetup', '-J', '-O', 'NAME,OVERLAY,OVERLAY-CHANGED', dev])) as { loopdevices: Record<string, unknown>[] };
  assert.equal(json.loopdevices[0], { name: dev, overlay: delta, 'overlay-changed': blocks * bs });
  // a second device on the same delta: EBUSY
  const busy = sb.run(['losetup', '-f', '--show', `--overlay=${delta}`, img]);
  assert.is(busy.status, 1);
  assert.is(errnoOf(busy), 'EBUSY', busy.stderr);
  // discard: the device reads the base again, the base is unchanged
  sb.ok(['overlay', 'discard', dev]);
  assert.is(sha(dev), before);
  assert.is(sha(img), before);
  assert.is(JSON.parse(sb.ok(['overlay', 'status', '--json', dev])).overlays[0].changed, 0);
  // commit: the base becomes what the device showed
  shOk(`dd if=${q(data)} of=${q(dev)} bs=1M seek=5000000 oflag=seek_bytes conv=notrunc,fsync status=none`);
  const want = sha(dev);
  // not while another overlay holds the base
  const other = attach(sb, img, ['--overlay']);
  const refused = sb.run(['overlay', 'commit', dev]);
  assert.is(refused.status, 1);
  assert.is(errnoOf(refused), 'EBUSY', refused.stderr);
  assert.is(sha(img), before);
  sb.ok(['losetup', '-d', other]);
  // not while the device is open
  const fd = fs.openSync(dev, 'r');
  try {
    const open = sb.run(['overlay', 'commit', dev]);
    assert.is(errnoOf(open), 'EBUSY', open.stderr);
  } finally {
    fs.closeSync(fd);
  }
  assert.is(sha(img), before);
  // the kernel's RELEASE of that open reaches the daemon a moment later
  let done = false;
  for (let t = 0; t < 50 && !done; t++) {
    const c = sb.run(['overlay', 'commit', dev]);
    done = c.status === 0;
    if (!done) {
      assert.is(errnoOf(c), 'EBUSY', c.stderr);
      spawnSync('sleep', ['0.1']);
    }
  }
  assert.ok(done, 'commit once the device is closed');
  assert.is(sha(img), want, 'the base now holds what the device showed');
  assert.is(sha(dev), want);
  assert.is(JSON.parse(sb.ok(['overlay', 'status', '--json', dev])).overlays[0].changed, 0);
  fsckClean(img, 'on the committed base');
  sb.ok(['losetup', '-d', dev]);
  // a plain device is not an overlay
  const plain = attach(sb, img, ['-r']);
  const r = sb.run(['overlay', 'status', plain]);
  assert.is(r.status, 1);
  assert.is(errnoOf(r), 'EINVAL');
  sb.ok(['losetup', '-d', plain]);
});

test('windows (-o, --sizelimit) and partitions (-P) on an overlay', () => {
  const img = path.join(sb.root, 'parts.img');
  shOk(`truncate -s 32M ${q(img)}`);
  shOk(`printf 'label: dos\\n,8M,L\\n,,L\\n' | sfdisk -q ${q(img)}`);
  const before = sha(img);
  const dev = attach(sb, img, ['--overlay', '-P']);
  assert.ok(fs.existsSync(`${dev}p1`) && fs.existsSync(`${dev}p2`), 'partitions published');
  shOk(`mkfs.ext4 -q -F ${q(`${dev}p2`)}`);
  fsckClean(`${dev}p2`, 'on a partition of the overlay');
  assert.is(sha(img), before);
  const win = attach(sb, img, ['--overlay', '-o', '1MiB', '--sizelimit', '8MiB']);
  assert.is(fs.statSync(win).size, 8 << 20);
  shOk(`dd if=/dev/urandom of=${q(win)} bs=64k count=128 conv=fsync status=none`);
  const full = sh(`dd if=/dev/zero of=${q(win)} bs=512 count=1 seek=${(8 << 20) / 512} conv=notrunc status=none`);
  assert.match(full.stderr, /No space left on device/);
  assert.is(sha(img), before);
  sb.ok(['losetup', '-D']);
});

test('losetup -c on an overlay follows its base\'s size; the grown part reads the base', () => {
  const img = randomFile(path.join(sb.root, 'grow.img'), 4 << 20);
  const dev = attach(sb, img, ['--overlay']);
  shOk(`dd if=/dev/zero of=${q(dev)} bs=64k count=1 conv=fsync status=none`);
  randomFile(path.join(sb.root, 'tail'), 1 << 20);
  shOk(`cat ${q(path.join(sb.root, 'tail'))} >> ${q(img)}`);
  const before = sha(img);
  assert.is(fs.statSync(dev).size, 4 << 20, 'the size is fixed until -c');
  sb.ok(['losetup', '-c', dev]);
  assert.is(fs.statSync(dev).size, 5 << 20);
  assert.is(sha(dev, 4 << 20), sha(img, 4 << 20), 'the grown part reads the base');
  assert.is(sha(dev, 0, 65536), createHash('sha256').update(Buffer.alloc(65536)).digest('hex'), 'the overlay\'s change stays');
  assert.is(sha(img), before, 'the base is unchanged');
  sb.ok(['losetup', '-d', dev]);
});

test('bad input: --overlay outside set-up, an empty name, a delta that is not one, over another base', () => {
  const img = goldenImage();
  let r = sb.run(['losetup', '--overlay', '-d', 'loop0']);
  assert.is(r.status, 1);
  r = sb.run(['losetup', '-f', '--show', '--overlay=', img]);
  assert.is(r.status, 1);
  assert.is(errnoOf(r), 'EINVAL');
  const junk = randomFile(path.join(sb.root, 'junk'), 4096);
  r = sb.run(['losetup', '-f', '--show', `--overlay=${junk}`, img]);
  assert.is(r.status, 1);
  assert.is(errnoOf(r), 'EINVAL');
  assert.match(r.stderr, /not a loopfs overlay file/);
  const delta = path.join(sb.root, 'd.delta');
  const dev = attach(sb, img, [`--overlay=${delta}`]);
  sb.ok(['losetup', '-d', dev]);
  const other = path.join(sb.root, 'other.img');
  shOk(`truncate -s 64M ${q(other)}`);
  r = sb.run(['losetup', '-f', '--show', `--overlay=${delta}`, other]);
  assert.is(r.status, 1);
  assert.is(errnoOf(r), 'EINVAL');
  assert.match(r.stderr, /another base|base of/);
  assert.is(sb.ok(['losetup', '-a']), '', 'nothing half-made');
});

/**
 * SIGKILL of the daemon while a job writes files into an ext4 on an overlay
 * (fsync after each): afterwards the base is unchanged, the delta attaches
 * again, e2fsck replays the journal and finds the filesystem clean, and
 * every file whose fsync returned is there. LOOPFS_OVERLAY_KILL_ROUNDS
 * runs more rounds.
 */
test('SIGKILL of the daemon during heavy writes: the base unchanged, the delta re-attaches and fscks clean, fsync\'d files present', async () => {
  const img = goldenImage();
  const before = sha(img);
  const delta = path.join(sb.root, 'kill.delta');
  const mnt = sb.dir('kmnt');
  const rounds = Number(process.env.LOOPFS_OVERLAY_KILL_ROUNDS ?? 3);
  let total = 0;
  for (let round = 0; round < rounds; round++) {
    const acked = new Map<string, string>();
    const dev = attach(sb, img, [`--overlay=${delta}`]);
    shOk(`mount -o loop ${q(dev)} ${q(mnt)}`);
    // each line: a file whose data and directory entry were fsync'd, and its sha256
    const writer = spawn('python3', ['-c', `
import os, sys, hashlib
d, r = sys.argv[1], sys.argv[2]
# the files of earlier rounds were checked then: make room
for f in os.listdir(d):
    if f.startswith('r'): os.unlink(os.path.join(d, f))
i = 0
while True:
    data = os.urandom(65536 * (1 + i % 7) + 1000)
    p = os.path.join(d, 'r%s-%d' % (r, i))
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, data); os.fsync(fd); os.close(fd)
    dfd = os.open(d, os.O_RDONLY); os.fsync(dfd); os.close(dfd)
    print(os.path.basename(p), hashlib.sha256(data).hexdigest(), flush=True)
    i += 1
`, mnt, String(round)], { stdio: ['ignore', 'pipe', 'ignore'] });
    const closed = new Promise((r) => writer.on('close', r));
    let out = '';
    writer.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    // killed after a varying number of fsync'd files
    assert.ok(await waitFor(() => out.split('\n').length > 5 + (round % 4) * 4, 30_000), `round ${round}: the writer got going`);
    const [pid] = sb.daemons();
    process.kill(pid!, 'SIGKILL');
    // gone for good (its descriptors, and so its lock on the delta, closed): no /proc entry, or a zombie
    assert.ok(await waitFor(() => exited(pid!), 20_000), `round ${round}: the daemon exits`);
    writer.kill('SIGKILL');
    await closed;
    for (const line of out.split('\n')) {
      const [name, sum] = line.split(' ');
      if (name && sum && sum.length === 64) acked.set(name, sum);
    }
    spawnSync('umount', ['-l', mnt]);
    await waitFor(() => !fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${mnt} `));
    sb.ok(['gc']);
    assert.is(sha(img), before, `round ${round}: the base is unchanged`);
    // the kernel's loop device goes with its last user (autoclear)
    await waitFor(() => spawnSync('losetup', ['-j', dev]).stdout.length === 0, 10_000);
    const again = attach(sb, img, [`--overlay=${delta}`]);
    const fix = sh(`e2fsck -fy ${q(again)}`);
    assert.ok(fix.status === 0 || fix.status === 1, `round ${round}: e2fsck -fy ${fix.status}: ${fix.stdout}`);
    // A journal replay may modify the filesystem (status 1); a damaged journal is never what a crash leaves.
    assert.not.match(`${fix.stdout}${fix.stderr}`, /journal superblock is corrupt|journal .*(corrupt|invalid)/i, `round ${round}: e2fsck -fy: ${fix.stdout}`);
    fsckClean(again, `round ${round}: after journal replay`);
    shOk(`mount -o loop,ro ${q(again)} ${q(mnt)}`);
    try {
      for (const [name, sum] of acked) {
        const f = path.join(mnt, name);
        assert.ok(fs.existsSync(f), `round ${round}: fsync'd file ${name} is there`);
        assert.is(sha(f), sum, `round ${round}: fsync'd file ${name} holds its data`);
      }
    } finally {
      shOk(`umount ${q(mnt)}`);
    }
    sb.ok(['losetup', '-d', again]);
    // the kernel's loop device lets go of it a moment later (autoclear): then it unbinds and frees the delta
    assert.ok(await waitFor(() => sb.ok(['losetup', '-a']) === '', 20_000), `round ${round}: the device unbinds`);
    assert.ok(acked.size >= 5, `round ${round}: files were written (${acked.size})`);
    total += acked.size;
  }
  assert.ok(total >= 5 * rounds, `files were written (${total})`);
  assert.is(sha(img), before);
});

// An unnamed delta cannot be read back after a crash (no name; freed with the device or the daemon), so an fsync of
// its device flushes nothing; a named delta's fsync is an fdatasync of the delta (its data, then its bitmap).
withStrace('fsync of an overlay: an unnamed delta is never flushed, a named one is fdatasync\'d', async () => {
  const img = randomFile(path.join(sb.root, 'sync-base.img'), 4 << 20);
  const before = sha(img);
  const named = path.join(sb.root, 'sync.delta');
  const tmp = attach(sb, img, ['--overlay']);
  const kept = attach(sb, img, [`--overlay=${named}`]);
  const daemon = sb.daemons()[0]!;
  const fsync = (dev: string): void => void shOk(`dd if=/dev/urandom of=${q(dev)} bs=4k count=16 seek=3 conv=notrunc,fsync status=none`);
  const flushed = async (dev: string): Promise<string[]> => {
    const trace = await traceDuring(sb.root, daemon, 'fsync,fdatasync', () => fsync(dev));
    return [...trace.matchAll(/\b(?:fsync|fdatasync)\((\d+)\) += 0/g)].map((m) => fs.readlinkSync(`/proc/${daemon}/fd/${m[1]}`));
  };
  assert.equal(await flushed(tmp), [], 'nothing flushed for the unnamed delta');
  assert.ok((await flushed(kept)).includes(named), 'the named delta was flushed');
  assert.is(sha(img), before, 'the base is unchanged');
  sb.ok(['losetup', '-d', tmp, kept]);
});

withFio('fio verify on an overlay of a random base', () => {
  const img = randomFile(path.join(sb.root, 'random.img'), 64 << 20);
  const before = sha(img);
  const dev = attach(sb, img, ['--overlay']);
  const r = sh(`fio --name=ov --filename=${q(dev)} --rw=randwrite --bsrange=512-128k --direct=1 --size=48M --offset=4M --ioengine=psync --iodepth=1 --numjobs=1 --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --fsync=64 --output-format=terse`, { timeout: 300_000 });
  assert.is(r.status, 0, `fio: ${r.stdout}${r.stderr}`);
  // outside fio's range the device still reads the base
  assert.is(sha(dev, 0, 4 << 20), sha(img, 0, 4 << 20));
  assert.is(sha(dev, 52 << 20), sha(img, 52 << 20));
  assert.is(sha(img), before);
  sb.ok(['losetup', '-d', dev]);
});

withFio('2 KiB direct writes, 32 in flight, into the blocks of an overlay (several I/O threads at once): fio verifies them all, the rest reads the base', () => {
  const img = randomFile(path.join(sb.root, 'race.img'), 8 << 20);
  const before = sha(img);
  const dev = attach(sb, img, ['--overlay']);
  // Random order, 32 in flight (FUSE sends async direct writes at once): each 4 KiB overlay
  // block gets two halves, one of which copies it up, some while another thread writes the
  // other half (test/unit/engine-overlay-threads makes that race certain).
  const r = sh(`fio --name=race --filename=${q(dev)} --rw=randwrite --bs=2k --direct=1 --ioengine=libaio --iodepth=32 --size=6M --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --output-format=terse`, { timeout: 120_000 });
  assert.is(r.status, 0, `fio: ${r.stdout}${r.stderr}`);
  assert.is(sha(dev, 6 << 20), sha(img, 6 << 20), 'past fio\'s range: the base');
  assert.match(sb.ok(['overlay', 'status', dev]), / 6291456 bytes changed \(1536 blocks of 4096 bytes\)/);
  assert.is(sha(img), before, 'the base is unchanged');
  sb.ok(['losetup', '-d', dev]);
});

test('loopfs run with an overlay leaves nothing behind (no delta, no mount, no process)', () => {
  const img = goldenImage();
  const before = sha(img);
  const mnt = sb.dir('rmnt');
  sb.ok(['list']);
  const filesBefore = fs.readdirSync(sb.root).sort();
  const r = sb.run(['run', '--', 'sh', '-c', `d=$(loopfs losetup -f --show --overlay ${q(img)}) && mount -o loop $d ${q(mnt)} && dd if=/dev/urandom of=${q(mnt)}/x bs=1M count=8 conv=fsync status=none && umount ${q(mnt)} && loopfs overlay status $d`]);
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /\(temporary\), \d+ bytes changed/);
  assert.is(sha(img), before);
  assert.equal(fs.readdirSync(sb.root).sort(), filesBefore, 'no file left in the sandbox');
  assert.equal(sb.daemons(), []);
  assert.not.match(fs.readFileSync('/proc/self/mountinfo', 'utf8'), new RegExp(sb.root.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  // no process holds the base any more: a commit-style exclusive lock is free
  const lock = spawnSync('flock', ['-n', '-x', img, 'true']);
  assert.is(lock.status, 0, 'the base is not locked by anything left behind');
});

test.run();
