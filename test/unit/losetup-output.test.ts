import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { DeviceRef, InstanceClient } from '../../src/core/api';
import type { DeviceInfo } from '../../src/base/types';
import { LoopfsError } from '../../src/base/errors';
import { runLosetup, type LosetupDeps } from '../../src/commands/losetup/run';
import { PROG, losetupErrorText } from '../../src/commands/losetup/args';
import {
  COLUMNS, DEFAULT_COLUMNS, cellValue, columnByName, formatOldLine, formatTable,
  type ColumnInfo, type TableOptions,
} from '../../src/commands/losetup/output';
import { jsonQuote, rawEncode, safeEncode } from '../../src/commands/losetup/text';
import { parseSize } from '../../src/commands/losetup/size';
import { devMajor, devMinor } from '../../src/base/loopdev';
import { requiring } from '../helpers/e2e';

/**
 * The formatter against the real thing: kernel loop devices made with
 * util-linux losetup (root only), its output captured, the same devices fed
 * to our code, outputs compared. Every device made here is detached in the
 * after hook and, should the process die first, in an exit handler.
 */

const created: string[] = [];
function cleanup(): void {
  while (created.length) spawnSync('losetup', ['-d', created.pop() as string]);
}
process.on('exit', cleanup);

interface Run { out: string; err: string; status: number | null }
function losetup(args: string[], env: Record<string, string> = {}): Run {
  const r = spawnSync('losetup', args, { encoding: 'utf8', env: { ...process.env, LANG: 'C.UTF-8', LC_ALL: '', ...env } });
  return { out: r.stdout, err: r.stderr, status: r.status };
}
/** A command run on a pseudo-terminal COLS wide (util-linux then fits the table to it). */
function onTty(cols: number, args: string[]): string {
  const cmd = `stty cols ${cols}; exec losetup ${args.map((a) => `'${a}'`).join(' ')}`;
  const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { encoding: 'utf8', env: { ...process.env, LANG: 'C.UTF-8', LC_ALL: '' } });
  return r.stdout.replace(/\r\n/g, '\n');
}

function whyNot(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root';
  const v = spawnSync('losetup', ['--version'], { encoding: 'utf8' });
  if (v.status !== 0) return 'util-linux losetup is not installed';
  if (!/util-linux 2\.38/.test(v.stdout)) return `needs util-linux 2.38, found: ${v.stdout.trim()}`;
  if (!fs.existsSync('/dev/loop-control')) return 'no /dev/loop-control';
  return undefined;
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-losetup-'));
const A = path.join(dir, 'a.img');
const B = path.join(dir, 'b c.img');
const W = path.join(dir, 'café \\x41\\b\t中.img');
let D1 = '', D2 = '', D3 = '';

function attach(args: string[]): string {
  const r = losetup(['-f', '--show', ...args]);
  if (r.status !== 0) throw new Error(`losetup -f --show ${args.join(' ')}: ${r.err}`);
  const d = r.out.trim();
  created.push(d);
  return d;
}

function makedev(maj: number, min: number): number {
  const M = BigInt(maj), m = BigInt(min);
  return Number(((M & 0xfffff000n) << 32n) | ((M & 0xfffn) << 8n) | ((m & 0xffffff00n) << 12n) | (m & 0xffn));
}

type JsonRow = Record<string, string | number | boolean | null>;
/** All bound kernel loop devices, in losetup's order, from `losetup -J -l --output-all`. */
function realRows(): JsonRow[] {
  const r = losetup(['-J', '-l', '--output-all']);
  return (JSON.parse(r.out || '{"loopdevices":[]}') as { loopdevices: JsonRow[] }).loopdevices;
}
function infoOf(r: JsonRow): DeviceInfo {
  const name = r.name as string;
  const mm = typeof r['back-maj:min'] === 'string' ? (r['back-maj:min'] as string).trim().split(':').map(Number) : [0, 0];
  return {
    index: Number((/loop(\d+)$/.exec(name) ?? ['', '0'])[1]), path: name, bound: true, openCount: 0,
    backFile: (r['back-file'] as string | null) ?? undefined, backIno: (r['back-ino'] as number | null) ?? undefined,
    backDev: makedev(mm[0], mm[1]), offset: r.offset as number, sizelimit: r.sizelimit as number, size: 0,
    sectorSize: r['log-sec'] as number, readOnly: r.ro as boolean, autoclear: r.autoclear as boolean,
    partscan: r.partscan as boolean, directIo: r.dio as boolean, partitions: [],
  };
}
/** A JSON value back to the text losetup puts in the cell. */
function cellOf(v: string | number | boolean | null | undefined): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'boolean') return v ? '1' : '0';
  return String(v);
}
const cols = (names: readonly string[]): ColumnInfo[] => names.map((n) => columnByName(n) as ColumnInfo);
const opts = (o: Partial<TableOptions> = {}): TableOptions => ({ format: 'human', noHeadings: false, isTerm: false, termWidth: 80, utf8: true, ...o });

