import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox, type Result } from '../helpers/cli';
import { instDir, py, releaseKernelState } from '../helpers/disk';
import { LOOPFS_ADDITIONS } from '../../src/commands/losetup/run';

// Issue 11, build item 3: `loopfs losetup` says what util-linux 2.38 losetup
// says. One sequence of commands — every option, every error case of
// util-linux's tests/ts/losetup (file-show, file-offset, file-sizelimit,
// file-section, find-re-use, find-no-re-use, find-conflict,
// find-conflict-no-sizelimit, find-conflict-readonly, find-ok-no-sizelimit,
// plain-conflict, plain-readonly, --unknownopt) and more — runs against
// util-linux's /sbin/losetup on kernel loop devices and against `loopfs
// losetup` on one instance, over the SAME files (so BACK-FILE, BACK-INO and
// BACK-MAJ:MIN agree too), in the same directory. stdout, stderr and the exit
// status must be equal once device names (each named device on both sides
// becomes <NAME>, any other loop device <loop>) and the program name
// ("losetup" → "loopfs losetup") are replaced and runs of blanks are made
// one (a device path's length decides a table's column widths; alignment
// itself is unit-tested in losetup-output.test.ts).
//
// Kernel loop devices are shared with everyone on this machine: the test
// only ever names its own, never runs -D on the host, and detaches in
// `finally` every kernel device backed by its files. An unbound device
// (FREE) is what anyone's `losetup -f` takes first, so it exists only while
// a step that names it runs: made with LOOP_CTL_ADD just before (at an index
// far above what -f creates here), checked unbound, and removed with
// LOOP_CTL_REMOVE as soon as it is unbound again; NEW likewise once a step
// made it.
let sb: Sandbox;
let madeKernel: number[] = [];
const made = (s: Sandbox): void => {
  sb = s;
  madeKernel = [];
};
const test = sandboxSuite('losetup: the same commands, side by side with util-linux on kernel loop devices', 'vsul', made, () => {
  releaseKernelState(sb);
  for (const n of madeKernel) loopControl(0x4c81, n); // LOOP_CTL_REMOVE
});

/** LOOP_CTL_ADD (0x4c80) / LOOP_CTL_REMOVE (0x4c81) of kernel loop device N; returns the ioctl's result or errno. */
function loopControl(op: number, n: number): string {
  const r = py(
    `import fcntl, os, sys
fd = os.open('/dev/loop-control', os.O_RDWR)
try:
    print(fcntl.ioctl(fd, int(sys.argv[1]), int(sys.argv[2])))
except OSError as e:
    print('errno', e.errno)`,
    String(op),
    String(n),
  );
  return r.stdout.trim();
}

/** A kernel loop device index in [lo, hi) that does not exist now. */
function absentKernelIndex(lo: number, hi: number): number {
  for (let n = lo; n < hi; n++) if (!fs.existsSync(`/sys/block/loop${n}`) && !fs.existsSync(`/dev/loop${n}`)) return n;
  throw new Error(`no free kernel loop index in [${lo}, ${hi})`);
}

interface Step {
  /** Unique; names a known difference below. */
  name: string;
  /** `$X` is replaced by each side's device X. */
  args: string[];
  /** Saves stdout (trimmed) as device X of that side. */
  save?: string;
  /** Lists every loop device of the system: only the lines of this test's devices (and a header) are kept, sorted. */
  all?: boolean;
  /** Prints a device nobody named yet (-f): any device name becomes <loop>. */
  anyName?: boolean;
  /**
   * The usage text: compared as is (blanks too), once util-linux's program
   * name and man page are loopfs's and loopfs's marked additions are taken out.
   */
  help?: boolean;
}

const S = (name: string, args: string, extra: Partial<Step> = {}): Step => ({ name, args: args === '' ? [] : args.split(' '), ...extra });

