import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { REPO, binary } from '../helpers/cli';
import { requiring } from '../helpers/e2e';

/**
 * The shell completions, run in real shells: bash (its function called as
 * readline would), zsh (a real interactive zsh on a pseudo-terminal, its
 * matches captured) and fish (`complete -C`). An instance directory is a
 * plain directory holding files named like device entries, and `loopfs` on
 * PATH is a stub that prints `list --json` output and notes each call — so
 * no mount is needed, and the test sees that a completion never starts an
 * instance.
 */

const BASH = path.join(REPO, 'completions', 'loopfs.bash');
const ZSH_DIR = path.join(REPO, 'completions');
const FISH = path.join(REPO, 'completions', 'loopfs.fish');
const COMMANDS = ['mount', 'umount', 'losetup', 'overlay', 'ctl', 'rm', 'run', 'list', 'sysctl', 'gc'];
const COLUMNS = ['NAME', 'AUTOCLEAR', 'BACK-FILE', 'BACK-INO', 'BACK-MAJ:MIN', 'MAJ:MIN', 'OFFSET', 'PARTSCAN', 'RO', 'SIZELIMIT', 'DIO', 'LOG-SEC', 'OVERLAY', 'OVERLAY-CHANGED'];

let tmp = '';
let inst = '';
let stubDir = '';
let calls = '';
let env: Record<string, string> = {};

function has(shell: string): boolean {
  return !spawnSync(shell, ['-c', 'exit 0']).error;
}

interface Out {
  lines: string[];
  stderr: string;
}

/** bash: COMP_WORDS = words (the last one is being completed); with `line`, also COMP_LINE/COMP_POINT. */
function bash(words: string[], opts: { env?: Record<string, string>; line?: string; cword?: number } = {}): Out {
  const script = `source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=\${CWORD:-$(( $# - 1 ))}
${opts.line !== undefined ? 'COMP_LINE=$LINE; COMP_POINT=${#LINE}' : ''}
_loopfs
(( \${#COMPREPLY[@]} )) && printf '%s\\n' "\${COMPREPLY[@]}"
exit 0`;
  const r = spawnSync('bash', ['--norc', '--noprofile', '-c', script, 'bash', BASH, ...words], {
    encoding: 'utf8',
    env: { ...env, ...opts.env, ...(opts.line !== undefined ? { LINE: opts.line } : {}), ...(opts.cword !== undefined ? { CWORD: String(opts.cword) } : {}) },
    timeout: 20_000,
  });
  assert.is(r.status, 0, `bash exited ${r.status}: ${r.stderr}`);
  return { lines: r.stdout.split('\n').filter(Boolean), stderr: r.stderr };
}

/** bash's answer to `words`, which must come without a word on stderr. */
function b(words: string[], opts: { env?: Record<string, string>; line?: string; cword?: number } = {}): string[] {
  const o = bash(words, opts);
  assert.is(o.stderr, '', `completion of "${words.join(' ')}" printed on stderr`);
  return o.lines;
}

const ZSH_HARNESS = `
zmodload zsh/zpty || exit 2
zpty z zsh -f -i
zpty -w z "PS1= ; PROMPT= ; RPROMPT= ; setopt nobeep; unsetopt zle_bracketed_paste 2>/dev/null"
zpty -w z "fpath=($1 \\$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z "zstyle ':completion:*' menu no"
# TAB completes, then prints a marker: the harness waits for it before typing on.
zpty -w z 'zle -C zt-complete complete-word _main_complete; zt-tab() { zle zt-complete; print -r -- "<<DO""NE>>" }; zle -N zt-tab; bindkey "^I" zt-tab'
zpty -w z 'compadd () {
  if [[ \${@[1,(i)(-|--)]} == *-(O|A|D)\\ * ]]; then builtin compadd "$@"; return $?; fi
  typeset -a __hits
  builtin compadd -A __hits "$@"
  local ret=$?
  (( $#__hits )) || return $ret
  local __h
  for __h in $__hits; do print -r -- "<<M:$__h>>"; done
  builtin compadd "$@"
}'
shift
for l in "$@"; do
  zpty -w z "print -r -- '<<BEG''IN>>'"
  zpty -r z chunk '*<<BEGIN>>*'
  zpty -n -w z "$l"$'\\t'
  zpty -r z out '*<<DONE>>*'
  zpty -n -w z $'\\x15'
  print -r -- "== $l"
  print -r -- $out | tr -d '\\r' | grep -o '<<M:[^<>]*>>' | sed -e 's/^<<M://' -e 's/>>$//' | sort -u
done
zpty -d z
exit 0
`;

