import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { attach, kernelAttach, q, randomFile, releaseKernelState, sh, sha, shOk } from '../helpers/disk';

// SPEC §3, "the kernel wins": I/O at the edges of a device — its end, a
// backing file that grows or shrinks while it is attached, truncation, a
// read-only device opened for writing — gives what a kernel loop device
// (losetup -f --show …) over an identical file gives: the same byte counts,
// the same errnos, the same bytes in the backing file afterwards. Every case
// runs on both and the results are compared, never against a table.
let sb: Sandbox;
const test = sandboxSuite('I/O at the edges: a loopfs device does what a kernel loop device does', 'ioe', (s) => (sb = s), releaseKernelState);

const KiB = 1 << 10;
const MiB = 1 << 20;

interface Pair {
  kernel: string;
  loopfs: string;
  kFile: string;
  lFile: string;
}

let files = 0;

/** Two identical files, one on a kernel loop device and one on a loopfs device, both set up with `args`. */
function pair(size: number, args: string[] = [], prepare?: (file: string) => void): Pair {
  const n = files++;
  const kFile = randomFile(path.join(sb.root, `k${n}.img`), size);
  prepare?.(kFile);
  const lFile = path.join(sb.root, `l${n}.img`);
  fs.copyFileSync(kFile, lFile);
  return { kernel: kernelAttach(kFile, args), loopfs: attach(sb, lFile, args), kFile, lFile };
}

