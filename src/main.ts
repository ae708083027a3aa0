import { usageError } from './base/errors';
import { VERSION } from './version';
import { losetupCommandArgv } from './commands/losetup/command-argv';

/**
 * The entry point: builds the CLI from commands/ and turns every error into
 * one line on stderr and an exit status. The daemon is this same binary run
 * with the hidden first argument `__daemon`. Every module is loaded by the
 * path that needs it: a daemon or a sandbox init starts without the CLI's
 * (cac, the commands, colours), the CLI without the daemon's.
 */
/** commands/report.ts's reportError, loaded when an error is to be told. */
async function report(cmd: string, e: unknown): Promise<number> {
  return (await import('./commands/report')).reportError(cmd, e);
}

async function main(argv: string[]): Promise<number> {
  if (argv[0] === '__daemon') {
    // A daemon lives long and mostly idle: V8 doubles the young generation under a burst of
    // requests (up to 32 MB) and never gives it back. It stays at its first size (2 MB) here;
    // set at run time, as a flag on the command line would not match the binary's code cache.
    (require('node:v8') as typeof import('node:v8')).setFlagsFromString('--semi-space-growth-factor=1');
    const { runDaemon } = await import('./daemon/main');
    // The daemon leaves as soon as its instance is gone, whatever is still queued.
    try {
      process.exit(await runDaemon(argv.slice(1)));
    } catch (e) {
      process.exit(await report('daemon', e));
    }
  }
  if (argv[0] === '__run-init') {
    const { runSandboxInit } = await import('./core/sandbox');
    // PID 1 of the sandbox: its exit ends the namespace and everything in it.
    try {
      process.exit(await runSandboxInit(argv.slice(1)));
    } catch (e) {
      process.exit(await report('run', e));
    }
  }
  // `loopfs losetup` is util-linux's losetup, --help and error lines included: cac never sees it.
  const lo = losetupCommandArgv(argv);
  const [losetup, { installSpinner }] = await Promise.all([lo ? import('./commands/losetup') : undefined, import('./commands/ui')]);
  installSpinner();
  if (lo) return losetup!.losetupMain(lo);
  const [{ cac }, { reportError }, { registerCommands }, { runArgv }] = await Promise.all([
    import('cac'), import('./commands/report'), import('./commands/index'), import('./commands/run'),
  ]);
  const cli = cac('loopfs');
  registerCommands(cli);
  cli.help();
  cli.version(VERSION);
  let name = '';
  try {
    const parsed = cli.parse(['node', 'loopfs', ...runArgv(argv)], { run: false });
    if (!cli.matchedCommand) {
      if (parsed.options.help || parsed.options.version) return 0;
      if (cli.args.length > 0) {
        const status = reportError('', usageError('EINVAL', cli.args[0]!, 'unknown command'));
        process.stderr.write("Try 'loopfs --help'.\n");
        return status;
      }
      cli.outputHelp();
      return 2;
    }
    name = cli.matchedCommand.name;
    if (parsed.options.help) return 0;
    const result: unknown = await cli.runMatchedCommand();
    return typeof result === 'number' ? result : 0;
  } catch (e) {
    return reportError(name, e);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  async (err) => {
    process.exitCode = await report('', err);
  },
);
