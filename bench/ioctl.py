#!/usr/bin/env python3
"""loop-control ioctls for the bench, timed from the caller's side.

  ioctl.py add CTL FIRST END     LOOP_CTL_ADD FIRST..END-1; prints {"seconds": s}
  ioctl.py getfree CTL CALLS     LOOP_CTL_GET_FREE CALLS times; prints the
                                 median per-call time of 20 batches and the index

Each call is one FUSE_IOCTL round trip to the instance's daemon.
"""
import fcntl
import json
import os
import sys
import time

LOOP_CTL_ADD = 0x4C80
LOOP_CTL_GET_FREE = 0x4C82


def main():
    op, ctl = sys.argv[1], sys.argv[2]
    fd = os.open(ctl, os.O_RDWR)
    try:
        if op == 'add':
            first, end = int(sys.argv[3]), int(sys.argv[4])
            t = time.perf_counter()
            for n in range(first, end):
                fcntl.ioctl(fd, LOOP_CTL_ADD, n)
            print(json.dumps({'seconds': time.perf_counter() - t}))
        elif op == 'getfree':
            calls = int(sys.argv[3])
            batches = 20
            per = max(1, calls // batches)
            idx = fcntl.ioctl(fd, LOOP_CTL_GET_FREE, 0)
            times = []
            for _ in range(batches):
                t = time.perf_counter()
                for _ in range(per):
                    fcntl.ioctl(fd, LOOP_CTL_GET_FREE, 0)
                times.append((time.perf_counter() - t) / per)
            times.sort()
            print(json.dumps({'perCall': times[len(times) // 2], 'index': idx}))
        else:
            raise SystemExit(f'unknown op {op}')
    finally:
        os.close(fd)


main()
