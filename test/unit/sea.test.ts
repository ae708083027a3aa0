import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VERSION } from '../../src/version';
import { repoRoot } from '../helpers/root';

/**
 * The single executable: built into a temp dir, then run ALONE (copied into
 * an empty directory, no node_modules anywhere near). Until a CLI command
 * needs koffi without root, the koffi path is proven by a probe executable
 * made by the same build/sea.mjs from src/sys/ffi.ts, plus a byte search
 * showing the real binary carries the same asset.
 */
const test = suite('sea');


const ROOT = repoRoot();
let tmp = '';
const cleanEnv = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: os.tmpdir(), NODE_OPTIONS: '' };

function node(args: string[]): SpawnSyncReturns<string> {
  const r = spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8' });
  assert.is(r.status, 0, `node ${args.join(' ')}: ${r.stderr}${r.stdout}`);
  return r;
}

/** A fresh directory holding only a copy of `exe`. */
function alone(exe: string, name: string): string {
  const dir = fs.mkdtempSync(path.join(tmp, 'alone-'));
  fs.copyFileSync(exe, path.join(dir, name));
  fs.chmodSync(path.join(dir, name), 0o755);
  assert.equal(fs.readdirSync(dir), [name]);
  return dir;
}

test.before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-sea-'));
});

