import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cac } from 'cac';
import type { AttachRequest, AttachResult, DeviceRef, InstanceClient } from '../../src/core/api';
import type { DeviceInfo } from '../../src/base/types';
import { LoopfsError } from '../../src/base/errors';
import { losetupArgv, register } from '../../src/commands/losetup';
import { parseLosetupArgs } from '../../src/commands/losetup/args';
import { runLosetup, type FileStat, type LosetupDeps } from '../../src/commands/losetup/run';

/** `loopfs losetup` on a fake instance: option parsing, the requests it makes, what it prints. */

const MNT = '/run/loopfs/default';
const FILE_ST: FileStat = { dev: 2049, ino: 1234, size: 1 << 20, isBlockDevice: false };

function dev(index: number, o: Partial<DeviceInfo> = {}): DeviceInfo {
  return {
    index, path: `${MNT}/loop${index}`, bound: true, openCount: 0, backFile: '/img/disk.img', backIno: 1234, backDev: 2049,
    offset: 0, sizelimit: 0, size: 1 << 20, sectorSize: 512, readOnly: false, autoclear: false, partscan: false,
    directIo: false, partitions: [], ...o,
  };
}

interface World {
  deps: LosetupDeps;
  out: string[];
  err: string[];
  attached: AttachRequest[];
  detached: number[];
  capacity: number[];
  selectors: unknown[];
  devs: DeviceInfo[];
  client: InstanceClient;
}

function world(devs: DeviceInfo[] = [], o: { attach?: (r: AttachRequest) => AttachResult; stat?: FileStat | undefined; env?: Record<string, string> } = {}): World {
  const w = { out: [] as string[], err: [] as string[], attached: [] as AttachRequest[], detached: [] as number[], capacity: [] as number[], selectors: [] as unknown[], devs } as World;
  w.client = {
    id: 'default', mountpoint: MNT,
    list: async () => devs,
    attach: async (r) => {
      w.attached.push(r);
      if (o.attach) return o.attach(r);
      const i = r.index ?? devs.length;
      return { device: dev(i, { backFile: r.file, offset: r.offset ?? 0, sizelimit: r.sizelimit ?? 0 }), warnings: [] };
    },
    detach: async (i) => {
      w.detached.push(i);
      if (!devs.find((d) => d.index === i)?.bound) throw new LoopfsError('ENXIO', `loop${i}`);
    },
    detachAll: async () => {},
    setCapacity: async (i) => { w.capacity.push(i); return devs[i]; },
    addDevice: async () => devs.length, removeDevice: async () => {}, getFree: async () => 7,
    // An instance that cannot change these (a test replaces them where it can).
    setDirectIo: async () => { throw new LoopfsError('EOPNOTSUPP', 'setDirectIo'); },
    setSectorSize: async () => { throw new LoopfsError('EOPNOTSUPP', 'setSectorSize'); },
    overlay: async () => { throw new LoopfsError('EOPNOTSUPP', 'overlay'); },
  };
  w.deps = {
    openInstance: async (sel) => { w.selectors.push(sel); return w.client; },
    resolveDevice: async (arg, sel): Promise<DeviceRef> => {
      w.selectors.push(sel);
      const m = /^(?:\/run\/loopfs\/default\/)?loop(\d+)(?:p(\d+))?$/.exec(arg);
      if (!m) throw new LoopfsError('EINVAL', arg, 'not a loopfs device name');
      return { client: w.client, index: Number(m[1]), ...(m[2] ? { partition: Number(m[2]) } : {}) };
    },
    stdout: (s) => void w.out.push(s),
    stderr: (s) => void w.err.push(s),
    stat: async () => ('stat' in o ? o.stat : FILE_ST),
    realpath: async (p) => p,
    env: o.env ?? {},
    isTTY: false,
  };
  return w;
}

