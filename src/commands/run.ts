import type { CAC } from 'cac';
import { usageError } from '../base/errors';
import { parseCount, selector, str, type GlobalFlags } from './common';
import { MAX_LIMIT } from './mount';

export function register(cli: CAC): void {
  cli
    .command('run [...cmd]', 'Run CMD with a fresh private instance ($LOOPFS) in its own mount and PID namespaces; everything is gone when CMD ends, however it ends')
    .option('-o, --options <opts>', 'Instance options: max=N (device limit of the sandbox instance)')
    .option('--dir <dir>', 'Mount the instance at DIR (inside the sandbox) instead of RUNDIR/default')
    .example("loopfs run -- sh -c 'd=$(loopfs losetup -f --show disk.img); mkfs.ext4 -q $d'")
    .example('loopfs run -o max=4 -- make image')
    .action(async (cmd: string[], flags: GlobalFlags & { options?: unknown; dir?: unknown; '--'?: string[] }) => {
      const command = [...cmd, ...(flags['--'] ?? [])];
      if (command.length === 0) throw usageError('EINVAL', 'run', 'no command given (loopfs run [-o max=N] [--dir D] -- CMD…)');
      let max: number | undefined;
      for (const part of (str(flags.options) ?? '').split(',').filter(Boolean)) {
        const [k, v] = part.split('=', 2);
        if (k !== 'max' || v === undefined) throw usageError('EINVAL', part, 'unknown run option (known: max=N)');
        max = parseCount(v, 'max', 1, MAX_LIMIT);
      }
      const { runSandbox } = await import('../core/sandbox');
      const dir = str(flags.dir);
      return runSandbox({ ...selector(flags), cmd: command, ...(dir ? { dir } : {}), ...(max ? { max } : {}) });
    });
}

const TAKES_VALUE = new Set(['-o', '--options', '--dir', '--instance', '--run-dir']);

/**
 * `loopfs run CMD -x …` without `--`: CMD's own options must not be read as
 * ours, so a `--` goes in before the first word that is not one of run's
 * options. argv is the whole command line after `loopfs`.
 */
export function runArgv(argv: string[]): string[] {
  const at = argv.indexOf('run');
  if (at < 0 || argv.includes('--')) return argv;
  for (let i = at + 1; i < argv.length; i++) {
    const a = argv[i]!;
    if (TAKES_VALUE.has(a)) {
      i++;
      continue;
    }
    if (a.startsWith('-')) continue;
    return [...argv.slice(0, i), '--', ...argv.slice(i)];
  }
  return argv;
}
