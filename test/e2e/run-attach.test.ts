import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { sparseImage } from '../helpers/disk';
import { Sandbox, errnoOf, sandboxFootprint, type Footprint } from '../helpers/cli';

// issue 14, item 4: `loopfs run --attach IMG[,losetup options] -- CMD`: the devices are
// attached by the sandbox's init before CMD starts, named in LOOPFS_DEV0… and
// LOOPFS_DEVICES, and go with the sandbox.
let sb: Sandbox;
const test = sandboxSuite('run-attach', 'run-attach', (s) => (sb = s));

const footprint = (): Footprint => sandboxFootprint(sb);

const image = (name: string, mib: number): string => sparseImage(path.join(sb.root, name), mib * 2 ** 20);

const EXT4_MAGIC = (f: string): boolean => fs.readFileSync(f).subarray(1024 + 56, 1024 + 58).equals(Buffer.from([0x53, 0xef]));

test('--attach IMG: mkfs.ext4 and e2fsck -fn on $LOOPFS_DEV0 work, and afterwards nothing of it remains', () => {
  const img = image('disk.img', 64);
  sb.ok(['list']);
  const before = footprint();
  const r = sb.run(['run', '--attach', img, '--', 'sh', '-c', 'mkfs.ext4 -q "$LOOPFS_DEV0" && e2fsck -fn "$LOOPFS_DEV0" >/dev/null && echo "dev=$LOOPFS_DEV0 all=$LOOPFS_DEVICES lo=$LOOPFS" && loopfs losetup -a']);
  assert.is(r.status, 0, r.stderr);
  const m = /^dev=(\S+) all=(.*) lo=(\S+)$/m.exec(r.stdout);
  assert.ok(m, r.stdout);
  assert.is(m![1], `${m![3]}/loop0`);
  assert.is(m![2], m![1]);
  // The device is an ordinary one of the instance, as `losetup -f --show` would have made it.
  assert.match(r.stdout, new RegExp(`^${m![1]}: \\[\\d+\\]:\\d+ \\(${img}\\)$`, 'm'));
  assert.ok(EXT4_MAGIC(img), 'the image holds an ext4 superblock');
  // e2fsck on the kernel's loop device over the same file agrees.
  const k = execFileSync('losetup', ['-f', '--show', '-r', img], { encoding: 'utf8' }).trim();
  try {
    execFileSync('e2fsck', ['-fn', k], { stdio: 'ignore' });
  } finally {
    execFileSync('losetup', ['-d', k]);
  }
  assert.equal(footprint(), before);
});

test('two images: LOOPFS_DEV0 and LOOPFS_DEV1 in the order given, each over its own file', () => {
  const a = image('a.img', 8);
  const b = image('b.img', 16);
  sb.ok(['list']);
  const before = footprint();
  const r = sb.run(['run', '--attach', a, '--attach', b, '--', 'sh', '-c',
    'printf A | dd of="$LOOPFS_DEV0" conv=notrunc,fsync 2>/dev/null && printf B | dd of="$LOOPFS_DEV1" conv=notrunc,fsync 2>/dev/null && ' +
    'echo "$LOOPFS_DEV0|$LOOPFS_DEV1|$LOOPFS_DEVICES|${LOOPFS_DEV2-unset}" && blockdev --getsize64 "$LOOPFS_DEV0" "$LOOPFS_DEV1"']);
  assert.is(r.status, 0, r.stderr);
  const [line, s0, s1] = r.stdout.trim().split('\n');
  const [d0, d1, all, d2] = line!.split('|');
  assert.match(d0!, /\/loop0$/);
  assert.match(d1!, /\/loop1$/);
  assert.is(all, `${d0} ${d1}`);
  assert.is(d2, 'unset');
  assert.is(Number(s0), 8 * 2 ** 20);
  assert.is(Number(s1), 16 * 2 ** 20);
  assert.is(fs.readFileSync(a).subarray(0, 1).toString(), 'A');
  assert.is(fs.readFileSync(b).subarray(0, 1).toString(), 'B');
  assert.equal(footprint(), before);
});