async function fails(args: string[], w = world()): Promise<LoopfsError> {
  try {
    await runLosetup(args, w.deps);
  } catch (e) {
    assert.instance(e, LoopfsError, `losetup ${args.join(' ')}`);
    const le = e as LoopfsError;
    // main.ts exits 2 on usage errors; losetup exits 1 on everything, as util-linux does.
    assert.not.ok(le.usage, `losetup ${args.join(' ')} exits 1`);
    return le;
  }
  throw new assert.Assertion({ message: `losetup ${args.join(' ')} should fail`, generated: false, operator: 'throws', expects: 'error', actual: 'success' });
}

const test = suite('loopfs losetup');

test('bad input: LoopfsError, exit 1, util-linux words', async () => {
  const cases: [string[], string, RegExp?][] = [
    [['-x'], "invalid option -- 'x'"],
    [['--frobnicate'], "unrecognized option '--frobnicate'"],
    [['-j'], "option requires an argument -- 'j'"],
    [['-f', '--show'], 'the options --{sizelimit,partscan,read-only,show} are allowed during loop device setup only'],
    [['--show'], 'no loop device specified'],
    [['-r', 'disk.img'], 'disk.img: failed to use device'],
    [['-o', '-1', '-f', 'disk.img'], "failed to parse offset: '-1'", /^Invalid argument$/],
    [['-o', 'abc', '-f', 'disk.img'], "failed to parse offset: 'abc'"],
    [['-o', '99999999999999999999999', '-f', 'disk.img'], "failed to parse offset: '99999999999999999999999'", /out of range/],
    [['-o', '9007199254740992', '-f', 'disk.img'], "failed to parse offset: '9007199254740992'", /out of range/],
    [['--sizelimit', '', '-f', 'disk.img'], "failed to parse size: ''"],
    [['-b', '4x', '-f', 'disk.img'], "failed to parse logical block size: '4x'"],
    [['-O', 'NAME,BOGUS'], 'unknown column: BOGUS', /^$/],
    [['-O', ''], "failed to parse columns: '': empty column list", /^$/],
    [['-J', '--raw'], 'mutually exclusive arguments: --json --raw', /^$/],
    [['-d', 'loop0', '-f'], 'mutually exclusive arguments: --detach-all --all --set-capacity --detach --find --associated', /^$/],
    [['--direct-io=yes', '-f', 'x'], "argument error: 'yes'", /^$/],
    [['--s'], "option '--s' is ambiguous; possibilities: '--set-capacity' '--sector-size' '--sizelimit' '--show'"],
    [['--all=1'], "option '--all' doesn't allow an argument"],
    [['--offset'], "option '--offset' requires an argument"],
    [['-f', 'a', 'b'], 'unexpected arguments'],
    [['-o', '512', '-a'], 'the option --offset is not allowed in this context'],
    [['-d', '/dev/loop0'], '/dev/loop0: failed to use device', /^No such device$/],
    [['-d', 'loop3p1'], 'loop3p1: failed to use device'],
  ];
  for (const [args, what, reason] of cases) {
    const e = await fails(args, world([dev(0), dev(3)]));
    assert.is(e.what, what, args.join(' '));
    if (reason) assert.match(e.reason, reason, args.join(' '));
  }
});

test('-f --show FILE builds the AttachRequest and prints the device', async () => {
  const w = world([dev(0)]);
  assert.is(await runLosetup(['-f', '--show', 'disk.img'], w.deps), 0);
  assert.equal(w.attached, [{ file: 'disk.img' }]);
  assert.is(w.out.join(''), `${MNT}/loop1\n`);
  assert.equal(w.err, []);
});