/**
 * Reads the kernel's devices and runs `check` on them and a matching real
 * capture; retried when another user of this machine changed its loop
 * devices in between.
 */
function stable(check: (rows: JsonRow[]) => void): void {
  for (let i = 0; ; i++) {
    const before = JSON.stringify(realRows());
    try {
      check(JSON.parse(before) as JsonRow[]);
      return;
    } catch (e) {
      if (JSON.stringify(realRows()) === before || i >= 3) throw e;
    }
  }
}

const skip = whyNot();
const test = suite('losetup output = util-linux 2.38');

test.before(() => {
  if (skip) return;
  fs.writeFileSync(A, Buffer.alloc(1 << 20));
  fs.writeFileSync(B, Buffer.alloc(100000));
  fs.writeFileSync(W, Buffer.alloc(65536));
  D1 = attach(['-o', '1024', '--sizelimit', '8192', '-b', '4096', '-r', '-P', A]);
  D2 = attach([B]);
  D3 = attach([W]);
});
test.after(() => {
  cleanup();
  fs.rmSync(dir, { recursive: true, force: true });
});

const t = requiring(test, skip);

t('every cell of every device equals util-linux (but MAJ:MIN, empty by design)', () => {
  stable((rows) => {
    assert.ok(rows.length >= 3);
    for (const r of rows) {
      const info = infoOf(r);
      for (const c of COLUMNS) {
        const want = c.name === 'MAJ:MIN' ? '' : cellOf(r[c.name.toLowerCase()]);
        assert.is(cellValue(c.name, info), want, `${r.name} ${c.name}`);
      }
    }
  });
});

t('BACK-MAJ:MIN round trip through dev_t', () => {
  for (const [M, m] of [[254, 0], [8, 17], [259, 3], [4095, 255], [4096, 256], [7, 1048575]]) {
    const d = makedev(M, m);
    assert.is(devMajor(d), M);
    assert.is(devMinor(d), m);
  }
});

/** The real table's rows as cell texts, columns as given. */
const textRows = (rows: JsonRow[], cs: ColumnInfo[]): string[][] => rows.map((r) => cs.map((c) => cellOf(r[c.name.toLowerCase()])));

const variants: [string[], string[], Partial<TableOptions>][] = [
  [['-l'], [...DEFAULT_COLUMNS], {}],
  [['-l', '-n'], [...DEFAULT_COLUMNS], { noHeadings: true }],
  [['-l', '--output-all'], COLUMNS.map((c) => c.name), {}],
  [['-l', '--raw'], [...DEFAULT_COLUMNS], { format: 'raw' }],
  [['-l', '--raw', '-n'], [...DEFAULT_COLUMNS], { format: 'raw', noHeadings: true }],
  [['-l', '--raw', '--output-all'], COLUMNS.map((c) => c.name), { format: 'raw' }],
  [['-l', '-J'], [...DEFAULT_COLUMNS], { format: 'json' }],
  [['-l', '-J', '--output-all'], COLUMNS.map((c) => c.name), { format: 'json' }],
  [['-n', '-O', 'NAME,BACK-FILE'], ['NAME', 'BACK-FILE'], { noHeadings: true }],
  [['-l', '-O', 'RO,NAME,BACK-INO,LOG-SEC'], ['RO', 'NAME', 'BACK-INO', 'LOG-SEC'], {}],
  [['-l', '-n', '-O', 'RO,DIO'], ['RO', 'DIO'], { noHeadings: true }],
  [['-l', '-O', 'BACK-FILE,NAME'], ['BACK-FILE', 'NAME'], {}],
  [['-l', '-O', 'OFFSET'], ['OFFSET'], {}],
];

t('formatTable reproduces util-linux tables byte for byte', () => {
  for (const [args, names, o] of variants) {
    stable((rows) => {
      const cs = cols(names);
      assert.is(formatTable(cs, textRows(rows, cs), opts(o)), losetup(args).out, args.join(' '));
    });
  }
});

t('formatTable in the C locale escapes non-ASCII like util-linux', () => {
  stable((rows) => {
    const cs = cols(DEFAULT_COLUMNS);
    assert.is(formatTable(cs, textRows(rows, cs), opts({ utf8: false })), losetup(['-l'], { LANG: 'C' }).out);
  });
});

