import { spawnSync, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO } from './cli';
import { kernelLoopsUnder } from './disk';

/**
 * What the ioctl e2e suites share: C programs compiled at test time, the
 * kernel side of side-by-side runs (kernel loop devices, found and released
 * through sysfs), and the line protocol of test/helpers/ltp-loop.c.
 */

/** Compiles test/helpers/NAME.c with gcc into DIR; returns the program's path. */
export function compileC(name: string, dir: string): string {
  const out = path.join(dir, name);
  execFileSync('gcc', ['-O1', '-Wall', '-o', out, path.join(REPO, 'test', 'helpers', `${name}.c`)], { encoding: 'utf8' });
  return out;
}

/** The kernel's loop devices that exist now (loopN names). */
export function kernelLoopNames(): Set<string> {
  return new Set(fs.readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n)));
}

/**
 * LOOP_CTL_GET_FREE adds a kernel device when none is free. A device a test
 * made that way (absent from `before`) is removed again with LOOP_CTL_REMOVE
 * when unbound; the kernel refuses (EBUSY) if anyone has it open or bound.
 */
export function removeKernelLoopIfNew(n: number, before: Set<string>): void {
  if (before.has(`loop${n}`) || !fs.existsSync(`/sys/block/loop${n}`)) return;
  if (fs.existsSync(`/sys/block/loop${n}/loop/backing_file`)) return;
  spawnSync('python3', ['-c', `import fcntl, os\nfd = os.open('/dev/loop-control', os.O_RDWR)\ntry:\n    fcntl.ioctl(fd, 0x4C81, ${n})\nexcept OSError:\n    pass`], { timeout: 30_000 });
}

/** Detaches every kernel loop device backed by a file under `prefix` (finally blocks). */
export function releaseKernelLoops(prefix: string): void {
  for (const d of kernelLoopsUnder(prefix)) spawnSync('losetup', ['-d', d], { timeout: 30_000 });
}

/**
 * Whether this kernel reads MBR partition tables on loop devices: a kernel
 * built without CONFIG_MSDOS_PARTITION (as some VM kernels are) never shows
 * loopNpM, so partition assertions cannot be checked against it. Tried, not
 * guessed: an MBR on a 2 MiB file, `losetup -P`, and a look for loopNp1.
 */
export function kernelReadsMbr(dir: string): boolean {
  const img = path.join(dir, 'mbr-probe.img');
  fs.writeFileSync(img, Buffer.alloc(2 << 20));
  execFileSync('sfdisk', ['-q', img], { input: 'label: dos\n,1MiB\n', encoding: 'utf8' });
  const dev = execFileSync('losetup', ['-P', '-f', '--show', img], { encoding: 'utf8' }).trim();
  try {
    const name = path.basename(dev);
    for (let i = 0; i < 100; i++) {
      if (fs.existsSync(`/sys/block/${name}/${name}p1`)) return true;
      spawnSync('sleep', ['0.02']);
    }
    return false;
  } finally {
    spawnSync('losetup', ['-d', dev], { timeout: 30_000 });
    fs.rmSync(img, { force: true });
  }
}

/** One run of ltp-loop: its lines sorted by kind. */
export interface LtpRun {
  status: number;
  pass: string[];
  fail: string[];
  excl: string[];
  values: Record<string, string>;
  brok: string[];
  text: string;
}

export function parseLtp(status: number, text: string): LtpRun {
  const r: LtpRun = { status, pass: [], fail: [], excl: [], values: {}, brok: [], text };
  for (const line of text.split('\n')) {
    const m = /^(PASS|FAIL|EXCL|VALUE|BROK|INFO) (.*)$/.exec(line);
    if (!m) continue;
    const [, kind, rest] = m as unknown as [string, string, string];
    if (kind === 'PASS') r.pass.push(rest);
    else if (kind === 'FAIL') r.fail.push(rest);
    else if (kind === 'EXCL') r.excl.push(rest.slice(0, rest.lastIndexOf(': ')));
    else if (kind === 'BROK') r.brok.push(rest);
    else if (kind === 'VALUE') {
      const [k, ...v] = rest.split(' ');
      r.values[k!] = v.join(' ');
    }
  }
  return r;
}

/** Runs ltp-loop CASE against CONTROL and DEVDIR in a fresh directory WORK. */
export function runLtp(prog: string, kase: string, control: string, devDir: string, mode: string, work: string): LtpRun {
  fs.mkdirSync(work, { recursive: true });
  const r = spawnSync(prog, [kase, control, devDir, mode], { cwd: work, encoding: 'utf8', timeout: 180_000, killSignal: 'SIGKILL' });
  return parseLtp(r.status ?? 128, (r.stdout ?? '') + (r.stderr ?? '') + (r.error ? `\n${r.error.message}` : ''));
}