test('every setup option reaches the request', async () => {
  const w = world();
  await runLosetup(['--find', '--show', '-o', '1KiB', '--sizelimit', '0.5M', '-b', '4K', '-r', '-P', '--direct-io', '-L', 'disk.img'], w.deps);
  assert.equal(w.attached, [{ file: 'disk.img', offset: 1024, sizelimit: 512 * 1024, sectorSize: 4096, readOnly: true, partscan: true, directIo: true, nooverlap: true }]);

  const w2 = world();
  await runLosetup(['-rPfo1024', '--sizel=4096', '--direct-io=off', '--sh', 'disk.img'], w2.deps);
  assert.equal(w2.attached, [{ file: 'disk.img', offset: 1024, sizelimit: 4096, readOnly: true, partscan: true }]);
  assert.is(w2.out.join(''), `${MNT}/loop0\n`);

  const w3 = world();
  await runLosetup([`${MNT}/loop5`, 'disk.img'], w3.deps);
  assert.equal(w3.attached, [{ file: 'disk.img', index: 5 }]);
  assert.equal(w3.out, [], 'no --show, nothing printed');

  const w4 = world();
  await runLosetup(['-f', '--', '-odd.img'], w4.deps);
  assert.equal(w4.attached, [{ file: '-odd.img' }]);

  // What util-linux hands to the kernel unchecked reaches the instance unchecked (the engine decides, as the kernel does).
  const w5 = world();
  for (const args of [['--sizelimit', '1000'], ['-o', '2M'], ['-b', '1000']]) await runLosetup([...args, '-f', 'disk.img'], w5.deps);
  assert.equal(w5.attached, [{ file: 'disk.img', sizelimit: 1000 }, { file: 'disk.img', offset: 2 << 20 }, { file: 'disk.img', sectorSize: 1000 }]);
});

test('--overlay[=DELTA] (loopfs): an optional argument in util-linux style, setup only; -L has nothing to guard on an overlay', async () => {
  const w = world();
  await runLosetup(['-f', '--show', '--overlay', 'base.img'], w.deps);
  await runLosetup(['-f', '--overl=job.delta', '-P', 'base.img'], w.deps);
  // a separate word is not its argument (as --direct-io on): it is the file
  await runLosetup(['-f', '--overlay', 'job.delta'], w.deps);
  assert.equal(w.attached, [
    { file: 'base.img', overlay: {} },
    { file: 'base.img', partscan: true, overlay: { delta: 'job.delta' } },
    { file: 'job.delta', overlay: {} },
  ]);
  // -L: an existing plain device of the same file does not stop an overlay
  const w2 = world([dev(0, { backFile: 'base.img' })]);
  assert.is(await runLosetup(['-L', '-f', '--show', '--overlay', 'base.img'], w2.deps), 0);
  assert.equal(w2.attached, [{ file: 'base.img', nooverlap: true, overlay: {} }], 'the daemon, too, lets an overlay pass -L');
  let e = await fails(['--overlay', '-d', 'loop0'], world([dev(0)]));
  assert.is(e.what, 'the option --overlay is allowed during loop device setup only');
  e = await fails(['-f', '--overlay=', 'base.img'], world());
  assert.is(e.what, 'argument error');
  assert.match(e.reason, /--overlay= wants a file name/);
  assert.equal(parseLosetupArgs(['-f', 'x']).overlay, undefined);
});

test('options after the file are options, unless POSIXLY_CORRECT', async () => {
  const w = world();
  await runLosetup(['-f', 'disk.img', '--show', '-r'], w.deps);
  assert.equal(w.attached, [{ file: 'disk.img', readOnly: true }]);
  const e = await fails(['-f', 'disk.img', '--show'], world([], { env: { POSIXLY_CORRECT: '1' } }));
  assert.is(e.what, 'unexpected arguments');
});

test('--instance and --run-dir select the instance and do not count as arguments', async () => {
  const w = world([dev(0)]);
  assert.is(await runLosetup(['--instance', '/mnt/x', '--run-dir=/tmp/rd'], w.deps), 0);
  assert.equal(w.selectors, [{ instance: '/mnt/x', runDir: '/tmp/rd' }]);
  assert.match(w.out.join(''), /^NAME +SIZELIMIT/, 'no arguments: the list');
  const p = parseLosetupArgs(['--raw', '--instance', 'x']);
  assert.equal([p.action.kind, p.list, p.format], ['show', true, 'raw']);
});

