import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox, errnoOf, type Result } from '../helpers/cli';
import { entries, randomFile, releaseKernelState, sha } from '../helpers/disk';

// SPEC §7: a backing file is opened with the caller's rights, not the
// daemon's. The daemon here runs as root and serves an instance root
// mounted for an ordinary user (-o uid=,gid=); the user drives it with
// `loopfs losetup` and can attach only what they could open themselves.
//
// `loopfs mount` refuses a run directory owned by someone else, so root
// mounts the instance in a fresh run directory and then hands that run
// directory (state, socket, lock files) over to the user, as an admin
// setting up an instance for a user would.
let sb: Sandbox;
const test = sandboxSuite('losetup: backing files are opened with the caller\'s rights', 'sec', (s) => (sb = s), releaseKernelState);

/** A uid and gid no account has: nothing on the system is theirs but what the test gives them. */
function unusedId(): number {
  const taken = new Set(
    ['/etc/passwd', '/etc/group'].flatMap((f) => fs.readFileSync(f, 'utf8').split('\n').map((l) => Number(l.split(':')[2]))),
  );
  let id = 47123;
  while (taken.has(id)) id++;
  return id;
}

test('a user cannot attach a file they could not open, even through a root daemon; they can attach their own', () => {
  const uid = unusedId();
  fs.chmodSync(sb.root, 0o755);
  fs.mkdirSync(sb.runDir, { mode: 0o700 });
  const inst = sb.dir('inst');
  sb.ok(['mount', '-o', `uid=${uid},gid=${uid}`, inst]);
  const daemon = sb.daemons()[0]!;
  assert.match(fs.readFileSync(`/proc/${daemon}/status`, 'utf8'), /\nUid:\s+0\s/, 'the daemon runs as root');
  spawnSync('chown', ['-R', `${uid}:${uid}`, sb.runDir]);

  const asUser = (args: string[]): Result => {
    const [cmd, ...pre] = sb.bin;
    const r = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', cmd!, ...pre, '--instance', inst, 'losetup', ...args], {
      encoding: 'utf8', cwd: sb.root, timeout: 60_000, env: { ...process.env, LOOPFS_RUNDIR: sb.runDir, HOME: '/' },
    });
    return { status: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  };
  assert.is(asUser([]).status, 0, 'the user reaches the instance');

  const secret = randomFile(path.join(sb.root, 'secret.img'), 1 << 20);
  fs.chmodSync(secret, 0o600);
  const hiddenDir = sb.dir('hidden');
  fs.chmodSync(hiddenDir, 0o700);
  const hidden = randomFile(path.join(hiddenDir, 'h.img'), 1 << 20);
  fs.chmodSync(hidden, 0o666);
  const sums = new Map([secret, hidden].map((f) => [f, sha(f)]));
  for (const args of [['-f', '--show', secret], ['-f', '--show', '-r', secret], [path.join(inst, 'loop3'), secret], ['-f', '--show', hidden]]) {
    const r = asUser(args);
    assert.is(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.is(r.stdout, '');
    assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^loopfs losetup: \S+\.img: failed to set up loop device: Permission denied\n$/);
    assert.is(errnoOf(r), 'EACCES');
    assert.equal(entries(inst), ['loop-control'], 'no device was created');
  }
  for (const [f, s] of sums) assert.is(sha(f), s);

  // Their own file: attached read-write; the user reads and writes it through the device.
  const mine = randomFile(path.join(sb.root, 'mine.img'), 1 << 20);
  fs.chownSync(mine, uid, uid);
  fs.chmodSync(mine, 0o600);
  const ok = asUser(['-f', '--show', 'mine.img']);
  assert.is(ok.status, 0, ok.stderr);
  assert.is(ok.stderr, '');
  const dev = ok.stdout.trim();
  assert.is(dev, path.join(inst, 'loop0'));
  assert.is(fs.statSync(dev).uid, uid, 'the device belongs to the user');
  const rw = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'dd', 'if=/dev/zero', `of=${dev}`, 'bs=4096', 'count=1', 'seek=1', 'conv=notrunc,fsync', 'status=none'], { encoding: 'utf8' });
  assert.is(rw.status, 0, rw.stderr);
  assert.ok(fs.readFileSync(mine).subarray(4096, 8192).equals(Buffer.alloc(4096)), 'the write reached the file');

  // Readable but not writable for them: read-only, with a warning.
  const pub = randomFile(path.join(sb.root, 'pub.img'), 1 << 20);
  fs.chmodSync(pub, 0o644);
  const ro = asUser(['-f', '--show', pub]);
  assert.is(ro.status, 0, ro.stderr);
  assert.match(ro.stderr, /pub\.img.*read-only/);
  assert.is(asUser(['-n', '-O', 'RO', ro.stdout.trim()]).stdout.trim(), '1');
  assert.equal(asUser(['-a']).stdout.trim().split('\n').length, 2);
});

test.run();