/** zsh: the matches an interactive zsh offers for each partial line. */
function zsh(lines: string[], extraEnv: Record<string, string> = {}): Map<string, string[]> {
  const file = path.join(tmp, 'zsh-harness.zsh');
  fs.writeFileSync(file, ZSH_HARNESS);
  const r = spawnSync('zsh', ['-f', file, ZSH_DIR, ...lines], { encoding: 'utf8', env: { ...env, ...extraEnv }, timeout: 120_000 });
  assert.is(r.status, 0, `zsh harness exited ${r.status}: ${r.stderr}`);
  const out = new Map<string, string[]>();
  let cur: string[] | undefined;
  for (const l of r.stdout.split('\n')) {
    if (l.startsWith('== ')) out.set(l.slice(3), (cur = []));
    else if (l && cur) cur.push(l);
  }
  return out;
}

/** fish: `complete -C` for each partial line; the candidates without their descriptions. */
function fish(lines: string[], extraEnv: Record<string, string> = {}): Map<string, string[]> {
  const script = `source ${JSON.stringify(FISH)}\nfor l in $argv\n  echo "== $l"\n  complete -C"$l"\nend`;
  const r = spawnSync('fish', ['--no-config', '-c', script, ...lines], { encoding: 'utf8', env: { ...env, ...extraEnv }, timeout: 60_000 });
  assert.is(r.status, 0, `fish exited ${r.status}: ${r.stderr}`);
  assert.is(r.stderr, '', 'fish printed on stderr');
  const out = new Map<string, string[]>();
  let cur: string[] | undefined;
  for (const l of r.stdout.split('\n')) {
    if (l.startsWith('== ')) out.set(l.slice(3), (cur = []));
    else if (l && cur) cur.push(l.split('\t')[0]!);
  }
  return out;
}

