import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { attach, entries, instDir, py, q, randomFile, releaseKernelState, sh, sha, shOk } from '../helpers/disk';

// SPEC §3, §4, §6: what `loopfs losetup` does to devices — read-only,
// -j, -c, -D, -L — and N concurrent `-f --show` getting N devices.
let sb: Sandbox;
const test = sandboxSuite('losetup: actions on an instance', 'acts', (s) => (sb = s), releaseKernelState);

/** What python sees opening PATH with each mode: "opened" or the errno number. */
const OPEN_MODES = `
import os, sys
for mode in (os.O_RDWR, os.O_WRONLY):
    try:
        os.close(os.open(sys.argv[1], mode))
        print('opened')
    except OSError as e:
        print(e.errno)
`;

test('-r: opening for writing works, as on a kernel loop device, but every write fails EPERM; the file is unchanged (partitions too)', () => {
  const img = randomFile(path.join(sb.root, 'r.img'), 16 << 20);
  shOk(`sfdisk -q ${q(img)}`, { input: 'label: dos\n,4M,L\n,,L\n' });
  const sum = sha(img);
  const dev = attach(sb, img, ['-r', '-P']);
  assert.is(sb.ok(['losetup', '-n', '-O', 'RO', dev]), '1');
  for (const p of [dev, `${dev}p1`, `${dev}p2`]) {
    const r = py(OPEN_MODES, p);
    assert.is(r.stdout, 'opened\nopened\n', `${p}: O_RDWR and O_WRONLY open (${r.stderr})`);
  }
  for (const flag of ['conv=notrunc', 'oflag=direct']) {
    const dd = sh(`dd if=/dev/zero of=${q(dev)} bs=4096 count=1 ${flag} status=none`);
    assert.is.not(dd.status, 0, flag);
    assert.match(dd.stderr, /Operation not permitted/, flag);
  }
  assert.is.not(sh(`mkfs.ext4 -q -F ${q(`${dev}p2`)}`).status, 0, 'mkfs cannot write');
  assert.is.not(sh(`fallocate -p -o 0 -l 4096 ${q(dev)}`).status, 0, 'discard cannot punch');
  assert.is(shOk(`sha256sum < ${q(dev)}`).split(' ')[0], sum, 'it still reads');
  assert.is(sha(img), sum, 'the file is unchanged');
});

test('a file that cannot be opened for writing is attached read-only with a warning', () => {
  const real = sb.dir('real');
  const view = sb.dir('view');
  const img = randomFile(path.join(real, 'ro.img'), 1 << 20);
  const sum = sha(img);
  shOk(`mount --bind ${q(real)} ${q(view)} && mount -o remount,bind,ro ${q(view)}`);
  const file = path.join(view, 'ro.img');
  assert.is(sh(`: >> ${q(file)}`).status, 1, 'the file is not writable through the read-only mount');
  for (const form of [['-f', '--show', file], [path.join(instDir(sb), 'loop5'), file]]) {
    const r = sb.run(['losetup', ...form]);
    assert.is(r.status, 0, r.stderr);
    const dev = form[0] === '-f' ? r.stdout.trim() : form[0]!;
    const lines = r.stderr.trim().split('\n');
    assert.is(lines.length, 1, `one warning line: ${r.stderr}`);
    assert.match(lines[0]!, /^loopfs losetup: .*ro\.img.*read-only/, 'the warning names the file and says read-only');
    assert.is(sb.ok(['losetup', '-n', '-O', 'RO', dev]), '1', 'attached read-only');
    assert.is(py(OPEN_MODES, dev).stdout, 'opened\nopened\n', 'opens for writing, as a kernel loop device does');
    assert.match(sh(`dd if=/dev/zero of=${q(dev)} bs=512 count=1 conv=notrunc status=none`).stderr, /Operation not permitted/, 'writes EPERM');
  }
  sb.ok(['losetup', '-D']);
  shOk(`umount ${q(view)}`);
  assert.is(sha(img), sum);
});

