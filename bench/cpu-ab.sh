#!/bin/bash
# A/B (root): the daemon's CPU time (utime + stime of all its threads) per 4 KiB request, two builds.
# Usage: bench/cpu-ab.sh DIST_A DIST_B [ROUNDS=4 RW=randread QD=16 in the environment]
#   DIST_x: a build's dist directory (node build/build.mjs --outdir DIR; an old commit: git worktree + build).
# Each round: an instance of each build in turn, a 512 MiB file of random data in the page cache, fio 4 KiB
# O_DIRECT (libaio, QD) over 256 MiB of the device; prints IOPS and CPU microseconds per request.
set -u
A=$1 B=$2
W=$(mktemp -d /var/tmp/loopfs-cpu-ab-XXXXXX)
cleanup() {
  for x in a b; do LOOPFS_RUNDIR=$W/r$x LOOPFS=$W/m$x ${DIST:-$A}/loopfs losetup -D >/dev/null 2>&1; done
  for x in a b; do mountpoint -q $W/m$x && umount -l $W/m$x; done
  rm -rf $W
}
trap cleanup EXIT INT TERM
dd if=/dev/urandom of=$W/img bs=1M count=512 status=none
one() { # label dist
  local m=$W/m$1 r=$W/r$1; mkdir -p $m $r
  LOOPFS_RUNDIR=$r $2/loopfs mount $m >/dev/null || exit 1
  local dev pid
  dev=$(LOOPFS_RUNDIR=$r LOOPFS=$m $2/loopfs losetup -f --show $W/img)
  pid=$(LOOPFS_RUNDIR=$r $2/loopfs list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["pid"])')
  cat $W/img >/dev/null
  local f="--filename=$dev --rw=${RW:-randread} --bs=4k --direct=1 --ioengine=libaio --iodepth=${QD:-16} --size=512M"
  fio --name=warm $f --io_size=64M --output-format=terse >/dev/null
  local c0 c1 out
  c0=$(awk '{print $14+$15}' /proc/$pid/stat)
  out=$(fio --name=ab $f --io_size=256M --randrepeat=1 --output-format=json)
  c1=$(awk '{print $14+$15}' /proc/$pid/stat)
  LOOPFS_RUNDIR=$r LOOPFS=$m $2/loopfs losetup -D; LOOPFS_RUNDIR=$r $2/loopfs umount $m
  echo "$out" | python3 -c "
import json,sys
t=sys.stdin.read(); j=json.loads(t[t.index('{'):])['jobs'][0]; d=j['read'] if j['read']['total_ios'] else j['write']
ticks=$c1-$c0; print(f\"$1 ($2): {d['iops']:.0f} IOPS, {ticks*1e6/$(getconf CLK_TCK)/d['total_ios']:.2f} us CPU per request\")"
}
for round in $(seq ${ROUNDS:-4}); do one a $A; one b $B; done
