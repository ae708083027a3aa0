import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { attach, kernelAttach, randomFile, releaseKernelState } from '../helpers/disk';

// SPEC §4: `loopfs losetup -l/-J/--raw/-n -O/-a` print what util-linux
// losetup prints for a kernel loop device set up the same way on the same
// file, through the daemon (not fabricated DeviceInfo). Device paths aside,
// and MAJ:MIN (a loopfs device is no kernel block device: it is empty).
let sb: Sandbox;
const test = sandboxSuite('losetup: listings compared with util-linux on kernel loop devices', 'compat', (s) => (sb = s), releaseKernelState);

/** util-linux losetup on one kernel device: never -a/-j, which would query every loop device of the system. */
function kernel(args: string[], dev: string): string {
  const r = spawnSync('losetup', [...args, dev], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`losetup ${args.join(' ')} ${dev}: ${r.stderr}`);
  return r.stdout;
}

function loopfs(args: string[], dev: string): string {
  const r = sb.run(['losetup', ...args, dev]);
  if (r.status !== 0) throw new Error(`loopfs losetup ${args.join(' ')} ${dev}: ${r.stderr}`);
  return r.stdout;
}

const IGNORED = new Set(['NAME', 'MAJ:MIN']);

/** A table (human: split on runs of blanks; raw: on single spaces) as rows of {column: value} without the ignored columns. */
function table(text: string, raw: boolean, headings = true, cols?: string[]): Record<string, string>[] {
  const lines = text.replace(/\n$/, '').split('\n');
  const split = (l: string): string[] => (raw ? l.split(' ') : l.trim().split(/\s+/));
  const header = headings ? split(lines.shift()!) : cols!;
  return lines.map((l) => {
    const cells = split(l);
    assert.is(cells.length, header.length, `cells of: ${l}`);
    return Object.fromEntries(header.map((h, i) => [h, cells[i]!]).filter(([h]) => !IGNORED.has(h!)));
  });
}

function json(text: string): { keys: string[][]; rows: Record<string, unknown>[] } {
  const v = JSON.parse(text) as Record<string, Record<string, unknown>[]>;
  assert.equal(Object.keys(v), ['loopdevices']);
  const rows = v.loopdevices!;
  return {
    keys: rows.map((r) => Object.keys(r)),
    rows: rows.map((r) => Object.fromEntries(Object.entries(r).filter(([k]) => k !== 'name' && k !== 'maj:min'))),
  };
}

interface Config {
  label: string;
  args: string[];
  size: number;
}

const CONFIGS: Config[] = [
  { label: 'plain', args: [], size: 1 << 20 },
  { label: 'window, read-only', args: ['-o', '4096', '--sizelimit', '65536', '-r'], size: 1 << 20 },
  { label: '4096-byte sectors', args: ['-b', '4096'], size: 4096 * 10 + 1000 },
  { label: 'partscan', args: ['-P'], size: 1 << 20 },
  { label: 'direct I/O', args: ['--direct-io=on'], size: 1 << 20 },
  { label: 'offset with suffix', args: ['-o', '1M', '--sizelimit', '2M'], size: 4 << 20 },
];