test('-j FILE and -j FILE -o N: the devices of that file (by device and inode) and that offset', () => {
  const a = randomFile(path.join(sb.root, 'a.img'), 1 << 20);
  const b = randomFile(path.join(sb.root, 'b.img'), 1 << 20);
  const a0 = attach(sb, a);
  const b0 = attach(sb, b);
  const a4k = attach(sb, a, ['-o', '4096']);
  const ino = fs.statSync(a).ino;
  const dev = fs.statSync(a).dev;
  const line = (d: string, f: string, extra = ''): string => `${d}: [${dev}]:${fs.statSync(f).ino} (${f})${extra}`;
  assert.equal(sb.ok(['losetup', '-j', a]).split('\n'), [line(a0, a), line(a4k, a, ', offset 4096')]);
  assert.equal(sb.ok(['losetup', '-j', b]).split('\n'), [line(b0, b)]);
  assert.equal(sb.ok(['losetup', '-j', a, '-o', '4096']).split('\n'), [line(a4k, a, ', offset 4096')]);
  assert.equal(sb.ok(['losetup', '-j', a, '-o', '4K', '-l', '-n', '-O', 'NAME']), a4k, '-o takes sizes, -l gives the table');
  assert.is(sb.ok(['losetup', '-j', a, '-o', '8192']), '', 'no device at that offset');
  // The same file under another name: a symlink, a relative path, a new name after a rename.
  fs.symlinkSync(a, path.join(sb.root, 'link.img'));
  assert.is(sb.ok(['losetup', '-j', 'link.img', '-o', '0', '-n', '-l', '-O', 'NAME']), a0);
  fs.renameSync(a, path.join(sb.root, 'moved.img'));
  assert.is(sb.ok(['losetup', '-j', './moved.img', '-n', '-l', '-O', 'NAME']).split('\n').length, 2, 'found by inode after a rename');
  assert.is(fs.statSync(path.join(sb.root, 'moved.img')).ino, ino);
  assert.is(sb.ok(['losetup', '-j', path.join(sb.root, 'missing.img')]), '', 'a missing file has no devices');
});

test('-c after the file grew: the device grows to the new size (a size limit still caps it)', () => {
  const img = randomFile(path.join(sb.root, 'c.img'), 1 << 20);
  const dev = attach(sb, img);
  const capped = attach(sb, img, ['-o', '512', '--sizelimit', String(1536 << 10)]);
  fs.appendFileSync(img, fs.readFileSync(randomFile(path.join(sb.root, 'more'), 1 << 20)));
  assert.is(fs.statSync(dev).size, 1 << 20, 'the device keeps its size until -c');
  assert.is(sb.run(['losetup', '-c', dev]).status, 0);
  assert.is(fs.statSync(dev).size, 2 << 20, 'grown');
  assert.is(shOk(`sha256sum < ${q(dev)}`).split(' ')[0], sha(img), 'the new bytes read through the device');
  assert.is(fs.statSync(capped).size, (1 << 20) - 512);
  assert.is(sb.run(['losetup', '-c', capped]).status, 0);
  assert.is(fs.statSync(capped).size, 1536 << 10, 'the size limit caps the new size');
  const w = sh(`dd if=/dev/zero of=${q(dev)} bs=512 count=1 seek=${(2 << 20) / 512 - 1} conv=notrunc status=none`);
  assert.is(w.status, 0, `a write in the grown part: ${w.stderr}`);
  assert.is(fs.statSync(img).size, 2 << 20);
});

test('-D detaches every device, partitions included; files unchanged', () => {
  const p = randomFile(path.join(sb.root, 'p.img'), 8 << 20);
  shOk(`sfdisk -q ${q(p)}`, { input: 'label: gpt\n,2M,L\n,,L\n' });
  const sums = [p, randomFile(path.join(sb.root, 'x.img'), 1 << 20)].map((f) => [f, sha(f)]);
  attach(sb, p, ['-P']);
  attach(sb, sums[1]![0]!);
  attach(sb, sums[1]![0]!, ['-o', '4096', '-r']);
  assert.equal(entries(instDir(sb)), ['loop-control', 'loop0', 'loop0p1', 'loop0p2', 'loop1', 'loop2']);
  const r = sb.run(['losetup', '-D']);
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout + r.stderr, '');
  assert.is(sb.ok(['losetup', '-a']), '');
  assert.equal(entries(instDir(sb)), ['loop-control', 'loop0', 'loop1', 'loop2'], 'devices stay, unbound; partitions go');
  for (const d of ['loop0', 'loop1', 'loop2']) assert.is(fs.statSync(path.join(instDir(sb), d)).size, 0);
  for (const [f, s] of sums) assert.is(sha(f!), s);
  assert.is(sb.run(['losetup', '-D']).status, 0, '-D with nothing bound succeeds');
});

