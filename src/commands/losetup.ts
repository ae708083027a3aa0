import type { CAC } from 'cac';
import { runLosetup, type FileStat, type LosetupDeps } from './losetup-run';

export { runLosetup, type LosetupDeps } from './losetup-run';

/**
 * `loopfs losetup`: util-linux 2.38 losetup, device paths inside the
 * instance. cac only routes here and prints --help: the options are parsed
 * from the raw argv the way losetup's getopt_long does (clusters like -rf,
 * -o1024, abbreviations like --sizel), which cac's parser cannot do.
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
    .action(async () => {
      const { openInstance, resolveDevice } = await import('../core/instance');
      return runLosetup(losetupArgv(cli.rawArgs), processDeps(openInstance, resolveDevice));
    });
}

/**
 * losetup's own argv out of loopfs's: what follows the subcommand, plus the
 * global options (--instance, --run-dir) that may precede it, which the
 * losetup parser understands and does not count as arguments.
 */
export function losetupArgv(rawArgs: readonly string[]): string[] {
  const at = rawArgs.indexOf('losetup', 2);
  return [...rawArgs.slice(2, at), ...rawArgs.slice(at + 1)];
}

function processDeps(
  openInstance: LosetupDeps['openInstance'],
  resolveDevice: LosetupDeps['resolveDevice'],
): LosetupDeps {
  return {
    openInstance,
    resolveDevice,
    stdout: (s) => void process.stdout.write(s),
    stderr: (s) => void process.stderr.write(s),
    stat: async (p): Promise<FileStat | undefined> => {
      const { stat } = await import('node:fs/promises');
      try {
        const st = await stat(p);
        return { dev: st.dev, ino: st.ino, size: st.size, isBlockDevice: st.isBlockDevice() };
      } catch {
        return undefined;
      }
    },
    realpath: async (p) => {
      const { realpath } = await import('node:fs/promises');
      return realpath(p).catch(() => undefined);
    },
    env: process.env,
    isTTY: process.stdout.isTTY === true,
    columns: process.stdout.columns,
  };
}
