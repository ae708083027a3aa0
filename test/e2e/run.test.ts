import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { sparseImage } from '../helpers/disk';
import { Sandbox, errnoOf, waitFor, python, sandboxFootprint, type Footprint } from '../helpers/cli';

// SPEC §5: `loopfs run` — private and self-cleaning, however CMD ends.
let sb: Sandbox;
const test = sandboxSuite('run', 'run', (s) => (sb = s));

const footprint = (): Footprint => sandboxFootprint(sb);

const image = (name: string, mib: number): string => sparseImage(path.join(sb.root, name), mib * 2 ** 20);

test('the CI-job flow runs, and afterwards nothing of it remains', () => {
  const img = image('disk.img', 64);
  const mnt = sb.dir('mnt');
  sb.ok(['list']); // creates the run directory, so "as before" compares like with like
  const before = footprint();
  const r = sb.run(['run', '--', 'sh', '-c', `d=$(loopfs losetup -f --show ${img}) && mkfs.ext4 -q $d && mount -o loop $d ${mnt} && touch ${mnt}/x && umount ${mnt} && echo "$d"`]);
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /\/default\/loop0$/m);
  assert.ok(fs.readFileSync(img).subarray(1024 + 56, 1024 + 58).equals(Buffer.from([0x53, 0xef])), 'the image holds an ext4 superblock');
  assert.equal(footprint(), before);
});

test('SIGKILL of `loopfs run` during heavy I/O, 20 times: within 2 s nothing of it remains', async () => {
  const img = image('k.img', 64);
  const mnt = sb.dir('kmnt');
  sb.ok(['list']);
  const before = footprint();
  const script = `d=$(loopfs losetup -f --show ${img}); mount -o loop $d ${mnt} 2>/dev/null || { mkfs.ext4 -q $d; mount -o loop $d ${mnt}; }; echo ready; while :; do dd if=/dev/urandom of=${mnt}/big bs=1M count=30 conv=fsync 2>/dev/null; done`;
  for (let i = 0; i < 20; i++) {
    const [cmd, ...pre] = sb.bin;
    const child = spawn(cmd!, [...pre, 'run', '--', 'sh', '-c', script], { env: { ...process.env, LOOPFS_RUNDIR: sb.runDir }, stdio: ['ignore', 'pipe', 'ignore'] });
    await new Promise<void>((resolve) => child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve()));
    await new Promise((r) => setTimeout(r, 300 + (i % 5) * 100));
    child.kill('SIGKILL');
    const clean = await waitFor(() => JSON.stringify(footprint()) === JSON.stringify(before), 2000);
    assert.ok(clean, `iteration ${i}: left behind ${JSON.stringify(footprint())}`);
  }
});

test('exit status: CMD\'s own, 128+signal when killed, 127 when missing', () => {
  assert.is(sb.run(['run', '--', 'false']).status, 1);
  assert.is(sb.run(['run', '--', 'sh', '-c', 'exit 42']).status, 42);
  assert.is(sb.run(['run', '--', 'sh', '-c', 'kill -9 $$']).status, 137);
  const r = sb.run(['run', '--', path.join(sb.root, 'no-such-command')]);
  assert.is(r.status, 127);
  assert.is(errnoOf(r), 'ENOENT');
  assert.match(r.stderr, /no-such-command: command not found/);
});