/** The options `loopfs <cmd> --help` lists. */
function helpOptions(cmd: string): string[] {
  const [c, ...pre] = binary();
  const r = spawnSync(c!, [...pre, ...(cmd ? [cmd] : []), '--help'], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
  const m = /\nOptions:\n([\s\S]*?)(?:\n\n|$)/.exec(r.stdout ?? '');
  const out = new Set<string>();
  for (const line of (m?.[1] ?? '').split('\n')) {
    const first = line.trim().split(/\s{2,}/)[0] ?? '';
    if (first.startsWith('-')) for (const t of first.matchAll(/(?:^|[\s,])(--?[A-Za-z0-9][\w-]*)/g)) out.add(t[1]!);
  }
  return [...out].sort();
}

function registered(): string[] {
  const [c, ...pre] = binary();
  const r = spawnSync(c!, [...pre, '--help'], { encoding: 'utf8' });
  const m = /\nCommands:\n([\s\S]*?)\n\n/.exec(r.stdout ?? '');
  return (m?.[1] ?? '').split('\n').map((l) => l.trim().split(/\s+/)[0]!).filter(Boolean);
}

const sorted = (a: string[]): string[] => [...a].sort();

const test = suite('completion');
// .ci/run installs both (apt-get install zsh fish).
const withZsh = requiring(test, has('zsh') ? undefined : 'zsh is not installed');
const withFish = requiring(test, has('fish') ? undefined : 'fish is not installed');

test.before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-completion-'));
  // An "instance": what an instance directory lists, as plain files.
  inst = path.join(tmp, 'inst');
  fs.mkdirSync(inst);
  for (const f of ['loop0', 'loop1', 'loop12', 'loop-control', 'loop0p1', 'notes']) fs.writeFileSync(path.join(inst, f), '');
  // A run directory with the instance by id, and a default instance directory.
  fs.mkdirSync(path.join(tmp, 'rd', 'instances', 'ab12cd34'), { recursive: true });
  fs.writeFileSync(path.join(tmp, 'rd', 'instances', 'ab12cd34', 'state.json'), JSON.stringify({ version: 1, id: 'ab12cd34', mountpoint: inst }, null, 2));
  fs.mkdirSync(path.join(tmp, 'rd', 'default'));
  fs.writeFileSync(path.join(tmp, 'rd', 'default', 'loop7'), '');
  // `loopfs` on PATH: prints what `loopfs list --json` prints, and notes every call.
  stubDir = path.join(tmp, 'bin');
  fs.mkdirSync(stubDir);
  calls = path.join(tmp, 'calls');
  fs.writeFileSync(
    path.join(stubDir, 'loopfs'),
    `#!/bin/sh
echo "$*" >> ${JSON.stringify(calls)}
case " $* " in *" list "*) ;; *) echo "stub: not list" >&2; exit 1 ;; esac
rd=none; [ "$1" = --run-dir ] && rd=$2
cat <<EOF
[
  {
    "id": "ab12cd34",
    "mountpoint": "/srv/job42",
    "owner": "0:0",
    "health": "alive"
  },
  {
    "id": "default",
    "mountpoint": "/run/loopfs/default",
    "owner": "0:0",
    "health": "alive"
  },
  {
    "id": "broken",
    "mountpoint": null,
    "health": "broken"
  },
  {
    "id": "rd",
    "mountpoint": "/rd/$rd",
    "health": "dead"
  }
]
EOF
`,
    { mode: 0o755 },
  );
  env = { PATH: `${stubDir}:${process.env.PATH ?? '/usr/bin:/bin'}`, HOME: tmp, LANG: 'C.UTF-8', TERM: 'dumb', LOOPFS_RUNDIR: path.join(tmp, 'rd') };
});

test.after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('bash: loopfs lo<TAB> → losetup; the commands; the global options', () => {
  assert.equal(b(['loopfs', 'lo']), ['losetup']);
  assert.equal(sorted(b(['loopfs', ''])), sorted(COMMANDS));
  assert.equal(sorted(b(['loopfs', '-'])), sorted(['--instance', '--run-dir', '-h', '--help', '-v', '--version']));
  assert.equal(b(['loopfs', '--instance', '/srv/job42', 'ls']), []);
  assert.equal(b(['loopfs', '--instance', '/srv/job42', 'um']), ['umount']);
});

test('bash: loopfs losetup --dir<TAB> → --direct-io; --direct-io=<TAB> → on, off', () => {
  assert.equal(b(['loopfs', 'losetup', '--dir']), ['--direct-io']);
  assert.equal(b(['loopfs', 'losetup', '--direct-io=']), ['--direct-io=on', '--direct-io=off']);
  // As readline splits it (COMP_WORDBREAKS has '='): only the part after '=' is replaced.
  assert.equal(b(['loopfs', 'losetup', '--direct-io', '=', ''], { line: 'loopfs losetup --direct-io=' }), ['on', 'off']);
  assert.equal(b(['loopfs', 'losetup', '--direct-io', '=', 'of'], { line: 'loopfs losetup --direct-io=of' }), ['off']);
});

test('bash: device names of $LOOPFS after losetup -d, -c, rm, and numbers after ctl remove', () => {
  const e = { LOOPFS: inst };
  assert.equal(b(['loopfs', 'losetup', '-d', ''], { env: e }), ['loop0', 'loop1', 'loop12']);
  assert.equal(b(['loopfs', 'losetup', '-d', 'loop1'], { env: e }), ['loop1', 'loop12']);
  assert.equal(b(['loopfs', 'losetup', '--detach', 'loop0', ''], { env: e }), ['loop0', 'loop1', 'loop12']);
  assert.equal(b(['loopfs', 'losetup', '-rd', ''], { env: e }), ['loop0', 'loop1', 'loop12']);
  assert.equal(b(['loopfs', 'losetup', '-c', ''], { env: e }), ['loop0', 'loop1', 'loop12']);
  assert.equal(b(['loopfs', 'rm', ''], { env: e }), ['loop0', 'loop1', 'loop12']);
  assert.equal(b(['loopfs', 'rm', 'loop0', 'loop1'], { env: e }), ['loop1', 'loop12']);
  assert.equal(b(['loopfs', 'ctl', 'remove', ''], { env: e }), ['0', '1', '12']);
  assert.equal(b(['loopfs', 'ctl', 'add', ''], { env: e }), []);
  assert.equal(b(['loopfs', 'ctl', ''], { env: e }), ['add', 'remove', 'get-free']);
});

