import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Result, Sandbox } from './cli';

/**
 * What the disk, engine and losetup e2e suites share: running real tools,
 * checksums of file regions, and cleaning up kernel loop devices and mounts
 * a test made. Kernel loop devices are found through sysfs, never with
 * `losetup -a`/`-j`: those ask every device for its status, which blocks on
 * any device whose backing file sits on a hung FUSE mount (anyone's).
 */

/** Runs a shell command line; never throws. */
export function sh(cmd: string, opts: { input?: string | Buffer; env?: Record<string, string>; timeout?: number } = {}): Result {
  const r = spawnSync('bash', ['-c', cmd], {
    encoding: 'utf8',
    input: opts.input ?? '',
    env: { ...process.env, ...opts.env },
    timeout: opts.timeout ?? 60_000,
    killSignal: 'SIGKILL',
  });
  return { status: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** Runs a shell command line and insists on exit 0; returns stdout. */
export function shOk(cmd: string, opts: { input?: string | Buffer; env?: Record<string, string>; timeout?: number } = {}): string {
  const r = sh(cmd, opts);
  if (r.status !== 0) throw new Error(`${cmd} exited ${r.status}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** A single-quoted shell word. */
export function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** An empty (sparse) file of `size` bytes. */
export function sparseImage(file: string, size: number): string {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

/** A file of `size` random bytes. */
export function randomFile(file: string, size: number): string {
  const fd = fs.openSync(file, 'w');
  try {
    for (let done = 0; done < size; ) {
      const n = Math.min(1 << 20, size - done);
      fs.writeSync(fd, randomBytes(n));
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

/** sha256 of `length` bytes of `file` from `offset` (to the end when length is undefined). */
export function sha(file: string, offset = 0, length?: number): string {
  const fd = fs.openSync(file, 'r');
  const h = createHash('sha256');
  try {
    const end = length === undefined ? fs.fstatSync(fd).size : offset + length;
    const buf = Buffer.alloc(1 << 20);
    for (let pos = offset; pos < end; ) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, end - pos), pos);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** `length` bytes of `file` at `offset`. */
export function readRange(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, buf, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  } finally {
    fs.closeSync(fd);
  }
}

/** Entries of an instance directory, sorted. */
export function entries(dir: string): string[] {
  return fs.readdirSync(dir).sort();
}

/** Kernel loop devices (as /dev/loopN) whose backing file lies under `prefix`, read from sysfs. */
export function kernelLoopsUnder(prefix: string): string[] {
  const out: string[] = [];
  for (const name of fs.readdirSync('/sys/block')) {
    if (!/^loop\d+$/.test(name)) continue;
    let back: string;
    try {
      back = fs.readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim();
    } catch {
      continue; // unbound
    }
    if (back === prefix || back.startsWith(`${prefix}/`)) out.push(`/dev/${name}`);
  }
  return out;
}

/** A kernel loop device on `file` set up with util-linux `losetup ARGS -f --show FILE`. */
export function kernelAttach(file: string, args: string[] = []): string {
  return shOk(`losetup ${args.map(q).join(' ')} -f --show ${q(file)}`).trim();
}

/**
 * What an after hook runs before Sandbox.cleanup(): unmounts what is mounted
 * under the sandbox (innermost first) and detaches the kernel loop devices
 * backed by its files, so a failing test leaves nothing behind.
 */
export function releaseKernelState(sb: Sandbox): void {
  const mounts = (): string[] =>
    fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((m) => m.startsWith(`${sb.root}/`) && !m.startsWith(`${sb.runDir}/`))
      .reverse();
  for (const m of mounts()) spawnSync('umount', [m], { timeout: 30_000 });
  for (const m of mounts()) spawnSync('umount', ['-l', m], { timeout: 30_000 });
  for (const d of kernelLoopsUnder(sb.root)) spawnSync('losetup', ['-d', d], { timeout: 30_000 });
}

/** The device path that `loopfs losetup -f --show ARGS FILE` printed. */
export function attach(sb: Sandbox, file: string, args: string[] = []): string {
  const r = sb.run(['losetup', ...args, '-f', '--show', file]);
  assert.is(r.status, 0, `loopfs losetup ${args.join(' ')} -f --show ${file}: ${r.stderr}`);
  const dev = r.stdout.trim();
  assert.ok(dev.startsWith(`${sb.runDir}/default/loop`), `device path ${dev}`);
  return dev;
}

/** Python 3 code run with argv; returns stdout (throws on a non-zero exit). */
export function py(code: string, ...args: string[]): Result {
  const r = spawnSync('python3', ['-c', code, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** The default instance's directory of a sandbox. */
export function instDir(sb: Sandbox): string {
  return path.join(sb.runDir, 'default');
}

/** The threads of process `pid` now (/proc/PID/status). */
export function threadsOf(pid: number): number {
  return Number(/^Threads:\s+(\d+)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

/**
 * A sustained load on `dev` (rounds of 1024 O_DIRECT reads of 4 KiB, at most
 * `rounds`) until the daemon `pid` runs `target` threads: an instance's I/O
 * threads start only under load (fuse/types.ts FIRST_THREAD_AFTER,
 * GROW_AFTER), and while a thread boots the main thread serves on.
 */
export function sustainUntilThreads(pid: number, dev: string, target: number, rounds = 40): void {
  for (let r = 0; r < rounds && threadsOf(pid) < target; r++) shOk(`dd if=${q(dev)} of=/dev/null bs=4k count=1024 iflag=direct status=none`);
}