test('-L refuses an overlapping window and reuses an identical one', () => {
  const img = randomFile(path.join(sb.root, 'l.img'), 1 << 20);
  const first = attach(sb, img, ['--sizelimit', '4096']);
  const second = attach(sb, img, ['-o', '8192', '--sizelimit', '4096']);
  const bound = (): string[] => sb.ok(['losetup', '-a']).split('\n').filter(Boolean);
  assert.is(bound().length, 2);

  const reuse = sb.run(['losetup', '-L', '-f', '--show', '--sizelimit', '4096', img]);
  assert.is(reuse.status, 0, reuse.stderr);
  assert.is(reuse.stdout, `${first}\n`, 'the identical window is reused');
  assert.is(bound().length, 2, 'no new device');
  const reuse2 = sb.run(['losetup', '-L', '-f', '--show', '-o', '8K', '--sizelimit', '4K', img]);
  assert.is(reuse2.stdout, `${second}\n`);

  for (const args of [['-o', '2048', '--sizelimit', '4096'], ['-o', '4096', '--sizelimit', '8192'], ['-o', '10240'], []]) {
    const r = sb.run(['losetup', '-L', '-f', '--show', ...args, img]);
    assert.is(r.status, 1, `-L ${args.join(' ')}: ${r.stderr}`);
    assert.is(r.stdout, '');
    // util-linux's errx(): the message alone, no strerror after it.
    assert.is(r.stderr, `loopfs losetup: ${img}: overlapping loop device exists\n`);
  }
  // DEV FILE with -L refuses even the identical window (util-linux).
  const named = sb.run(['losetup', '-L', path.join(instDir(sb), 'loop7'), '--sizelimit', '4096', img]);
  assert.is(named.status, 1, named.stderr);
  assert.is(bound().length, 2, 'nothing was attached by the refused calls');
  assert.not.ok(fs.existsSync(path.join(instDir(sb), 'loop7')), 'nor a device created');

  // A window next to the others is no overlap; without -L overlap is allowed.
  attach(sb, img, ['-L', '-o', '4096', '--sizelimit', '4096']);
  attach(sb, img, ['-o', '2048', '--sizelimit', '4096']);
  assert.is(bound().length, 4);
});

test('32 concurrent losetup -f --show on one instance give 32 distinct devices', async () => {
  const files = Array.from({ length: 32 }, (_, i) => {
    const f = path.join(sb.root, `c${i}.img`);
    fs.writeFileSync(f, Buffer.alloc(4096, i));
    return f;
  });
  // The instance is not started yet: the first of them starts it, the others wait for it.
  const runs = files.map((f) => new Promise<{ status: number | null; out: string; err: string; file: string }>((resolve) => {
    const [cmd, ...pre] = sb.bin;
    const child = spawn(cmd!, [...pre, 'losetup', '-f', '--show', f], { env: { ...process.env, LOOPFS_RUNDIR: sb.runDir }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (err += d));
    child.on('close', (status) => resolve({ status, out, err, file: f }));
  }));
  const results = await Promise.all(runs);
  for (const r of results) assert.is(r.status, 0, `${r.file}: ${r.err}`);
  const devs = results.map((r) => r.out.trim());
  assert.is(new Set(devs).size, 32, `distinct: ${devs.join(' ')}`);
  assert.is(sb.daemons().length, 1, 'one instance');
  assert.is(entries(instDir(sb)).length, 33, 'loop-control and 32 devices, no spare ones');
  // Each device maps the file its own command named.
  const listed = JSON.parse(sb.ok(['losetup', '-J', '-l'])) as { loopdevices: { name: string; 'back-file': string }[] };
  const backing = new Map(listed.loopdevices.map((d) => [d.name, d['back-file']]));
  assert.is(backing.size, 32);
  for (const r of results) {
    const dev = r.out.trim();
    assert.is(backing.get(dev), r.file, dev);
    assert.ok(fs.readFileSync(dev).equals(fs.readFileSync(r.file)), `${dev} reads ${r.file}`);
  }
});

test.run();