/** Runs python `code` with argv DEV IMG ...rest (and LOOPFS_RUNDIR of the sandbox); returns the JSON it prints. */
function probe(code: string, dev: string, img: string, ...rest: string[]): Record<string, unknown> {
  const r = spawnSync('python3', ['-c', `${PRELUDE}\n${code}`, dev, img, ...rest], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, LOOPFS_RUNDIR: sb.runDir },
  });
  assert.is(r.status, 0, `${dev}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

const PRELUDE = `
import os, sys, json, mmap, errno, ctypes, subprocess
dev, img = sys.argv[1], sys.argv[2]
def err(f):
    try:
        return f()
    except OSError as e:
        return errno.errorcode[e.errno]
def fill(n, c):
    b = mmap.mmap(-1, n)
    b.write(bytes([c]) * n)
    return b
def size_of(fd):
    return os.lseek(fd, 0, os.SEEK_END)
libc = ctypes.CDLL(None, use_errno=True)
def fallocate(fd, mode, off, n):
    if libc.fallocate(fd, mode, ctypes.c_long(off), ctypes.c_long(n)) == 0:
        return 0
    return errno.errorcode[ctypes.get_errno()]
`;

/** The same probe on both devices of a pair (`suffix`: a partition; `extra`: more argv); the results must be equal. Returns the kernel's. */
function same(code: string, p: Pair, label: string, suffix = '', extra: (dev: string, kernel: boolean) => string[] = () => []): Record<string, unknown> {
  const k = probe(code, p.kernel + suffix, p.kFile, ...extra(p.kernel + suffix, true));
  const l = probe(code, p.loopfs + suffix, p.lFile, ...extra(p.loopfs + suffix, false));
  assert.equal(l, k, `${label}: loopfs (left) against the kernel (right)`);
  return k;
}

/** Both backing files hold the same bytes (the same writes landed in the same places). */
function sameFiles(p: Pair, label: string): void {
  assert.is(fs.statSync(p.lFile).size, fs.statSync(p.kFile).size, `${label}: file sizes`);
  assert.is(sha(p.lFile), sha(p.kFile), `${label}: file contents (cmp)`);
}

/** dd's exit status and the byte count it reports copying. */
function dd(args: string): { status: number; copied: number } {
  const r = sh(`dd ${args}`);
  const m = /^(\d+) bytes/m.exec(r.stderr);
  assert.ok(m, `dd ${args}: ${r.stderr}`);
  return { status: r.status, copied: Number(m![1]) };
}

const EDGE = `
fd = os.open(dev, os.O_RDWR)
d = os.open(dev, os.O_RDWR | os.O_DIRECT)
size = size_of(fd)
out = {'size': size}
out['pwrite.cross'] = err(lambda: os.pwrite(fd, b'a' * 4096, size - 2048))
out['pwrite.end'] = err(lambda: os.pwrite(fd, b'b' * 512, size))
out['pwrite.far'] = err(lambda: os.pwrite(fd, b'c' * 512, size + 65536))
out['pwrite.empty.far'] = err(lambda: os.pwrite(fd, b'', size + 65536))
out['pread.cross'] = err(lambda: len(os.pread(fd, 4096, size - 2048)))
out['pread.end'] = err(lambda: len(os.pread(fd, 4096, size)))
out['direct.pwritev.4k.at.size-2048'] = err(lambda: os.pwritev(d, [fill(4096, 0x31)], size - 2048))
out['direct.pwritev.1m.at.size-4096'] = err(lambda: os.pwritev(d, [fill(MIB, 0x32)], size - 4096))
out['direct.pwritev.end'] = err(lambda: os.pwritev(d, [fill(4096, 0x33)], size))
r = mmap.mmap(-1, 8192)
out['direct.preadv.cross'] = err(lambda: os.preadv(d, [r], size - 4096))
out['direct.preadv.same'] = r[:4096] == b'\\x32' * 4096
out['direct.preadv.end'] = err(lambda: os.preadv(d, [r], size))
out['ftruncate.0'] = err(lambda: os.ftruncate(fd, 0))
out['ftruncate.size'] = err(lambda: os.ftruncate(fd, size))
out['truncate.path'] = err(lambda: os.truncate(dev, size // 2))
out['size.after'] = size_of(fd)
def mapped():
    m = mmap.mmap(d, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[4096:4100] = b'MMAP'
    m.flush()
    m.close()
    return os.pread(fd, 4, 4096) == b'MMAP'
out['direct.mmap.shared'] = err(mapped)
os.fsync(fd)
print(json.dumps(out))
`.replace('MIB', String(MiB));

test('the end of the device, whole, window and partition: short reads and writes buffered and O_DIRECT, ENOSPC past it, ftruncate EINVAL, dd copies what fits', () => {
  const src = randomFile(path.join(sb.root, 'src.bin'), 2 * MiB);
  const cases: { label: string; p: Pair; suffix: string }[] = [
    { label: 'whole 1.5 MiB', p: pair(1536 * KiB), suffix: '' },
    { label: 'window -o 1M --sizelimit 1.5M', p: pair(4 * MiB, ['-o', String(MiB), '--sizelimit', String(1536 * KiB)]), suffix: '' },
  ];
  const parted = pair(4 * MiB, ['-P'], (f) => shOk(`sfdisk -q ${q(f)}`, { input: 'label: dos\n2048,3072,L\n' }));
  // util-linux asks the kernel to scan; where it does not here, partx adds the partition the same way (BLKPG).
  if (!fs.existsSync(`${parted.kernel}p1`)) sh(`partx -a ${q(parted.kernel)}`);
  assert.ok(fs.existsSync(`${parted.kernel}p1`), `${parted.kernel}p1 exists`);
  cases.push({ label: 'partition p1 (1.5 MiB)', p: parted, suffix: 'p1' });
  try {
    for (const { label, p, suffix } of cases) {
      const k = same(EDGE, p, label, suffix);
      assert.is(k.size, 1536 * KiB, `${label}: the device's size`);
      sameFiles(p, `${label}, after the edge writes`);
      // dd of 2 MiB onto the 1.5 MiB device: O_DIRECT and buffered (O_TRUNC, as dd opens without conv=notrunc).
      for (const flags of ['oflag=direct conv=notrunc', 'oflag=direct', 'conv=notrunc', '']) {
        const mine = dd(`if=${q(src)} of=${q(p.loopfs + suffix)} bs=1M count=2 ${flags}`);
        const theirs = dd(`if=${q(src)} of=${q(p.kernel + suffix)} bs=1M count=2 ${flags}`);
        assert.equal(mine, theirs, `${label}: dd ${flags}`);
        assert.equal(theirs, { status: 1, copied: 1536 * KiB }, `${label}: dd ${flags} copies what fits (the kernel's answer)`);
        sameFiles(p, `${label}, after dd ${flags}`);
      }
      for (const cmd of ['truncate -s 0', 'truncate -s 1M']) {
        const mine = sh(`${cmd} ${q(p.loopfs + suffix)}`);
        const theirs = sh(`${cmd} ${q(p.kernel + suffix)}`);
        assert.is(mine.status, theirs.status, `${label}: ${cmd}`);
        assert.is(mine.stderr.replace(p.loopfs + suffix, 'DEV'), theirs.stderr.replace(p.kernel + suffix, 'DEV'), `${label}: ${cmd}`);
        assert.match(theirs.stderr, /Invalid argument/);
      }
      sameFiles(p, `${label}, at the end`);
    }
  } finally {
    sh(`partx -d ${q(parted.kernel)}`);
  }
});

