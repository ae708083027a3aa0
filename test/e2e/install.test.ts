import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { e2eSuite, requiring } from '../helpers/e2e';
import { REPO } from '../helpers/cli';

/**
 * `npm run install-local` / `uninstall-local` (build/install.mjs): into a
 * temporary PREFIX (and a DESTDIR staging tree), then man(1) finds the pages,
 * the shell finds the binary, the installed completion works in an
 * interactive bash on a real terminal; after uninstall all of it is gone.
 */

const test = e2eSuite('install');
let tmp = '';
let prefix = '';

const PAGES = ['loopfs', 'loopfs-mount', 'loopfs-umount', 'loopfs-losetup', 'loopfs-ctl', 'loopfs-rm', 'loopfs-overlay', 'loopfs-run', 'loopfs-list', 'loopfs-sysctl', 'loopfs-gc'];
const COMPLETIONS = ['share/bash-completion/completions/loopfs', 'share/zsh/site-functions/_loopfs', 'share/fish/vendor_completions.d/loopfs.fish'];

function npm(script: string, env: Record<string, string>): { status: number; stdout: string; stderr: string } {
  const r = spawnSync('npm', ['run', '--silent', script], { cwd: REPO, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  return { status: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

function sh(cmd: string, env: Record<string, string> = {}): { status: number; stdout: string } {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8', env: { ...process.env, ...env } });
  return { status: r.status ?? 128, stdout: (r.stdout ?? '').trim() };
}

function manWhere(page: string): { status: number; stdout: string } {
  // man-db: -w prints where the page is; MANPATH alone says where to look.
  return sh(`man -w ${page}`, { MANPATH: path.join(prefix, 'share', 'man') });
}

test.before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-e2e-install-'));
  prefix = path.join(tmp, 'usr');
});

test.after(() => {
  spawnSync('tmux', ['-L', `loopfs-install-${process.pid}`, 'kill-server']);
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('install-local puts the binary, the pages and the completions under PREFIX, one line per file', () => {
  assert.ok(fs.existsSync(path.join(REPO, 'dist', 'loopfs')), 'dist/loopfs (the single executable) is missing: npm run build');
  assert.ok(!sh('command -v man').status, 'man(1) is missing: apt-get install man-db');
  const r = npm('install-local', { PREFIX: prefix });
  assert.is(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.is(lines.length, 1 + PAGES.length + COMPLETIONS.length, r.stdout);
  for (const l of lines) assert.match(l, new RegExp(`^installed ${prefix}/`));
  const bin = path.join(prefix, 'bin', 'loopfs');
  assert.is(fs.statSync(bin).mode & 0o777, 0o755);
  for (const c of COMPLETIONS) assert.ok(fs.existsSync(path.join(prefix, c)), c);
  for (const p of PAGES) assert.is(fs.statSync(path.join(prefix, 'share', 'man', 'man8', `${p}.8`)).mode & 0o777, 0o644);
});

test('man finds the pages; the shell finds the binary, and it runs', () => {
  const where = manWhere('loopfs-run');
  assert.is(where.status, 0, 'man -w loopfs-run');
  assert.is(where.stdout, path.join(prefix, 'share', 'man', 'man8', 'loopfs-run.8'));
  for (const p of PAGES) assert.is(manWhere(p).status, 0, `man -w ${p}`);
  const found = sh('command -v loopfs', { PATH: `${path.join(prefix, 'bin')}:${process.env.PATH}` });
  assert.is(found.stdout, path.join(prefix, 'bin', 'loopfs'));
  const v = spawnSync(path.join(prefix, 'bin', 'loopfs'), ['--version'], { encoding: 'utf8' });
  assert.is(v.status, 0, v.stderr);
  assert.match(v.stdout, /^loopfs\/\d+\.\d+\.\d+/);
  // The page formats as man shows it.
  const text = spawnSync('man', ['-P', 'cat', 'loopfs-losetup'], { encoding: 'utf8', env: { ...process.env, MANPATH: path.join(prefix, 'share', 'man'), MANWIDTH: '80' } });
  assert.is(text.status, 0, text.stderr);
  assert.match(text.stdout, /LOOPFS-LOSETUP\(8\)/);
});

// .ci/run installs tmux.
requiring(test, spawnSync('tmux', ['-V']).error ? 'tmux is missing' : undefined)('the installed bash completion completes on a real terminal (readline splits at = and :)', () => {
  const sock = `loopfs-install-${process.pid}`;
  const tm = (...args: string[]): string => spawnSync('tmux', ['-L', sock, ...args], { encoding: 'utf8' }).stdout ?? '';
  const sleep = (ms: number): void => void spawnSync('sleep', [String(ms / 1000)]);
  const shell = `env -i HOME=${tmp} TERM=xterm PATH=${path.join(prefix, 'bin')}:/usr/bin:/bin LOOPFS_RUNDIR=${path.join(tmp, 'rd')} bash --norc --noprofile`;
  tm('new-session', '-d', '-x', '200', '-y', '20', shell);
  sleep(300);
  tm('send-keys', `PS1='$ '; source ${path.join(prefix, COMPLETIONS[0]!)}; clear`, 'Enter');
  const cases: [string, string][] = [
    ['loopfs lo', 'loopfs losetup '],
    ['loopfs losetup --dir', 'loopfs losetup --direct-io'],
    ['loopfs losetup --direct-io=of', 'loopfs losetup --direct-io=off '],
    ['loopfs losetup -O NAME,BACK-MAJ:', 'loopfs losetup -O NAME,BACK-MAJ:MIN'],
    ['loopfs losetup -O name,back-m', 'loopfs losetup -O name,BACK-MAJ:MIN'],
    ['loopfs mount -o max=4,re', 'loopfs mount -o max=4,remount'],
  ];
  for (const [typed, want] of cases) {
    sleep(200);
    tm('send-keys', '-l', typed);
    tm('send-keys', 'Tab');
    let line = '';
    for (let i = 0; i < 40 && line !== `$ ${want}`; i++) {
      sleep(50);
      line = tm('capture-pane', '-p').split('\n').filter((l) => l.trim()).pop() ?? '';
    }
    assert.is(line.trimEnd(), `$ ${want}`.trimEnd(), `${typed}<TAB>`);
    tm('send-keys', 'C-u');
  }
  tm('kill-server');
});

test('DESTDIR stages the same files under DESTDIR/PREFIX', () => {
  const stage = path.join(tmp, 'stage');
  const r = npm('install-local', { DESTDIR: stage, PREFIX: '/usr' });
  assert.is(r.status, 0, r.stderr);
  assert.ok(fs.existsSync(path.join(stage, 'usr', 'bin', 'loopfs')));
  assert.ok(fs.existsSync(path.join(stage, 'usr', 'share', 'man', 'man8', 'loopfs-run.8')));
  for (const c of COMPLETIONS) assert.ok(fs.existsSync(path.join(stage, 'usr', c)), c);
  const u = npm('uninstall-local', { DESTDIR: stage, PREFIX: '/usr' });
  assert.is(u.status, 0, u.stderr);
  assert.not.ok(fs.existsSync(path.join(stage, 'usr', 'bin', 'loopfs')));
});

test('uninstall-local removes exactly those files: man and the shell find nothing', () => {
  const keep = path.join(prefix, 'share', 'man', 'man8', 'other.8');
  fs.writeFileSync(keep, '.TH OTHER 8\n');
  const r = npm('uninstall-local', { PREFIX: prefix });
  assert.is(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.is(lines.length, 1 + PAGES.length + COMPLETIONS.length, r.stdout);
  for (const l of lines) assert.match(l, new RegExp(`^removed ${prefix}/`));
  assert.is(manWhere('loopfs-run').status === 0, false, 'man -w loopfs-run still finds a page');
  const found = sh('command -v loopfs', { PATH: `${path.join(prefix, 'bin')}:/nonexistent` });
  assert.is(found.stdout, '', 'loopfs still on PATH');
  for (const c of COMPLETIONS) assert.not.ok(fs.existsSync(path.join(prefix, c)), c);
  assert.ok(fs.existsSync(keep), 'uninstall removed a file it had not installed');
  // Twice is harmless.
  assert.is(npm('uninstall-local', { PREFIX: prefix }).status, 0);
});

test('without the single executable, install-local says to build and installs nothing', () => {
  // A copy of the repository's install inputs, without dist/.
  const fake = path.join(tmp, 'fake-repo');
  fs.mkdirSync(path.join(fake, 'build'), { recursive: true });
  fs.copyFileSync(path.join(REPO, 'build', 'install.mjs'), path.join(fake, 'build', 'install.mjs'));
  fs.cpSync(path.join(REPO, 'man'), path.join(fake, 'man'), { recursive: true });
  fs.cpSync(path.join(REPO, 'completions'), path.join(fake, 'completions'), { recursive: true });
  const p2 = path.join(tmp, 'usr2');
  const r = spawnSync(process.execPath, [path.join(fake, 'build', 'install.mjs'), 'install'], { encoding: 'utf8', env: { ...process.env, PREFIX: p2 } });
  assert.is(r.status, 1);
  assert.match(r.stderr, /dist\/loopfs.*npm run build/);
  assert.not.ok(fs.existsSync(p2), 'something was installed');
});

test.run();
