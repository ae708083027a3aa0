import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { e2eSuite } from '../helpers/e2e';
import { REPO, Sandbox, waitFor } from '../helpers/cli';
import { compileC, kernelLoopNames, releaseKernelLoops, removeKernelLoopIfNew } from '../helpers/ioctl';
import { shOk, q } from '../helpers/disk';

/*
 * Issue 10, the case the 2020 loopfs proposal was written for: an instance
 * mounted on the host and handed to a container — another pid and mount
 * namespace with a /dev of its own, the instance bind-mounted at /dev/loopfs
 * and its loop-control over /dev/loop-control — where there is no /dev/fuse
 * and no loopfs program. A process inside drives its devices by ioctl only
 * (test/helpers/runtime-flow.c) and, as root, mounts an ext4 made on one with
 * `mount -o loop`. The recipe is loopfs-mount(8), EXAMPLES.
 *
 * `mount -o loop` stacks a kernel loop device on the loopfs entry (mount(2)
 * wants a block device), so the container is given the node of one free
 * kernel loop device, /dev/loopK, and names it: `mount -o loop=/dev/loopK`.
 * Plain `-o loop` cannot work there: util-linux takes the number from
 * /dev/loop-control — the instance's — and opens /dev/loopN by that number
 * without checking it exists ("failed to setup loop device"), after adding
 * device N to the instance.
 */
const test = e2eSuite('container: an instance bound into another pid and mount namespace');
let sb: Sandbox;
let rf: string;
test.before(() => {
  sb = new Sandbox('ioctl-ct');
  rf = compileC('runtime-flow', sb.root);
});
test.after(() => {
  releaseKernelLoops(sb.root);
  sb.cleanup();
});

/** What the host's /dev looks like where the container's set-up could have leaked. */
function hostDev(): string[] {
  const st = (p: string): string => {
    try {
      const s = fs.statSync(p);
      return `${p} ${s.isCharacterDevice() ? 'char' : s.isDirectory() ? 'dir' : 'other'} ${s.rdev}`;
    } catch {
      return `${p} absent`;
    }
  };
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' '))
    .filter((f) => f[4] !== undefined && (f[4] === '/dev' || f[4].startsWith('/dev/loop') || f[4] === '/dev/fuse'))
    .map((f) => `${f[4]} ${f[f.indexOf('-') + 1]}`);
  return [st('/dev/loop-control'), st('/dev/fuse'), st('/dev/loopfs'), ...mounts];
}

/** The container: a fresh /dev, the instance at /dev/loopfs, its loop-control at /dev/loop-control, then SCRIPT. */
function container(inst: string, kernelLoop: number, script: string): { status: number; out: Record<string, string>; text: string } {
  const dist = path.join(REPO, 'dist');
  const setup = [
    'set -eu',
    'mount -t tmpfs -o mode=755 container-dev /dev',
    'mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/urandom c 1 9',
    `mknod -m 600 /dev/loop${kernelLoop} b 7 ${kernelLoop}`,
    'mkdir /dev/loopfs',
    `mount --bind ${q(inst)} /dev/loopfs`,
    'touch /dev/loop-control',
    'mount --bind /dev/loopfs/loop-control /dev/loop-control',
    'mount -t tmpfs container-run /run',
    // No loopfs program either: the build output is hidden, and none is on PATH.
    `mount -t tmpfs -o mode=000 no-loopfs ${q(dist)}`,
    `echo "fuse=$(test -e /dev/fuse && echo present || echo absent)"`,
    `echo "loopfs_program=$( (command -v loopfs || ls ${q(dist)}/loopfs*) >/dev/null 2>&1 && echo present || echo absent)"`,
    'echo "shell_pid=$$"',
    script,
  ].join('\n');
  const r = spawnSync('unshare', ['--pid', '--mount', '--fork', '--mount-proc', '--propagation', 'private', 'bash', '-c', setup], {
    encoding: 'utf8',
    timeout: 120_000,
    killSignal: 'SIGKILL',
  });
  const text = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  const out: Record<string, string> = {};
  for (const l of (r.stdout ?? '').split('\n')) {
    const m = /^([a-z_]+)=(.*)$/.exec(l);
    if (m) out[m[1]!] = m[2]!;
  }
  return { status: r.status ?? 128, out, text };
}

