import type { CAC } from 'cac';
import { register as mount } from './mount';
import { register as umount } from './umount';
import { register as ctl } from './ctl';
import { register as rm } from './rm';
import { register as list } from './list';
import { register as gc } from './gc';
import { register as losetup } from './losetup';
import { register as sysctl } from './sysctl';
import { register as run } from './run';
import { register as overlay } from './overlay';

/** Every subcommand registers itself here; each module declares its own options. */
export function registerCommands(cli: CAC): void {
  cli.option('--instance <dir|id>', 'The instance to use (default: $LOOPFS, else the default instance)');
  cli.option('--run-dir <dir>', 'Run directory (default: $LOOPFS_RUNDIR, /run/loopfs for root, $XDG_RUNTIME_DIR/loopfs)');
  for (const r of [mount, umount, losetup, overlay, ctl, rm, run, list, sysctl, gc]) r(cli);
}