test('options after commas: -r gives a read-only device (a write fails EPERM, as on the kernel\'s); -o,N and --sizelimit=N a window', () => {
  const img = image('ro.img', 8);
  fs.writeFileSync(img, Buffer.alloc(4096, 7), { flag: 'r+' });
  const write = 'import os,sys\ntry:\n  fd=os.open(sys.argv[1],os.O_WRONLY)\n  os.write(fd,b"x"*4096)\n  print("written")\nexcept OSError as e:\n  import errno; print(errno.errorcode[e.errno])\n';
  const r = sb.run(['run', '--attach', `${img},-r`, '--attach', `${img},-o,1048576,--sizelimit=2097152`, '--', 'sh', '-c',
    `python3 -c '${write}' "$LOOPFS_DEV0"; blockdev --getro "$LOOPFS_DEV0" "$LOOPFS_DEV1"; blockdev --getsize64 "$LOOPFS_DEV1"`]);
  assert.is(r.status, 0, r.stderr);
  const k = execFileSync('losetup', ['-f', '--show', '-r', img], { encoding: 'utf8' }).trim();
  let kernel: string;
  try {
    kernel = execFileSync('python3', ['-c', write, k], { encoding: 'utf8' }).trim();
  } finally {
    execFileSync('losetup', ['-d', k]);
  }
  assert.is(kernel, 'EPERM');
  assert.equal(r.stdout.trim().split('\n'), [kernel, '1', '0', String(2 * 2 ** 20)]);
  assert.ok(fs.readFileSync(img).subarray(0, 4096).equals(Buffer.alloc(4096, 7)), 'the read-only device wrote nothing');
});

test('-P gives the partitions of the image, as losetup -P does', () => {
  const img = image('parts.img', 64);
  execFileSync('sfdisk', ['-q', img], { input: 'label: gpt\n,16M,L\n,,L\n' });
  const r = sb.run(['run', '--attach', `${img},-P`, '--', 'sh', '-c', 'blockdev --getsize64 "${LOOPFS_DEV0}p1" "${LOOPFS_DEV0}p2" && mkfs.ext4 -q "${LOOPFS_DEV0}p2" && e2fsck -fn "${LOOPFS_DEV0}p2" >/dev/null && echo ok']);
  assert.is(r.status, 0, r.stderr);
  // The sizes sfdisk itself reads from the table.
  const table = JSON.parse(execFileSync('sfdisk', ['-J', img], { encoding: 'utf8' })) as { partitiontable: { partitions: { size: number }[] } };
  const sizes = table.partitiontable.partitions.map((p) => `${p.size * 512}\n`).join('');
  assert.is(table.partitiontable.partitions.length, 2);
  assert.is(r.stdout, `${sizes}ok\n`);
});

test('bad input: one line with the errno, exit 2 for usage and 1 for a failed attach, CMD not started, nothing left', () => {
  const img = image('ok.img', 8);
  const marker = path.join(sb.root, 'cmd-ran');
  sb.ok(['list']);
  const before = footprint();
  const cases: [string[], number, string, RegExp][] = [
    [['--attach', path.join(sb.root, 'missing.img')], 1, 'ENOENT', /^loopfs run: --attach \S+missing\.img: No such file or directory \(ENOENT\)$/],
    // The first device is attached, the second fails: the first goes with the sandbox.
    [['--attach', img, '--attach', path.join(sb.root, 'missing.img')], 1, 'ENOENT', /missing\.img/],
    [['--attach', `${img},-b,1000`], 1, 'EINVAL', /^loopfs run: --attach \S+ok\.img: .*1000.* \(EINVAL\)$/],
    [['--attach', `${img},-Q`], 2, 'EINVAL', /^loopfs run: --attach \S+,-Q: invalid option -- 'Q' \(EINVAL\)$/],
    [['--attach', `${img},-o,abc`], 2, 'EINVAL', /failed to parse offset/],
    [['--attach', `${img},-d,x`], 2, 'EINVAL', /mutually exclusive/],
    [['--attach', `${img},-l`], 2, 'EINVAL', /mutually exclusive/],
    [['--attach', `${img},-J`], 2, 'EINVAL', /not a setup option/],
    [['--attach', `${img},--instance=x`], 2, 'EINVAL', /not a setup option/],
    [['--attach', `${img},-P,extra`], 2, 'EINVAL', /unexpected arguments/],
    [['--attach', ',-P'], 2, 'EINVAL', /no image given/],
  ];
  for (const [args, status, errno, line] of cases) {
    const r = sb.run(['run', ...args, '--', 'touch', marker]);
    const what = args.join(' ');
    assert.is(r.status, status, `${what}: ${r.stderr}`);
    assert.is(errnoOf(r), errno, what);
    assert.is(r.stderr.trim().split('\n').length, 1, `${what}: one line: ${r.stderr}`);
    assert.match(r.stderr.trim(), line, what);
    assert.not.ok(fs.existsSync(marker), `${what}: CMD did not run`);
    assert.equal(footprint(), before, what);
  }
});

test('a nested run sees its own devices only: LOOPFS_DEV* of the outer one are not inherited', () => {
  const img = image('n.img', 8);
  const r = sb.run(['run', '--attach', img, '--', 'sh', '-c', 'echo "outer=$LOOPFS_DEVICES"; loopfs run -- sh -c \'echo "inner=${LOOPFS_DEVICES-unset} ${LOOPFS_DEV0-unset}"\'']);
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /^outer=\S+\/loop0$/m);
  assert.match(r.stdout, /^inner=unset unset$/m);
});

test.run();