test('inside: the runtime flow by ioctl, mkfs.ext4 and mount -o loop on a device; no /dev/fuse, no loopfs program; the host /dev untouched', async () => {
  const inst = sb.dir('inst');
  sb.ok(['mount', inst]);
  const before = hostDev();
  const work = sb.dir('work');
  const disk = path.join(work, 'disk.img');
  fs.writeFileSync(disk, '');
  fs.truncateSync(disk, 64 << 20);
  const flowImg = path.join(work, 'flow.img');
  fs.writeFileSync(flowImg, '');
  fs.truncateSync(flowImg, 4 << 20);
  const mnt = sb.dir('mnt');

  // One free kernel loop device for mount -o loop; another program may take it first: then the
  // container releases its device and the whole run is repeated.
  let r: ReturnType<typeof container> | undefined;
  let k = -1;
  const kernelBefore = kernelLoopNames();
  for (let i = 0; i < 5; i++) {
    if (k >= 0) removeKernelLoopIfNew(k, kernelBefore);
    k = Number(/(\d+)$/.exec(shOk('losetup -f').trim())![1]);
    r = container(inst, k, [
      `echo "== flow"; ${q(rf)} flow /dev/loop-control /dev/loopfs ${q(flowImg)} | sed 's/^/flow_/'`,
      `echo "== configure"; ${q(rf)} configure /dev/loop-control /dev/loopfs ${q(flowImg)} | sed 's/^/configure_/'`,
      `${q(rf)} bind /dev/loop-control /dev/loopfs ${q(disk)} > ${q(work)}/bind.out; sed 's/^/bind_/' ${q(work)}/bind.out; dev=$(sed -n 's/^device=//p' ${q(work)}/bind.out)`,
      'mkfs.ext4 -q -F "$dev"',
      `if mount -o loop=/dev/loop${k} "$dev" ${q(mnt)}; then echo mount=ok; else echo mount=failed; ${q(rf)} clear "$dev"; exit 7; fi`,
      `echo "mounted_from=$(findmnt -no SOURCE ${q(mnt)})"`,
      `echo hello from the container > ${q(mnt)}/hello`,
      `umount ${q(mnt)}`,
      `${q(rf)} clear "$dev" | sed 's/^/clear_/'`,
    ].join('\n'));
    if (r.status !== 7) break;
  }
  removeKernelLoopIfNew(k, kernelBefore);
  const { out, status, text } = r!;
  assert.is(status, 0, text);
  assert.is(out.fuse, 'absent', text);
  assert.is(out.loopfs_program, 'absent', text);
  // A pid namespace of its own: the programs inside have small pids, yet the daemon (in the host's
  // namespace) reached their memory and descriptors — the FUSE request carried the pid as the host sees it.
  assert.is(out.shell_pid, '1');
  assert.ok(Number(out.flow_pid) < 100, text);
  for (const p of ['flow_', 'configure_']) {
    assert.match(out[`${p}device`]!, /^\/dev\/loopfs\/loop\d+$/, text);
    assert.equal([out[`${p}offset`], out[`${p}sizelimit`], out[`${p}flags`], out[`${p}file_name`]], ['4096', String(1 << 20), '4', flowImg], `${p}: LOOP_GET_STATUS64`);
    assert.equal([out[`${p}readback`], out[`${p}in_file`], out[`${p}read_at_end`]], ['same', 'same', '0'], `${p}: data`);
    assert.is(out[`${p}after_close`], 'ENXIO', `${p}: autoclear detached it on the last close`);
  }
  assert.is(out.mount, 'ok', text);
  assert.is(out.mounted_from, `/dev/loop${k}`, 'the kernel loop device stacked on the loopfs entry');
  assert.match(out.clear_cleared!, /^\/dev\/loopfs\/loop\d+$/);
  // The file system is the image's: the host reads the container's file from it.
  shOk(`e2fsck -fn ${q(disk)}`);
  assert.is(shOk(`debugfs -R 'cat /hello' ${q(disk)} 2>/dev/null`), 'hello from the container\n');
  // The host saw none of it.
  assert.equal(hostDev(), before);
  assert.is(hostDev().find((l) => l.startsWith('/dev/loopfs')), '/dev/loopfs absent');
  // Seen from the host, everything is detached again. LOOP_CLR_FD while the kernel's loop device
  // still held the entry marked it for detach on the last close, as the kernel does; that close
  // (the stacked device letting go of its file after umount) may land a moment later.
  assert.ok(await waitFor(() => sb.run(['--instance', inst, 'losetup', '-a']).stdout === '', 10_000), sb.run(['--instance', inst, 'losetup', '-a']).stdout);
});

test.run();
