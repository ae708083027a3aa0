import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { koffi } from '../../src/sys/ffi';
import { Caller, CAP_SYS_ADMIN } from '../../src/sys/caller';
import { LoopfsError } from '../../src/base/errors';

// The daemon's view of a caller, tried on ourselves: memory by address, a
// descriptor by number, capabilities — and the clean errnos where they fail.
const test = suite('sys: a caller\'s memory and descriptors');
const me = new Caller(process.pid);

function errno(f: () => unknown): string {
  try {
    f();
    return 'ok';
  } catch (e) {
    assert.ok(e instanceof LoopfsError, String(e));
    return (e as LoopfsError).errno;
  }
}

test('reads and writes memory at an address, EFAULT where nothing is mapped', () => {
  const buf = Buffer.from('loop device status');
  const at = BigInt(koffi().address(buf) as unknown as bigint);
  assert.is(me.read(at, 4).toString(), 'loop');
  me.write(at + 5n, Buffer.from('DEVICE'));
  assert.is(buf.toString(), 'loop DEVICE status');
  assert.is(errno(() => me.read(8n, 16)), 'EFAULT');
  assert.is(errno(() => me.write(8n, Buffer.alloc(4))), 'EFAULT');
  assert.is(errno(() => new Caller(0).read(at, 4)), 'EFAULT', 'a caller from another pid namespace');
});

test('takes a descriptor with its flags; EBADF for none and for O_PATH; EPERM for an unseen caller', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-caller-'));
  try {
    const p = path.join(dir, 'f');
    fs.writeFileSync(p, 'x');
    const fd = fs.openSync(p, 'r');
    const taken = me.takeFd(fd);
    assert.is.not(taken.fd, fd);
    assert.is(taken.flags & 3, 0, 'O_RDONLY');
    assert.is(fs.readlinkSync(`/proc/self/fd/${taken.fd}`), p);
    fs.closeSync(taken.fd);
    fs.closeSync(fd);
    let free = 900;
    while (fs.existsSync(`/proc/self/fd/${free}`)) free++;
    assert.is(errno(() => me.takeFd(free)), 'EBADF');
    assert.is(errno(() => me.takeFd(0x7fffffff + 1)), 'EBADF');
    const opath = fs.openSync(p, fs.constants.O_RDONLY | 0o10000000);
    assert.is(errno(() => me.takeFd(opath)), 'EBADF');
    fs.closeSync(opath);
    assert.is(errno(() => new Caller(0).takeFd(0)), 'EPERM');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('capabilities from CapEff', () => {
  assert.is(me.capable(CAP_SYS_ADMIN), process.getuid?.() === 0);
  assert.is(new Caller(0).capable(CAP_SYS_ADMIN), false);
});

test.run();
