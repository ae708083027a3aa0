"""One sequence of loop and block ioctls, good and bad, on a free device of
either a kernel loop-control (/dev/loop-control /dev) or a loopfs instance
(DIR/loop-control DIR). Prints one JSON list of [step, result]: the same
sequence on both must print the same list.
usage: loop_errnos.py CONTROL DEVDIR WORKDIR"""
import ctypes, json, mmap, os, socket, struct, sys, fcntl
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopdev import *

ctl_path, dev_dir, work = sys.argv[1:4]
img_path = os.path.join(work, 'errnos.img')
with open(img_path, 'wb') as f:
    f.truncate(8 << 20)
same = os.path.join(work, 'errnos-same.img')
with open(same, 'wb') as f:
    f.truncate(8 << 20)
out = []


def step(label, f):
    r = try_(f)
    if isinstance(r, bytes):
        r = 'ok'
    out.append([label, r])
    return r


BAD = 8  # an address no process maps
# Memory with edges: a struct running off the end of a mapping, a read-only page.
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PAGE = mmap.PAGESIZE
base = libc.mmap(None, 3 * PAGE, 3, 0x22, -1, 0)  # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
libc.munmap(base + PAGE, PAGE)
EDGE = base + PAGE - 100
READONLY = base + 2 * PAGE
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect(READONLY, PAGE, 1)
img = os.open(img_path, os.O_RDWR)
d = os.open(work, os.O_RDONLY)
s = socket.socket(socket.AF_UNIX)
zero = os.open('/dev/zero', os.O_RDWR)
opath = os.open(img_path, os.O_PATH)
dead = 900  # a descriptor number nothing here opens
os.dup2(img, dead)
os.close(dead)