test('bash: the instance is --instance on the line (a path or an id), else $LOOPFS, else RUNDIR/default — never started', () => {
  fs.rmSync(calls, { force: true });
  assert.equal(b(['loopfs', '--instance', inst, 'rm', '']), ['loop0', 'loop1', 'loop12']);
  assert.equal(b(['loopfs', 'losetup', '--instance', inst, '-d', '']), ['loop0', 'loop1', 'loop12']);
  assert.equal(b(['loopfs', 'losetup', '-d', '', '--instance', inst], { cword: 3 }), ['loop0', 'loop1', 'loop12']);
  assert.equal(b(['loopfs', '--instance', 'ab12cd34', 'losetup', '-d', '']), ['loop0', 'loop1', 'loop12']);
  assert.equal(b(['loopfs', '--instance=ab12cd34', 'rm', '']), ['loop0', 'loop1', 'loop12']);
  assert.equal(b(['loopfs', 'rm', ''], { env: { LOOPFS: 'ab12cd34' } }), ['loop0', 'loop1', 'loop12']);
  // Nothing named: the default instance's directory, only if it is there.
  assert.equal(b(['loopfs', 'losetup', '-d', '']), ['loop7']);
  assert.equal(b(['loopfs', 'losetup', '-d', ''], { env: { LOOPFS_RUNDIR: path.join(tmp, 'nowhere') } }), []);
  assert.equal(b(['loopfs', '--run-dir', path.join(tmp, 'nowhere'), 'rm', '']), []);
  assert.equal(b(['loopfs', 'rm', ''], { env: { LOOPFS: path.join(tmp, 'no-such-dir') } }), []);
  assert.not.ok(fs.existsSync(calls), 'a device completion ran loopfs');
});

test('bash: -O NAME,BA<TAB> and the other column lists', () => {
  assert.equal(b(['loopfs', 'losetup', '-O', 'NAME,BA']), ['NAME,BACK-FILE', 'NAME,BACK-INO', 'NAME,BACK-MAJ:MIN']);
  assert.equal(sorted(b(['loopfs', 'losetup', '-O', ''])), sorted(COLUMNS));
  assert.equal(b(['loopfs', 'losetup', '--output', '+na']), ['+NAME']);
  assert.equal(b(['loopfs', 'losetup', '-l', '-O', 'name,ro,LOG']), ['name,ro,LOG-SEC']);
  assert.equal(b(['loopfs', 'losetup', '--output=NAME,D']), ['--output=NAME,DIO']);
  // As readline splits at ':' — the reply is what follows it.
  assert.equal(b(['loopfs', 'losetup', '-O', 'NAME,BACK-MAJ', ':', ''], { line: 'loopfs losetup -O NAME,BACK-MAJ:' }), ['MIN']);
});

test('bash: loopfs overlay: its actions, then devices; losetup --overlay= takes a file', () => {
  assert.equal(b(['loopfs', 'overlay', '']), ['status', 'discard', 'commit']);
  assert.equal(b(['loopfs', 'overlay', 'd']), ['discard']);
  assert.equal(b(['loopfs', 'overlay', 'status', '--j']), ['--json']);
  assert.equal(b(['loopfs', 'overlay', 'commit', ''], { env: { LOOPFS: inst } }), ['loop0', 'loop1', 'loop12']);
  assert.equal(b(['loopfs', 'losetup', '--over']), ['--overlay']);
  fs.writeFileSync(path.join(tmp, 'job.delta'), '');
  assert.equal(b(['loopfs', 'losetup', `--overlay=${tmp}/job.d`]), [`--overlay=${tmp}/job.delta`]);
});

