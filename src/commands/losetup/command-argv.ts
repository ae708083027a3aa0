// Apart from the rest of losetup: main.ts asks it of every command line, and
// loading the losetup command (its parser, its tables) costs the others' start.

/** losetupArgv of loopfs's arguments (without node and script); undefined when the command is not `losetup`. */
export function losetupCommandArgv(argv: readonly string[]): string[] | undefined {
  let i = 0;
  while (i < argv.length) {
    const a = argv[i];
    if (a === '--instance' || a === '--run-dir') i += 2;
    else if (a.startsWith('--instance=') || a.startsWith('--run-dir=')) i++;
    else break;
  }
  return argv[i] === 'losetup' ? [...argv.slice(0, i), ...argv.slice(i + 1)] : undefined;
}