const READ_ONLY = `
fd = os.open(dev, os.O_RDWR)
d = os.open(dev, os.O_WRONLY | os.O_DIRECT)
out = {'size': size_of(fd)}
out['open.wronly.trunc'] = err(lambda: os.close(os.open(dev, os.O_WRONLY | os.O_TRUNC)) or 'opened')
out['pwrite'] = err(lambda: os.pwrite(fd, b'x' * 4096, 0))
out['pwrite.far'] = err(lambda: os.pwrite(fd, b'x' * 4096, 1 << 30))
out['direct.pwritev'] = err(lambda: os.pwritev(d, [fill(4096, 1)], 0))
out['fsync'] = err(lambda: os.fsync(fd) or 0)
out['ftruncate'] = err(lambda: os.ftruncate(fd, 0))
out['punch'] = fallocate(fd, 3, 0, 4096)
out['zero'] = fallocate(fd, 16, 0, 4096)
off = int(sys.argv[3])
out['read'] = os.pread(fd, 4096, 4096) == open(img, 'rb').read()[off + 4096:off + 8192]
print(json.dumps(out))
`;

test('-r: the device opens for writing; each write, buffered or O_DIRECT, and each discard fails EPERM; the file is unchanged', () => {
  for (const [label, args, off] of [['whole', ['-r'], 0], ['window', ['-r', '-o', '8192', '--sizelimit', String(MiB)], 8192]] as const) {
    const p = pair(2 * MiB, [...args]);
    const before = sha(p.lFile);
    const k = same(READ_ONLY, p, label, '', () => [String(off)]);
    assert.equal([k['open.wronly.trunc'], k.pwrite, k['direct.pwritev'], k.read], ['opened', 'EPERM', 'EPERM', true], `${label}: the kernel's answers`);
    for (const flags of ['conv=notrunc', 'oflag=direct']) {
      const mine = sh(`dd if=/dev/zero of=${q(p.loopfs)} bs=4k count=1 ${flags}`);
      const theirs = sh(`dd if=/dev/zero of=${q(p.kernel)} bs=4k count=1 ${flags}`);
      assert.is(mine.status, theirs.status, `${label}: dd ${flags}`);
      assert.match(theirs.stderr, /Operation not permitted/);
      assert.match(mine.stderr, /Operation not permitted/, `${label}: dd ${flags}: ${mine.stderr}`);
    }
    assert.is(sha(p.lFile), before, `${label}: the file is unchanged`);
    sameFiles(p, label);
  }
});

const FALLOCATE = `
fd = os.open(dev, os.O_RDWR)
size = size_of(fd)
out = {}
for name, mode, off, n in [('0', 0, 0, 4096), ('keep', 1, 0, 4096), ('punch', 2, 0, 4096), ('punch|keep', 3, 8192, 4096),
        ('zero', 16, 16384, 4096), ('zero|keep', 17, 24576, 4096), ('odd start', 3, 100, 4096), ('odd length', 3, 0, 1000),
        ('at the end', 3, size, 4096), ('crossing', 3, size - 4096, 8192), ('crossing, odd length', 17, size - 8192, 9000),
        ('zero crossing without keep', 16, size - 4096, 8192), ('collapse', 8, 0, 4096)]:
    out[name] = fallocate(fd, mode, off, n)
out['read'] = err(lambda: os.pread(fd, 4096, 8192) == bytes(4096))
os.fsync(fd)
print(json.dumps(out))
`;

