"""A container runtime's loop flow, on a kernel loop-control or a loopfs
instance: LOOP_CTL_GET_FREE, open loopN, bind the caller's own descriptor
(LOOP_SET_FD + LOOP_SET_STATUS64, or one LOOP_CONFIGURE), read the status
back, write and read data through the device, close, and wait for
autoclear. Prints one JSON object; the same flow on both must print the same.
usage: loop_flow.py setfd|configure CONTROL DEVDIR IMAGE"""
import json, os, sys, fcntl
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopdev import *

how, ctl_path, dev_dir, img_path = sys.argv[1:5]
OFFSET, LIMIT, NAME = 1 << 20, (4 << 20) + 100, b'/var/lib/containers/layer.img'
img = os.open(img_path, os.O_RDWR)


def bind(fd):
    if how == 'setfd':
        fcntl.ioctl(fd, LOOP_SET_FD, img)
        fcntl.ioctl(fd, LOOP_SET_STATUS64, info64(offset=OFFSET, sizelimit=LIMIT, flags=LO_FLAGS_AUTOCLEAR, name=NAME))
    else:
        fcntl.ioctl(fd, LOOP_CONFIGURE, config(img, 4096, offset=OFFSET, sizelimit=LIMIT, flags=LO_FLAGS_AUTOCLEAR, name=NAME))


n, fd = free_device(ctl_path, dev_dir, bind)
os.close(img)  # the device holds the file now, as the kernel's does
st = os.stat(img_path)
i = get64(fd)
out = dict(
    number_is_n=i['number'] == n, device_is_file=i['device'] == huge_encode_dev(st.st_dev), inode_is_file=i['inode'] == st.st_ino,
    rdevice=i['rdevice'], offset=i['offset'], sizelimit=i['sizelimit'], flags=i['flags'], file_name=i['file_name'],
    size=u64(fd, BLKGETSIZE64), sectors=u64(fd, BLKGETSIZE), logical=u32(fd, BLKSSZGET), physical=u32(fd, BLKPBSZGET),
    io_min=u32(fd, BLKIOMIN), ro=u32(fd, BLKROGET),
)
data = bytes(range(256)) * 64  # 16 KiB
out['written'] = os.pwrite(fd, data, 8192)
os.fsync(fd)
out['read_back'] = os.pread(fd, len(data), 8192) == data
with open(img_path, 'rb') as f:
    f.seek(OFFSET + 8192)
    out['in_file_at_offset'] = f.read(len(data)) == data
out['write_at_end'] = try_(lambda: os.pwrite(fd, b'x' * 4096, out['size']))
os.close(fd)
out['after_close'] = wait_unbound(os.path.join(dev_dir, 'loop%d' % n))
print(json.dumps(out, sort_keys=True))
