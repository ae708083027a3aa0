import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox, REPO } from '../helpers/cli';

// SPEC §2: device entries answer the kernel's loop and block ioctls, with the
// kernel's semantics and errnos. Every sequence runs on a kernel loop device
// and on a loopfs entry, over identical files, and the two must agree.
let sb: Sandbox;
const test = sandboxSuite('device ioctls', 'devioctl', (s) => (sb = s), () => {
  // Kernel loop devices a failed run left bound to this sandbox's files.
  for (const line of execFileSync('losetup', ['-a'], { encoding: 'utf8' }).split('\n')) {
    const m = /^(\/dev\/loop\d+):.*\((.*)\)/.exec(line);
    if (m && m[2]!.startsWith(sb.root)) spawnSync('losetup', ['-d', m[1]!]);
  }
});
const HELPERS = path.join(REPO, 'test', 'helpers');

function py(script: string, args: string[], opts: { uid?: number } = {}): unknown {
  // The system's python: a user's rights may not reach a python of root's.
  const argv = ['/usr/bin/python3', path.join(HELPERS, script), ...args];
  const cmd = opts.uid === undefined ? argv : ['setpriv', `--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups', ...argv];
  const r = spawnSync(cmd[0]!, cmd.slice(1), { encoding: 'utf8', timeout: 120_000, cwd: sb.root });
  if (r.status !== 0) throw new Error(`${script} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

function mount(opts: string[] = []): string {
  const dir = sb.dir(`inst${Math.random().toString(36).slice(2, 8)}`);
  sb.ok(['mount', ...opts, dir]);
  return dir;
}

function image(name: string, bytes: number): string {
  const p = path.join(sb.root, name);
  fs.writeFileSync(p, '');
  fs.truncateSync(p, bytes);
  return p;
}

/** A kernel loop device only this test uses (LOOP_CTL_ADD of a high number). */
function kernelDevice(): number {
  return Number(execFileSync('python3', ['-c', `
import sys, os
sys.path.insert(0, ${JSON.stringify(HELPERS)})
from loopdev import *
n, fd = own_device('/dev/loop-control', '/dev')
print(n)
`], { encoding: 'utf8' }));
}

function removeKernelDevice(n: number): void {
  execFileSync('python3', ['-c', `
import sys
sys.path.insert(0, ${JSON.stringify(HELPERS)})
from loopdev import *
remove_device('/dev/loop-control', ${n})
`]);
}

function daemonServes(inst: string): void {
  assert.ok(sb.daemons().length > 0, 'the daemon is up');
  assert.ok(fs.readdirSync(inst).includes('loop-control'), 'and serves the directory');
  assert.is(sb.ok(['--instance', inst, 'ctl', 'get-free']).length > 0, true);
}

test('each loop and block ioctl answers as a kernel loop device does: values, errnos, order of checks', () => {
  const inst = mount();
  const kw = sb.dir('kernel');
  const lw = sb.dir('loopfs');
  const kernel = py('loop_errnos.py', ['/dev/loop-control', '/dev', kw]) as [string, unknown][];
  const loopfs = py('loop_errnos.py', [path.join(inst, 'loop-control'), inst, lw]) as [string, unknown][];
  assert.ok(kernel.length > 130, `${kernel.length} steps`);
  // Not vacuous: the sequence holds successes and each errno it is about.
  const results = new Set(kernel.map(([, r]) => r));
  for (const e of ['ENXIO', 'EBUSY', 'EBADF', 'EINVAL', 'EFAULT', 'EOVERFLOW', 'EPERM', 'ENOTTY', 0]) assert.ok(results.has(e), `the sequence meets ${e}`);
  const differ = loopfs.map((s, i) => [s, kernel[i]]).filter(([a, b]) => JSON.stringify(a) !== JSON.stringify(b));
  assert.equal(differ, [], 'steps where loopfs and the kernel differ: [loopfs, kernel]');
  assert.is(loopfs.length, kernel.length);
  daemonServes(inst);
});

for (const how of ['setfd', 'configure']) {
  test(`container runtime flow with ${how === 'setfd' ? 'LOOP_SET_FD + LOOP_SET_STATUS64' : 'one LOOP_CONFIGURE'}: status, data, autoclear at close`, () => {
    const inst = mount();
    const kimg = image('k.img', 16 << 20);
    const limg = image('l.img', 16 << 20);
    const kernel = py('loop_flow.py', [how, '/dev/loop-control', '/dev', kimg]) as Record<string, unknown>;
    const loopfs = py('loop_flow.py', [how, path.join(inst, 'loop-control'), inst, limg]) as Record<string, unknown>;
    assert.equal(loopfs, kernel);
    // And what both say is what was asked.
    assert.is(loopfs.file_name, '/var/lib/containers/layer.img');
    assert.is(loopfs.offset, 1 << 20);
    assert.is(loopfs.sizelimit, (4 << 20) + 100);
    assert.is(loopfs.size, 4 << 20);
    assert.is(loopfs.flags, 4, 'LO_FLAGS_AUTOCLEAR');
    assert.is(loopfs.logical, how === 'setfd' ? 512 : 4096);
    assert.ok(loopfs.device_is_file && loopfs.inode_is_file && loopfs.number_is_n && loopfs.read_back && loopfs.in_file_at_offset);
    assert.is(loopfs.after_close, 'ENXIO', 'autoclear detached it at the last close');
    assert.is(sb.ok(['--instance', inst, 'losetup', '-a']), '', 'nothing bound');
  });
}

test('64 threads issue LOOP_SET_FD on one device at once: exactly one wins, EBUSY for the rest, on both', () => {
  const inst = mount();
  sb.ok(['--instance', inst, 'ctl', 'add', '5']);
  const img = image('race.img', 4 << 20);
  const loopfs = py('loop_race.py', [path.join(inst, 'loop5'), img]) as { results: string[]; bound_to_the_file: boolean };
  const expected = ['0', ...Array(63).fill('EBUSY')].sort();
  assert.equal(loopfs.results, expected);
  assert.is(loopfs.bound_to_the_file, true);
  // The kernel, for comparison: a device of its own.
  const n = kernelDevice();
  try {
    const kernel = py('loop_race.py', [`/dev/loop${n}`, image('krace.img', 4 << 20)]) as { results: string[] };
    assert.equal(kernel.results, expected);
  } finally {
    removeKernelDevice(n);
  }
  daemonServes(inst);
  // The device is free again and binds for the next caller.
  const again = execFileSync('python3', ['-c', `
import sys, os, fcntl
sys.path.insert(0, ${JSON.stringify(HELPERS)})
from loopdev import *
fd = os.open(${JSON.stringify(path.join(inst, 'loop5'))}, os.O_RDWR)
print(wait_unbound(${JSON.stringify(path.join(inst, 'loop5'))}), fcntl.ioctl(fd, LOOP_SET_FD, os.open(${JSON.stringify(img)}, os.O_RDONLY)), get64(fd)['flags'])
`], { encoding: 'utf8' }).trim();
  assert.is(again, 'ENXIO 0 1', 'unbound by CLR_FD, then bound again (a file open read-only: LO_FLAGS_READ_ONLY)');
});

test('an owner given with -o uid=U binds, lists and detaches through ioctls with U\'s own rights, as on a kernel device U may open', () => {
  const uid = 47311;
  fs.chmodSync(sb.root, 0o755);
  const inst = mount(['-o', `uid=${uid},gid=${uid}`]);
  const files = (tag: string) => {
    const own = image(`${tag}-own.img`, 4 << 20);
    fs.chownSync(own, uid, uid);
    const secret = image(`${tag}-secret.img`, 4 << 20);
    fs.chmodSync(secret, 0o600);
    const readable = image(`${tag}-readable.img`, 4 << 20);
    fs.chmodSync(readable, 0o644);
    return [own, secret, readable];
  };
  // The kernel side: a kernel device of our own, given to U for the run.
  const n = kernelDevice();
  const kdev = `/dev/loop${n}`;
  let kernel: unknown;
  try {
    fs.chownSync(kdev, uid, uid);
    kernel = py('loop_user.py', [kdev, ...files('k')], { uid });
  } finally {
    removeKernelDevice(n);
  }
  const dev = path.join(inst, sb.ok(['--instance', inst, 'ctl', 'add']).replace(/^/, 'loop'));
  const loopfs = py('loop_user.py', [dev, ...files('l')], { uid });
  assert.equal(loopfs, kernel);
  const steps = new Map(loopfs as [string, unknown][]);
  assert.is(steps.get('open a file U cannot read'), 'EACCES');
  assert.is(steps.get('SET_FD own file'), 0);
  assert.equal(steps.get('GET_STATUS64'), { offset: 4096, flags: 0, file_name: 'users-own' });
  assert.is(steps.get('read-only entry SET_STATUS64'), 'EPERM');
  assert.is(steps.get('BLKFLSBUF without CAP_SYS_ADMIN'), 'EACCES');
  assert.is(steps.get('bound read-only'), 1);
  assert.is(steps.get('write refused'), 'EPERM');
  assert.is(steps.get('GET_STATUS64 after CLR_FD'), 'ENXIO');
  daemonServes(inst);
});

test('an entry of the instance itself cannot back one of its devices (EBADF), by ioctl or losetup, and nothing hangs', () => {
  const inst = mount();
  sb.ok(['--instance', inst, 'ctl', 'add', '0']);
  sb.ok(['--instance', inst, 'ctl', 'add', '1']);
  const img = image('own.img', 4 << 20);
  const out = execFileSync('timeout', ['-s', 'KILL', '30', 'python3', '-c', `
import sys, os, json, fcntl
sys.path.insert(0, ${JSON.stringify(HELPERS)})
from loopdev import *
inst = ${JSON.stringify(inst)}
fd = os.open(inst + '/loop0', os.O_RDWR)
fd1 = os.open(inst + '/loop1', os.O_RDWR)
r = {'self': try_(lambda: fcntl.ioctl(fd, LOOP_SET_FD, fd)), 'other unbound': try_(lambda: fcntl.ioctl(fd, LOOP_SET_FD, fd1))}
fcntl.ioctl(fd1, LOOP_SET_FD, os.open(${JSON.stringify(img)}, os.O_RDWR))
r['other bound'] = try_(lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, config(fd1)))
r['status'] = try_(lambda: get64(fd))
fcntl.ioctl(fd1, LOOP_CLR_FD)
print(json.dumps(r))
`], { encoding: 'utf8' });
  assert.equal(JSON.parse(out), { self: 'EBADF', 'other unbound': 'EBADF', 'other bound': 'EBADF', status: 'ENXIO' });
  const r = sb.run(['--instance', inst, 'losetup', '-f', '--show', path.join(inst, 'loop1')]);
  assert.is(r.status, 1);
  assert.match(r.stderr, /loop1: failed to set up loop device: Bad file descriptor\n$/, 'util-linux words for EBADF');
  daemonServes(inst);
});

test('PARTSCAN makes loopNpM appear; on a partition the loop ioctls act on the device, BLKRRPART is EINVAL', () => {
  const inst = mount();
  const img = image('parts.img', 16 << 20);
  execFileSync('sfdisk', ['-q', img], { input: 'label: dos\n,4M,L\n,4M,L\n' });
  const out = execFileSync('python3', ['-c', `
import sys, os, json, fcntl, struct
sys.path.insert(0, ${JSON.stringify(HELPERS)})
from loopdev import *
inst = ${JSON.stringify(inst)}
n, fd = free_device(inst + '/loop-control', inst)
r = {}
img = os.open(${JSON.stringify(img)}, os.O_RDWR)
fcntl.ioctl(fd, LOOP_SET_FD, img)
r['before'] = sorted(e for e in os.listdir(inst) if e.startswith('loop%dp' % n))
fcntl.ioctl(fd, LOOP_SET_STATUS64, info64(flags=LO_FLAGS_PARTSCAN))
r['after_set_status'] = sorted(e for e in os.listdir(inst) if e.startswith('loop%dp' % n))
r['flags'] = get64(fd)['flags']
p = os.open(inst + '/loop%dp1' % n, os.O_RDWR)
r['p1_size'] = u64(p, BLKGETSIZE64)
r['p1_sectors'] = u64(p, BLKGETSIZE)
r['p1_ssz'] = u32(p, BLKSSZGET)
r['p1_status_is_the_device'] = get64(p)['number'] == n
r['p1_set_fd'] = try_(lambda: fcntl.ioctl(p, LOOP_SET_FD, img))
r['p1_rrpart'] = try_(lambda: fcntl.ioctl(p, BLKRRPART))
r['p1_getgeo'] = try_(lambda: fcntl.ioctl(p, HDIO_GETGEO, bytes(16)))
r['p1_unknown'] = try_(lambda: fcntl.ioctl(p, 0x1234))
r['p1_discard_past_end'] = try_(lambda: fcntl.ioctl(p, BLKDISCARD, struct.pack('QQ', 0, 8 << 20)))
r['p1_roset'] = try_(lambda: fcntl.ioctl(p, BLKROSET, struct.pack('i', 1)))
r['p1_roget'] = u32(p, BLKROGET)
r['dev_roget'] = u32(fd, BLKROGET)
r['p1_write'] = try_(lambda: os.pwrite(p, b'x' * 512, 0))
r['rrpart_partition_open'] = try_(lambda: fcntl.ioctl(fd, BLKRRPART))
os.close(p)
r['rrpart'] = try_(lambda: fcntl.ioctl(fd, BLKRRPART))
fcntl.ioctl(fd, LOOP_CLR_FD)
os.close(fd)
r['after_clr'] = sorted(e for e in os.listdir(inst) if e.startswith('loop%dp' % n))
cfg = os.open(inst + '/loop%d' % n, os.O_RDWR)
fcntl.ioctl(cfg, LOOP_CONFIGURE, config(img, flags=LO_FLAGS_PARTSCAN | LO_FLAGS_AUTOCLEAR))
r['configure'] = sorted(e for e in os.listdir(inst) if e.startswith('loop%dp' % n))
os.close(cfg)
r['n'] = n
print(json.dumps({k: (0 if isinstance(v, bytes) else v) for k, v in r.items()}))
`], { encoding: 'utf8' });
  const r = JSON.parse(out);
  const n = r.n;
  assert.equal(r.before, []);
  assert.equal(r.after_set_status, [`loop${n}p1`, `loop${n}p2`]);
  assert.is(r.flags, 8);
  assert.is(r.p1_size, 4 << 20);
  assert.is(r.p1_sectors, 8192);
  assert.is(r.p1_ssz, 512);
  assert.is(r.p1_status_is_the_device, true);
  assert.is(r.p1_set_fd, 'EBUSY');
  assert.is(r.p1_rrpart, 'EINVAL');
  assert.is(r.p1_getgeo, 'ENOTTY');
  assert.is(r.p1_unknown, 'EINVAL');
  assert.is(r.p1_discard_past_end, 'EINVAL');
  assert.is(r.p1_roset, 0);
  assert.is(r.p1_roget, 1);
  assert.is(r.dev_roget, 0, 'the flag is the partition\'s');
  assert.is(r.p1_write, 'EPERM');
  assert.is(r.rrpart_partition_open, 'EBUSY');
  assert.is(r.rrpart, 0);
  assert.equal(r.after_clr, []);
  assert.equal(r.configure, [`loop${n}p1`, `loop${n}p2`]);
  daemonServes(inst);
});

test('losetup and ioctls are one path: each sees what the other bound, lo_file_name and BACK-FILE as the kernel gives them', () => {
  const inst = mount();
  const a = image('a.img', 4 << 20);
  const b = image('b.img', 4 << 20);
  const dev = sb.ok(['--instance', inst, 'losetup', '-f', '--show', '-o', '512', a]);
  const out = execFileSync('python3', ['-c', `
import sys, os, fcntl
sys.path.insert(0, ${JSON.stringify(HELPERS)})
from loopdev import *
fd = os.open(${JSON.stringify(dev)}, os.O_RDONLY)
i = get64(fd)
print(i['file_name'], i['offset'])
n, g = free_device(${JSON.stringify(path.join(inst, 'loop-control'))}, ${JSON.stringify(inst)})
fcntl.ioctl(g, LOOP_CONFIGURE, config(os.open(${JSON.stringify(b)}, os.O_RDWR), sizelimit=1 << 20, name=b'given-name'))
print(n)
`], { encoding: 'utf8' }).trim().split('\n');
  // losetup gives the kernel the file's path as lo_file_name (util-linux does).
  assert.equal(out[0], `${a} 512`);
  const n = Number(out[1]);
  // The ioctl-bound device is listed with its file as the kernel's sysfs names it (not lo_file_name).
  const listed = sb.ok(['--instance', inst, 'losetup', '-l', '-n', '-O', 'NAME,SIZELIMIT,BACK-FILE', path.join(inst, `loop${n}`)]);
  assert.equal(listed.split(/\s+/), [path.join(inst, `loop${n}`), String(1 << 20), b]);
  sb.ok(['--instance', inst, 'losetup', '-d', path.join(inst, `loop${n}`), dev]);
  assert.is(sb.ok(['--instance', inst, 'losetup', '-a']), '');
});

test('an ordinary user inside an unprivileged `loopfs run` (a user namespace) drives the instance by ioctl', () => {
  const uid = 47313;
  fs.chmodSync(sb.root, 0o755);
  const home = sb.dir('home');
  for (const f of ['loopdev.py', 'loop_flow.py']) fs.copyFileSync(path.join(HELPERS, f), path.join(home, f));
  const img = image('home/user.img', 16 << 20);
  execFileSync('chown', ['-R', `${uid}:${uid}`, home]);
  const fuseMode = fs.statSync('/dev/fuse').mode & 0o777;
  try {
    fs.chmodSync('/dev/fuse', 0o666);
    const script = `
import sys, os, json, fcntl
sys.path.insert(0, os.environ['HOME'])
from loopdev import *
inst = os.environ['LOOPFS']
n, fd = free_device(inst + '/loop-control', inst, lambda fd: fcntl.ioctl(fd, LOOP_SET_FD, os.open(${JSON.stringify(img)}, os.O_RDWR)))
r = {'flags': get64(fd)['flags'], 'flsbuf': try_(lambda: fcntl.ioctl(fd, BLKFLSBUF)), 'clr': try_(lambda: fcntl.ioctl(fd, LOOP_CLR_FD)), 'after': try_(lambda: get64(fd))}
print(json.dumps(r))
`;
    const r = spawnSync('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'env', `HOME=${home}`, `XDG_RUNTIME_DIR=${home}`, 'PATH=/usr/sbin:/usr/bin:/sbin:/bin', ...sb.bin, 'run', '--', 'sh', '-c',
      `/usr/bin/python3 "$HOME/loop_flow.py" configure "$LOOPFS/loop-control" "$LOOPFS" ${img} && /usr/bin/python3 -c "$0"`, script], { encoding: 'utf8', cwd: home, timeout: 120_000 });
    assert.is(r.status, 0, r.stderr);
    const [flow, more] = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.is(flow.in_file_at_offset, true);
    assert.is(flow.after_close, 'ENXIO');
    // Root of the sandbox's user namespace is the administrator of its instance.
    assert.equal(more, { flags: 0, flsbuf: 0, clr: 0, after: 'ENXIO' });
  } finally {
    fs.chmodSync('/dev/fuse', fuseMode);
  }
});

test('inside `loopfs run`, the flow works; a caller the daemon cannot see gets clean errnos, never a hang', async () => {
  const img = image('run.img', 16 << 20);
  const script = `python3 ${path.join(HELPERS, 'loop_flow.py')} configure "$LOOPFS/loop-control" "$LOOPFS" ${img} && ls "$LOOPFS"`;
  const r = sb.run(['run', '--', 'sh', '-c', script]);
  assert.is(r.status, 0, r.stderr);
  const flow = JSON.parse(r.stdout.split('\n')[0]!);
  assert.is(flow.after_close, 'ENXIO');
  assert.is(flow.in_file_at_offset, true);

  // A process outside the sandbox's pid namespace reaches an entry through
  // /proc/PID/root: the daemon gets pid 0 for it.
  const marker = path.join(sb.root, 'ready');
  const child = spawn(sb.bin[0]!, [...sb.bin.slice(1), 'run', '--', 'sh', '-c', `loopfs ctl add 0 >/dev/null && echo "$$ $LOOPFS" > ${marker} && sleep 60`], {
    env: { ...process.env, LOOPFS_RUNDIR: sb.runDir }, stdio: 'ignore',
  });
  try {
    const deadline = Date.now() + 20_000;
    while (!fs.existsSync(marker) || !fs.readFileSync(marker, 'utf8').includes('\n')) {
      if (Date.now() > deadline) throw new Error('the sandbox did not start');
      execFileSync('sleep', ['0.1']);
    }
    const [, mnt] = fs.readFileSync(marker, 'utf8').trim().split(' ');
    // The sandbox's sleep, by its host pid, to borrow its root.
    const pids = execFileSync('pgrep', ['-x', 'sleep'], { encoding: 'utf8' }).trim().split('\n').map(Number);
    const inside = pids.find((p) => {
      try {
        return fs.readFileSync(`/proc/${p}/environ`, 'utf8').includes(`LOOPFS=${mnt}`) && fs.existsSync(`/proc/${p}/root${mnt}/loop0`);
      } catch {
        return false;
      }
    });
    assert.ok(inside, 'found the sandbox');
    const dev = `/proc/${inside}/root${mnt}/loop0`;
    const out = JSON.parse(execFileSync('timeout', ['20', 'python3', '-c', `
import sys, os, json, fcntl
sys.path.insert(0, ${JSON.stringify(HELPERS)})
from loopdev import *
fd = os.open(${JSON.stringify(dev)}, os.O_RDWR)
img = os.open(${JSON.stringify(img)}, os.O_RDWR)
r = {}
r['set_fd'] = try_(lambda: fcntl.ioctl(fd, LOOP_SET_FD, img))
r['get_status'] = try_(lambda: get64(fd))
r['configure'] = try_(lambda: fcntl.ioctl(fd, LOOP_CONFIGURE, config(img)))
r['size'] = try_(lambda: u64(fd, BLKGETSIZE64))
r['ssz'] = try_(lambda: u32(fd, BLKSSZGET))
r['clr'] = try_(lambda: fcntl.ioctl(fd, LOOP_CLR_FD))
print(json.dumps(r))
`], { encoding: 'utf8' }));
    // Unbound: ENXIO comes before the status would be written, as in the kernel.
    assert.equal(out, { set_fd: 'EPERM', get_status: 'ENXIO', configure: 'EFAULT', size: 0, ssz: 'EFAULT', clr: 'ENXIO' });
  } finally {
    const gone = new Promise<void>((res) => (child.exitCode !== null || child.signalCode !== null ? res() : child.once('exit', () => res())));
    child.kill('SIGTERM');
    await Promise.race([gone, new Promise((res) => setTimeout(res, 15_000))]);
    assert.ok(child.exitCode !== null || child.signalCode !== null, 'the sandbox ended');
  }
});

test.run();
