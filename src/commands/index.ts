import type { CAC } from 'cac';

/** Every subcommand registers itself here; each module declares its own options. */
export function registerCommands(cli: CAC): void {
  void cli;
}