test('SIGINT and SIGTERM sent to `loopfs run` reach CMD; Ctrl-C on a terminal too', async () => {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    const marker = path.join(sb.root, `got-${sig}`);
    const [cmd, ...pre] = sb.bin;
    const trapName = sig.slice(3);
    const child = spawn(cmd!, [...pre, 'run', '--', 'sh', '-c', `trap 'echo ${trapName} > ${marker}; exit 7' ${trapName}; echo ready; while :; do sleep 0.05; done`], { env: { ...process.env, LOOPFS_RUNDIR: sb.runDir }, stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve()));
    child.kill(sig);
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    assert.is(code, 7, sig);
    assert.is(fs.readFileSync(marker, 'utf8').trim(), trapName);
  }
  // A real terminal: python's pty runs `loopfs run` as the foreground job and types Ctrl-C.
  const marker = path.join(sb.root, 'got-tty-INT');
  const argv = [...sb.bin, 'run', '--', 'sh', '-c', `trap 'echo INT > ${marker}; exit 9' INT; echo ready; while :; do sleep 0.05; done`];
  const out = python(`
import os, pty, sys, time, json
argv = json.loads(${JSON.stringify(JSON.stringify(argv))})
os.environ['LOOPFS_RUNDIR'] = ${JSON.stringify(sb.runDir)}
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
buf = b''
while b'ready' not in buf:
    buf += os.read(fd, 1024)
os.write(fd, b'\\x03')
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
`);
  assert.is(out.trim(), '9');
  assert.is(fs.readFileSync(marker, 'utf8').trim(), 'INT');
});

