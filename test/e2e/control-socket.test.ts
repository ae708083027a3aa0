import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync, execFileSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';

// SPEC §7: control requests reach a daemon only from its owner or root —
// the socket is 0600 in a 0700 directory, and the daemon checks the peer's
// credentials too. The versioned protocol refuses a version it does not speak.
let sb: Sandbox;
const test = sandboxSuite('control socket', 'ctl', (s) => (sb = s));

const USER = 'loopfs-e2e-ctl';

/** Sends one request line as `uid` (null: as root) and returns the reply line. */
function ask(sock: string, line: string, uid: number | null): string {
  const code = `import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(sys.argv[2].encode() + b"\\n")\nprint(s.makefile().readline().strip())`;
  const py = ['/usr/bin/python3', '-c', code, sock, line];
  const argv = uid === null ? py : ['setpriv', '--reuid', String(uid), '--regid', String(uid), '--clear-groups', ...py];
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  return r.stdout.trim() || r.stderr.trim();
}

function socketOf(mountpoint: string): string {
  const listed = JSON.parse(sb.ok(['list', '--json'])) as { id: string; mountpoint: string }[];
  const id = listed.find((i) => i.mountpoint === mountpoint)!.id;
  return path.join(sb.runDir, 'instances', id, 'ctl.sock');
}

test('the socket is 0600 in a 0700 directory; another uid is refused by the daemon itself; the owner is served', () => {
  let made = false;
  if (spawnSync('id', [USER]).status !== 0) {
    execFileSync('useradd', ['-M', '-s', '/bin/sh', USER]);
    made = true;
  }
  try {
    const uid = Number(execFileSync('id', ['-u', USER], { encoding: 'utf8' }));
    const rootInst = sb.dir('root-owned');
    const userInst = sb.dir('user-owned');
    sb.ok(['mount', rootInst]);
    sb.ok(['mount', '-o', `uid=${uid},gid=${uid}`, userInst]);
    const rootSock = socketOf(rootInst);
    const userSock = socketOf(userInst);
    assert.is(fs.statSync(rootSock).mode & 0o777, 0o600);
    assert.is(fs.statSync(path.dirname(rootSock)).mode & 0o777, 0o700);
    assert.is(fs.statSync(sb.runDir).mode & 0o777, 0o700);
    // As laid out, another user cannot even reach the socket.
    assert.match(ask(rootSock, '{"v":1,"op":"list","args":{}}', uid), /Permission denied/);
    // Open the way on purpose: the daemon's own peer-credential check must still refuse.
    for (const d of [sb.root, sb.runDir, path.join(sb.runDir, 'instances'), path.dirname(rootSock), path.dirname(userSock)]) fs.chmodSync(d, 0o755);
    fs.chmodSync(rootSock, 0o666);
    fs.chmodSync(userSock, 0o666);
    const refused = JSON.parse(ask(rootSock, '{"v":1,"op":"add","args":{}}', uid)) as { ok: boolean; errno: string };
    assert.is(refused.ok, false);
    assert.is(refused.errno, 'EACCES');
    assert.equal(fs.readdirSync(rootInst), ['loop-control'], 'nothing was added');
    // The owner of an instance is served.
    const served = JSON.parse(ask(userSock, '{"v":1,"op":"add","args":{}}', uid)) as { ok: boolean; result: number };
    assert.equal([served.ok, served.result], [true, 0]);
    // And root is served everywhere.
    assert.is((JSON.parse(ask(rootSock, '{"v":1,"op":"getFree","args":{}}', null)) as { result: number }).result, 0);
  } finally {
    if (made) spawnSync('userdel', [USER]);
  }
});

test('a request in another protocol version, or an unknown operation, is refused with a clear errno', () => {
  const a = sb.dir('a');
  sb.ok(['mount', a]);
  const sock = socketOf(a);
  const v2 = JSON.parse(ask(sock, '{"v":2,"op":"list","args":{}}', null)) as { ok: boolean; errno: string; reason: string };
  assert.equal([v2.ok, v2.errno], [false, 'EPROTONOSUPPORT']);
  assert.match(v2.reason, /version 2/);
  const unknown = JSON.parse(ask(sock, '{"v":1,"op":"format-disk","args":{}}', null)) as { ok: boolean; errno: string };
  assert.equal([unknown.ok, unknown.errno], [false, 'EINVAL']);
  const garbage = ask(sock, 'not json', null);
  assert.match(garbage, /"ok":false/);
  // The daemon is still fine.
  assert.is(sb.ok(['--instance', a, 'ctl', 'add']), '0');
});

test.run();