const noScript = spawnSync('script', ['--version']).status !== 0;
requiring(test, skip ?? (noScript ? 'script(1) is not installed' : undefined))('formatTable on a terminal fits the width like libsmartcols', () => {
  for (const width of [200, 80, 72, 60, 45, 30, 12]) {
    for (const [args, names] of [[['-l'], DEFAULT_COLUMNS], [['-l', '--output-all'], COLUMNS.map((c) => c.name)], [['-l', '-O', 'NAME,BACK-FILE'], ['NAME', 'BACK-FILE']]] as const) {
      stable((rows) => {
        const cs = cols(names);
        const mine = formatTable(cs, textRows(rows, cs), opts({ isTerm: true, termWidth: width }));
        assert.is(mine, onTty(width, [...args]), `${width} columns: ${args.join(' ')}`);
      });
    }
  }
});

t('empty tables: nothing, or an empty JSON array', () => {
  const cs = cols(DEFAULT_COLUMNS);
  assert.is(formatTable(cs, [], opts()), '');
  assert.is(formatTable(cs, [], opts({ format: 'raw' })), '');
  // util-linux prints exactly this for `losetup -J` with no device bound.
  assert.is(formatTable(cs, [], opts({ format: 'json' })), '{\n   "loopdevices": [\n\n   ]\n}\n');
});

t('the old -a line equals util-linux', () => {
  stable((rows) => {
    const real = losetup(['-a']).out;
    assert.is(rows.map((r) => formatOldLine(infoOf(r))).join(''), real);
  });
});

t('encoders: safe (human), raw, JSON', () => {
  assert.equal(safeEncode('a b', true), { text: 'a b', width: 3 });
  assert.equal(safeEncode('x\\x41\\b\t', true), { text: 'x\\x5cx41\\b\\x09', width: 14 });
  assert.equal(safeEncode('é中', true), { text: 'é中', width: 3 });
  assert.equal(safeEncode('é', false), { text: '\\xc3\\xa9', width: 8 });
  assert.equal(safeEncode('\u0085', true), { text: '\\xc2\\x85', width: 8 });
  assert.is(rawEncode('a b\\c\té'), 'a\\x20b\\x5cc\\x09\\xc3\\xa9');
  assert.is(jsonQuote('a"b\\c\td\u0001é'), '"a\\"b\\\\c\\td\\u0001é"');
});

/** A fake instance at "/dev" holding the kernel's devices, so device names print as util-linux's. */
function fakeDeps(rows: JsonRow[], out: string[], err: string[]): LosetupDeps {
  const devs = rows.map(infoOf);
  const client: InstanceClient = {
    id: 'fake', mountpoint: '/dev',
    list: async () => devs,
    attach: async () => { throw new LoopfsError('ENOSYS', 'attach'); },
    detach: async () => {}, detachAll: async () => {}, setCapacity: async (i) => devs[i],
    addDevice: async () => 0, removeDevice: async () => {}, getFree: async () => 0,
    setDirectIo: async (i) => devs[i], setSectorSize: async (i) => devs[i],
    overlay: async () => { throw new LoopfsError('EOPNOTSUPP', 'overlay'); },
  };
  return {
    openInstance: async () => client,
    resolveDevice: async (arg): Promise<DeviceRef> => {
      const m = /^(?:\/dev\/)?loop(\d+)$/.exec(arg);
      if (!m) throw new LoopfsError('ENODEV', arg);
      return { client, index: Number(m[1]) };
    },
    stdout: (s) => void out.push(s), stderr: (s) => void err.push(s),
    stat: async (p) => {
      try {
        const st = fs.statSync(p);
        return { dev: st.dev, ino: st.ino, size: st.size, isBlockDevice: st.isBlockDevice() };
      } catch {
        return undefined;
      }
    },
    realpath: async (p) => fs.promises.realpath(p).catch(() => undefined),
    env: { LANG: 'C.UTF-8' }, isTTY: false,
  };
}

/** Outputs compared up to row order: loopfs lists by device number, the kernel in sysfs order. */
function normalize(s: string, json: boolean): string {
  if (json) {
    if (!s) return s;
    const j = JSON.parse(s) as { loopdevices: JsonRow[] };
    // MAJ:MIN is empty for loopfs devices by design (see cellValue).
    for (const d of j.loopdevices) if ('maj:min' in d) d['maj:min'] = null;
    j.loopdevices.sort((x, y) => String(x.name).localeCompare(String(y.name)));
    return JSON.stringify(j);
  }
  const lines = s.split('\n');
  const head = lines[0]?.startsWith('NAME') ? lines.shift() : undefined;
  return [head, ...lines.sort()].join('\n');
}