/**
 * The sequence. Files (in the working directory): d.img 10 MiB (util-linux's
 * ts_image_init 10), odd.img 5 MiB + 1000 bytes, tiny.img 100 bytes,
 * empty.img 0 bytes, dir/ a directory; missing.img does not exist.
 * Devices named on both sides: FREE (exists, unbound), NEW (does not exist
 * yet: `NEW FILE` creates it), MISSING (never exists).
 */
const STEPS: Step[] = [
  // Usage errors: getopt's and losetup's own.
  S('--unknownopt', '--unknownopt'),
  S('unknown short option', '-q'),
  S('unknown option in a cluster', '-rq'),
  S('ambiguous abbreviation', '--s'),
  S('long option missing its argument', '--sizelimit'),
  S('abbreviated option missing its argument', '--sizel'),
  S('short option missing its argument', '-o'),
  S('argument to a flag', '--show=x'),
  S('mutually exclusive -a -d', '-a -d $FREE'),
  S('mutually exclusive -D -f', '-D -f'),
  S('mutually exclusive -c -l', '-c $FREE -l'),
  S('mutually exclusive -J --raw', '-J --raw'),
  S('--direct-io=maybe', '--direct-io=maybe $FREE'),
  S('-o not a number', '-o abc -f d.img'),
  S('-o negative', '-o -1 -f d.img'),
  S('-o bad suffix', '-o 12qb -f d.img'),
  S('-o 16E', '-o 16E -f d.img'),
  S('-o too big', '-o 99999999999999999999 -f d.img'),
  S('--sizelimit not a number', '--sizelimit lots -f d.img'),
  S('--sizelimit negative', '--sizelimit -512 -f d.img'),
  S('--sizelimit too big', '--sizelimit 99999999999999999999 -f d.img'),
  S('-b not a number', '-b x -f d.img'),
  S('-O unknown column', '-O FOO -l $FREE'),
  S('-O unknown column after a good one', '-O NAME,FOO,RO $FREE'),
  S('-f FILE extra', '-f d.img extra'),
  S('-r DEV (setup options only)', '-r $FREE'),
  S('--show DEV (setup options only)', '--show $FREE'),
  S('-o DEV (offset not allowed)', '-o 512 $FREE'),
  S('-o -a (offset not allowed)', '-o 512 -a'),
  S('no loop device specified', '-r'),
  S('no loop device specified (-P)', '-P -v'),
  // Devices that are not loop devices, or do not exist.
  S('-d of a regular file', '-d d.img'),
  S('-d of a bare name', '-d loop3'),
  S('-d of a missing path', '-d nowhere/loop0'),
  S('-d of a missing device', '-d $MISSING'),
  S('-c of a regular file', '-c d.img'),
  S('-c of a missing device', '-c $MISSING'),
  S('show a regular file', 'd.img'),
  S('show a missing device', '$MISSING'),
  S('-l of a missing device', '-l $MISSING'),
  S('a regular file as DEV FILE', 'd.img d.img'),
  S('a regular file by its path as DEV FILE', '$DIMG d.img'),
  S('a missing path as DEV FILE', 'nowhere/loop0 d.img'),
  // An unbound device.
  S('-d of an unbound device', '-d $FREE'),
  S('-c of an unbound device', '-c $FREE'),
  S('show an unbound device', '$FREE'),
  S('-l of an unbound device', '-l $FREE'),
  S('--direct-io=on of an unbound device', '--direct-io=on $FREE'),
  S('-b 4096 of an unbound device', '-b 4096 $FREE'),
  // Files that cannot back a device.
  S('-f missing file', '-f --show missing.img'),
  S('-f a directory', '-f --show dir'),
  S('DEV a directory', '$FREE dir'),
  S('DEV missing file', '$FREE missing.img'),
  S('-b 1000', '-f --show -b 1000 d.img'),
  S('-b 256', '-f --show -b 256 d.img'),
  S('-b 131072', '-f --show -b 131072 d.img'),
  // util-linux's tests/ts/losetup: file-show, file-offset, file-sizelimit, file-section.
  S('file-show', '--find --show d.img', { save: 'A' }),
  S('file-show: OFFSET', '--list --raw -n -O OFFSET $A'),
  S('file-show: SIZELIMIT', '--list --raw -n -O SIZELIMIT $A'),
  S('file-offset', '--offset 1MiB --find --show d.img', { save: 'B' }),
  S('file-offset: OFFSET', '--list --raw -n -O OFFSET $B'),
  S('file-sizelimit', '--sizelimit 3MiB --find --show d.img', { save: 'C' }),
  S('file-sizelimit: SIZELIMIT', '--list --raw -n -O SIZELIMIT $C'),
  S('file-section', '--offset 1MiB --sizelimit 3MiB --find --show d.img', { save: 'D' }),
  S('file-section: list', '--list --raw -n -O OFFSET,SIZELIMIT $D'),
  S('detach A B C D', '-d $A $B $C $D'),
  S('detach A again', '-d $A'),
  // What util-linux accepts and loopfs refused before issue 11.
  S('--sizelimit 1000', '-f --show --sizelimit 1000 d.img', { save: 'E' }),
  S('--sizelimit 1000: list', '-l $E'),
  S('-o 100M past the end of a 10 MiB file', '-f --show -o 100M d.img', { save: 'F' }),
  S('-o 100M: list', '-l -O NAME,OFFSET,SIZELIMIT,BACK-FILE $F'),
  S('-o at the very end', '-f --show -o 10M d.img', { save: 'G' }),
  S('-o 1000 (not sector aligned)', '-f --show -o 1000 d.img', { save: 'H' }),
  S('detach E F G H', '-d $E $F $G $H'),
  // Size warnings.
  S('odd size', '-f --show odd.img', { save: 'A' }),
  S('odd size with -b 4096', '-f --show -b 4096 odd.img', { save: 'B' }),
  S('tiny file', '-f --show tiny.img', { save: 'C' }),
  S('empty file', '-f --show empty.img', { save: 'D' }),
  S('offset leaving 100 bytes', '-f --show -o 5242780 odd.img', { save: 'E' }),
  S('sizelimit under 512', '-f --show --sizelimit 100 d.img', { save: 'F' }),
  S('-v with a warning', '-v -f --show --sizelimit 700 d.img', { save: 'G' }),
  S('warnings: list', '-l -O NAME,SIZELIMIT,OFFSET,LOG-SEC,BACK-FILE $A $B'),
  S('detach warnings', '-d $A $B $C $D $E $F $G'),
  // Every setup option, and every way to list.
  S('-f alone', '-f', { anyName: true }),
  S('DEV FILE', '$FREE d.img'),
  S('DEV FILE again (busy)', '$FREE d.img'),
  S('-r -P --direct-io', '-r -P --direct-io -f --show d.img', { save: 'A' }),
  S('--direct-io=off', '--direct-io=off -f --show d.img', { save: 'B' }),
  S('-b 4096 -o 4096 --sizelimit 1M', '-b 4096 -o 4096 --sizelimit 1M -f --show d.img', { save: 'C' }),
  S('clusters and attached arguments', '-rPfo8192 --show --sizel=1048576 d.img', { save: 'D' }),
  S('-- ends the options', '-f --show -- d.img', { save: 'E' }),
  S('one-line show', '$A'),
  S('one-line show of several', '-v $C'),
  S('-l', '-l $A'),
  S('-l -n', '-l -n $C'),
  S('-l -O', '-l -O NAME,RO,PARTSCAN,DIO,LOG-SEC $A'),
  S('-l -O +', '-l -O +AUTOCLEAR,BACK-INO $C'),
  S('--raw', '--raw $A'),
  S('--raw --output-all', '--raw --output-all $A'),
  S('-J', '-J $A'),
  S('-J -l -O', '-J -l -O NAME,OFFSET,SIZELIMIT,RO,AUTOCLEAR,PARTSCAN,DIO,LOG-SEC,BACK-FILE,BACK-INO,BACK-MAJ:MIN $D'),
  S('--output-all', '--output-all $C'),
  S('-J --output-all', '-J --output-all $D'),
  S('-l --output-all', '-l --output-all $C'),
  S('-J -l --output-all', '-J -l --output-all $A'),
  S('-l -O MAJ:MIN', '-l -n -O NAME,MAJ:MIN $B'),
  S('-j', '-j d.img', { all: true }),
  S('-j -o', '-j d.img -o 4096', { all: true }),
  S('-j --sizelimit (setup only)', '-j d.img --sizelimit 1M'),
  S('-j of a file nobody uses', '-j odd.img'),
  S('-j of a missing file', '-j missing.img'),
  S('-a', '-a', { all: true }),
  S('-l -a', '-l -a', { all: true }),
  S('no arguments', '', { all: true }),
  S('-c', '-c $A'),
  S('--direct-io=on DEV', '--direct-io=on $B'),
  S('--direct-io=on DEV: DIO', '-n -O DIO $B'),
  S('--direct-io=off DEV', '--direct-io=off $B'),
  S('-b 4096 DEV', '-b 4096 $B'),
  S('-b 4096 DEV: LOG-SEC', '-n -O LOG-SEC $B'),
  S('-b 1000 DEV', '-b 1000 $B'),
  S('detach all of them', '-d $A $B $C $D $E $FREE'),
  // A file that cannot be opened for writing is attached read-only.
  S('read-only fallback', '-f --show ro/r.img', { save: 'A' }),
  S('read-only fallback: RO', '-n -O RO,BACK-FILE $A'),
  S('read-only fallback, DEV FILE', '$FREE ro/r.img'),
  S('read-only fallback: detach', '-d $A $FREE'),
  // util-linux's tests/ts/losetup/losetup-loop (-L), on a file instead of scsi_debug.
  S('find-re-use', '--find --nooverlap --show d.img', { save: 'A' }),
  S('find-re-use: again', '--find --nooverlap --show d.img'),
  S('find-re-use: detach', '-d $A'),
  S('find-no-re-use', '--find --nooverlap --show --offset=0 --sizelimit=1MiB d.img', { save: 'A' }),
  S('find-no-re-use: second', '--find --nooverlap --show --offset=1MiB --sizelimit=1MiB d.img', { save: 'B' }),
  S('find-no-re-use: detach', '-d $A $B'),
  S('find-conflict', '--find --nooverlap --show --offset=1MiB --sizelimit=2MiB d.img', { save: 'A' }),
  S('find-conflict: second', '--find --nooverlap --show --offset=2MiB --sizelimit=2MiB d.img'),
  S('find-conflict: detach', '-d $A'),
  S('find-conflict-no-sizelimit', '--find --nooverlap --show --offset=1MiB d.img', { save: 'A' }),
  S('find-conflict-no-sizelimit: second', '--find --nooverlap --show --offset=2MiB --sizelimit=2MiB d.img'),
  S('find-conflict-no-sizelimit: detach', '-d $A'),
  S('find-conflict-readonly', '--find --nooverlap --show --read-only d.img', { save: 'A' }),
  S('find-conflict-readonly: second', '--find --nooverlap --show --offset=2MiB --sizelimit=2MiB d.img'),
  S('find-conflict-readonly: same window, not read-only', '--find --nooverlap --show d.img'),
  S('find-conflict-readonly: detach', '-d $A'),
  S('find-ok-no-sizelimit', '--find --nooverlap --show --offset=1MiB --sizelimit=1MiB d.img', { save: 'A' }),
  S('find-ok-no-sizelimit: second', '--find --nooverlap --show --offset=2MiB d.img', { save: 'B' }),
  S('find-ok-no-sizelimit: detach', '-d $A $B'),
  S('plain-conflict', '--find --nooverlap --show d.img', { save: 'A' }),
  S('plain-conflict: DEV FILE', '--nooverlap $FREE d.img'),
  S('plain-conflict: detach', '-d $A'),
  S('plain-readonly', '--find --nooverlap --show --read-only d.img', { save: 'A' }),
  S('plain-readonly: DEV FILE', '--nooverlap $FREE d.img'),
  S('plain-readonly: detach', '-d $A'),
  // A device that does not exist yet is made by `DEV FILE`.
  S('NEW FILE', '$NEW d.img'),
  S('NEW FILE: list', '-l -O NAME,BACK-FILE $NEW'),
  S('-d of several, one bad', '-d $NEW $MISSING $FREE'),
  // Information.
  S('-h', '-h', { help: true }),
  S('--help', '--help', { help: true }),
  S('help after other options', '-f -h', { help: true }),
  S('-V', '-V'),
  S('--version', '--version'),
];

