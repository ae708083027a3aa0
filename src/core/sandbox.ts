import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Writable } from 'node:stream';
import { constants as osConstants } from 'node:os';
import { spawn, type ChildProcess } from 'node:child_process';
import { LoopfsError } from '../base/errors';
import { ensureRunDir, defaultMountpoint } from './rundir';
import { levelsFor, openLimitsFile, PARENTS_FILE, type LevelRef } from './limits';
import { selfCommand, startInstance, openInstance, ownProcessEnv, DEFAULT_ID, STARTUP_ONLY_ENV } from './instance';
import type { AttachRequest } from './api';
import { mount, setCloexec, MS_SHARED } from '../sys/libc';

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
 *
 * Signals sent to `loopfs run` travel to the init as lines on a socket it
 * inherits (unshare ignores SIGINT/SIGTERM, and the init's pid is not ours
 * to find reliably): what arrives before the init reads, or before CMD is
 * started, waits in the socket or in the init's queue and is delivered to
 * CMD once it runs. None is lost or sent to the wrong process.
 */

export interface RunOptions {
  runDir?: string;
  dir?: string;
  max?: number;
  /** `--attach`: devices attached (as by `losetup -f`) before CMD starts, in this order. */
  attach?: AttachRequest[];
  cmd: string[];
}

interface InitConfig {
  runDir: string;
  dir: string | null;
  max: number | null;
  attach: AttachRequest[];
  /** Limits levels of the outside, inherited as fds 3, 4, … in this order. */
  levels: { uid: number; label: string }[];
  /** The inherited socket on which signals for CMD arrive, one name a line. */
  signalFd: number;
  /** Variables kept from the init (ownProcessEnv) that CMD gets back as they were. */
  env: Record<string, string>;
}

/** The signals `run` passes on to CMD. */
const FORWARDED: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];

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
    attach: opts.attach ?? [],
    levels: levels.map((l) => ({ uid: l.uid, label: l.label })),
    signalFd: FIRST_FD + fds.length,
    env: Object.fromEntries(STARTUP_ONLY_ENV.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]!])),
  };
  const unshare = ['unshare', '--fork', '--kill-child=SIGKILL', '--pid', '--mount-proc', '--propagation', 'private', ...(uid === 0 ? [] : ['--user', '--map-root-user'])];
  // Listening before the sandbox exists: from then on a signal is ours to pass on, never
  // the default's to end `loopfs run` with (a listener runs only after this synchronous part).
  let channel: Writable | undefined;
  const forward = (sig: NodeJS.Signals): void => {
    channel?.write(`${sig}\n`);
  };
  for (const s of FORWARDED) process.on(s, forward);
  const stopForwarding = (): void => {
    for (const s of FORWARDED) process.off(s, forward);
    channel?.destroy();
  };
  let child: ChildProcess;
  try {
    child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', ...unshare, '--', ...selfCommand(), '__run-init', JSON.stringify(cfg), '--', ...opts.cmd], {
      stdio: ['inherit', 'inherit', 'inherit', ...fds, 'pipe'],
      env: ownProcessEnv(process.env),
    });
  } catch (e) {
    stopForwarding();
    throw e;
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
  channel = child.stdio[cfg.signalFd] as Writable;
  channel.on('error', () => { /* the init is gone: so is CMD */ });
  return new Promise((resolve, reject) => {
    child.on('error', (e) => {
      stopForwarding();
      reject(new LoopfsError('ENOENT', 'setpriv', `cannot start the sandbox: ${e.message}`));
    });
    child.on('exit', (code, signal) => {
      stopForwarding();
      resolve(code ?? 128 + (signal ? osConstants.signals[signal] : 0));
    });
  });
}

