import * as assert from 'uvu/assert';
import * as path from 'node:path';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox, python } from '../helpers/cli';

// SPEC §2: LOOP_CTL_* ioctls on DIR/loop-control, with the kernel's results and errnos.
let sb: Sandbox;
const test = sandboxSuite('loop-control ioctls', 'ioctl', (s) => (sb = s));

/** Runs the ioctl sequence in python; each step prints its result or errno name. */
function ioctls(ctl: string, steps: [number, number | null][]): string[] {
  const code = `
import fcntl, os, errno
fd = os.open(${JSON.stringify(ctl)}, os.O_RDWR)
for cmd, arg in ${JSON.stringify(steps).replace(/null/g, 'None')}:
    try:
        r = fcntl.ioctl(fd, cmd) if arg is None else fcntl.ioctl(fd, cmd, arg)
        print(r)
    except OSError as e:
        print(errno.errorcode[e.errno])
`;
  return python(code).trim().split('\n');
}

const ADD = 0x4c80, REMOVE = 0x4c81, GET_FREE = 0x4c82;

test('GET_FREE equals `loopfs ctl get-free`; ADD and REMOVE give the kernel values and errnos', () => {
  const a = sb.dir('a');
  sb.ok(['mount', a]);
  const ctl = path.join(a, 'loop-control');
  // Nothing exists: get-free creates loop0, both ways agree.
  assert.equal(ioctls(ctl, [[GET_FREE, null]]), ['0']);
  assert.is(sb.ok(['--instance', a, 'ctl', 'get-free']), '0');
  assert.equal(ioctls(ctl, [
    [ADD, 4], [ADD, 4], [REMOVE, 4], [REMOVE, 4], [REMOVE, 99999999], [ADD, 2], [GET_FREE, null],
  ]), ['4', 'EEXIST', '0', 'ENODEV', 'ENODEV', '2', '0']);
  // Codes loop-control does not know: /dev/loop-control says ENOSYS, which a FUSE
  // server cannot say (the kernel would answer ENOTTY and stop sending the mount's
  // ioctls): ENOTTY, and the mount's ioctls keep working.
  assert.equal(ioctls('/dev/loop-control', [[0x4c00, 0], [0x1234, 0]]), ['ENOSYS', 'ENOSYS']);
  assert.equal(ioctls(ctl, [[0x4c00, 0], [0x1234, 0], [GET_FREE, null]]), ['ENOTTY', 'ENOTTY', '0']);
  // REMOVE of an open device: EBUSY.
  const code = `
import fcntl, os, errno
d = os.open(${JSON.stringify(path.join(a, 'loop2'))}, os.O_RDONLY)
fd = os.open(${JSON.stringify(ctl)}, os.O_RDWR)
try:
    fcntl.ioctl(fd, ${REMOVE}, 2); print('removed')
except OSError as e:
    print(errno.errorcode[e.errno])
os.close(d)
print(fcntl.ioctl(fd, ${REMOVE}, 2))
`;
  assert.equal(python(code).trim().split('\n'), ['EBUSY', '0']);
  assert.equal(ioctls(ctl, [[GET_FREE, null]]), ['0']);
});

test.run();