test('under a parallel CPU load, 50 SIGTERMs in a row sent to `loopfs run` each reach CMD', async () => {
  // Busy loops on every core (and more), as a parallel build would keep them.
  const busy = [0, 1, 2, 3].map(() => spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' }));
  try {
    const count = path.join(sb.root, 'count');
    const read = (): string => (fs.existsSync(count) ? fs.readFileSync(count, 'utf8').trim() : '');
    const [cmd, ...pre] = sb.bin;
    const script = `n=0; trap 'n=$((n+1)); echo $n > ${count}; [ $n -ge 50 ] && exit 0' TERM; echo ready; while :; do sleep 0.05; done`;
    const child = spawn(cmd!, [...pre, 'run', '--', 'sh', '-c', script], { env: { ...process.env, LOOPFS_RUNDIR: sb.runDir }, stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    await new Promise<void>((resolve) => child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve()));
    for (let i = 1; i <= 50; i++) {
      // One at a time: signals of one kind that are pending together merge, in the kernel as anywhere.
      child.kill('SIGTERM');
      assert.ok(await waitFor(() => read() === String(i), 10_000), `SIGTERM ${i}: CMD counted "${read()}"`);
    }
    assert.is(await exited, 0);
    assert.is(read(), '50');
  } finally {
    for (const b of busy) b.kill('SIGKILL');
  }
});

test('a SIGTERM sent while the sandbox is still starting is not lost: CMD gets it as soon as it runs', async () => {
  const [cmd, ...pre] = sb.bin;
  const child = spawn(cmd!, [...pre, 'run', '--', 'sh', '-c', 'sleep 5; echo survived'], { env: { ...process.env, LOOPFS_RUNDIR: sb.runDir }, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  // The init exists (so `loopfs run` has set up its forwarding) but has not started CMD yet:
  // it still has the instance to start.
  const starting = (): boolean => fs.readdirSync('/proc').some((p) => {
    try {
      const c = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8');
      return c.includes('__run-init') && c.includes(sb.runDir);
    } catch {
      return false;
    }
  });
  assert.ok(await waitFor(starting, 10_000), 'the sandbox init started');
  const cmdRuns = fs.readdirSync('/proc').some((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').startsWith('sh\0-c\0sleep 5; echo survived');
    } catch {
      return false;
    }
  });
  assert.not.ok(cmdRuns, 'CMD has not started yet');
  child.kill('SIGTERM');
  assert.is(await exited, 128 + 15, out);
  assert.not.match(out, /survived/);
});

test('a daemon killed at its start leaves a mount that fails at once (nothing else holds its connection); the next losetup starts the instance afresh', () => {
  // The init mounts the instance and hands the mount to the daemon without waiting for it (core/instance.ts
  // handOver): had the init kept its copy of the /dev/fuse descriptor, the stat below would hang forever.
  const img = image('k.img', 8);
  const script = [
    'pid=$(sed -n \'s/.*"pid": \\([0-9]*\\).*/\\1/p\' "$LOOPFS_RUNDIR/instances/default/state.json")',
    'kill -9 "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done',
    'timeout 10 stat "$LOOPFS" >/dev/null 2>&1; echo "stat=$?"',
    `loopfs losetup -f --show ${img} && loopfs losetup -a`,
  ].join('\n');
  const r = sb.run(['run', '--', 'sh', '-c', script]);
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /^stat=1$/m); // ENOTCONN, not timeout's 124
  assert.match(r.stdout, new RegExp(`^\\S+/default/loop0: .*${img}`, 'm'));
});

test('a daemon that cannot serve what it was handed takes the mount down and removes its instance; a start that would fail so is refused at once', () => {
  // The daemon reads the limits chain (parents.json) as it starts, after the init has mounted and handed over:
  // it is held stopped while CMD spoils the file, so it meets the spoiled one.
  const dir = sb.dir('later');
  const script = [
    'pid=$(sed -n \'s/.*"pid": \\([0-9]*\\).*/\\1/p\' "$LOOPFS_RUNDIR/instances/default/state.json")',
    'kill -STOP "$pid"; echo "[spoiled" > "$LOOPFS_RUNDIR/parents.json"; kill -CONT "$pid"',
    'i=0; while [ -e "$LOOPFS_RUNDIR/instances/default" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done',
    'echo "gone=$(ls "$LOOPFS_RUNDIR/instances" | wc -l)"',
    'echo "mounted=$(grep -c " $LOOPFS " /proc/self/mountinfo)"',
    `loopfs mount ${dir}; echo "mount=$?"`,
    // The sandbox's own mounts only: the copy of the host's mount table may hold other instances.
    `echo "after=$(ls "$LOOPFS_RUNDIR/instances" | wc -l) $(awk -v a="$LOOPFS" -v b=${JSON.stringify(dir)} '($5 == a || $5 == b) && / fuse\\.loopfs /' /proc/self/mountinfo | wc -l)"`,
  ].join('\n');
  const r = sb.run(['run', '--', 'sh', '-c', script]);
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /^gone=0$/m);
  assert.match(r.stdout, /^mounted=0$/m);
  assert.match(r.stdout, /^mount=1$/m);
  assert.match(r.stderr, /^loopfs mount: \S+\/parents\.json: does not parse; not trusted \(EINVAL\)$/m);
  assert.match(r.stdout, /^after=0 0$/m);
});

test('CMD gets NODE_EXTRA_CA_CERTS as it was; the sandbox\'s init and the daemon start without it (they make no TLS connection)', () => {
  const ca = path.join(sb.root, 'extra-ca.pem');
  fs.copyFileSync('/etc/ssl/certs/ca-certificates.crt', ca);
  const script = [
    'echo "cmd=$NODE_EXTRA_CA_CERTS"',
    'pid=$(sed -n \'s/.*"pid": \\([0-9]*\\).*/\\1/p\' "$LOOPFS_RUNDIR/instances/default/state.json")',
    'echo "init=$(tr "\\0" "\\n" < /proc/1/environ | grep -c ^NODE_EXTRA_CA_CERTS=)"',
    'echo "daemon=$(tr "\\0" "\\n" < /proc/$pid/environ | grep -c ^NODE_EXTRA_CA_CERTS=)"',
    'tr "\\0" " " < /proc/$pid/cmdline | grep -q __daemon && echo daemon-found',
  ].join('\n');
  const r = sb.run(['run', '--', 'sh', '-c', script], { env: { NODE_EXTRA_CA_CERTS: ca } });
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^cmd=${ca}$`, 'm'));
  assert.match(r.stdout, /^init=0$/m);
  assert.match(r.stdout, /^daemon=0$/m);
  assert.match(r.stdout, /^daemon-found$/m);
});

test('inside run: LOOPFS is set, loopfs needs no flags, the host\'s instances are not visible', () => {
  const host = sb.dir('host');
  sb.ok(['mount', host]);
  sb.ok(['--instance', host, 'ctl', 'add', '5']);
  const r = sb.run(['run', '--', 'sh', '-c', 'echo "LOOPFS=$LOOPFS"; loopfs ctl get-free; loopfs list --json; ls "$LOOPFS"']);
  assert.is(r.status, 0, r.stderr);
  const mp = /LOOPFS=(.*)/.exec(r.stdout)![1]!;
  assert.is(mp, path.join(sb.runDir, 'default'));
  const listed = JSON.parse(r.stdout.slice(r.stdout.indexOf('['), r.stdout.lastIndexOf(']') + 1)) as { mountpoint: string }[];
  assert.equal(listed.map((i) => i.mountpoint), [mp], 'only the sandbox instance is listed');
  assert.match(r.stdout, /^loop0$/m);
  assert.not.match(r.stdout, /loop5/);
  // --dir mounts the sandbox instance elsewhere.
  const d = sb.dir('inner');
  const r2 = sb.run(['run', '--dir', d, '--', 'sh', '-c', 'echo "$LOOPFS"; ls "$LOOPFS"']);
  assert.is(r2.status, 0, r2.stderr);
  assert.equal(r2.stdout.trim().split('\n'), [d, 'loop-control']);
  assert.equal(fs.readdirSync(d), [], 'the mount was only inside the sandbox');
  sb.ok(['umount', host]);
});

test('nested run works and counts against the parent', () => {
  const r = sb.run(['run', '--', 'loopfs', 'run', '--', 'sh', '-c', 'loopfs ctl add 0 && loopfs ctl add 1 && echo nested-ok']);
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /nested-ok/);
});

test('max_loop_devices=3: the 4th device of one uid across two instances is ENOSPC; another uid is unaffected; a nested run cannot pass its parent', () => {
  assert.is(sb.ok(['sysctl', 'max_loop_devices=3']), 'max_loop_devices = 3');
  assert.is(sb.ok(['sysctl']), 'max_loop_devices = 3');
  const a = sb.dir('a');
  const b = sb.dir('b');
  sb.ok(['mount', a]);
  sb.ok(['mount', b]);
  sb.ok(['--instance', a, 'ctl', 'add']);
  sb.ok(['--instance', a, 'ctl', 'add']);
  sb.ok(['--instance', b, 'ctl', 'add']);
  const r = sb.run(['--instance', b, 'ctl', 'add']);
  assert.is(r.status, 1);
  assert.is(errnoOf(r), 'ENOSPC');
  assert.match(r.stderr, /max_loop_devices=3/);
  // Another uid: an instance root mounted for uid 4321 has its own budget.
  const c = sb.dir('c');
  sb.ok(['mount', '-o', 'uid=4321,gid=4321', c]);
  for (let i = 0; i < 3; i++) sb.ok(['--instance', c, 'ctl', 'add']);
  assert.is(errnoOf(sb.run(['--instance', c, 'ctl', 'add'])), 'ENOSPC');
  // Freeing one of uid 0 gives room again.
  sb.ok(['--instance', a, 'ctl', 'remove', '1']);
  // uid 0 now holds 2 of 3: a nested run gets exactly one more.
  const n = sb.run(['run', '--', 'sh', '-c', 'loopfs ctl add && loopfs ctl add; echo "status=$?"']);
  assert.match(n.stdout, /^0$/m);
  assert.match(n.stdout, /status=1/);
  assert.match(n.stderr, /max_loop_devices=3 of .*run/);
  assert.match(n.stderr, /\(ENOSPC\)/);
  // The sandbox is gone, and so is its share: uid 0 can add its third device here.
  sb.ok(['--instance', b, 'ctl', 'add']);
  for (const m of [a, b, c]) sb.ok(['umount', m]);
});

test('two parallel runs doing 50 attach/detach cycles never see each other and never fail', async () => {
  const img = image('p.img', 4);
  const script = `for i in $(seq 50); do d=$(loopfs losetup -f --show ${img}) || exit 3; [ "$d" = "$LOOPFS/loop0" ] || exit 4; [ "$(loopfs losetup -a | wc -l)" = 1 ] || exit 5; loopfs losetup -d "$d" || exit 6; done; ls "$LOOPFS" | tr '\\n' ' '`;
  const [cmd, ...pre] = sb.bin;
  const runs = [0, 1].map(() => new Promise<{ code: number | null; out: string }>((resolve) => {
    const c = spawn(cmd!, [...pre, 'run', '--', 'sh', '-c', script], { env: { ...process.env, LOOPFS_RUNDIR: sb.runDir }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    c.on('exit', (code) => resolve({ code, out }));
  }));
  for (const r of await Promise.all(runs)) {
    assert.is(r.code, 0);
    assert.is(r.out.trim(), 'loop-control loop0');
  }
});

test('an ordinary user runs the whole flow in a user namespace and cannot reach root\'s instances', () => {
  const user = 'loopfs-e2e-run';
  let made = false;
  if (spawnSync('id', [user]).status !== 0) {
    execFileSync('useradd', ['-M', '-s', '/bin/sh', user]);
    made = true;
  }
  const fuseMode = fs.statSync('/dev/fuse').mode & 0o777;
  const rootInst = sb.dir('rootinst');
  try {
    sb.ok(['mount', rootInst]);
    sb.ok(['--instance', rootInst, 'ctl', 'add', '0']);
    const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }));
    const home = sb.dir('home');
    fs.chownSync(home, uid, uid);
    fs.chmodSync(sb.root, 0o755);
    if (fuseMode & 0o006) fs.chmodSync('/dev/fuse', 0o600);
    // Without access to /dev/fuse the error says so, and nothing is left.
    const denied = spawnSync('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'env', `HOME=${home}`, `XDG_RUNTIME_DIR=${home}`, ...sb.bin, 'run', '--', 'true'], { encoding: 'utf8' });
    assert.is(denied.status, 1);
    assert.match(denied.stderr, /cannot open \/dev\/fuse: permission denied.*\(EACCES\)$/m);
    assert.is(denied.stderr.trim().split('\n').length, 1);
    fs.chmodSync('/dev/fuse', 0o666);
    const asUser = (script: string): { status: number; out: string; err: string } => {
      const r = spawnSync('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'env', `HOME=${home}`, `XDG_RUNTIME_DIR=${home}`, 'PATH=/usr/sbin:/usr/bin:/sbin:/bin', ...sb.bin, 'run', '--', 'sh', '-c', script], { encoding: 'utf8', cwd: home });
      return { status: r.status ?? 128, out: r.stdout, err: r.stderr };
    };
    const r = asUser(`truncate -s 16M "$HOME/img" && d=$(loopfs losetup -f --show "$HOME/img") && mkfs.ext4 -q "$d" && e2fsck -fn "$d" >/dev/null && loopfs losetup -d "$d" && echo flow-ok`);
    assert.is(r.status, 0, r.err);
    assert.match(r.out, /flow-ok/);
    const spy = asUser(`loopfs --run-dir ${sb.runDir} list; echo "list=$?"; cat ${rootInst}/loop0; echo "open=$?"; loopfs list --json`);
    assert.match(spy.out, /list=1/);
    assert.match(spy.err, /EACCES|EPERM/);
    assert.match(spy.out, /open=1/);
    assert.not.match(spy.out, new RegExp(rootInst));
  } finally {
    fs.chmodSync('/dev/fuse', fuseMode);
    if (made) spawnSync('userdel', [user]);
  }
  sb.ok(['umount', rootInst]);
});

test('bad input: no command, sysctl values and names', () => {
  let r = sb.run(['run']);
  assert.is(r.status, 2);
  assert.is(errnoOf(r), 'EINVAL');
  r = sb.run(['run', '-o', 'max=0', '--', 'true']);
  assert.is(r.status, 2);
  r = sb.run(['run', '-o', 'bogus', '--', 'true']);
  assert.is(r.status, 2);
  for (const bad of ['max_loop_devices=abc', 'max_loop_devices=-1', 'max_loop_devices=']) {
    r = sb.run(['sysctl', bad]);
    assert.is(r.status, 2, bad);
    assert.is(errnoOf(r), 'EINVAL', bad);
    assert.is(r.stderr.trim().split('\n').length, 1);
  }
  r = sb.run(['sysctl', 'max_ducks']);
  assert.is(r.status, 2);
  assert.is(errnoOf(r), 'ENOENT');
  assert.is(sb.ok(['sysctl']), 'max_loop_devices = 255', 'nothing changed');
});

test.run();
