import { spawnSync, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { STRERROR } from '../../src/commands/losetup/strerror';

/**
 * Running the real CLI in tests. LOOPFS_BIN picks the program (the single
 * executable in its own test); default: node + dist/loopfs.cjs, which
 * `npm test` builds first.
 */

export const REPO = path.resolve(__dirname, '..', '..', '..');

export interface Result {
  status: number;
  stdout: string;
  stderr: string;
}

export function binary(): string[] {
  const bin = process.env.LOOPFS_BIN;
  return bin ? [bin] : [process.execPath, path.join(REPO, 'dist', 'loopfs.cjs')];
}

export class Sandbox {
  readonly root: string;
  readonly runDir: string;
  bin: string[] = binary();
  env: Record<string, string> = {};

  constructor(name: string) {
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), `loopfs-e2e-${name}-`));
    this.runDir = path.join(this.root, 'run');
  }

  /** A fresh empty directory under the sandbox. */
  dir(name: string): string {
    const d = path.join(this.root, name);
    fs.mkdirSync(d, { recursive: true });
    return d;
  }

  run(args: string[], opts: { env?: Record<string, string>; input?: string; cwd?: string } = {}): Result {
    const [cmd, ...pre] = this.bin;
    const r = spawnSync(cmd!, [...pre, ...args], {
      encoding: 'utf8',
      env: { ...process.env, LOOPFS_RUNDIR: this.runDir, ...this.env, ...opts.env },
      input: opts.input ?? '',
      cwd: opts.cwd ?? this.root,
      timeout: 60_000,
    });
    return { status: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  /** Runs and insists on exit 0; returns stdout trimmed. */
  ok(args: string[], opts: { env?: Record<string, string> } = {}): string {
    const r = this.run(args, opts);
    if (r.status !== 0) throw new Error(`loopfs ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
    return r.stdout.trim();
  }

  /** Every daemon that serves an instance of this sandbox's run directory. */
  daemons(): number[] {
    return pgrepDaemons(this.runDir);
  }

  /** Unmounts and stops everything this sandbox started, whatever state it is in, then removes it. */
  cleanup(): void {
    for (const m of mountsUnder(this.root)) spawnSync('umount', ['-l', m]);
    for (const pid of this.daemons()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const m of mountsUnder(this.root)) spawnSync('umount', ['-l', m]);
    // A daemon killed a moment ago may still be removing its own state.
    fs.rmSync(this.root, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  }
}

export function pgrepDaemons(runDir: string): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (cmd.includes('__daemon') && cmd.includes(runDir)) out.push(Number(p));
    } catch {
      /* exited */
    }
  }
  return out;
}

export function mountsUnder(prefix: string): string[] {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  return text.split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m === prefix || m.startsWith(`${prefix}/`)).reverse();
}

export function fuseMountsAt(dir: string): number {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === dir).length;
}

/** Waits until `cond` holds or `ms` pass; returns whether it held. */
export async function waitFor(cond: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return cond();
}

/** Runs python3 code; returns stdout. */
export function python(code: string): string {
  return execFileSync('python3', ['-c', code], { encoding: 'utf8' });
}

/**
 * The errno name an errored command's last line gives: "(EBUSY)" at its end
 * (SPEC §4), or — for `loopfs losetup`, which prints util-linux's lines —
 * the strerror text it ends with ("…: Device or resource busy" → EBUSY).
 */
export function errnoOf(r: Result): string | undefined {
  const last = r.stderr.trim().split('\n').pop() ?? '';
  const named = /\((E[A-Z0-9]+)\)\s*$/.exec(last)?.[1];
  if (named) return named;
  for (const [name, text] of Object.entries(STRERROR)) if (last.endsWith(`: ${text}`)) return name;
  return undefined;
}

export interface Footprint {
  mounts: string[];
  procs: string[];
  loops: string[];
  runDir: string[];
}

/**
 * What a sandbox's runs could leave behind, as the host sees it: mounts
 * under it, processes naming it, kernel loop devices stacked on its files
 * (or, once their mount namespace is gone, on a bare "/loopN" of a detached
 * FUSE mount), and the state in its run directory.
 */
export function sandboxFootprint(sb: Sandbox): Footprint {
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(sb.root));
  const procs: string[] = [];
  for (const p of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ');
      // (A sandbox's init names the run directory in its configuration; other runs on the host are not ours.)
      if (cmd.includes(sb.runDir) || cmd.includes(sb.root)) procs.push(`${p} ${cmd}`);
    } catch {
      /* gone */
    }
  }
  const loops = fs.readdirSync('/sys/block').filter((b) => {
    try {
      const back = fs.readFileSync(`/sys/block/${b}/loop/backing_file`, 'utf8').trim();
      return back.includes(sb.root) || /^\/loop\d+$/.test(back);
    } catch {
      return false;
    }
  });
  const inst = path.join(sb.runDir, 'instances');
  const runDir = fs.existsSync(sb.runDir) ? fs.readdirSync(sb.runDir).concat(fs.existsSync(inst) ? fs.readdirSync(inst).map((i) => `instances/${i}`) : []) : [];
  return { mounts, procs, loops, runDir: runDir.sort() };
}