n, fd = own_device(ctl_path, dev_dir)
try:
    # Unbound.
    for name, cmd, arg in [('GET_STATUS64', LOOP_GET_STATUS64, bytes(232)), ('GET_STATUS', LOOP_GET_STATUS, bytes(168)),
                           ('CLR_FD', LOOP_CLR_FD, 0), ('SET_STATUS64', LOOP_SET_STATUS64, bytes(232)),
                           ('SET_STATUS', LOOP_SET_STATUS, bytes(168)), ('SET_CAPACITY', LOOP_SET_CAPACITY, 0),
                           ('SET_DIRECT_IO', LOOP_SET_DIRECT_IO, 1), ('SET_BLOCK_SIZE 1000', LOOP_SET_BLOCK_SIZE, 1000),
                           ('CHANGE_FD', LOOP_CHANGE_FD, img), ('GET_STATUS64 NULL', LOOP_GET_STATUS64, 0),
                           ('SET_STATUS64 garbage pointer', LOOP_SET_STATUS64, BAD), ('unknown 0x4C0B', 0x4C0B, 0),
                           ('unknown 0x1234', 0x1234, 0), ('HDIO_GETGEO', HDIO_GETGEO, bytes(16)), ('BLKRRPART', BLKRRPART, 0),
                           ('BLKDISCARD', BLKDISCARD, struct.pack('QQ', 0, 4096))]:
        step('unbound ' + name, lambda: fcntl.ioctl(fd, cmd, arg))
    for name, cmd, size in [('BLKGETSIZE64', BLKGETSIZE64, 8), ('BLKGETSIZE', BLKGETSIZE, 8), ('BLKSSZGET', BLKSSZGET, 4),
                            ('BLKPBSZGET', BLKPBSZGET, 4), ('BLKBSZGET', BLKBSZGET, 8), ('BLKROGET', BLKROGET, 4),
                            ('BLKIOMIN', BLKIOMIN, 4), ('BLKIOOPT', BLKIOOPT, 4)]:
        step('unbound ' + name, lambda: fcntl.ioctl(fd, cmd, bytes(size)).hex())
    # Descriptors that are not a backing file.
    step('SET_FD dead fd', lambda: fcntl.ioctl(fd, LOOP_SET_FD, dead))
    step('SET_FD fd 99999', lambda: fcntl.ioctl(fd, LOOP_SET_FD, 99999))
    step('SET_FD directory', lambda: fcntl.ioctl(fd, LOOP_SET_FD, d))
    step('SET_FD socket', lambda: fcntl.ioctl(fd, LOOP_SET_FD, s.fileno()))
    step('SET_FD /dev/zero', lambda: fcntl.ioctl(fd, LOOP_SET_FD, zero))
    step('SET_FD O_PATH', lambda: fcntl.ioctl(fd, LOOP_SET_FD, opath))
    step('SET_FD the device itself', lambda: fcntl.ioctl(fd, LOOP_SET_FD, fd))
    # Bad LOOP_CONFIGURE structs.
    step('CONFIGURE garbage pointer', lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, BAD))
    step('CONFIGURE dead fd', lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, config(dead)))
    step('CONFIGURE flags 2', lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, config(img, flags=2)))
    step('CONFIGURE block size 1000', lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, config(img, 1000)))
    step('CONFIGURE block size 256', lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, config(img, 256)))
    step('CONFIGURE block size 131072', lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, config(img, 131072)))
    step('CONFIGURE encryption', lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, config(img, enc=1)))
    step('CONFIGURE key size 33', lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, config(img, keysz=33)))
    step('CONFIGURE offset 2^63', lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, config(img, offset=1 << 63)))
    ctypes.memmove(EDGE, config(img)[:100], 100)
    step('CONFIGURE struct across the end of a mapping', lambda: raw_ioctl(fd, LOOP_CONFIGURE, EDGE))
    step('GET_STATUS64 after failures', lambda: get64(fd))
    # Bound.
    step('SET_FD', lambda: fcntl.ioctl(fd, LOOP_SET_FD, img))
    step('SET_FD again', lambda: fcntl.ioctl(fd, LOOP_SET_FD, img))
    step('SET_FD again dead fd', lambda: fcntl.ioctl(fd, LOOP_SET_FD, dead))
    step('CONFIGURE bound flags 2', lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, config(img, flags=2)))
    step('SET_FD bound directory', lambda: fcntl.ioctl(fd, LOOP_SET_FD, d))
    step('GET_STATUS64 garbage pointer', lambda: fcntl.ioctl(fd, LOOP_GET_STATUS64, BAD))
    step('GET_STATUS64 NULL', lambda: fcntl.ioctl(fd, LOOP_GET_STATUS64, 0))
    step('SET_STATUS64 garbage pointer', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS64, BAD))
    step('GET_STATUS64 into a read-only page', lambda: raw_ioctl(fd, LOOP_GET_STATUS64, READONLY))
    step('GET_STATUS64 across the end of a mapping', lambda: raw_ioctl(fd, LOOP_GET_STATUS64, EDGE))
    step('BLKSSZGET into a read-only page', lambda: raw_ioctl(fd, BLKSSZGET, READONLY))
    step('SET_DIRECT_IO 1', lambda: fcntl.ioctl(fd, LOOP_SET_DIRECT_IO, 1))
    step('flags with direct I/O', lambda: get64(fd)['flags'])
    step('SET_DIRECT_IO 0', lambda: fcntl.ioctl(fd, LOOP_SET_DIRECT_IO, 0))
    st = os.stat(img_path)

    def status():
        i = get64(fd)
        i['device'] = i['device'] == huge_encode_dev(st.st_dev)
        i['inode'] = i['inode'] == st.st_ino
        del i['number']
        return i
    step('status after SET_FD', status)
    step('SET_STATUS64 non-terminated name, all flags', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS64, info64(
        offset=4096, sizelimit=(1 << 20) + 100, flags=0xff, name=b'y' * 64)))
    step('status', status)
    step('size', lambda: u64(fd, BLKGETSIZE64))
    step('SET_STATUS64 encryption', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS64, info64(enc=1)))
    step('SET_STATUS64 key size 33', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS64, info64(keysz=33)))
    step('SET_STATUS64 offset 2^63', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS64, info64(offset=1 << 63)))
    step('status unchanged', status)
    step('SET_STATUS64 offset past the end', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS64, info64(offset=1 << 40)))
    step('size past the end', lambda: u64(fd, BLKGETSIZE64))
    step('SET_STATUS64 odd offset', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS64, info64(offset=1000)))
    step('size odd offset', lambda: u64(fd, BLKGETSIZE64))
    step('GET_STATUS old', lambda: decode_old(fcntl.ioctl(fd, LOOP_GET_STATUS, bytes(168)))['offset'])
    step('SET_STATUS old', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS, info_old(offset=512, flags=LO_FLAGS_AUTOCLEAR, name=b'old')))
    step('status after old', status)
    step('SET_STATUS old negative offset', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS, info_old(offset=-512)))
    step('SET_STATUS64 offset 2^32', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS64, info64(offset=1 << 32)))
    step('GET_STATUS old overflow', lambda: fcntl.ioctl(fd, LOOP_GET_STATUS, bytes(168)))
    step('SET_STATUS64 back', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS64, info64()))
    step('CHANGE_FD read-write device', lambda: fcntl.ioctl(fd, LOOP_CHANGE_FD, img))
    for bs in (1000, 4096, 131072, 65536, 512):
        step('SET_BLOCK_SIZE %d' % bs, lambda: fcntl.ioctl(fd, LOOP_SET_BLOCK_SIZE, bs))
    step('SET_CAPACITY', lambda: fcntl.ioctl(fd, LOOP_SET_CAPACITY))
    os.truncate(img_path, 12 << 20)
    step('size before SET_CAPACITY of a grown file', lambda: u64(fd, BLKGETSIZE64))
    step('SET_CAPACITY of a grown file', lambda: fcntl.ioctl(fd, LOOP_SET_CAPACITY))
    step('size after', lambda: u64(fd, BLKGETSIZE64))
    step('end seen through the same descriptor', lambda: os.lseek(fd, 0, os.SEEK_END))
    step('read in the grown part', lambda: len(os.pread(fd, 4096, (12 << 20) - 4096)))
    os.truncate(img_path, 8 << 20)
    step('SET_CAPACITY of a shrunk file', lambda: fcntl.ioctl(fd, LOOP_SET_CAPACITY))
    step('size shrunk', lambda: u64(fd, BLKGETSIZE64))
    step('read past the new end', lambda: len(os.pread(fd, 4096, (12 << 20) - 4096)))
    for name, cmd, size in [('BLKGETSIZE64', BLKGETSIZE64, 8), ('BLKGETSIZE', BLKGETSIZE, 8), ('BLKSSZGET', BLKSSZGET, 4),
                            ('BLKPBSZGET', BLKPBSZGET, 4), ('BLKBSZGET', BLKBSZGET, 8), ('BLKROGET', BLKROGET, 4),
                            ('BLKIOMIN', BLKIOMIN, 4), ('BLKIOOPT', BLKIOOPT, 4), ('BLKALIGNOFF', 0x127A, 4),
                            ('BLKDISCARDZEROES', 0x127C, 4)]:
        step('bound ' + name, lambda: fcntl.ioctl(fd, cmd, bytes(size)).hex())
        step('bound %s garbage pointer' % name, lambda: fcntl.ioctl(fd, cmd, BAD))
    step('BLKRRPART without partscan', lambda: fcntl.ioctl(fd, BLKRRPART))
    step('BLKFLSBUF', lambda: fcntl.ioctl(fd, BLKFLSBUF))
    step('HDIO_GETGEO', lambda: fcntl.ioctl(fd, HDIO_GETGEO, bytes(16)))
    step('unknown 0x1234', lambda: fcntl.ioctl(fd, 0x1234))
    os.pwrite(fd, b'\xaa' * 8192, 0)
    for label, rng in [('ok', (0, 4096)), ('odd start', (1, 4096)), ('len 0', (0, 0)), ('past end', (0, 1 << 40)),
                       ('512 at 512', (512, 512)), ('last sector', ((8 << 20) - 512, 512)), ('over the end', ((8 << 20) - 512, 1024)),
                       ('wrapping', ((1 << 64) - 512, 1024))]:
        step('BLKDISCARD ' + label, lambda: fcntl.ioctl(fd, BLKDISCARD, struct.pack('QQ', *rng)))
        step('BLKZEROOUT ' + label, lambda: fcntl.ioctl(fd, BLKZEROOUT, struct.pack('QQ', *rng)))
    step('zeroed', lambda: os.pread(fd, 8192, 0) == bytes(8192))
    step('BLKDISCARD garbage pointer', lambda: fcntl.ioctl(fd, BLKDISCARD, BAD))
    step('BLKZEROOUT garbage pointer', lambda: fcntl.ioctl(fd, BLKZEROOUT, BAD))
    step('BLKROSET garbage pointer', lambda: fcntl.ioctl(fd, BLKROSET, BAD))
    step('BLKROSET 5', lambda: fcntl.ioctl(fd, BLKROSET, struct.pack('i', 5)))
    step('BLKROGET', lambda: u32(fd, BLKROGET))
    step('write after BLKROSET', lambda: os.pwrite(fd, b'x' * 4096, 0))
    step('BLKDISCARD read-only', lambda: fcntl.ioctl(fd, BLKDISCARD, struct.pack('QQ', 0, 4096)))
    step('BLKZEROOUT read-only', lambda: fcntl.ioctl(fd, BLKZEROOUT, struct.pack('QQ', 0, 4096)))
    step('status flags after BLKROSET', lambda: get64(fd)['flags'])
    step('BLKROSET 0', lambda: fcntl.ioctl(fd, BLKROSET, struct.pack('i', 0)))
    step('write after BLKROSET 0', lambda: os.pwrite(fd, b'x' * 4096, 0))
    ro = os.open(os.path.join(dev_dir, 'loop%d' % n), os.O_RDONLY)
    step('read-only entry BLKDISCARD', lambda: fcntl.ioctl(ro, BLKDISCARD, struct.pack('QQ', 0, 4096)))
    step('read-only entry BLKZEROOUT', lambda: fcntl.ioctl(ro, BLKZEROOUT, struct.pack('QQ', 0, 4096)))
    step('read-only entry CLR_FD (another opener: autoclear)', lambda: fcntl.ioctl(ro, LOOP_CLR_FD))
    step('flags after CLR_FD with two openers', lambda: get64(fd)['flags'])
    os.close(ro)
    step('CLR_FD, the only opener', lambda: fcntl.ioctl(fd, LOOP_CLR_FD))
    step('GET_STATUS64 after CLR_FD', lambda: get64(fd))
