import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { UnixServer, UnixConn, connect } from '../../src/sys/unixsock';
import { readLine } from '../../src/sys/lines';
import { LoopfsError } from '../../src/base/errors';

const test = suite('unixsock');

let dir = '';
let n = 0;
let fdsBefore = 0;
const sock = () => path.join(dir, `s${n++}.sock`);
const openFds = () => fs.readdirSync('/proc/self/fd').length;

async function rejects(p: Promise<unknown>, errno: string): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof LoopfsError, `expected a LoopfsError, got ${String(e)}`);
    assert.is((e as LoopfsError).errno, errno);
    return;
  }
  assert.unreachable(`expected ${errno}`);
}

async function pair(): Promise<{ server: UnixServer; a: UnixConn; b: UnixConn }> {
  const server = UnixServer.listen(sock());
  const [b, a] = await Promise.all([server.accept(), connect(server.path)]);
  return { server, a, b };
}

test.before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-unixsock-'));
  fdsBefore = openFds();
});

test.after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

test('lines round trip, split and merged across sends; EOF is null', async () => {
  const { server, a, b } = await pair();
  await a.send(Buffer.from('{"op":"one"}\n{"op":"tw'));
  assert.equal(await readLine(b), { line: '{"op":"one"}', fds: [] });
  const second = readLine(b);
  await a.send(Buffer.from('o"}\n{"op":"three"}\n'));
  assert.equal(await second, { line: '{"op":"two"}', fds: [] });
  assert.equal(await readLine(b), { line: '{"op":"three"}', fds: [] });
  await b.send(Buffer.from('reply\n'));
  assert.equal((await readLine(a)).line, 'reply');
  await a.send(Buffer.from('no newline'));
  a.close();
  assert.equal(await readLine(b), { line: null, fds: [] });
  assert.is((await b.recv()).data.length, 0);
  b.close();
  server.close();
});

test('a large message arrives whole', async () => {
  const { server, a, b } = await pair();
  const big = Buffer.alloc(3 << 20, 'x');
  const sent = a.send(Buffer.concat([big, Buffer.from('\n')]));
  const got = await readLine(b, 4 << 20);
  await sent;
  assert.is(got.line?.length, big.length);
  a.close(); b.close(); server.close();
});