test('which action: util-linux main()', () => {
  const kind = (args: string[]): string => {
    const p = parseLosetupArgs(args);
    return `${p.action.kind}${p.list ? '+list' : ''}`;
  };
  assert.is(kind([]), 'show+list');
  assert.is(kind(['-a']), 'show');
  assert.is(kind(['-l']), 'show+list');
  assert.is(kind(['-J']), 'show+list');
  assert.is(kind(['--raw']), 'show+list');
  assert.is(kind(['-J', '-a']), 'show', 'with -a, the old format: JSON is for --list');
  assert.is(kind(['-j', 'f']), 'show');
  assert.is(kind(['loop0']), 'show-one');
  assert.is(kind(['-l', 'loop0']), 'show-one+list');
  assert.is(kind(['-f']), 'find');
  assert.is(kind(['-f', 'x']), 'create');
  assert.is(kind(['loop0', 'x']), 'create');
  assert.is(kind(['loop0', 'x', 'ignored']), 'create');
  assert.is(kind(['-d', 'loop0', 'loop1']), 'detach');
  assert.is(kind(['-D']), 'detach-all');
  assert.is(kind(['-c', 'loop0']), 'set-capacity');
  assert.is(kind(['--direct-io=off', 'loop0']), 'set-direct-io');
  assert.is(kind(['-b', '4096', 'loop0']), 'set-sector-size');
  assert.is(kind(['-h', '-x']), 'help');
  assert.is(kind(['-V']), 'version');
  const d = parseLosetupArgs(['-d', 'loop0', '-d', 'loop1', 'loop2']);
  assert.equal(d.action, { kind: 'detach', devices: ['loop1', 'loop2'] }, 'the last -d, as util-linux');
  assert.equal(d.checkDevices, ['loop0', 'loop1']);
  assert.equal(parseLosetupArgs(['-l', '-O', '+BACK-INO']).columns.map((c) => c.name).slice(-2), ['LOG-SEC', 'BACK-INO']);
  assert.equal(parseLosetupArgs(['-O', 'name,ro']).columns.map((c) => c.name), ['NAME', 'RO']);
});

test('-d DEV…: detaches each, reports each failure, exits 1 if any failed; a device it cannot use makes it detach the previous one again, as util-linux', async () => {
  const w = world([dev(0), dev(1, { bound: false }), dev(2)]);
  assert.is(await runLosetup(['-d', 'loop0', 'loop1', 'loop9', `${MNT}/loop2`], w.deps), 1);
  assert.equal(w.detached, [0, 1, 1, 2]);
  assert.equal(w.err, [
    `loopfs losetup: ${MNT}/loop1: detach failed: No such device or address\n`,
    'loopfs losetup: loop9: failed to use device: No such device\n',
    `loopfs losetup: ${MNT}/loop1: detach failed: No such device or address\n`,
  ]);
  const w2 = world([dev(0)]);
  assert.is(await runLosetup(['--detach', 'loop0'], w2.deps), 0);
  assert.equal(w2.err, []);
});

test('-D detaches every bound device; -c re-reads the size', async () => {
  const w = world([dev(0), dev(1, { bound: false }), dev(2)]);
  assert.is(await runLosetup(['-D'], w.deps), 0);
  assert.equal(w.detached, [0, 2]);
  assert.is(await runLosetup(['-c', 'loop2'], w.deps), 0);
  assert.equal(w.capacity, [2]);
});