/**
 * Steps whose results differ on purpose, with the reason. The test insists
 * that each still differs (so an entry goes when the difference does).
 */
const KNOWN: Record<string, string> = {
  '-V': "the version is loopfs's: 'loopfs losetup from loopfs X.Y.Z', not 'losetup from util-linux 2.38.1'",
  '--version': 'the same as -V',
  '-l --output-all': 'MAJ:MIN is empty: a loopfs device is a file in a FUSE mount, no block device with a major:minor number',
  '-J -l --output-all': 'the same: "maj:min" is null',
  '-l -O MAJ:MIN': 'the same',
  'read-only fallback':
    "loopfs warns 'Warning: file is not writable; attached read-only.' (SPEC §3 asks for a warning 'as losetup does'); util-linux 2.38 falls back to read-only silently",
  'read-only fallback, DEV FILE': 'the same warning',
};

interface Side {
  label: string;
  run(args: string[], step: Step): Result;
  devices: Map<string, string>;
  /** Any loop device of this side not named in `devices`. */
  anyDevice: RegExp;
}

function normalize(side: Side, text: string, kernel: boolean, anyName = false): string {
  let t = text;
  const named = anyName ? [] : [...side.devices.entries()].sort((a, b) => b[1].length - a[1].length);
  for (const [name, dev] of named) t = t.replace(new RegExp(`${escape(dev)}(?![0-9])`, 'g'), `<${name}>`);
  t = t.replace(side.anyDevice, '<loop>');
  if (kernel) {
    t = t.replace(/^losetup: /gm, 'loopfs losetup: ').replace(/'losetup --help'/g, "'loopfs losetup --help'");
  }
  return t.replace(/ +/g, ' ').replace(/ +$/gm, '');
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * For a step listing every device: the header (if any) and the lines of
 * devices over this test's files, sorted (a device number this test used
 * may be someone else's by now).
 */
function onlyOurs(text: string, files: string): string {
  const lines = text.split('\n').filter((l) => l !== '');
  const header = lines[0]?.startsWith('NAME') ? [lines.shift()!] : [];
  const ours = lines.filter((l) => l.includes('<DIMG>') || l.includes(`${files}/`)).sort();
  return [...header, ...ours].join('\n');
}

test('every option and error case: stdout, stderr and exit status equal util-linux losetup', () => {
  const files = sb.dir('files');
  const mk = (name: string, size: number): void => {
    const fd = fs.openSync(path.join(files, name), 'w');
    fs.ftruncateSync(fd, size);
    fs.closeSync(fd);
  };
  mk('d.img', 10 << 20);
  mk('odd.img', (5 << 20) + 1000);
  mk('tiny.img', 100);
  mk('empty.img', 0);
  fs.mkdirSync(path.join(files, 'dir'));
  // ro/: a read-only bind mount of rw/ (unmounted by releaseKernelState).
  fs.mkdirSync(path.join(files, 'rw'));
  fs.mkdirSync(path.join(files, 'ro'));
  fs.writeFileSync(path.join(files, 'rw', 'r.img'), Buffer.alloc(1 << 20));
  assert.is(spawnSync('mount', ['--bind', path.join(files, 'rw'), path.join(files, 'ro')]).status, 0);
  assert.is(spawnSync('mount', ['-o', 'remount,bind,ro', path.join(files, 'ro')]).status, 0);
  const env = { LC_ALL: 'C', COLUMNS: '200' };

  // loopfs: the default instance, started by its first use; FREE and NEW
  // exist only while a step names them too, so that its -f never takes them.
  const idir = instDir(sb);
  const mineFree = 200;
  const mineNew = 3001;
  const mine: Side = {
    label: 'loopfs losetup',
    run: (args, step) => {
      const names = (v: string): boolean => step.args.some((a) => a.includes(v));
      if (names('$FREE') && !fs.existsSync(path.join(idir, `loop${mineFree}`))) {
        const r = sb.run(['ctl', 'add', String(mineFree)]);
        assert.is(r.status, 0, r.stderr);
      }
      const r = sb.run(['losetup', ...args], { cwd: files, env });
      for (const [v, n] of [['$FREE', mineFree], ['$NEW', mineNew]] as const) {
        if (!names(v) || !fs.existsSync(path.join(idir, `loop${n}`))) continue;
        const shown = sb.run(['losetup', '-n', '-O', 'BACK-FILE', path.join(idir, `loop${n}`)]);
        if (shown.status === 0 && shown.stdout.trim() === '') assert.is(sb.run(['ctl', 'remove', String(n)]).status, 0);
      }
      return r;
    },
    devices: new Map([
      ['FREE', path.join(idir, `loop${mineFree}`)],
      ['NEW', path.join(idir, `loop${mineNew}`)],
      ['MISSING', path.join(idir, 'loop3002')],
      ['DIMG', path.join(files, 'd.img')],
    ]),
    anyDevice: new RegExp(`${escape(idir)}/loop[0-9]+`, 'g'),
  };

  // The kernel: FREE, NEW and MISSING at indexes far above what -f hands out here.
  const kFree = absentKernelIndex(200, 1000);
  const kNew = absentKernelIndex(3001, 4000);
  const kMissing = absentKernelIndex(kNew + 1, 5000);
  madeKernel.push(kFree, kNew);
  const backing = (n: number): string | undefined => {
    try {
      return fs.readFileSync(`/sys/block/loop${n}/loop/backing_file`, 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  const theirs: Side = {
    label: 'util-linux losetup',
    run: (args, step) => {
      if (step.args.some((a) => a.includes('$FREE')) && !fs.existsSync(`/sys/block/loop${kFree}`)) {
        assert.is(loopControl(0x4c80, kFree), String(kFree), `LOOP_CTL_ADD ${kFree}`);
        for (let i = 0; i < 100 && !fs.existsSync(`/dev/loop${kFree}`); i++) spawnSync('sleep', ['0.02']);
      }
      for (const n of [kFree, kNew]) {
        const b = backing(n);
        assert.ok(b === undefined || b.startsWith(`${sb.root}/`), `/dev/loop${n} is ours or unbound (backing file: ${b})`);
      }
      const r = spawnSync('losetup', args, { cwd: files, env: { ...process.env, ...env }, encoding: 'utf8', timeout: 30_000 });
      // -a, -j and no arguments ask every loop device of the machine, and block on one over a hung FUSE mount (anyone's).
      if (r.error) throw new Error(`util-linux losetup ${args.join(' ')} did not finish: ${r.error.message}`);
      // Unbound again: gone again, before anyone's -f can take it.
      for (const n of [kFree, kNew]) if (fs.existsSync(`/sys/block/loop${n}`) && backing(n) === undefined) loopControl(0x4c81, n);
      return { status: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
    },
    devices: new Map([
      ['FREE', `/dev/loop${kFree}`],
      ['NEW', `/dev/loop${kNew}`],
      ['MISSING', `/dev/loop${kMissing}`],
      ['DIMG', path.join(files, 'd.img')],
    ]),
    anyDevice: /\/dev\/loop[0-9]+/g,
  };

  const diffs: string[] = [];
  const names = new Set<string>();
  for (const step of STEPS) {
    assert.not.ok(names.has(step.name), `step names are unique: ${step.name}`);
    names.add(step.name);
    const outcome = [theirs, mine].map((side) => {
      const args = step.args.map((a) => a.replace(/\$([A-Z]+)/g, (_, v: string) => side.devices.get(v) ?? `$${v}`));
      const r = side.run(args, step);
      if (step.save && r.status === 0) {
        const dev = r.stdout.trim();
        // A device number used again names the new device only.
        for (const [k, v] of side.devices) if (v === dev) side.devices.delete(k);
        side.devices.set(step.save, dev);
      }
      const kernel = side === theirs;
      if (step.help) {
        const out = kernel
          ? r.stdout.replace(/^ losetup /gm, ' loopfs losetup ').replace('see losetup(8)', 'see loopfs-losetup(8)')
          : r.stdout.replace(`\n${LOOPFS_ADDITIONS}`, '');
        return `exit ${r.status}\n--- stdout\n${out}--- stderr\n${r.stderr}`;
      }
      let out = normalize(side, r.stdout, kernel, step.anyName);
      const err = normalize(side, r.stderr, kernel);
      if (step.all) out = onlyOurs(out, files);
      return `exit ${r.status}\n--- stdout\n${out}--- stderr\n${err}`;
    });
    const same = outcome[0] === outcome[1];
    if (KNOWN[step.name] !== undefined) {
      if (same) diffs.push(`${step.name}: listed as a known difference but equal now — remove it from KNOWN`);
    } else if (!same) {
      diffs.push(`${step.name}: losetup ${step.args.join(' ')}\n[util-linux]\n${outcome[0]}\n[loopfs]\n${outcome[1]}`);
    }
  }
  for (const k of Object.keys(KNOWN)) assert.ok(names.has(k), `KNOWN names a step: ${k}`);
  assert.is(diffs.length, 0, `${diffs.length} differences:\n\n${diffs.join('\n\n')}`);
});

test('the windows util-linux accepts and loopfs refused before: the device size is the kernel loop device\'s', () => {
  const files = sb.dir('files');
  fs.writeFileSync(path.join(files, 'd.img'), Buffer.alloc(5 << 20, 1));
  const cases = [['--sizelimit', '1000'], ['--sizelimit', '100'], ['-o', '100M'], ['-o', '5M'], ['-o', '1000', '--sizelimit', '5000'], ['-o', '5242000']];
  for (const args of cases) {
    const k = spawnSync('losetup', [...args, '-f', '--show', 'd.img'], { cwd: files, encoding: 'utf8', timeout: 30_000 });
    assert.is(k.status, 0, k.stderr);
    const kdev = k.stdout.trim();
    let ksize: string;
    try {
      ksize = spawnSync('blockdev', ['--getsize64', kdev], { encoding: 'utf8', timeout: 30_000 }).stdout.trim();
    } finally {
      spawnSync('losetup', ['-d', kdev], { timeout: 30_000 });
    }
    const m = sb.run(['losetup', ...args, '-f', '--show', 'd.img'], { cwd: files });
    assert.is(m.status, 0, m.stderr);
    assert.is(m.stderr, k.stderr.replace(/^losetup: /gm, 'loopfs losetup: '), `${args.join(' ')}: the same warning`);
    const mdev = m.stdout.trim();
    assert.is(String(fs.statSync(mdev).size), ksize, `${args.join(' ')}: size`);
    assert.is(fs.readFileSync(mdev).length, Number(ksize), `${args.join(' ')}: bytes read`);
    sb.ok(['losetup', '-d', mdev]);
  }
});

test.run();