/** PID 1 of the sandbox: `loopfs __run-init CONFIG -- CMD…`. Returns CMD's status. */
export async function runSandboxInit(argv: string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const cfg = JSON.parse(argv[0]!) as InitConfig;
  const cmd = argv.slice(dash + 1);
  // Signals for CMD, from `loopfs run` (the socket) or sent to this init directly:
  // queued until CMD runs, then passed on in the order they came.
  let child: ChildProcess | undefined;
  const queued: NodeJS.Signals[] = [];
  const deliver = (sig: NodeJS.Signals): void => {
    if (child) child.kill(sig);
    else queued.push(sig);
  };
  for (const s of FORWARDED) process.on(s, () => deliver(s));
  setCloexec(cfg.signalFd); // neither the daemon nor CMD may inherit it (nor read its signals)
  // The inherited limits fds: reopen them close-on-exec (CMD must not inherit them)
  // and name them through /proc/1/fd, which every process of the sandbox can open.
  const parents: LevelRef[] = cfg.levels.map((l, i) => {
    const fd = fs.openSync(`/proc/self/fd/${FIRST_FD + i}`, 'r+');
    fs.closeSync(FIRST_FD + i);
    return { path: `/proc/1/fd/${fd}`, uid: l.uid, label: l.label };
  });
  // mount(2) itself (no mount(8) to start): a tmpfs, then shared, so the FUSE mounts that
  // daemons make from their own namespaces show here (core/instance.ts).
  try {
    mount('loopfs-run', cfg.runDir, 'tmpfs', 0, 'mode=0700');
  } catch (e) {
    const errno = e instanceof LoopfsError ? e.errno : 'EPERM';
    throw new LoopfsError(errno, cfg.runDir, "cannot mount the sandbox's run directory");
  }
  try {
    mount(null, cfg.runDir, null, MS_SHARED, null);
  } catch {
    /* as before: a run directory that stays private only hides daemons' mounts made elsewhere */
  }
  fs.writeFileSync(path.join(cfg.runDir, PARENTS_FILE), `${JSON.stringify(parents)}\n`, { mode: 0o600 });
  const runDir = ensureRunDir(cfg.runDir);
  const mountpoint = cfg.dir ?? defaultMountpoint(runDir);
  const rec = await startInstance(runDir, mountpoint, cfg.max ? { max: cfg.max } : {}, cfg.dir ? undefined : DEFAULT_ID);
  // Read from now on: what `loopfs run` wrote before waits in the socket (the daemon's start came first).
  listenForSignals(cfg.signalFd, deliver);
  // `loopfs` on CMD's PATH is this very program, whatever PATH held before.
  const bin = path.join(cfg.runDir, 'bin');
  fs.mkdirSync(bin, { mode: 0o755 });
  fs.writeFileSync(path.join(bin, 'loopfs'), `#!/bin/sh\nexec ${selfCommand().map(shellQuote).join(' ')} "$@"\n`, { mode: 0o755 });
  const env: NodeJS.ProcessEnv = { ...process.env, ...cfg.env, LOOPFS: rec.state!.mountpoint, LOOPFS_RUNDIR: cfg.runDir, PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}` };
  // `--attach`: in this process, through the instance's own attach (what `losetup -f` asks of it);
  // a failure ends the init, and the sandbox with the devices attached so far.
  // (A nested run's CMD sees its own devices only, not its parent's.)
  for (const k of Object.keys(env)) if (/^LOOPFS_DEV(?:ICES|\d+)$/.test(k)) delete env[k];
  if (cfg.attach.length) {
    const client = await openInstance({ runDir, instance: rec.id });
    const paths: string[] = [];
    for (const req of cfg.attach) {
      let res;
      try {
        res = await client.attach(req);
      } catch (e) {
        if (!(e instanceof LoopfsError)) throw e;
        throw new LoopfsError(e.errno, `--attach ${req.file}`, e.what === path.resolve(req.file) ? e.reason : `${e.what}: ${e.reason}`);
      }
      for (const w of res.warnings) process.stderr.write(`loopfs run: ${req.file}: ${w}\n`);
      env[`LOOPFS_DEV${paths.length}`] = res.device.path;
      paths.push(res.device.path);
    }
    env.LOOPFS_DEVICES = paths.join(' ');
  }
  const cmdProcess = spawn(cmd[0]!, cmd.slice(1), { stdio: 'inherit', env });
  child = cmdProcess;
  for (const s of queued.splice(0)) cmdProcess.kill(s);
  return new Promise((resolve) => {
    cmdProcess.on('error', (e) => {
      const code = (e as NodeJS.ErrnoException).code;
      process.stderr.write(`loopfs run: ${cmd[0]}: ${code === 'ENOENT' ? 'command not found' : e.message} (${code ?? 'EIO'})\n`);
      resolve(code === 'ENOENT' ? 127 : 126);
    });
    cmdProcess.on('exit', (code, signal) => resolve(code ?? 128 + (signal ? osConstants.signals[signal] : 0)));
  });
}

/** Reads signal names, one a line, from the socket `loopfs run` writes them to. */
function listenForSignals(fd: number, deliver: (sig: NodeJS.Signals) => void): void {
  const sock = new net.Socket({ fd, readable: true, writable: false });
  let buf = '';
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const sig = buf.slice(0, nl) as NodeJS.Signals;
      buf = buf.slice(nl + 1);
      if (FORWARDED.includes(sig)) deliver(sig);
    }
  });
  sock.on('error', () => { /* `loopfs run` is gone: pdeathsig ends us too */ });
  sock.unref();
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, "'\\''")}'`;
}
