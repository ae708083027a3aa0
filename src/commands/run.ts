import type { CAC } from 'cac';
import type { AttachRequest } from '../core/api';
import { LoopfsError, usageError, type Errno } from '../base/errors';
import { parseCount, selector, str, type GlobalFlags } from './common';
import { MAX_DEVICES } from '../base/loopdev';

export function register(cli: CAC): void {
  cli
    .command('run [...cmd]', 'Run CMD with a fresh private instance ($LOOPFS) in its own mount and PID namespaces; everything is gone when CMD ends, however it ends')
    .option('-o, --options <opts>', 'Instance options: max=N (device limit of the sandbox instance)')
    .option('--dir <dir>', 'Mount the instance at DIR (inside the sandbox) instead of RUNDIR/default')
    .option('--attach <img[,opts]>', 'Attach IMG before CMD starts, as losetup -f would, with losetup options after commas (IMG,-P,-r,-o,N); repeatable; CMD finds $LOOPFS_DEV0, … and $LOOPFS_DEVICES')
    .example("loopfs run -- sh -c 'd=$(loopfs losetup -f --show disk.img); mkfs.ext4 -q $d'")
    .example("loopfs run --attach disk.img,-P -- sh -c 'sfdisk -l \"$LOOPFS_DEV0\"'")
    .example('loopfs run -o max=4 -- make image')
    .action(async (cmd: string[], flags: GlobalFlags & { options?: unknown; dir?: unknown; attach?: unknown; '--'?: string[] }) => {
      const command = [...cmd, ...(flags['--'] ?? [])];
      if (command.length === 0) throw usageError('EINVAL', 'run', 'no command given (loopfs run [-o max=N] [--dir D] -- CMD…)');
      let max: number | undefined;
      for (const part of (str(flags.options) ?? '').split(',').filter(Boolean)) {
        const [k, v] = part.split('=', 2);
        if (k !== 'max' || v === undefined) throw usageError('EINVAL', part, 'unknown run option (known: max=N)');
        max = parseCount(v, 'max', 1, MAX_DEVICES);
      }
      const specs = flags.attach === undefined ? [] : Array.isArray(flags.attach) ? (flags.attach as unknown[]) : [flags.attach];
      const attach = await Promise.all(specs.map((s) => parseAttach(typeof s === 'string' ? s : String(s))));
      const { runSandbox } = await import('../core/sandbox');
      const dir = str(flags.dir);
      return runSandbox({ ...selector(flags), cmd: command, ...(dir ? { dir } : {}), ...(max ? { max } : {}), ...(attach.length ? { attach } : {}) });
    });
}

/**
 * `--attach IMG[,OPT…]`: IMG is all up to the first comma followed by "-"
 * (so an image name may hold commas, though not ",-"); what follows is split
 * at every comma into losetup's own words (`-P`, `-r`, `-o,1048576`,
 * `--sizelimit=N`, `--overlay=DELTA`…), read by losetup's parser as
 * `losetup -f OPT… IMG` would read them. Only setup options are taken.
 */
export async function parseAttach(spec: string): Promise<AttachRequest> {
  const cut = spec.indexOf(',-');
  const file = cut < 0 ? spec : spec.slice(0, cut);
  const words = cut < 0 ? [] : spec.slice(cut + 1).split(',');
  const bad = (why: string, errno: Errno = 'EINVAL'): LoopfsError => usageError(errno, `--attach ${spec}`, why);
  if (file === '') throw bad('no image given (--attach IMG[,losetup options])');
  const { parseLosetupArgs } = await import('./losetup/args');
  const { attachRequest } = await import('./losetup/run');
  let a;
  try {
    a = parseLosetupArgs(['-f', ...words, file]);
  } catch (e) {
    if (e instanceof LoopfsError) throw bad(e.reason ? `${e.what}: ${e.reason}` : e.what, e.errno);
    throw e;
  }
  const setupOnly = a.action.kind === 'create' && a.action.device === undefined && a.action.file === file;
  if (!setupOnly || a.deferred || a.list || a.format !== 'human' || a.noHeadings || a.selector.instance !== undefined || a.selector.runDir !== undefined) {
    throw bad(`not a setup option of losetup -f: ${words.join(' ')} (known: -o, --sizelimit, -b, -P, -r, --direct-io, -L, --overlay)`);
  }
  return attachRequest(a, file);
}

const TAKES_VALUE = new Set(['-o', '--options', '--dir', '--attach', '--instance', '--run-dir']);

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