finally:
    os.close(fd)
# A read-only entry binds read-only; CHANGE_FD rules.
path = os.path.join(dev_dir, 'loop%d' % n)
step('unbound after close', lambda: wait_unbound(path))
fd = os.open(path, os.O_RDONLY)
try:
    step('read-only entry SET_FD', lambda: fcntl.ioctl(fd, LOOP_SET_FD, img))
    step('flags', lambda: get64(fd)['flags'])
    step('BLKROGET', lambda: u32(fd, BLKROGET))
    step('BLKROSET 0 on a read-only device', lambda: fcntl.ioctl(fd, BLKROSET, struct.pack('i', 0)))
    step('BLKROGET still', lambda: u32(fd, BLKROGET))
    other = os.open(same, os.O_RDONLY)
    step('CHANGE_FD dead fd', lambda: fcntl.ioctl(fd, LOOP_CHANGE_FD, dead))
    step('CHANGE_FD directory', lambda: fcntl.ioctl(fd, LOOP_CHANGE_FD, d))
    step('CHANGE_FD same size', lambda: fcntl.ioctl(fd, LOOP_CHANGE_FD, other))
    step('inode now the other file', lambda: get64(fd)['inode'] == os.stat(same).st_ino)
    os.truncate(same, 4 << 20)
    # The sizes compared are both the files' sizes now: the bound file shrank too.
    step('CHANGE_FD after both shrank', lambda: fcntl.ioctl(fd, LOOP_CHANGE_FD, os.open(same, os.O_RDONLY)))
    step('CHANGE_FD other size', lambda: fcntl.ioctl(fd, LOOP_CHANGE_FD, os.open(img_path, os.O_RDONLY)))
    step('CLR_FD', lambda: fcntl.ioctl(fd, LOOP_CLR_FD))
finally:
    os.close(fd)
step('unbound again', lambda: wait_unbound(path))
# BLKROSET is the block device's flag: it outlives bindings.
fd = os.open(path, os.O_RDWR)
try:
    step('BLKROSET 1 unbound', lambda: fcntl.ioctl(fd, BLKROSET, struct.pack('i', 1)))
    step('SET_FD after BLKROSET', lambda: fcntl.ioctl(fd, LOOP_SET_FD, img))
    step('BLKROGET bound', lambda: u32(fd, BLKROGET))
    step('flags bound', lambda: get64(fd)['flags'])
    step('write bound', lambda: os.pwrite(fd, b'x' * 512, 0))
    step('CLR_FD', lambda: fcntl.ioctl(fd, LOOP_CLR_FD))
    step('BLKROGET unbound again', lambda: u32(fd, BLKROGET))
    step('BLKROSET 0', lambda: fcntl.ioctl(fd, BLKROSET, struct.pack('i', 0)))
finally:
    os.close(fd)
step('unbound at the end', lambda: wait_unbound(path))
step('LOOP_CTL_REMOVE', lambda: remove_device(ctl_path, n))
print(json.dumps(out))
