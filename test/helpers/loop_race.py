"""64 threads, each with its own descriptor of one unbound device, issue
LOOP_SET_FD at the same moment. Prints the JSON list of results, sorted.
usage: loop_race.py DEVICE IMAGE"""
import json, os, sys, threading, fcntl
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopdev import *

dev, img_path = sys.argv[1:3]
N = 64
fds = [os.open(dev, os.O_RDWR) for _ in range(N)]
imgs = [os.open(img_path, os.O_RDWR) for _ in range(N)]
gate = threading.Barrier(N)
results = [None] * N


def run(k):
    gate.wait()
    results[k] = try_(lambda: fcntl.ioctl(fds[k], LOOP_SET_FD, imgs[k]))


threads = [threading.Thread(target=run, args=(k,)) for k in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join()
winner = fds[results.index(0)] if 0 in results else fds[0]
st = os.stat(img_path)
bound = try_(lambda: get64(winner)['inode'] == st.st_ino)
try_(lambda: fcntl.ioctl(winner, LOOP_CLR_FD))
for fd in fds + imgs:
    os.close(fd)
print(json.dumps({'results': sorted(map(str, results)), 'bound_to_the_file': bound}))
