import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { e2eSuite } from '../helpers/e2e';
import { mountFuse, unmountFuse, isMounted } from '../../src/fuse/mount';
import { Session } from '../../src/fuse/session';
import type { FileSystem } from '../../src/fuse/types';
import { ioThreadProgram } from '../../src/daemon/io-thread-program';

// The FUSE layer alone, on a real mount: a filesystem of two files, one of
// whose reads is slow. Nothing here knows about loop devices. The session is
// served by this very process, so the test itself only makes async calls:
// anything synchronous on the mount would wait for the thread that answers it.
const test = e2eSuite('fuse session');

const FAST = Buffer.from('fast\n');

function tinyFs(slowMs: number, log: string[]): FileSystem {
  const attr = (ino: number) => ({ ino, size: ino === 1 ? 0 : 4096, mode: ino === 1 ? 0o40755 : 0o100644, nlink: 1, uid: 0, gid: 0 });
  return {
    lookup(_c, parent, name) {
      if (parent === 1 && name === 'slow') return { attr: attr(2) };
      if (parent === 1 && name === 'fast') return { attr: { ...attr(3), size: FAST.length } };
      throw Object.assign(new Error(name), { code: 'ENOENT' });
    },
    getattr: (_c, ino) => (ino === 3 ? { ...attr(3), size: FAST.length } : attr(ino)),
    readdir: () => [{ name: '.', ino: 1, mode: 0o40000 }, { name: '..', ino: 1, mode: 0o40000 }, { name: 'slow', ino: 2, mode: 0o100000 }, { name: 'fast', ino: 3, mode: 0o100000 }],
    async read(_c, ino, _fh, off, size, buf) {
      if (ino === 2) {
        log.push('slow-start');
        await new Promise((r) => setTimeout(r, slowMs));
        log.push('slow-end');
        return buf.fill(0x73, 0, Math.min(size, 4096 - off)).length && Math.min(size, Math.max(0, 4096 - off));
      }
      log.push('fast');
      return FAST.copy(buf, 0, off, Math.min(FAST.length, off + size));
    },
    unlink: () => {
      throw Object.assign(new Error('no'), { code: 'EPERM' });
    },
  };
}

function sh(cmd: string): Promise<{ status: number | null; stdout: string }> {
  return new Promise((resolve) => {
    const c = spawn('sh', ['-c', cmd], { stdio: ['ignore', 'pipe', 'ignore'] });
    let stdout = '';
    c.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    c.on('close', (status) => resolve({ status, stdout }));
  });
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.is((e as NodeJS.ErrnoException).code, code);
    return;
  }
  assert.unreachable(`expected ${code}`);
}

// Read by the main thread (no backed handle: the threads are not started) and by the threads.
for (const lazyThreads of [true, false]) test(`a slow request does not stall the others; unknown opcodes are ENOSYS; errors keep their errno (${lazyThreads ? 'main thread reads' : 'threads read'})`, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-fuse-'));
  const log: string[] = [];
  const m = await mountFuse(dir, { source: 'loopfs-test', subtype: 'loopfs-test', uid: 0, gid: 0, allowOther: true });
  const served = new Session(m.fd, tinyFs(1500, log), { lazyThreads, threadProgram: ioThreadProgram() }).serve();
  try {
    assert.ok(isMounted(dir));
    assert.equal((await fs.promises.readdir(dir)).sort(), ['fast', 'slow']);
    // The slow read runs in the background; the fast one must finish while it waits.
    const both = await sh(`(dd if=${dir}/slow of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null; echo done) & sleep 0.3; cat ${dir}/fast; wait`);
    assert.is(both.stdout, 'fast\ndone\n');
    assert.equal(log.slice(0, 3), ['slow-start', 'fast', 'slow-end']);
    // EPERM travels back as EPERM; an opcode with no handler (SYMLINK) is ENOSYS.
    await rejectsWith(fs.promises.unlink(path.join(dir, 'fast')), 'EPERM');
    await rejectsWith(fs.promises.symlink('/x', path.join(dir, 'l')), 'ENOSYS');
    await rejectsWith(fs.promises.stat(path.join(dir, 'nope')), 'ENOENT');
    assert.match((await sh(`stat -f -c %T ${dir}`)).stdout, /fuse/);
  } finally {
    if (isMounted(dir)) await unmountFuse(dir);
    await served;
    await fs.promises.rmdir(dir);
  }
  assert.not.ok(isMounted(dir));
});

test.run();
