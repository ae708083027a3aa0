import type { CAC } from 'cac';
import * as fs from 'node:fs';
import type { FileStat, LosetupDeps } from './run';
import { losetupCommandArgv } from './command-argv';
import type { InstanceSelector } from '../../core/api';
import type { Selection } from '../../core/rundir';

/**
 * `loopfs losetup`: util-linux 2.38 losetup, device paths inside the
 * instance. Registered with cac for `loopfs --help`; main.ts hands the
 * command line straight to losetupMain: the options are parsed from the raw
 * argv the way losetup's getopt_long does (clusters like -rf, -o1024,
 * abbreviations like --sizel), which cac's parser cannot do, and --help is
 * util-linux's usage text.
 */
export function register(cli: CAC): void {
  cli
    .command('losetup [...args]', 'Set up and control loop devices (util-linux losetup)')
    .usage('losetup [options] [<loopdev>]\n  $ loopfs losetup [options] -f | <loopdev> <file>')
    .allowUnknownOptions()
    .example('loopfs losetup -f --show -P disk.img')
    .example('loopfs losetup -o 1048576 --sizelimit 67108864 -r -f --show disk.img')
    .example('loopfs losetup -f --show --overlay=job.delta golden.img')
    .option('-a, --all', 'List all used devices')
    .option('-d, --detach [loopdev]', 'Detach one or more devices')
    .option('-D, --detach-all', 'Detach all used devices')
    .option('-f, --find', 'Find first unused device')
    .option('-c, --set-capacity [loopdev]', 'Resize the device')
    .option('-j, --associated [file]', 'List all devices associated with <file>')
    .option('-L, --nooverlap', 'Avoid possible conflict between devices')
    .option('-o, --offset [num]', 'Start at offset <num> into file')
    .option('--sizelimit [num]', 'Device is limited to <num> bytes of the file')
    .option('-b, --sector-size [num]', 'Set the logical sector size to <num>')
    .option('-P, --partscan', 'Create a partitioned loop device')
    .option('-r, --read-only', 'Set up a read-only loop device')
    .option('--direct-io [on|off]', 'Open backing file with O_DIRECT')
    .option('--overlay [file]', 'Copy-on-write: the file is only read, writes go to the overlay <file> (default: a temporary one)')
    .option('--show', 'Print device name after setup (with -f)')
    .option('-v, --verbose', 'Verbose mode')
    .option('-J, --json', 'Use JSON --list output format')
    .option('-l, --list', 'List info about all or specified (default)')
    .option('-n, --noheadings', "Don't print headings for --list output")
    .option('-O, --output [cols]', 'Specify columns to output for --list')
    .option('--output-all', 'Output all columns')
    .option('--raw', 'Use raw --list output format')
    .option('-V', 'Display version')
    .action(() => losetupMain(losetupArgv(cli.rawArgs)));
}

/**
 * losetup's own argv out of loopfs's (process.argv, node and script first):
 * what follows the subcommand, plus the global options (--instance,
 * --run-dir) that may precede it, which the losetup parser understands and
 * does not count as arguments.
 */
export function losetupArgv(rawArgs: readonly string[]): string[] {
  return losetupCommandArgv(rawArgs.slice(2)) ?? [];
}


/**
 * `loopfs losetup ARGS`, which main.ts calls before cac parses anything
 * (cac would answer -h, --help and -v itself): util-linux's options, words
 * and exit status (0, or 1 for any failure), errors printed as util-linux
 * prints them (losetupErrorText), not as SPEC §4's `(ERRNO)` lines.
 */
export async function losetupMain(argv: string[]): Promise<number> {
  try {
    // Loaded as the command runs: registering it (every other command's start) needs none of it.
    const { runLosetup } = await import('./run');
    return await runLosetup(argv, processDeps(await import('../../core/instance'), await import('../../core/rundir')));
  } catch (e) {
    if (process.env.LOOPFS_DEBUG === '1' && e instanceof Error) process.stderr.write(`${e.stack}\n`);
    process.stderr.write((await import('./args')).losetupErrorText(e));
    return 1;
  }
}

/**
 * The process's LosetupDeps. The run directory of the call's selector is
 * resolved once, on first use (a usage error or --help never makes it), and
 * that Selection is what core's functions are given.
 */
function processDeps(core: typeof import('../../core/instance'), rundir: typeof import('../../core/rundir')): LosetupDeps {
  let resolved: Selection | undefined;
  const selected = (sel: InstanceSelector): Selection => (resolved ??= rundir.resolveSelector(sel));
  return {
    openInstance: async (sel) => core.openInstance(selected(sel)),
    resolveDevice: async (arg, sel) => core.resolveDevice(arg, selected(sel)),
    stdout: (s) => void process.stdout.write(s),
    stderr: (s) => void process.stderr.write(s),
    // Synchronous: the command waits for the answer all the same, and the libuv pool's threads start at its first use.
    stat: async (p): Promise<FileStat | undefined> => {
      try {
        const st = fs.statSync(p);
        return { dev: st.dev, ino: st.ino, size: st.size, isBlockDevice: st.isBlockDevice() };
      } catch {
        return undefined;
      }
    },
    realpath: async (p) => {
      try {
        return fs.realpathSync.native(p);
      } catch {
        return undefined;
      }
    },
    env: process.env,
    isTTY: process.stdout.isTTY === true,
    columns: process.stdout.columns,
  };
}
