import * as fs from 'node:fs';
import * as path from 'node:path';
import { constants as osConstants } from 'node:os';
import { spawn, spawnSync } from 'node:child_process';
import { LoopfsError } from './errors';
import { ensureRunDir, defaultMountpoint } from './rundir';
import { levelsFor, openLimitsFile, PARENTS_FILE, type LevelRef } from './limits';
import { selfCommand, startInstance, DEFAULT_ID } from './instance';

/**
 * `loopfs run` (SPEC §5). The outer process starts
 *
 *   setpriv --pdeathsig KILL unshare --fork --kill-child --pid --mount-proc
 *           --propagation private [--user --map-root-user] loopfs __run-init …
 *
 * so the init runs as PID 1 of a new PID namespace in a private mount
 * namespace. It mounts a tmpfs over the run directory (the sandbox sees only
 * its own instances, and its state lives and dies in memory), starts a fresh
 * instance there and runs CMD. Clean-up is by construction: when CMD's init
 * exits the kernel kills the whole PID namespace (the daemon with it) and
 * drops the mount namespace (the FUSE mount, the tmpfs, any loop mounts made
 * inside); when `loopfs run` itself is SIGKILLed, pdeathsig kills unshare and
 * --kill-child kills the init. No handler has to run.
 *
 * The run directory's limits (and those above it) travel as open file
 * descriptors, so the sandbox's devices keep counting against the budget it
 * was started from (SPEC §6).
 */

export interface RunOptions {
  runDir?: string;
  dir?: string;
  max?: number;
  cmd: string[];
}

interface InitConfig {
  runDir: string;
  dir: string | null;
  max: number | null;
  /** Limits levels of the outside, inherited as fds 3, 4, … in this order. */
  levels: { uid: number; label: string }[];
}

const FIRST_FD = 3;

export async function runSandbox(opts: RunOptions): Promise<number> {
  const runDir = ensureRunDir(opts.runDir);
  const uid = process.getuid?.() ?? 0;
  const levels = levelsFor(runDir, uid);
  const fds = levels.map((l) => openLimitsFile(l.path));
  const cfg: InitConfig = {
    runDir,
    dir: opts.dir ? path.resolve(opts.dir) : null,
    max: opts.max ?? null,
    levels: levels.map((l) => ({ uid: l.uid, label: l.label })),
  };
  const unshare = ['unshare', '--fork', '--kill-child=SIGKILL', '--pid', '--mount-proc', '--propagation', 'private', ...(uid === 0 ? [] : ['--user', '--map-root-user'])];
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', ...unshare, '--', ...selfCommand(), '__run-init', JSON.stringify(cfg), '--', ...opts.cmd], {
    stdio: ['inherit', 'inherit', 'inherit', ...fds],
  });
  for (const fd of fds) fs.closeSync(fd);
  const forward = (sig: NodeJS.Signals): void => {
    // unshare ignores SIGINT/SIGTERM itself: signal the init inside, which passes it to CMD.
    const init = initPid(child.pid);
    if (init) {
      try {
        process.kill(init, sig);
      } catch {
        /* already gone */
      }
    }
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
  for (const s of signals) process.on(s, forward);
  return new Promise((resolve, reject) => {
    child.on('error', (e) => reject(new LoopfsError('ENOENT', 'setpriv', `cannot start the sandbox: ${e.message}`)));
    child.on('exit', (code, signal) => {
      for (const s of signals) process.off(s, forward);
      resolve(code ?? 128 + (signal ? osConstants.signals[signal] : 0));
    });
  });
}

function initPid(unsharePid: number | undefined): number | undefined {
  if (!unsharePid) return undefined;
  try {
    const kids = fs.readFileSync(`/proc/${unsharePid}/task/${unsharePid}/children`, 'utf8').trim().split(/\s+/);
    return kids[0] ? Number(kids[0]) : undefined;
  } catch {
    return undefined;
  }
}

/** PID 1 of the sandbox: `loopfs __run-init CONFIG -- CMD…`. Returns CMD's status. */
export async function runSandboxInit(argv: string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const cfg = JSON.parse(argv[0]!) as InitConfig;
  const cmd = argv.slice(dash + 1);
  // The inherited limits fds: reopen them close-on-exec (CMD must not inherit them)
  // and name them through /proc/1/fd, which every process of the sandbox can open.
  const parents: LevelRef[] = cfg.levels.map((l, i) => {
    const fd = fs.openSync(`/proc/self/fd/${FIRST_FD + i}`, 'r+');
    fs.closeSync(FIRST_FD + i);
    return { path: `/proc/1/fd/${fd}`, uid: l.uid, label: l.label };
  });
  const r = spawnSync('mount', ['-n', '-t', 'tmpfs', '-o', 'mode=0700', 'loopfs-run', cfg.runDir], { encoding: 'utf8' });
  if (r.status !== 0) throw new LoopfsError('EPERM', cfg.runDir, `cannot mount the sandbox's run directory: ${(r.stderr || '').trim()}`);
  // Shared, so the FUSE mounts that daemons make from their own namespaces show here (core/instance.ts).
  spawnSync('mount', ['-n', '--make-shared', cfg.runDir]);
  fs.writeFileSync(path.join(cfg.runDir, PARENTS_FILE), `${JSON.stringify(parents)}\n`, { mode: 0o600 });
  ensureRunDir(cfg.runDir);
  const mountpoint = cfg.dir ?? defaultMountpoint(cfg.runDir);
  const rec = await startInstance(cfg.runDir, mountpoint, cfg.max ? { max: cfg.max } : {}, cfg.dir ? undefined : DEFAULT_ID);
  // `loopfs` on CMD's PATH is this very program, whatever PATH held before.
  const bin = path.join(cfg.runDir, 'bin');
  fs.mkdirSync(bin, { mode: 0o755 });
  fs.writeFileSync(path.join(bin, 'loopfs'), `#!/bin/sh\nexec ${selfCommand().map(shellQuote).join(' ')} "$@"\n`, { mode: 0o755 });
  const env = { ...process.env, LOOPFS: rec.state!.mountpoint, LOOPFS_RUNDIR: cfg.runDir, PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}` };
  const child = spawn(cmd[0]!, cmd.slice(1), { stdio: 'inherit', env });
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
  for (const s of signals) process.on(s, () => child.kill(s));
  return new Promise((resolve) => {
    child.on('error', (e) => {
      const code = (e as NodeJS.ErrnoException).code;
      process.stderr.write(`loopfs run: ${cmd[0]}: ${code === 'ENOENT' ? 'command not found' : e.message} (${code ?? 'EIO'})\n`);
      resolve(code === 'ENOENT' ? 127 : 126);
    });
    child.on('exit', (code, signal) => resolve(code ?? 128 + (signal ? osConstants.signals[signal] : 0)));
  });
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, "'\\''")}'`;
}
