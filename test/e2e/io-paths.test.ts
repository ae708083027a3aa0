import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { attach, py, randomFile, readRange, releaseKernelState, sha } from '../helpers/disk';

// SPEC §3 on the fast paths: requests of a bound device are served on the
// daemon's FUSE threads (no FUSE passthrough: the kernel would read the file
// at the file's size, not the device's). Reads past the end are end-of-file,
// writes past it ENOSPC and never grow the file, whatever mix of handles is
// open; readers see writers' bytes at once.
let sb: Sandbox;
const test = sandboxSuite('I/O paths: the FUSE threads keep the device rules', 'iop', (s) => (sb = s), releaseKernelState);

const MiB = 1 << 20;

/** Runs python with the device and file; prints one JSON object. */
function probe(code: string, dev: string, img: string): Record<string, unknown> {
  const r = py(`import os, sys, json, mmap, errno\ndev, img = sys.argv[1], sys.argv[2]\n${code}`, dev, img);
  assert.is(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

test('whole-file device: read-only and read-write handles at once; ENOSPC past the end, the file never grows', () => {
  const img = randomFile(path.join(sb.root, 'w.img'), 4 * MiB);
  const dev = attach(sb, img);
  const out = probe(`
rw0 = os.open(dev, os.O_RDWR)            # a writer, then a reader, then a writer: none fails (EIO)
ro = os.open(dev, os.O_RDONLY)
rw = os.open(dev, os.O_RDWR)
ro2 = os.open(dev, os.O_RDONLY | os.O_DIRECT)
os.close(rw0)
size = os.fstat(rw).st_size
os.pwrite(rw, b'A' * 4096, 8192)
seen = os.pread(ro, 4096, 8192) == b'A' * 4096          # a reader sees the write at once
buf = mmap.mmap(-1, 4096); os.preadv(ro2, [buf], 8192)
seen_direct = buf[:] == b'A' * 4096
m = mmap.mmap(ro, 0, prot=mmap.PROT_READ)
seen_mmap = m[8192:8192 + 4096] == b'A' * 4096 and len(m) == size
m.close()
def err(f):
    try:
        return f()
    except OSError as e:
        return errno.errorcode[e.errno]
print(json.dumps({
  'size': size, 'seen': seen, 'seenDirect': seen_direct, 'seenMmap': seen_mmap,
  'readEnd': len(os.pread(ro, 4096, size)), 'readCross': len(os.pread(ro, 8192, size - 4096)),
  'writeEnd': err(lambda: os.pwrite(rw, b'x' * 512, size)),
  'writeCross': err(lambda: os.pwrite(rw, b'y' * 1024, size - 512)),
  'writeFar': err(lambda: os.pwrite(rw, b'z', size + 10 * 4096)),
}))
`, dev, img);
  assert.equal(out, {
    size: 4 * MiB, seen: true, seenDirect: true, seenMmap: true, readEnd: 0, readCross: 4096,
    writeEnd: 'ENOSPC', writeCross: 512, writeFar: 'ENOSPC',
  });
  assert.is(fs.statSync(img).size, 4 * MiB, 'the backing file did not grow');
  assert.equal(readRange(img, 8192, 4096), Buffer.alloc(4096, 'A'));
  assert.equal(readRange(img, 4 * MiB - 512, 512), Buffer.alloc(512, 'y'));
});

test('whole-file device opened O_DIRECT first: later buffered and writable handles work beside it and agree', () => {
  const img = randomFile(path.join(sb.root, 'd.img'), 4 * MiB);
  const dev = attach(sb, img);
  const out = probe(`
d = os.open(dev, os.O_RDONLY | os.O_DIRECT)     # the first opener is O_DIRECT
ro = os.open(dev, os.O_RDONLY)
rw = os.open(dev, os.O_RDWR)
size = os.fstat(rw).st_size
os.pwrite(rw, b'D' * 8192, 65536)
buf = mmap.mmap(-1, 1 << 20); n = os.preadv(d, [buf], 0)
def err(f):
    try:
        return f()
    except OSError as e:
        return errno.errorcode[e.errno]
print(json.dumps({'n': n, 'direct': buf[65536:65536 + 8192] == b'D' * 8192, 'buffered': os.pread(ro, 8192, 65536) == b'D' * 8192,
  'end': err(lambda: os.pwrite(rw, b'x', size)), 'same': buf[:65536] == open(img, 'rb').read(65536)}))
`, dev, img);
  assert.equal(out, { n: MiB, direct: true, buffered: true, end: 'ENOSPC', same: true });
  assert.is(fs.statSync(img).size, 4 * MiB);
});

test('window device: threads clamp reads and writes to the window; bytes outside are untouched', () => {
  const img = randomFile(path.join(sb.root, 'win.img'), 4 * MiB);
  const before = [sha(img, 0, MiB), sha(img, 3 * MiB)];
  const dev = attach(sb, img, ['-o', String(MiB), '--sizelimit', String(2 * MiB)]);
  const out = probe(`
fd = os.open(dev, os.O_RDWR)
size = os.fstat(fd).st_size
def err(f):
    try:
        return f()
    except OSError as e:
        return errno.errorcode[e.errno]
w = os.pwrite(fd, b'B' * 8192, size - 4096)    # crosses the end: short
d = os.open(dev, os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 65536); buf.write(b'C' * 65536)
wd = os.pwritev(d, [buf], 0)
print(json.dumps({'size': size, 'w': w, 'wd': wd, 'end': err(lambda: os.pwrite(fd, b'x', size)),
  'readCross': len(os.pread(fd, 65536, size - 4096)), 'readEnd': len(os.pread(fd, 4096, size))}))
`, dev, img);
  assert.equal(out, { size: 2 * MiB, w: 4096, wd: 65536, end: 'ENOSPC', readCross: 4096, readEnd: 0 });
  assert.equal([sha(img, 0, MiB), sha(img, 3 * MiB)], before, 'nothing outside the window changed');
  assert.equal(readRange(img, MiB, 65536), Buffer.alloc(65536, 'C'));
  assert.equal(readRange(img, 3 * MiB - 4096, 4096), Buffer.alloc(4096, 'B'));
  assert.is(fs.statSync(img).size, 4 * MiB);
});

test('direct-I/O window: aligned requests O_DIRECT, odd ones buffered, all byte-exact and clamped', () => {
  const img = randomFile(path.join(sb.root, 'dio.img'), 4 * MiB);
  const before = sha(img, 0, 4096);
  const dev = attach(sb, img, ['--direct-io=on', '-o', '4096', '--sizelimit', String(2 * MiB)]);
  const out = probe(`
fd = os.open(dev, os.O_RDWR)
d = os.open(dev, os.O_RDWR | os.O_DIRECT)
size = os.fstat(fd).st_size
buf = mmap.mmap(-1, 131072); buf.write(bytes(range(256)) * 512)
a = os.pwritev(d, [buf], 65536)                  # aligned: the O_DIRECT descriptor
b = os.pwrite(fd, b'odd' * 1000, 1000)           # unaligned: the buffered one
c = os.pwrite(fd, b'E' * 8192, size - 4096)      # crosses the end: short
r = mmap.mmap(-1, 131072); n = os.preadv(d, [r], 65536)
def err(f):
    try:
        return f()
    except OSError as e:
        return errno.errorcode[e.errno]
print(json.dumps({'a': a, 'b': b, 'c': c, 'n': n, 'same': r[:] == buf[:], 'odd': os.pread(d, 4096, 0)[1000:4000] == b'odd' * 1000,
  'end': err(lambda: os.pwrite(fd, b'x', size)), 'readEnd': len(os.pread(fd, 4096, size))}))
`, dev, img);
  assert.equal(out, { a: 131072, b: 3000, c: 4096, n: 131072, same: true, odd: true, end: 'ENOSPC', readEnd: 0 });
  assert.is(sha(img, 0, 4096), before, 'the bytes before the window are untouched');
  assert.equal(readRange(img, 4096 + 65536, 256), Buffer.from(Array.from({ length: 256 }, (_, i) => i)));
  assert.equal(readRange(img, 4096 + 1000, 3000), Buffer.from('odd'.repeat(1000)));
  assert.equal(readRange(img, 4096 + 2 * MiB - 4096, 4096), Buffer.alloc(4096, 'E'));
  assert.is(fs.statSync(img).size, 4 * MiB);
});

test('read-only device: opens for writing, each write EPERM (as a kernel loop device), readers served', () => {
  const img = randomFile(path.join(sb.root, 'ro.img'), MiB);
  const dev = attach(sb, img, ['-r']);
  const out = probe(`
def err(f):
    try:
        return f()
    except OSError as e:
        return errno.errorcode[e.errno]
fd = os.open(dev, os.O_RDONLY)
rw = os.open(dev, os.O_RDWR)
print(json.dumps({'write': err(lambda: os.pwrite(rw, b'x' * 4096, 0)), 'same': os.pread(fd, 4096, 4096) == open(img, 'rb').read()[4096:8192]}))
`, dev, img);
  assert.equal(out, { write: 'EPERM', same: true });
});

test.run();
