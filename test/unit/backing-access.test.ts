import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { backingAccess } from '../../src/daemon/backing';
import { LoopfsError } from '../../src/base/errors';

// How a backing fd was opened is read from the fd: O_PATH and write-only grant no attach.
const test = suite('backing fd access');
const O_PATH = 0o10000000;
let dir = '';
let file = '';

test.before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-unit-backing-'));
  file = path.join(dir, 'f');
  fs.writeFileSync(file, 'x');
});
test.after(() => fs.rmSync(dir, { recursive: true, force: true }));

function withFd<T>(flags: number, f: (fd: number) => T): T {
  const fd = fs.openSync(file, flags);
  try {
    return f(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function errnoOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return e instanceof LoopfsError ? `${e.errno}: ${e.reason}` : String(e);
  }
  return undefined;
}

test('read-only and read-write descriptors say what they allow', () => {
  assert.equal(withFd(fs.constants.O_RDONLY, (fd) => backingAccess(fd, file)), { writable: false });
  assert.equal(withFd(fs.constants.O_RDWR, (fd) => backingAccess(fd, file)), { writable: true });
  assert.equal(withFd(fs.constants.O_RDWR | fs.constants.O_APPEND, (fd) => backingAccess(fd, file)), { writable: true });
});

test('O_PATH and write-only descriptors are EBADF', () => {
  assert.match(withFd(O_PATH, (fd) => errnoOf(() => backingAccess(fd, file)))!, /^EBADF: .*O_PATH/);
  assert.match(withFd(O_PATH | fs.constants.O_RDWR, (fd) => errnoOf(() => backingAccess(fd, file)))!, /^EBADF: .*O_PATH/);
  assert.match(withFd(fs.constants.O_WRONLY, (fd) => errnoOf(() => backingAccess(fd, file)))!, /^EBADF: .*not opened for reading/);
});

test('a descriptor that is not open is EBADF', () => {
  const limit = Number(/Max open files\s+(\d+)/.exec(fs.readFileSync('/proc/self/limits', 'utf8'))![1]);
  assert.match(errnoOf(() => backingAccess(limit + 1, file))!, /^EBADF: .*not an open file descriptor/);
});

test.run();