test('fallocate: the modes, ranges and errnos of a block device; what it zeroes reads as zeros in the file', () => {
  const p = pair(MiB + 512 * 3, ['-o', '512']);
  const k = same(FALLOCATE, p, 'window -o 512');
  assert.is(k['punch|keep'], 0);
  // The punched ranges read as zeros in both files; the rest is untouched.
  for (const f of [p.kFile, p.lFile]) assert.is(sh(`cmp -n 4096 -i 8704:0 ${q(f)} /dev/zero`).status, 0, f);
  sameFiles(p, 'after fallocate');
});

// A file that shrinks to `off` + 300000 bytes while its device (1 MiB, from `off`) is open, then grows by 3 MiB;
// `losetup -c` (the JSON argv[4], run here) between. Reads use POSIX_FADV_RANDOM: each reads only the pages it asks for,
// so the result does not hang on how far the kernel or FUSE reads ahead.
const GROW_SHRINK = `
off = int(sys.argv[3]); capacity = json.loads(sys.argv[4])
END = off + 300000
held = os.open(dev, os.O_RDONLY)
os.posix_fadvise(held, 0, 0, os.POSIX_FADV_RANDOM)
size = size_of(held)
old = open(img, 'rb').read()
out = {'size': size}
os.truncate(img, END)
def rd(fd, n, pos):
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    r = err(lambda: os.pread(fd, n, pos))
    if isinstance(r, str):
        return r
    inside = max(0, min(len(r), END - off - pos))
    return [len(r), r[:inside] == old[off + pos:off + pos + inside]]
out['shrunk.held.size'] = size_of(held)
out['shrunk.held.read.before'] = rd(held, 4096, 290816)
out['shrunk.held.read.crossing'] = rd(held, 4096, 299008 - off % 4096)
out['shrunk.held.read.past'] = rd(held, 4096, 360448)
fd = err(lambda: os.open(dev, os.O_RDONLY))
out['shrunk.open'] = 'opened' if isinstance(fd, int) else fd
out['shrunk.size'] = size_of(fd)
out['shrunk.read.past'] = rd(fd, 4096, 401408)
out['shrunk.read.last'] = rd(fd, 4096, size - 4096)
d = os.open(dev, os.O_RDONLY | os.O_DIRECT)
b = mmap.mmap(-1, 4096)
out['shrunk.direct.read.past'] = err(lambda: os.preadv(d, [b], 401408))
out['shrunk.direct.read.crossing'] = err(lambda: os.preadv(d, [b], 299008 - off % 4096))
w = os.open(dev, os.O_RDWR)
out['shrunk.write.past.file'] = err(lambda: os.pwrite(w, b'W' * 4096, 466944))
os.fsync(w)
out['shrunk.file.size.after.write'] = os.stat(img).st_size
out['shrunk.read.written'] = os.pread(fd, 4096, 466944) == b'W' * 4096
out['shrunk.read.hole'] = err(lambda: os.pread(fd, 4096, 434176) == bytes(4096))
with open(img, 'ab') as f:
    f.write(bytes(range(256)) * (3 * 4096))
out['grown.held.size'] = size_of(held)
fd2 = err(lambda: os.open(dev, os.O_RDONLY))
out['grown.open'] = 'opened' if isinstance(fd2, int) else fd2
out['grown.size'] = size_of(fd2)
out['grown.read.at.size'] = err(lambda: len(os.pread(fd2, 4096, size)))
out['grown.direct.read.at.size'] = err(lambda: os.preadv(d, [b], size))
out['grown.write.at.size'] = err(lambda: os.pwrite(w, b'x', size))
out['grown.file.size'] = os.stat(img).st_size
r = subprocess.run(capacity, capture_output=True, text=True)
out['capacity.status'] = r.returncode
out['capacity.held.size'] = size_of(held)
fd3 = os.open(dev, os.O_RDONLY)
out['capacity.size'] = size_of(fd3)
now = open(img, 'rb').read()
out['capacity.read.at.old.size'] = os.pread(fd3, 8192, size) == now[off + size:off + size + 8192]
out['capacity.read.at.old.size.held'] = os.pread(held, 8192, size) == now[off + size:off + size + 8192]
os.truncate(img, off + 512 * 1000 + 100)
r = subprocess.run(capacity, capture_output=True, text=True)
out['capacity.shrunk.status'] = r.returncode
out['capacity.shrunk.size'] = size_of(held), size_of(os.open(dev, os.O_RDONLY))
out['capacity.shrunk.read.at.end'] = len(os.pread(held, 4096, 512 * 1000))
print(json.dumps(out))
`;

