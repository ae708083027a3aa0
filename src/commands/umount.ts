import type { CAC } from 'cac';
import { LoopfsError } from '../base/errors';
import { selection, type GlobalFlags } from './common';

export function register(cli: CAC): void {
  cli
    .command('umount <dir>', 'Tear down the instance mounted at DIR (or named by its id): detach its devices, unmount, stop its daemon')
    .option('-l, --lazy', 'Detach now even while devices are open; finish when the last opener closes')
    .example('loopfs umount /mnt/loops')
    .example('loopfs umount -l /mnt/loops')
    .action(async (dir: string, flags: GlobalFlags & { lazy?: boolean }) => {
      const { findInstance } = await import('../core/registry');
      const { stopInstance } = await import('../core/instance');
      const rec = findInstance((await selection(flags)()).runDir, dir);
      if (!rec) throw new LoopfsError('EINVAL', dir, 'not a loopfs instance');
      const done = await stopInstance(rec, !!flags.lazy);
      if (done.how === 'aborted') process.stderr.write(`loopfs umount: ${rec.state?.mountpoint ?? dir}: ${done.why}; its FUSE connection was aborted and the daemon killed\n`);
      return 0;
    });
}