test.after(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('the build makes loopfs.cjs and the executable loopfs, printing one line', () => {
  const out = path.join(tmp, 'out');
  const r = node(['build/build.mjs', '--outdir', out]);
  assert.is(r.stdout.trim().split('\n').length, 1, r.stdout);
  assert.is(r.stderr, '');
  assert.is(fs.statSync(path.join(out, 'loopfs')).mode & 0o777, 0o755);
  assert.ok(fs.existsSync(path.join(out, 'loopfs.cjs')));
  // One namespace per built-in module (build/shared-namespaces.mjs: an idle daemon's RSS).
  assert.ok(fs.readFileSync(path.join(out, 'loopfs.cjs'), 'utf8').includes('\nvar __toESMShared = '), 'built-in namespaces are shared');
  // loopfs-main.cjs: the executable's loader (build/sea-main.cjs), as the code cache's training runs it.
  assert.equal(fs.readdirSync(out).filter((f) => !f.startsWith('.')).sort(), ['loopfs', 'loopfs-main.cjs', 'loopfs.cjs']);
});

// Node's useCodeCache holds the bundle's top level only; build/train.mjs runs each kind of process
// and the executable carries what each compiled (build/sea-main.cjs). A cache V8 rejects (another
// node, other V8 flags) would be dropped by the build, and the loader says so under LOOPFS_DEBUG=1.
test('the executable carries a code cache trained for each kind of process, and uses it', () => {
  const out = path.join(tmp, 'out');
  const root = process.getuid?.() === 0 && fs.existsSync('/dev/fuse');
  const trained = fs.readdirSync(path.join(out, '.code-cache')).filter((f) => f.endsWith('.bin')).map((f) => f.slice(0, -4)).sort();
  // Without root and /dev/fuse only the CLI's own paths run at build time.
  assert.equal(trained, root ? ['__daemon', '__run-init', 'cli', 'losetup', 'mount', 'run'] : ['cli', 'losetup']);
  const dir = alone(path.join(out, 'loopfs'), 'loopfs');
  const env = { ...cleanEnv, LOOPFS_DEBUG: '1', LOOPFS_RUNDIR: path.join(tmp, 'no-run-dir') };
  const said = (args: string[]): string => spawnSync('./loopfs', args, { cwd: dir, env, encoding: 'utf8' }).stderr.split('\n')[0]!;
  assert.is(said(['--version']), 'loopfs: code cache cli: used');
  assert.is(said(['--instance', 'x', 'losetup', '--help']), 'loopfs: code cache losetup: used');
  // A daemon's and an init's start with arguments they refuse: nothing is mounted or started.
  if (root) {
    assert.is(said(['__daemon']), 'loopfs: code cache __daemon: used');
    assert.is(said(['__run-init', '{}']), 'loopfs: code cache __run-init: used');
  }
  assert.not.ok(fs.existsSync(env.LOOPFS_RUNDIR));
});

test('copied alone into an empty dir, ./loopfs --version works, silently', () => {
  const dir = alone(path.join(tmp, 'out', 'loopfs'), 'loopfs');
  const r = spawnSync('./loopfs', ['--version'], { cwd: dir, env: cleanEnv, encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  assert.ok(r.stdout.includes(VERSION), r.stdout);
  assert.is(r.stderr, '', 'no experimental-SEA warning');
});

test('the executable carries koffi.node as an asset', () => {
  const native = node(['--input-type=module', '-e', "import('./build/sea.mjs').then((m) => process.stdout.write(m.koffiNativePath()))"]).stdout;
  const bin = fs.readFileSync(path.join(tmp, 'out', 'loopfs'));
  assert.ok(bin.indexOf(fs.readFileSync(native)) > 0, `${native} is embedded`);
});

/** A 1777 directory standing in for /tmp, squatted by another uid under every name the old cache used. */
function squattedTmp(): { dir: string; names: string[] } {
  const dir = fs.mkdtempSync(path.join(tmp, 'tmpdir-'));
  fs.chmodSync(dir, 0o1777);
  const uid = process.getuid!();
  const bait = fs.mkdtempSync(path.join(tmp, 'bait-'));
  fs.mkdirSync(path.join(dir, `loopfs-${uid}`), { mode: 0o777 });
  fs.writeFileSync(path.join(dir, `loopfs-${uid + 1}`), 'not a directory');
  fs.symlinkSync(bait, path.join(dir, 'loopfs-65534'));
  fs.symlinkSync(bait, path.join(dir, 'loopfs-XXXXXX'));
  for (const n of fs.readdirSync(dir)) fs.lchownSync(path.join(dir, n), 4321, 4321);
  fs.chownSync(bait, 4321, 4321);
  return { dir, names: fs.readdirSync(dir).sort() };
}

test('src/sys/ffi.ts in a single executable loads koffi from the asset, names no file for it, and calls libc', () => {
  const probe = path.join(tmp, 'probe.ts');
  fs.writeFileSync(probe, [
    `import * as fs from 'node:fs';`,
    `import { koffi, seaModule, dlopenInPrivateDir } from ${JSON.stringify(path.join(ROOT, 'src/sys/ffi'))};`,
    // "private": the fall-back for file systems without O_TMPFILE, driven directly.
    "const k = process.argv[2] === 'private' ? dlopenInPrivateDir(process.env.TMPDIR!, new Uint8Array(seaModule()!.getRawAsset('koffi.node'))) : koffi();",
    "const getpid = k.load('libc.so.6').func('int getpid()');",
    "const maps = fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes(process.env.TMPDIR!));",
    'process.stdout.write(JSON.stringify({ getpid: getpid(), pid: process.pid, maps }));',
  ].join('\n'));
  const bundle = path.join(tmp, 'probe.cjs');
  node(['-e', `require('esbuild').buildSync(${JSON.stringify({
    entryPoints: [probe], bundle: true, platform: 'node', target: 'node20', format: 'cjs', outfile: bundle, external: ['koffi'], logLevel: 'warning',
  })})`]);
  node(['build/sea.mjs', bundle, path.join(tmp, 'probe')]);
  const dir = alone(path.join(tmp, 'probe'), 'probe');
  for (const mode of ['unnamed', 'private']) {
    const squat = squattedTmp();
    const r = spawnSync('./probe', [mode], { cwd: dir, env: { ...cleanEnv, TMPDIR: squat.dir }, encoding: 'utf8' });
    assert.is(r.status, 0, r.stderr);
    const got = JSON.parse(r.stdout) as { getpid: number; pid: number; maps: string[] };
    assert.is(got.getpid, got.pid);
    // It really came from the asset, through a file in TMPDIR that no longer has a name:
    // O_TMPFILE shows as "DIR/#INO (deleted)", the fall-back as "DIR/loopfs-RANDOM/koffi.node (deleted)".
    const want = mode === 'unnamed' ? /\/#\d+ \(deleted\)$/ : /\/loopfs-(?!XXXXXX)[^/]{6}\/koffi\.node \(deleted\)$/;
    assert.ok(got.maps.length > 0 && got.maps.every((l) => want.test(l)), `${mode}: ${got.maps.join('\n')}`);
    // Nothing of ours is left, the squatters' entries are untouched, and no symlink was followed.
    assert.equal(fs.readdirSync(squat.dir).sort(), squat.names, mode);
    assert.equal(fs.readdirSync(path.join(squat.dir, 'loopfs-65534')), [], mode);
    assert.equal(fs.readdirSync(path.join(squat.dir, `loopfs-${process.getuid!()}`)), [], mode);
  }
});

test.run();