t('runLosetup prints what losetup prints, for the same devices', async () => {
  const cases: string[][] = [
    [], ['-a'], ['-l'], ['-l', '-a'], ['--list', '--all'], ['-J'], ['--raw'], ['-J', '-l'], ['-l', '--raw', '-n'],
    ['-n', '-O', 'NAME,BACK-FILE'], ['-O', '+RO'], ['-J', '-l', '--output-all'], ['-J', '--output-all', '-O', '+RO', '-l'],
    ['-l', '-O', 'NAME,AUTOCLEAR,BACK-FILE,BACK-INO,BACK-MAJ:MIN,OFFSET,PARTSCAN,RO,SIZELIMIT,DIO,LOG-SEC'],
    ['-j', A], ['-j', B], ['-l', '-j', A], ['-j', A, '-o', '1024'], ['-j', A, '-o', '0'], ['-l', '-j', A, '-o', '1K'],
    [D1], [D2], ['-l', D1], ['-J', '-l', D3], ['--list', '-O', 'NAME,RO', D1],
  ];
  for (const args of cases) {
    const rows = realRows();
    const real = losetup(args);
    const out: string[] = [], err: string[] = [];
    const status = await runLosetup(args, fakeDeps(rows, out, err));
    if (JSON.stringify(realRows()) !== JSON.stringify(rows)) continue; // someone else changed the devices
    const json = args.includes('-J');
    assert.is(status, real.status, `status of losetup ${args.join(' ')}`);
    assert.is(normalize(out.join(''), json), normalize(real.out, json), `losetup ${args.join(' ')}`);
    assert.is(err.join(''), real.err, `stderr of losetup ${args.join(' ')}`);
  }
});

t('usage errors: the same words as losetup (program name aside), the "Try" line after getopt\'s, exit status 1', async () => {
  const cases: string[][] = [
    ['-x'], ['--bogus'], ['--bogus=1'], ['-o'], ['--offset'], ['--s'],
    ['--all=1'], ['--direct-io=maybe', '-f', A], ['-f', '-a'], ['-a', '-D'],
    ['-J', '--raw'], ['-J', '-n'], ['-n'], ['--output-all'], ['-v'],
    ['-L'], ['-O', 'NAME,FOO', '-l'], ['-l', '-O', 'FOO,RO'], ['-r', '-a'],
    ['-o', '5', '-a'], ['-f', '--show'], ['-f', A, 'extra'], ['-o', '-1', '-f', A],
    ['-o', 'abc', '-f', A], ['-o', '99999999999999999999999', '-f', A], ['--sizelimit', '1x', '-f', A],
    ['-b', 'k', '-f', A], ['-e', 'x'], ['-P', '-d', D1], ['--direct-io', '-r', D1],
  ];
  for (const args of cases) {
    const real = losetup(args);
    assert.is(real.status, 1, `util-linux losetup ${args.join(' ')}`);
    let e: unknown;
    try {
      await runLosetup(args, fakeDeps(realRows(), [], []));
    } catch (x) {
      e = x;
    }
    assert.instance(e, LoopfsError, `losetup ${args.join(' ')}`);
    assert.not.ok((e as LoopfsError).usage, 'losetup exits 1 on usage errors too');
    const theirs = real.err.replace(/^losetup: /gm, `${PROG}: `).replace(/'losetup --help'/g, `'${PROG} --help'`);
    assert.is(losetupErrorText(e), theirs, `losetup ${args.join(' ')}`);
  }
});

t('size arguments parse to what the kernel receives from losetup', () => {
  for (const v of ['1.5K', '0x10', '010', ' 12', '+5', '1KB', '1KiB', '1kib', '0.5KiB', '1.05K', '0.25M', '1.5KB', '3m', '00', '0']) {
    const d = attach(['-o', v, A]);
    const got = (JSON.parse(losetup(['-J', '-l', '-O', 'OFFSET', d]).out) as { loopdevices: { offset: number }[] }).loopdevices[0].offset;
    spawnSync('losetup', ['-d', d]);
    created.splice(created.indexOf(d), 1);
    assert.is(parseSize(v), BigInt(got), `-o '${v}'`);
  }
  for (const v of ['1.0', '1.', '1.5', '0x', '08', '1 ', '1B', '1iB', '16E', '1Y', '', '-1', 'K', '18446744073709551616']) {
    const real = losetup(['-j', A, '-o', v]);
    const mine = parseSize(v);
    assert.type(mine, 'string', `'${v}' is refused`);
    assert.ok(real.err.endsWith(`'${v}': ${mine === 'ERANGE' ? 'Numerical result out of range' : 'Invalid argument'}\n`), `'${v}': ${real.err}`);
  }
  assert.is(parseSize('18446744073709551615'), 18446744073709551615n);
  assert.is(parseSize('15E'), 15n << 60n);
});

test.run();
