/** The instance daemon: filled in by the daemon layer. */
export async function runDaemon(argv: string[]): Promise<number> {
  process.stderr.write(`loopfs daemon: not built yet (${argv.length} args)\n`);
  return 1;
}