test('the backing file shrinks and grows under open devices (whole and windows): the size stays until losetup -c, opens work, reads past the file end and writes into it as on a kernel loop device', () => {
  for (const [label, size, args, off] of [
    ['whole', MiB, [], 0],
    ['window -o 4096', MiB + 4096, ['-o', '4096'], 4096],
    ['window -o 512 --sizelimit 1M', 2 * MiB, ['-o', '512', '--sizelimit', String(MiB)], 512],
  ] as const) {
    const p = pair(size, [...args]);
    const k = same(GROW_SHRINK, p, label, '', (dev, kernel) => [String(off), JSON.stringify(kernel ? ['losetup', '-c', dev] : [...sb.bin, 'losetup', '-c', dev])]);
    // What the kernel answers, for the record (the comparison above is the test).
    assert.equal([k['shrunk.open'], k['shrunk.size'], k['grown.size'], k['capacity.status']], ['opened', MiB, MiB, 0], label);
    sameFiles(p, label);
  }
});

test('issue 9 item 5: a reader holds the device, the file grows by a line, cat reads the whole device, as on the kernel', () => {
  const p = pair(MiB);
  const run = (dev: string, file: string): string => shOk(`exec 3<${q(dev)}; echo x >> ${q(file)}; cat ${q(dev)} | wc -c; exec 3<&-; cat ${q(dev)} | wc -c`);
  assert.is(run(p.loopfs, p.lFile), run(p.kernel, p.kFile));
  assert.is(run(p.kernel, p.kFile).trim(), `${MiB}\n${MiB}`);
});

// Writers of one device at once (each thread its own O_DIRECT descriptor): interleaved
// 4 KiB and 64 KiB writes to distinct blocks, while another thread writes across the
// end over and over; then the same bytes in both files and the same counts.
const PARALLEL = `
import threading
size = size_of(os.open(dev, os.O_RDONLY))
out = {}
def writer(i):
    d = os.open(dev, os.O_RDWR | os.O_DIRECT)
    n = []
    for k in range(64):
        blk = (k * 8 + i) * 65536
        n.append(os.pwritev(d, [fill(4096 if k % 2 else 65536, 0x40 + i)], blk))
    os.close(d)
    out['writer%d' % i] = n
def crosser():
    d = os.open(dev, os.O_RDWR | os.O_DIRECT)
    out['cross'] = sorted(set(err(lambda: os.pwritev(d, [fill(8192, 0x60 + k)], size - 4096)) for k in range(32)))
    os.close(d)
ts = [threading.Thread(target=writer, args=(i,)) for i in range(6)] + [threading.Thread(target=crosser)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out, sort_keys=True))
`;

test('several O_DIRECT writers of one device at once (whole and window; one crossing the end): the same counts and bytes as on a kernel loop device', () => {
  for (const [label, args] of [['whole', []], ['window -o 1M', ['-o', String(MiB)]]] as const) {
    const p = pair(33 * MiB, [...args]);
    const k = same(PARALLEL, p, label);
    assert.equal(k.cross, [4096], `${label}: the kernel's count for a write across the end`);
    sameFiles(p, label);
  }
});

test.run();