test('bash: instance mountpoints from loopfs list --json after --instance, umount, mount -o remount', () => {
  const mps = ['/srv/job42', '/run/loopfs/default', '/rd/none'];
  assert.equal(b(['loopfs', 'umount', '']), mps);
  assert.equal(b(['loopfs', 'umount', '/s']), ['/srv/job42']);
  assert.equal(b(['loopfs', '--instance', '']), mps);
  assert.equal(b(['loopfs', 'losetup', '--instance', '/r']), ['/run/loopfs/default', '/rd/none']);
  assert.equal(b(['loopfs', 'mount', '-o', 'remount,max=8', '']), mps);
  assert.equal(b(['loopfs', '--run-dir', '/x', 'umount', '/rd']), ['/rd//x']);
  // Without remount, mount takes a new (empty) directory: directories, not instances.
  const dirs = b(['loopfs', 'mount', `${tmp}/in`]);
  assert.equal(dirs, [`${tmp}/inst`]);
});

test('bash: option values and positional words of each command', () => {
  assert.equal(b(['loopfs', 'mount', '-o', 'max=3,u']), ['max=3,uid=']);
  assert.equal(b(['loopfs', 'mount', '-o', '']), ['max=', 'uid=', 'gid=', 'remount']);
  assert.equal(b(['loopfs', 'run', '-o', '']), ['max=']);
  assert.equal(b(['loopfs', 'losetup', '-b', '40']), ['4096']);
  assert.equal(b(['loopfs', 'sysctl', 'm']), ['max_loop_devices', 'max_loop_devices=']);
  assert.equal(b(['loopfs', 'list', '--j']), ['--json']);
  assert.equal(b(['loopfs', 'umount', '--la']), ['--lazy']);
  // Files after -f, -j and as the FILE of LOOPDEV FILE.
  fs.writeFileSync(path.join(tmp, 'disk.img'), '');
  assert.equal(b(['loopfs', 'losetup', '-f', `${tmp}/dis`]), [`${tmp}/disk.img`]);
  assert.equal(b(['loopfs', 'losetup', '-fP', '--show', `${tmp}/dis`]), [`${tmp}/disk.img`]);
  assert.equal(b(['loopfs', 'losetup', '-j', `${tmp}/dis`]), [`${tmp}/disk.img`]);
  assert.equal(b(['loopfs', 'losetup', '-o', '1024', 'loop3', `${tmp}/dis`]), [`${tmp}/disk.img`]);
  assert.equal(b(['loopfs', 'losetup', '-o', '1024', ''], { env: { LOOPFS: inst } }), ['loop0', 'loop1', 'loop12']);
  // run: the command after --.
  assert.ok(b(['loopfs', 'run', '--', 'ech']).includes('echo'));
});

test('bash: every option of every command’s --help is offered after "-"', () => {
  for (const c of ['', ...registered()]) {
    const offered = new Set(b(c ? ['loopfs', c, '-'] : ['loopfs', '-']));
    for (const o of helpOptions(c)) assert.ok(offered.has(o), `bash does not offer ${o} for "loopfs ${c}"`);
  }
});

test('bash: nothing on stderr, whatever the environment (no XDG_RUNTIME_DIR, no loopfs on PATH)', () => {
  const r = spawnSync('bash', ['--norc', '-c', `source "$1"; for w in "" lo; do COMP_WORDS=(loopfs umount "$w"); COMP_CWORD=2; _loopfs; COMP_WORDS=(loopfs rm "$w"); _loopfs; COMP_WORDS=(loopfs losetup -d "$w"); _loopfs; done; echo ok`, 'bash', BASH], {
    encoding: 'utf8',
    env: { PATH: '/usr/bin:/bin' },
  });
  assert.is(r.stderr, '');
  assert.is(r.stdout.trim(), 'ok');
});