test('an fd passes with its line, readable and O_CLOEXEC; caller owns it', async () => {
  const { server, a, b } = await pair();
  const file = path.join(dir, 'payload');
  fs.writeFileSync(file, 'the bytes of the backing file');
  const fd = fs.openSync(file, fs.constants.O_RDONLY);
  await a.send(Buffer.from('before\n'));
  await a.send(Buffer.from('{"op":"attach"}\n'), [fd]);
  fs.closeSync(fd); // the sender keeps its own copy: closing it does not affect the receiver
  await a.send(Buffer.from('after\n'));
  assert.equal(await readLine(b), { line: 'before', fds: [] });
  const got = await readLine(b);
  assert.is(got.line, '{"op":"attach"}');
  assert.is(got.fds.length, 1);
  const rfd = got.fds[0]!;
  const buf = Buffer.alloc(64);
  const len = fs.readSync(rfd, buf, 0, 64, 0);
  assert.is(buf.toString('utf8', 0, len), 'the bytes of the backing file');
  const flags = /flags:\s+(\d+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${rfd}`, 'utf8'))![1]!;
  assert.ok((parseInt(flags, 8) & 0o2000000) !== 0, 'received fd is O_CLOEXEC');
  fs.closeSync(rfd);
  assert.equal(await readLine(b), { line: 'after', fds: [] });
  a.close(); b.close(); server.close();
});

test('several fds in one message, raw recv', async () => {
  const { server, a, b } = await pair();
  const fds = [0, 1, 2].map(() => fs.openSync('/dev/null', 'r'));
  await a.send(Buffer.from('x'), fds);
  fds.forEach((fd) => fs.closeSync(fd));
  const got = await b.recv();
  assert.is(got.data.toString(), 'x');
  assert.is(got.fds.length, 3);
  got.fds.forEach((fd) => fs.closeSync(fd));
  a.close(); b.close(); server.close();
});

test('peerCred: pid and uid of a client in another process', async () => {
  const server = UnixServer.listen(sock());
  const child = spawn(process.execPath, ['-e',
    `const c = require('net').connect(${JSON.stringify(server.path)}); c.on('data', () => c.end());`], { stdio: 'inherit' });
  const exited = new Promise((res) => child.on('exit', res));
  const conn = await server.accept();
  const cred = conn.peerCred();
  assert.is(cred.pid, child.pid);
  assert.is(cred.uid, process.getuid!());
  assert.is(cred.gid, process.getgid!());
  await conn.send(Buffer.from('bye\n'));
  assert.is((await conn.recv()).data.length, 0);
  conn.close();
  await exited;
  server.close();
});

test('socket file is 0600 by default, or the mode given', async () => {
  const a = UnixServer.listen(sock());
  assert.is(fs.statSync(a.path).mode & 0o7777, 0o600);
  assert.ok(fs.statSync(a.path).isSocket());
  const b = UnixServer.listen(sock(), 0o660);
  assert.is(fs.statSync(b.path).mode & 0o7777, 0o660);
  a.close(); b.close();
});

test('listen on an existing path is EADDRINUSE; nothing is unlinked', async () => {
  const p = sock();
  fs.writeFileSync(p, 'keep me');
  assert.throws(() => UnixServer.listen(p), (e: unknown) => e instanceof LoopfsError && e.errno === 'EADDRINUSE');
  assert.is(fs.readFileSync(p, 'utf8'), 'keep me');
});

test('connect: missing path is ENOENT, a closed server is ECONNREFUSED', async () => {
  await rejects(connect(path.join(dir, 'missing.sock')), 'ENOENT');
  const server = UnixServer.listen(sock());
  server.close();
  assert.ok(fs.existsSync(server.path), 'close leaves the path');
  await rejects(connect(server.path), 'ECONNREFUSED');
});

test('20 concurrent clients are served, the loop stays free', async () => {
  const server = UnixServer.listen(sock());
  const conns: UnixConn[] = [];
  const serve = (async () => {
    for (;;) {
      let c: UnixConn;
      try {
        c = await server.accept();
      } catch {
        return;
      }
      conns.push(c);
      void (async () => {
        for (;;) {
          const { line } = await readLine(c);
          if (line === null) return c.close();
          const req = JSON.parse(line) as { n: number };
          await c.send(Buffer.from(JSON.stringify({ n: req.n * 2 }) + '\n'));
        }
      })();
    }
  })();
  // Idle connections, each with a recv pending on the server side: with a
  // thread per wait they would pin all (default 4) pool threads and fs would stall.
  const idle = await Promise.all(Array.from({ length: 8 }, () => connect(server.path)));
  await new Promise((res) => setTimeout(res, 20));
  const fsWorks = await Promise.race([
    fs.promises.readFile(__filename).then(() => true),
    new Promise<boolean>((res) => setTimeout(() => res(false), 2000)),
  ]);
  assert.ok(fsWorks, 'the libuv pool is not pinned by waiting sockets');
  const results = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
    const c = await connect(server.path);
    await c.send(Buffer.from(JSON.stringify({ n: i }) + '\n'));
    const { line } = await readLine(c);
    c.close();
    return (JSON.parse(line!) as { n: number }).n;
  }));
  assert.equal(results, Array.from({ length: 20 }, (_, i) => i * 2));
  idle.forEach((c) => c.close());
  await new Promise((res) => setTimeout(res, 50));
  server.close();
  await serve;
  conns.forEach((c) => c.close());
});

test('send to a closed peer is EPIPE', async () => {
  const { server, a, b } = await pair();
  b.close();
  await rejects(a.send(Buffer.alloc(1 << 20)), 'EPIPE');
  a.close(); server.close();
});

test('close() wakes a pending accept (rejects ECANCELED) and a pending recv', async () => {
  const server = UnixServer.listen(sock());
  const pending = server.accept();
  let timerFired = false;
  setTimeout(() => {
    timerFired = true;
    server.close();
  }, 30);
  await rejects(pending, 'ECANCELED');
  assert.ok(timerFired, 'the event loop ran while accept was pending');
  await rejects(server.accept(), 'ECANCELED');

  const { server: s2, a, b } = await pair();
  const r = b.recv();
  setTimeout(() => b.close(), 10);
  await rejects(r, 'ECANCELED');
  a.close(); s2.close();
});

test('no fd leaked', async () => {
  await new Promise((res) => setTimeout(res, 50));
  // +1: the poller's eventfd lives as long as the process.
  assert.ok(openFds() <= fdsBefore + 1, `fds before ${fdsBefore}, after ${openFds()}`);
});

test.run();