test('--direct-io DEV and -b N DEV: used when the instance offers them', async () => {
  const w = world([dev(0)]);
  const e = await fails(['--direct-io', 'loop0'], w);
  assert.equal([e.what, e.errno], [`${MNT}/loop0: set direct io failed`, 'EOPNOTSUPP']);
  const calls: [number, boolean][] = [];
  w.client.setDirectIo = async (i, on) => { calls.push([i, on]); return w.devs[i]; };
  assert.is(await runLosetup(['--direct-io=off', 'loop0'], w.deps), 0);
  assert.equal(calls, [[0, false]]);
  const e2 = await fails(['-b', '4096', 'loop0'], w);
  assert.is(e2.what, `${MNT}/loop0: set logical block size failed`);
});

test('-f alone prints the first free device', async () => {
  const w = world();
  assert.is(await runLosetup(['-f'], w.deps), 0);
  assert.is(w.out.join(''), `${MNT}/loop7\n`);
});

test('setup errors and warnings read like util-linux', async () => {
  const full = world([], { attach: () => { throw new LoopfsError('ENOSPC', 'max'); } });
  const e = await fails(['-f', 'disk.img'], full);
  assert.equal([e.what, e.errno], ['cannot find an unused loop device', 'ENOSPC']);
  const denied = world([], { attach: () => { throw new LoopfsError('EACCES', 'disk.img'); } });
  const e2 = await fails(['-f', 'disk.img'], denied);
  assert.equal([e2.what, e2.reason, e2.errno], ['disk.img: failed to set up loop device', 'Permission denied', 'EACCES']);

  const ro = world([], { attach: (r) => ({ device: dev(0, { readOnly: true, backFile: r.file }), warnings: ['disk.img: attached read-only: Permission denied'] }) });
  await runLosetup(['-f', '--show', 'disk.img'], ro.deps);
  assert.equal(ro.err, ['loopfs losetup: disk.img: attached read-only: Permission denied\n']);

  const odd = world([], { stat: { ...FILE_ST, size: 100000 } });
  await runLosetup(['-f', 'b.img'], odd.deps);
  assert.equal(odd.err, ['loopfs losetup: b.img: Warning: file does not fit into a 512-byte sector; the end of the file will be ignored.\n']);
  const tiny = world([], { stat: { ...FILE_ST, size: 100 } });
  await runLosetup(['-f', 't.img'], tiny.deps);
  assert.match(tiny.err.join(''), /t\.img: Warning: file is smaller than 512 bytes/);
  const lim = world([], { stat: { ...FILE_ST, size: 100 } });
  await runLosetup(['-f', '--sizelimit', '1024', 't.img'], lim.deps);
  assert.equal(lim.err, [], 'with --sizelimit, util-linux judges the limit, not the file');
});

test('-L: reuse the identical device, refuse an overlapping one', async () => {
  const devs = [dev(0, { offset: 0, sizelimit: 4096 }), dev(1, { offset: 65536, sizelimit: 0, readOnly: true })];
  const w = world(devs);
  assert.is(await runLosetup(['-L', '-f', '--show', '--sizelimit', '4096', 'disk.img'], w.deps), 0);
  assert.equal(w.attached, [], 'reused');
  assert.is(w.out.join(''), `${MNT}/loop0\n`);
  assert.is((await fails(['-L', '-f', '--sizelimit', '8192', 'disk.img'], world(devs))).what, 'disk.img: overlapping loop device exists');
  assert.is((await fails(['-L', '-f', '-o', '64K', 'disk.img'], world(devs))).what, 'disk.img: overlapping read-only loop device exists');
  const w2 = world(devs);
  await runLosetup(['-L', '-f', '-o', '8192', '--sizelimit', '4096', 'disk.img'], w2.deps);
  assert.equal(w2.attached, [{ file: 'disk.img', offset: 8192, sizelimit: 4096, nooverlap: true }], 'no overlap: attached, daemon re-checks');
  assert.is((await fails(['-L', 'loop5', '--sizelimit', '4096', 'disk.img'], world(devs))).what, 'disk.img: overlapping loop device exists', 'DEV FILE: even identical is refused');
  const other = world(devs, { stat: { ...FILE_ST, ino: 99 } });
  await runLosetup(['-L', '-f', '--sizelimit', '4096', 'other.img'], other.deps);
  assert.is(other.attached.length, 1, 'a different file never overlaps');
});