withZsh('zsh: the file parses', () => {
  const r = spawnSync('zsh', ['-n', path.join(ZSH_DIR, '_loopfs')], { encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
});

withFish('fish: the file parses', () => {
  const r = spawnSync('fish', ['-n', FISH], { encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
});

withZsh('zsh: commands, options, --direct-io values, -O columns, devices and mountpoints', () => {
  const cases: [string, string[], Record<string, string>?][] = [
    ['loopfs lo', ['losetup']],
    ['loopfs losetup --dir', ['--direct-io']],
    ['loopfs losetup --direct-io=', ['off', 'on']],
    ['loopfs losetup -O NAME,BA', ['BACK-FILE', 'BACK-INO', 'BACK-MAJ:MIN']],
    ['loopfs losetup -d ', ['loop0', 'loop1', 'loop12']],
    ['loopfs rm ', ['loop0', 'loop1', 'loop12']],
    ['loopfs ctl remove ', ['0', '1', '12']],
    ['loopfs umount ', ['/rd/none', '/run/loopfs/default', '/srv/job42']],
    ['loopfs mount -o remount,max=2 ', ['/rd/none', '/run/loopfs/default', '/srv/job42']],
    ['loopfs sysctl ', ['max_loop_devices', 'max_loop_devices=']],
  ];
  const got = zsh(cases.map((c) => c[0]), { LOOPFS: inst });
  for (const [line, want] of cases) assert.equal(got.get(line), want, `zsh: ${line}<TAB>`);
  const ids = zsh(['loopfs --instance ab12cd34 rm ', 'loopfs rm '], {});
  assert.equal(ids.get('loopfs --instance ab12cd34 rm '), ['loop0', 'loop1', 'loop12']);
  assert.equal(ids.get('loopfs rm '), ['loop7']);
});

withZsh('zsh: every option of every command’s --help is offered after "-"', () => {
  const cmds = ['', ...registered()];
  const lines = cmds.map((c) => (c ? `loopfs ${c} -` : 'loopfs -'));
  const got = zsh(lines);
  cmds.forEach((c, i) => {
    const offered = new Set(got.get(lines[i]!) ?? []);
    for (const o of helpOptions(c)) assert.ok(offered.has(o), `zsh does not offer ${o} for "loopfs ${c}"`);
  });
});

withFish('fish: commands, options, --direct-io values, -O columns, devices and mountpoints', () => {
  const cases: [string, string[]][] = [
    ['loopfs lo', ['losetup']],
    ['loopfs losetup --direct-io=', ['--direct-io=off', '--direct-io=on']],
    ['loopfs losetup -O NAME,BA', ['NAME,BACK-FILE', 'NAME,BACK-INO', 'NAME,BACK-MAJ:MIN']],
    ['loopfs losetup -d ', ['loop0', 'loop1', 'loop12']],
    ['loopfs rm ', ['loop0', 'loop1', 'loop12']],
    ['loopfs ctl remove ', ['0', '1', '12']],
    ['loopfs umount ', ['/rd/none', '/run/loopfs/default', '/srv/job42']],
    ['loopfs mount -o remount,max=2 ', ['/rd/none', '/run/loopfs/default', '/srv/job42']],
    ['loopfs sysctl ', ['max_loop_devices', 'max_loop_devices=']],
    ['loopfs --instance ab12cd34 rm ', ['loop0', 'loop1', 'loop12']],
  ];
  const got = fish(cases.map((c) => c[0]), { LOOPFS: inst });
  for (const [line, want] of cases) assert.equal(sorted(got.get(line) ?? []), sorted(want), `fish: ${line}<TAB>`);
  assert.ok((fish(['loopfs losetup --dir']).get('loopfs losetup --dir') ?? []).includes('--direct-io'));
  assert.equal(fish(['loopfs rm ']).get('loopfs rm '), ['loop7']);
});

withFish('fish: every option of every command’s --help is offered after "-"', () => {
  const cmds = ['', ...registered()];
  const lines = cmds.map((c) => (c ? `loopfs ${c} -` : 'loopfs -'));
  const got = fish(lines);
  cmds.forEach((c, i) => {
    const offered = new Set(got.get(lines[i]!) ?? []);
    for (const o of helpOptions(c)) assert.ok(offered.has(o), `fish does not offer ${o} for "loopfs ${c}"`);
  });
});

test.run();
