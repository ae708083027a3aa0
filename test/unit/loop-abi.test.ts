import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import * as abi from '../../src/daemon/loop-abi';
import { LoopfsError } from '../../src/base/errors';

// The loop driver's structs as python's struct module lays them out from the
// C declarations (test/helpers/loopdev.py): an independent encoder to agree with.
const test = suite('loop ABI: struct loop_info64, loop_info, loop_config');
const HELPERS = path.resolve(__dirname, '..', '..', '..', 'test', 'helpers');

function py(expr: string): Buffer {
  const out = execFileSync('python3', ['-c', `import sys; sys.path.insert(0, ${JSON.stringify(HELPERS)})
from loopdev import *
sys.stdout.write((${expr}).hex())`], { encoding: 'utf8' });
  return Buffer.from(out, 'hex');
}

test('sizes are the kernel\'s', () => {
  assert.is(py('info64()').length, abi.LOOP_INFO64_SIZE);
  assert.is(py('info_old()').length, abi.LOOP_INFO_SIZE);
  assert.is(py('config(3)').length, abi.LOOP_CONFIG_SIZE);
});

test('loop_config and loop_info64 decode field by field', () => {
  const c = abi.decodeConfig(py(`config(7, 4096, offset=1 << 40, sizelimit=12345, flags=LO_FLAGS_AUTOCLEAR | LO_FLAGS_PARTSCAN, name=b'disk.img', enc=2, keysz=9)`));
  assert.is(c.fd, 7);
  assert.is(c.blockSize, 4096);
  assert.is(c.info.offset, 1n << 40n);
  assert.is(c.info.sizelimit, 12345n);
  assert.is(c.info.flags, 12);
  assert.is(c.info.encryptType, 2);
  assert.is(c.info.keySize, 9);
  assert.is(abi.fileNameString(c.info.fileName), 'disk.img');
});

test('a file name of 64 bytes without NUL keeps 63, as the kernel stores it', () => {
  const i = abi.decodeInfo64(py(`info64(name=b'x' * 64)`));
  assert.is(i.fileName.length, abi.LO_NAME_SIZE);
  assert.is(abi.fileNameString(i.fileName), 'x'.repeat(63));
});

test('encodeInfo64 round-trips through python\'s decoder', () => {
  const b = abi.encodeInfo64({ device: 0xfe00n, inode: 77n, rdevice: 0n, offset: 4096n, sizelimit: 1n << 20n, number: 3, encryptType: 0, keySize: 0, flags: 5, fileName: Buffer.from('name\0') });
  const out = execFileSync('python3', ['-c', `import sys, json; sys.path.insert(0, ${JSON.stringify(HELPERS)})
from loopdev import *
print(json.dumps(decode64(bytes.fromhex(${JSON.stringify(b.toString('hex'))}))))`], { encoding: 'utf8' });
  assert.equal(JSON.parse(out), { device: 0xfe00, inode: 77, rdevice: 0, offset: 4096, sizelimit: 1 << 20, number: 3, flags: 5, file_name: 'name' });
});

test('the old struct: a negative offset is sign-extended (EOVERFLOW), an offset past an int is EOVERFLOW on the way out', () => {
  const i = abi.decodeInfoOld(py(`info_old(offset=-512, flags=4, name=b'old')`));
  assert.is(i.offset, (1n << 64n) - 512n);
  assert.is(i.sizelimit, 0n);
  assert.is(abi.fileNameString(i.fileName), 'old');
  assert.throws(() => abi.checkInfo(i, 'loop0'), (e: unknown) => e instanceof LoopfsError && e.errno === 'EOVERFLOW');
  assert.throws(() => abi.encodeInfoOld({ ...i, offset: 1n << 31n }, 'loop0'), (e: unknown) => e instanceof LoopfsError && e.errno === 'EOVERFLOW');
  assert.is(abi.encodeInfoOld({ ...i, offset: 512n }, 'loop0').readInt32LE(32), 512);
});

test('checkInfo: the kernel\'s EINVAL and EOVERFLOW cases, in its order', () => {
  const base = abi.decodeInfo64(py('info64()'));
  const errno = (over: Partial<abi.LoopInfo>): string => {
    try {
      abi.checkInfo({ ...base, ...over }, 'loop0');
      return 'ok';
    } catch (e) {
      return (e as LoopfsError).errno;
    }
  };
  assert.is(errno({}), 'ok');
  assert.is(errno({ keySize: 33 }), 'EINVAL');
  assert.is(errno({ keySize: 32 }), 'ok');
  assert.is(errno({ encryptType: 1 }), 'EINVAL');
  assert.is(errno({ offset: 1n << 63n }), 'EOVERFLOW');
  assert.is(errno({ sizelimit: (1n << 63n) - 1n }), 'ok');
  assert.is(errno({ keySize: 33, offset: 1n << 63n }), 'EINVAL');
});

test('huge_encode_dev of a glibc dev_t, against python\'s os.major/os.minor', () => {
  for (const [major, minor] of [[254, 0], [8, 1], [259, 300], [4095, 1048575], [0, 45]]) {
    const dev = Number(execFileSync('python3', ['-c', `import os; print(os.makedev(${major}, ${minor}))`], { encoding: 'utf8' }));
    assert.is(abi.hugeEncodeDev(dev), BigInt((minor! & 0xff) | (major! << 8)) | (BigInt(minor! & ~0xff) << 12n), `${major}:${minor}`);
  }
});

test.run();
