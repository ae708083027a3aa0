import * as assert from 'uvu/assert';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Why traceDuring cannot run here (for requiring()), or undefined. */
export const straceMissing: string | undefined = spawnSync('strace', ['-V']).error ? 'strace is missing' : undefined;

/**
 * What strace saw process `pid` (all its threads, and those it starts) call
 * of `calls` (strace's trace= list) while `work` ran: the trace's text, one
 * call a line. The log goes into `dir`. work starts once every thread of the
 * process has the tracer.
 */
export async function traceDuring(dir: string, pid: number, calls: string, work: () => void): Promise<string> {
  const log = path.join(dir, `strace.${pid}.${Date.now()}`);
  const tracer = spawn('strace', ['-f', '-qq', '-e', `trace=${calls}`, '-e', 'signal=none', '-o', log, '-p', String(pid)], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => tracer.on('exit', () => resolve()));
  try {
    const deadline = Date.now() + 10_000;
    const traced = (): boolean => fs.readdirSync(`/proc/${pid}/task`).every((t) => /^TracerPid:\s+[1-9]/m.test(fs.readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8')));
    while (!traced()) {
      if (Date.now() > deadline) assert.unreachable('strace attached within 10 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    work();
  } finally {
    tracer.kill('SIGTERM');
    await exited;
  }
  return fs.readFileSync(log, 'utf8');
}