test('-j FILE [-o N]: devices bound to that file, by device and inode', async () => {
  const devs = [dev(0), dev(1, { offset: 1024, backFile: '/elsewhere/hardlink.img' }), dev(2, { backIno: 99, backFile: '/img/disk.img' }), dev(3, { bound: false })];
  const w = world(devs);
  await runLosetup(['-j', 'disk.img'], w.deps);
  assert.is(w.out.join(''), `${MNT}/loop0: [2049]:1234 (/img/disk.img)\n${MNT}/loop1: [2049]:1234 (/elsewhere/hardlink.img), offset 1024\n`);
  const w2 = world(devs);
  await runLosetup(['-j', 'disk.img', '-o', '1024', '-l', '-n', '-O', 'NAME'], w2.deps);
  assert.is(w2.out.join(''), `${MNT}/loop1\n`);
  const w3 = world(devs, { stat: undefined });
  await runLosetup(['-j', '/img/disk.img', '-O', 'NAME', '-n'], w3.deps);
  assert.is(w3.out.join(''), `${MNT}/loop0\n${MNT}/loop2\n`, 'without stat: by name');
});

test('listing shows bound devices in index order; a named unbound one only with -l', async () => {
  const devs = [dev(2), dev(0, { bound: false }), dev(1)];
  const w = world(devs);
  await runLosetup(['-n', '-O', 'NAME', '-l'], w.deps);
  assert.is(w.out.join(''), `${MNT}/loop1\n${MNT}/loop2\n`);
  const w2 = world(devs);
  await runLosetup(['-l', '-J', 'loop0'], w2.deps);
  assert.is(w2.out.join(''), `{\n   "loopdevices": [\n      {\n         "name": "${MNT}/loop0",\n         "sizelimit": null,\n         "offset": null,\n         "autoclear": false,\n         "ro": false,\n         "back-file": null,\n         "dio": false,\n         "log-sec": 512\n      }\n   ]\n}\n`);
  const e = await fails(['loop0'], world(devs));
  assert.equal([e.what, e.errno], [`${MNT}/loop0`, 'ENOENT']);
  const e2 = await fails(['loop9'], world(devs));
  assert.equal([e2.what, e2.errno], ['loop9: failed to use device', 'ENODEV']);
});

test('-h and -V', async () => {
  const w = world();
  assert.is(await runLosetup(['-h'], w.deps), 0);
  assert.match(w.out.join(''), /--associated <file>/);
  assert.match(w.out.join(''), /LOG-SEC  logical sector size in bytes/);
  const w2 = world();
  assert.is(await runLosetup(['--vers'], w2.deps), 0);
  assert.match(w2.out.join(''), /^loopfs losetup from loopfs \d/);
});

test('register: cac routes losetup-style argv untouched to the action', () => {
  for (const argv of [['-o', '-1', '-rf', 'x'], ['--sizel=1K', '-f', 'x'], ['--bogus'], ['-O', ''], ['-j'], ['-d', 'a', 'b', 'c'], []]) {
    const cli = cac('loopfs');
    register(cli);
    cli.help();
    cli.version('0');
    let seen: string[] | undefined;
    cli.parse(['node', 'loopfs', 'losetup', ...argv], { run: false });
    assert.is(cli.matchedCommand?.name, 'losetup');
    cli.matchedCommand?.action(() => {
      seen = losetupArgv(cli.rawArgs);
    });
    cli.runMatchedCommand();
    assert.equal(seen, argv);
  }
  assert.equal(losetupArgv(['node', 'loopfs', '--instance', 'x', 'losetup', '-a']), ['--instance', 'x', '-a']);
});

test.run();