test('-l, --output-all, -J, --raw, -n -O NAME,BACK-FILE and the one-line form equal util-linux field by field', () => {
  const pairs = CONFIGS.map((c, i) => {
    const file = randomFile(path.join(sb.root, `f${i}.img`), c.size);
    return { c, mine: attach(sb, file, c.args), theirs: kernelAttach(file, c.args), file };
  });
  for (const { c, mine, theirs, file } of pairs) {
    const both = (args: string[]): [string, string] => [loopfs(args, mine), kernel(args, theirs)];
    const what = (args: string[]): string => `${c.label}: losetup ${args.join(' ')}`;

    for (const args of [['-l'], ['-l', '-O', 'NAME,OFFSET,SIZELIMIT,RO,LOG-SEC,DIO,PARTSCAN,BACK-INO,BACK-MAJ:MIN']]) {
      const [a, b] = both(args);
      assert.is(a.split('\n')[0]!.trim().split(/\s+/).join(' '), b.split('\n')[0]!.trim().split(/\s+/).join(' '), `${what(args)}: header`);
      assert.equal(table(a, false), table(b, false), what(args));
    }
    for (const args of [['-l', '--raw'], ['-l', '--raw', '--output-all'], ['-l', '-n', '--raw', '--output-all']]) {
      const [a, b] = both(args);
      const headings = !args.includes('-n');
      const cols = headings ? undefined : kernel(['-l', '--raw', '--output-all'], theirs).split('\n')[0]!.split(' ');
      if (headings) assert.is(a.split('\n')[0], b.split('\n')[0], `${what(args)}: header`);
      assert.equal(table(a, true, headings, cols), table(b, true, headings, cols), what(args));
    }
    for (const args of [['-l', '-J'], ['-l', '-J', '--output-all'], ['-J', '-l', '-O', 'NAME,BACK-FILE,RO,PARTSCAN']]) {
      const [a, b] = both(args);
      const ja = json(a);
      const jb = json(b);
      assert.equal(ja.keys, jb.keys, `${what(args)}: keys in order`);
      assert.equal(ja.rows, jb.rows, `${what(args)}: values and their JSON types`);
    }
    {
      const [a, b] = both(['-n', '-O', 'NAME,BACK-FILE']);
      assert.is(a, `${mine} ${file}\n`, 'the loopfs name and the file');
      assert.is(b.replace(/^\S+/, mine), a, `${c.label}: -n -O NAME,BACK-FILE`);
    }
    {
      const [a, b] = both([]);
      assert.is(a.replace(`${mine}: `, ''), b.replace(`${theirs}: `, ''), `${c.label}: losetup DEV (one line)`);
    }
  }
  // -a lists every device of the instance in that same one-line form.
  const all = sb.ok(['losetup', '-a']).split('\n');
  assert.equal(all, pairs.map((p) => kernel([], p.theirs).trim().replace(`${p.theirs}: `, `${p.mine}: `)));
  // No arguments is -l -a.
  assert.is(sb.run(['losetup']).stdout, sb.run(['losetup', '-l', '-a']).stdout);
  assert.is(table(sb.run(['losetup']).stdout, false).length, CONFIGS.length);
});

test('BACK-FILE names the file as it is now: through a symlink, after a rename, after deletion — as util-linux shows it', () => {
  const setups: [string, (f: string) => string][] = [
    ['symlink', (f) => {
      const l = path.join(sb.root, 'link.img');
      fs.symlinkSync(f, l);
      return l;
    }],
    ['renamed', (f) => f],
    ['deleted', (f) => f],
  ];
  const pairs = setups.map(([label, how], i) => {
    const file = randomFile(path.join(sb.root, `n${i}.img`), 1 << 20);
    const name = how(file);
    return { label, file, mine: attach(sb, name), theirs: kernelAttach(name) };
  });
  fs.renameSync(pairs[1]!.file, path.join(sb.root, 'moved.img'));
  fs.unlinkSync(pairs[2]!.file);
  for (const { label, mine, theirs } of pairs) {
    assert.equal(loopfs(['-l', '-n', '-O', 'BACK-FILE'], mine), kernel(['-l', '-n', '-O', 'BACK-FILE'], theirs), `${label}: BACK-FILE`);
    assert.is(loopfs([], mine).replace(`${mine}: `, ''), kernel([], theirs).replace(`${theirs}: `, ''), `${label}: losetup DEV`);
    assert.equal(json(loopfs(['-J', '-l'], mine)).rows, json(kernel(['-J', '-l'], theirs)).rows, `${label}: -J`);
  }
});

test('the size warnings (a file smaller than 512 bytes, or not filling its last sector) are util-linux\'s, said once', () => {
  const cases: [string, number, string[]][] = [
    ['odd.img', 4096 * 10 + 1000, []],
    ['odd-b.img', 4096 * 10 + 1000, ['-b', '4096']],
    ['tiny.img', 100, []],
    ['at-end.img', 1 << 20, ['-o', String((1 << 20) - 100)]],
  ];
  for (const [name, size, args] of cases) {
    const file = randomFile(path.join(sb.root, name), size);
    const mine = sb.run(['losetup', ...args, '-f', '--show', name], { cwd: sb.root });
    assert.is(mine.status, 0, mine.stderr);
    const theirs = spawnSync('losetup', [...args, '-f', '--show', name], { cwd: sb.root, encoding: 'utf8', timeout: 30_000 });
    assert.is(theirs.status, 0, theirs.stderr);
    assert.ok(theirs.stderr.length > 0, `util-linux warns for ${name}`);
    assert.is(mine.stderr, theirs.stderr.replace(/^losetup: /gm, 'loopfs losetup: '), `${name} ${args.join(' ')}`);
    void file;
  }
});

test.run();
