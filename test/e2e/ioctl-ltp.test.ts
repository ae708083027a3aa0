import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { e2eSuite } from '../helpers/e2e';
import { REPO, Sandbox } from '../helpers/cli';
import { shOk, q } from '../helpers/disk';
import { compileC, kernelLoopNames, kernelReadsMbr, releaseKernelLoops, removeKernelLoopIfNew, runLtp, type LtpRun } from '../helpers/ioctl';

/*
 * Issue 10: the Linux Test Project's loop tests (ioctl_loop01 … ioctl_loop07,
 * ioctl09) ported to C in test/helpers/ltp-loop.c and run twice: first on the
 * kernel's /dev/loop-control and /dev/loopN (which proves each ported
 * assertion right on this machine), then on a loopfs instance's
 * DIR/loop-control and DIR/loopN. The same assertions must hold on both.
 *
 * Exclusions, each printed by name by the program ("EXCL …"):
 * - on loopfs, every read of /sys/block/loopN/… (partscan, autoclear,
 *   backing_file, ro, size, loop/sizelimit, loop/dio, loopNpM): a loopfs
 *   device has no sysfs node. Each is followed by an assertion of the same
 *   fact through an ioctl (LOOP_GET_STATUS64 lo_flags / lo_device+lo_inode /
 *   lo_sizelimit, BLKROGET, BLKGETSIZE64), checked on both sides.
 * - on the kernel, the partition assertions when this kernel has no MBR
 *   parser (CONFIG_MSDOS_PARTITION unset: its loop devices never show
 *   partitions); loopfs is still held to them.
 */
const test = e2eSuite('LTP loop ioctl tests, kernel then loopfs');
let sb: Sandbox;
let prog: string;
let kernelMode: string;
/** Where the backing files go: LTP runs ioctl_loop05 (direct I/O) only on a file system over a block device, not tmpfs. */
let files: string;
test.before(() => {
  sb = new Sandbox('ioctl-ltp');
  prog = compileC('ltp-loop', sb.root);
  files = sb.dir('files');
  if (shOk(`stat -f -c %T ${q(files)}`).trim() === 'tmpfs') {
    fs.mkdirSync(path.join(REPO, '.build'), { recursive: true });
    files = fs.mkdtempSync(path.join(REPO, '.build', 'ioctl-ltp-'));
  }
  const probe = sb.dir('probe');
  try {
    kernelMode = kernelReadsMbr(probe) ? 'sysfs' : 'sysfs,noparts';
  } finally {
    releaseKernelLoops(probe);
  }
});
test.after(() => {
  releaseKernelLoops(sb.root);
  releaseKernelLoops(files);
  sb.cleanup();
  fs.rmSync(files, { recursive: true, force: true });
});

const show = (r: LtpRun): string => r.text.split('\n').filter((l) => !l.startsWith('PASS ')).join('\n');

/** Kernel loop devices are everyone's: a device GET_FREE named may be taken before LOOP_SET_FD (exit 3); then again. */
function onKernel(kase: string): LtpRun {
  let r: LtpRun | undefined;
  for (let i = 0; i < 5; i++) {
    const work = path.join(files, `kernel-${kase}-${i}`);
    const before = kernelLoopNames();
    try {
      r = runLtp(prog, kase, '/dev/loop-control', '/dev', kernelMode, work);
    } finally {
      releaseKernelLoops(work);
      const n = /^INFO found free device (\d+)$/m.exec(r?.text ?? '')?.[1];
      if (n !== undefined) removeKernelLoopIfNew(Number(n), before);
    }
    if (r.status !== 3) break;
  }
  return r!;
}

function onLoopfs(kase: string): LtpRun {
  const dir = sb.dir(`inst-${kase}`);
  sb.ok(['mount', dir]);
  try {
    return runLtp(prog, kase, path.join(dir, 'loop-control'), dir, 'nosysfs', path.join(files, `loopfs-${kase}`));
  } finally {
    sb.run(['umount', '-l', dir]);
  }
}

const CASES: [string, string][] = [
  ['loop01', 'LO_FLAGS_AUTOCLEAR and LO_FLAGS_PARTSCAN by LOOP_SET_STATUS; partscan cannot be cleared'],
  ['loop02', 'LO_FLAGS_READ_ONLY by LOOP_SET_FD and LOOP_CONFIGURE; LOOP_CHANGE_FD'],
  ['loop03', 'LOOP_CHANGE_FD on a read-write device is EINVAL'],
  ['loop04', 'LOOP_SET_CAPACITY after the backing file shrank'],
  ['loop05', 'LOOP_SET_DIRECT_IO with and without an offset'],
  ['loop06', 'invalid block sizes by LOOP_SET_BLOCK_SIZE and LOOP_CONFIGURE are EINVAL'],
  ['loop07', 'lo_sizelimit by LOOP_SET_STATUS64 and LOOP_CONFIGURE'],
  ['ioctl09', 'BLKRRPART re-reads a partition table written through the device'],
];

for (const [kase, what] of CASES) {
  const ltp = kase.startsWith('loop') ? `ioctl_${kase}` : kase;
  test(`${ltp}: ${what}`, () => {
    const k = onKernel(kase);
    assert.is(k.brok.length, 0, `kernel set-up broke:\n${show(k)}`);
    assert.equal(k.fail, [], `the ported assertions fail on the kernel:\n${show(k)}`);
    assert.is(k.status, 0, show(k));
    assert.ok(k.pass.length > 0, show(k));
    for (const e of k.excl) assert.ok(kernelMode.includes('noparts') && /loopNp\d/.test(e), `kernel exclusion ${e}`);

    const l = onLoopfs(kase);
    assert.is(l.brok.length, 0, `loopfs set-up broke:\n${show(l)}`);
    assert.equal(l.fail, [], `on loopfs:\n${show(l)}`);
    assert.is(l.status, 0, show(l));
    // The same assertions ran; loopfs excludes only what reads sysfs.
    assert.equal([...l.pass, ...l.excl].sort(), [...k.pass, ...k.excl].sort());
    for (const e of l.excl) assert.match(e, /sysfs|\/sys\/block/, `loopfs exclusion ${e}`);
    assert.equal(l.values, k.values, 'what LTP only prints (errnos) is the same on both');
  });
}

test.run();
