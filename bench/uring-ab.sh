#!/bin/bash
# A/B (root; node build/build.mjs first): FUSE over io_uring against /dev/fuse reads.
# Usage: bench/uring-ab.sh [ROUNDS=N RT=seconds DEPTH=n SPREAD=0/1 in the environment]
# the same build, two instances mounted while enable_uring is on, one with LOOPFS_URING=0.
# fio jobs alternate between the two devices; the switch goes back to N whatever happens.
set -u
P=/sys/module/fuse/parameters/enable_uring
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/dist/loopfs}
W=$(mktemp -d /var/tmp/loopfs-uring-ab-XXXXXX); rm -rf $W; mkdir -p $W/mA $W/mB $W/rA $W/rB
cleanup() {
  LOOPFS_RUNDIR=$W/rA $BIN umount $W/mA >/dev/null 2>&1
  LOOPFS_RUNDIR=$W/rB $BIN umount $W/mB >/dev/null 2>&1
  echo N > $P; rm -rf $W
}
trap cleanup EXIT INT TERM
fio --name=fill --filename=$W/img --rw=write --bs=1M --size=256M --ioengine=psync --output-format=terse >/dev/null
echo Y > $P
LOOPFS_URING=0 LOOPFS_RUNDIR=$W/rA $BIN mount $W/mA
LOOPFS_URING_SPREAD=${SPREAD:-1} LOOPFS_URING_DEPTH=${DEPTH:-1} LOOPFS_RUNDIR=$W/rB $BIN mount $W/mB
DA=$(LOOPFS=$W/mA LOOPFS_RUNDIR=$W/rA $BIN losetup -f --show $W/img)
DB=$(LOOPFS=$W/mB LOOPFS_RUNDIR=$W/rB $BIN losetup -f --show $W/img)
echo "devfuse=$DA uring=$DB"
job() { # name rw bs iodepth engine dev
  fio --name=$1 --filename=$6 --rw=$2 --bs=$3 --iodepth=$4 --ioengine=$5 --direct=1 --time_based --runtime=${RT:-3} --size=256M \
    --output-format=json 2>/dev/null | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(j["read"]["iops"]+j["write"]["iops"], (j["read"]["bw"]+j["write"]["bw"])/1024)'
}
for round in $(seq ${ROUNDS:-3}); do
  for j in "seqread read 1M 1 psync" "randread1 randread 4k 1 psync" "randread16 randread 4k 16 libaio" "randwrite16 randwrite 4k 16 libaio" "seqwrite write 1M 1 psync"; do
    set -- $j
    cat $W/img > /dev/null
    if [ $((round % 2)) = 0 ]; then b=$(job $1 $2 $3 $4 $5 $DB); a=$(job $1 $2 $3 $4 $5 $DA); else a=$(job $1 $2 $3 $4 $5 $DA); b=$(job $1 $2 $3 $4 $5 $DB); fi
    echo "$round $1 devfuse $a uring $b"
  done
done
pid=$(pgrep -f "__daemon.*$W/mB" | head -1); for f in /proc/$pid/fd/*; do [ "$(readlink $f)" = "anon_inode:[io_uring]" ] && grep CqHead /proc/$pid/fdinfo/$(basename $f); done
pid=$(pgrep -f "__daemon.*$W/mA" | head -1); echo "devfuse daemon rings: $(ls -l /proc/$pid/fd | grep -c io_uring)"
