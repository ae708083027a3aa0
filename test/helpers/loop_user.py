"""Run as an ordinary user U who may open DEVICE (a kernel loop device
chowned to U, or an entry of an instance mounted with -o uid=U): binds,
lists and detaches through ioctls, with U's own rights. Prints one JSON list
of [step, result]. usage: loop_user.py DEVICE OWN_IMAGE SECRET_IMAGE READABLE_IMAGE"""
import json, os, sys, struct, fcntl
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopdev import *

dev, own, secret, readable = sys.argv[1:5]
out = []


def step(label, f):
    r = try_(f)
    out.append([label, 'ok' if isinstance(r, bytes) else r])
    return r


step('open a file U cannot read', lambda: os.open(secret, os.O_RDONLY))
step('open a file U can only read, for writing', lambda: os.open(readable, os.O_RDWR))
fd = os.open(dev, os.O_RDWR)
img = os.open(own, os.O_RDWR)
step('SET_FD own file', lambda: fcntl.ioctl(fd, LOOP_SET_FD, img))
step('SET_STATUS64', lambda: fcntl.ioctl(fd, LOOP_SET_STATUS64, info64(offset=4096, name=b'users-own')))
step('GET_STATUS64', lambda: {k: v for k, v in get64(fd).items() if k in ('offset', 'flags', 'file_name')})
step('inode', lambda: get64(fd)['inode'] == os.stat(own).st_ino)
step('size', lambda: u64(fd, BLKGETSIZE64))
step('BLKFLSBUF without CAP_SYS_ADMIN', lambda: fcntl.ioctl(fd, BLKFLSBUF))
step('BLKROSET without CAP_SYS_ADMIN', lambda: fcntl.ioctl(fd, BLKROSET, struct.pack('i', 1)))
step('BLKRRPART without CAP_SYS_ADMIN', lambda: fcntl.ioctl(fd, BLKRRPART))
ro = os.open(dev, os.O_RDONLY)
step('read-only entry SET_STATUS64', lambda: fcntl.ioctl(ro, LOOP_SET_STATUS64, info64()))
step('read-only entry SET_STATUS', lambda: fcntl.ioctl(ro, LOOP_SET_STATUS, info_old()))
step('read-only entry SET_CAPACITY', lambda: fcntl.ioctl(ro, LOOP_SET_CAPACITY))
step('read-only entry SET_DIRECT_IO', lambda: fcntl.ioctl(ro, LOOP_SET_DIRECT_IO, 0))
step('read-only entry SET_BLOCK_SIZE', lambda: fcntl.ioctl(ro, LOOP_SET_BLOCK_SIZE, 512))
step('read-only entry GET_STATUS64', lambda: get64(ro)['offset'])
step('read-only entry CLR_FD', lambda: fcntl.ioctl(ro, LOOP_CLR_FD))
step('autoclear set, still bound', lambda: get64(fd)['flags'])
os.close(ro)
os.close(fd)
step('unbound after the last close', lambda: wait_unbound(dev))
fd = os.open(dev, os.O_RDWR)
rd = os.open(readable, os.O_RDONLY)
step('SET_FD a file U can only read', lambda: fcntl.ioctl(fd, LOOP_SET_FD, rd))
step('bound read-only', lambda: get64(fd)['flags'])
step('write refused', lambda: os.pwrite(fd, b'x' * 512, 0))
step('CLR_FD', lambda: fcntl.ioctl(fd, LOOP_CLR_FD))
step('GET_STATUS64 after CLR_FD', lambda: get64(fd))
os.close(fd)
print(json.dumps(out))
