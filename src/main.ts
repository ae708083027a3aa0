import { cac } from 'cac';
import { LoopfsError } from './core/errors';
import { registerCommands } from './commands/index';
import { VERSION } from './version';

/**
 * The entry point: builds the CLI from commands/ and turns every error into
 * one line on stderr and an exit status. The daemon is this same binary run
 * with the hidden first argument `__daemon`.
 */
async function main(argv: string[]): Promise<number> {
  if (argv[0] === '__daemon') {
    const { runDaemon } = await import('./daemon/main');
    return runDaemon(argv.slice(1));
  }
  const cli = cac('loopfs');
  registerCommands(cli);
  cli.help();
  cli.version(VERSION);
  const parsed = cli.parse(['node', 'loopfs', ...argv], { run: false });
  if (!cli.matchedCommand) {
    if (parsed.options.help || parsed.options.version) return 0;
    if (cli.args.length > 0) {
      process.stderr.write(`loopfs: ${cli.args[0]}: unknown command (EINVAL)\nTry 'loopfs --help'.\n`);
      return 2;
    }
    cli.outputHelp();
    return 2;
  }
  if (parsed.options.help) return 0;
  const result = await cli.runMatchedCommand();
  return typeof result === 'number' ? result : 0;
}

export function reportError(cmd: string, err: unknown): number {
  if (process.env.LOOPFS_DEBUG === '1' && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  if (err instanceof LoopfsError) {
    process.stderr.write(`loopfs ${cmd}: ${err.what}: ${err.reason} (${err.errno})\n`);
    return err.usage ? 2 : 1;
  }
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string' && /^E[A-Z0-9]+$/.test(e.code)) {
    process.stderr.write(`loopfs ${cmd}: ${e.path ?? e.syscall ?? 'error'}: ${e.message.replace(/^[A-Z0-9]+: /, '').replace(/,.*$/, '')} (${e.code})\n`);
    return 1;
  }
  // cac's own parse errors ("Unknown option `--x`", "missing required args")
  if (err instanceof Error && err.name === 'CACError') {
    process.stderr.write(`loopfs ${cmd}: ${err.message} (EINVAL)\n`);
    return 2;
  }
  process.stderr.write(`loopfs ${cmd}: ${err instanceof Error ? err.message : String(err)} (EIO)\n`);
  return 1;
}

const argv = process.argv.slice(2);
main(argv).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    const cmd = argv.find((a) => !a.startsWith('-')) ?? '';
    process.exitCode = reportError(cmd === '__daemon' ? 'daemon' : cmd, err);
  },
);
