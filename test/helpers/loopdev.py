"""The loop and block ioctls from python, for tests that run the same steps on a
kernel loop device and on a loopfs entry. Values from include/uapi/linux/loop.h
and fs.h; struct layouts of x86-64."""
import errno, fcntl, os, struct, time

LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS, LOOP_GET_STATUS, LOOP_SET_STATUS64, LOOP_GET_STATUS64, \
    LOOP_CHANGE_FD, LOOP_SET_CAPACITY, LOOP_SET_DIRECT_IO, LOOP_SET_BLOCK_SIZE, LOOP_CONFIGURE = range(0x4C00, 0x4C0B)
LOOP_CTL_ADD, LOOP_CTL_REMOVE, LOOP_CTL_GET_FREE = 0x4C80, 0x4C81, 0x4C82
LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR, LO_FLAGS_PARTSCAN, LO_FLAGS_DIRECT_IO = 1, 4, 8, 16
BLKROSET, BLKROGET, BLKRRPART, BLKGETSIZE, BLKFLSBUF = 0x125D, 0x125E, 0x125F, 0x1260, 0x1261
BLKSSZGET, BLKBSZGET, BLKGETSIZE64 = 0x1268, 0x80081270, 0x80081272
BLKDISCARD, BLKIOMIN, BLKIOOPT, BLKPBSZGET, BLKZEROOUT = 0x1277, 0x1278, 0x1279, 0x127B, 0x127F
HDIO_GETGEO = 0x0301

INFO64 = '=QQQQQIIII64s64s32sQQ'
INFO_OLD = '=i4xQQQiiii64s32sQQ4s4x'


_libc = None


def raw_ioctl(fd, cmd, address):
    """ioctl(2) with a pointer argument anywhere in the address space
    (fcntl.ioctl takes only a C int or a buffer of its own)."""
    global _libc
    import ctypes
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
    if _libc.ioctl(fd, cmd, address) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return 0


def info64(offset=0, sizelimit=0, flags=0, name=b'', enc=0, keysz=0):
    return struct.pack(INFO64, 0, 0, 0, offset, sizelimit, 0, enc, keysz, flags, name, b'', b'', 0, 0)


def info_old(offset=0, flags=0, name=b''):
    return struct.pack(INFO_OLD, 0, 0, 0, 0, offset, 0, 0, flags, name, b'', 0, 0, b'')


def config(fd, block_size=0, **kw):
    return struct.pack('=II', fd, block_size) + info64(**kw) + bytes(64)


def decode64(b):
    f = struct.unpack(INFO64, b)
    return dict(device=f[0], inode=f[1], rdevice=f[2], offset=f[3], sizelimit=f[4], number=f[5],
                flags=f[8], file_name=f[9].split(b'\0')[0].decode('latin1'))


def decode_old(b):
    f = struct.unpack(INFO_OLD, b)
    return dict(number=f[0], device=f[1], inode=f[2], rdevice=f[3], offset=f[4], flags=f[7],
                name=f[8].split(b'\0')[0].decode('latin1'))


def try_(f):
    """f()'s value, or the errno name it failed with."""
    try:
        r = f()
        return r if r is not None else 0
    except OSError as e:
        return errno.errorcode[e.errno]


def get64(fd):
    return decode64(fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(232)))


def u32(fd, cmd):
    return struct.unpack('I', fcntl.ioctl(fd, cmd, bytes(4)))[0]


def u64(fd, cmd):
    return struct.unpack('Q', fcntl.ioctl(fd, cmd, bytes(8)))[0]


def huge_encode_dev(dev):
    major, minor = os.major(dev), os.minor(dev)
    return (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)


def free_device(ctl_path, dev_dir, bind=None):
    """LOOP_CTL_GET_FREE, open loopN read-write and (bind: a callable taking the fd)
    bind it, again on EBUSY (another program took the device in between), as
    util-linux and container runtimes do. Returns (n, fd)."""
    ctl = os.open(ctl_path, os.O_RDWR)
    try:
        for _ in range(50):
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            fd = os.open(os.path.join(dev_dir, 'loop%d' % n), os.O_RDWR)
            if bind is None:
                return n, fd
            try:
                bind(fd)
                return n, fd
            except OSError as e:
                os.close(fd)
                if e.errno != errno.EBUSY:
                    raise
        raise RuntimeError('no free loop device')
    finally:
        os.close(ctl)


def own_device(ctl_path, dev_dir):
    """A device of our own: LOOP_CTL_ADD of an unused number from 100 on, so
    that other programs' LOOP_CTL_GET_FREE (which takes the lowest) leave it
    alone. Returns (n, fd); remove_device(ctl_path, n) gives it back."""
    ctl = os.open(ctl_path, os.O_RDWR)
    try:
        for n in range(100 + os.getpid() % 50, 1000):
            try:
                fcntl.ioctl(ctl, LOOP_CTL_ADD, n)
            except OSError as e:
                if e.errno == errno.EEXIST:
                    continue
                raise
            path = os.path.join(dev_dir, 'loop%d' % n)
            deadline = time.time() + 10
            while not os.path.exists(path) and time.time() < deadline:
                time.sleep(0.02)  # devtmpfs makes the node a moment later
            return n, os.open(path, os.O_RDWR)
        raise RuntimeError('no unused device number')
    finally:
        os.close(ctl)


def remove_device(ctl_path, n):
    ctl = os.open(ctl_path, os.O_RDWR)
    try:
        deadline = time.time() + 10
        while True:
            try:
                return fcntl.ioctl(ctl, LOOP_CTL_REMOVE, n)
            except OSError as e:
                # EBUSY while the last close's autoclear is still on its way.
                if e.errno != errno.EBUSY or time.time() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        os.close(ctl)


def wait_unbound(path, seconds=10):
    """Polls LOOP_GET_STATUS64 on a fresh descriptor until ENXIO (autoclear works at
    the last close, which reaches a FUSE server a moment after close(2) returns)."""
    deadline = time.time() + seconds
    while True:
        fd = os.open(path, os.O_RDONLY)
        try:
            r = try_(lambda: get64(fd))
        finally:
            os.close(fd)
        if r == 'ENXIO' or time.time() > deadline:
            return r
        time.sleep(0.05)
