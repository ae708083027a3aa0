import type { CAC } from 'cac';
import { LoopfsError, usageError } from '../base/errors';
import { selection, type GlobalFlags } from './common';
import { reportError } from './report';

export function register(cli: CAC): void {
  cli
    .command('rm [...devices]', 'Remove device entries (unbound and not open), like rm DIR/loopN')
    .example('loopfs rm /run/loopfs/default/loop3')
    .example('loopfs rm loop4 loop5')
    .action(async (devices: string[], flags: GlobalFlags) => {
      if (devices.length === 0) throw usageError('EINVAL', 'rm', 'no device given');
      const { resolveDevice } = await import('../core/instance');
      const selected = selection(flags);
      let status = 0;
      for (const d of devices) {
        try {
          const ref = await resolveDevice(d, await selected());
          if (ref.partition !== undefined) throw new LoopfsError('EPERM', d, 'a partition entry goes away with its device');
          await ref.client.removeDevice(ref.index).catch((e: unknown) => {
            // As rm(1) says of a missing file; the ioctl's ENODEV is for loop-control.
            if (e instanceof LoopfsError && e.errno === 'ENODEV') throw new LoopfsError('ENOENT', d, 'no such loop device');
            if (e instanceof LoopfsError) throw new LoopfsError(e.errno, d, e.reason);
            throw e;
          });
        } catch (e) {
          status = reportError('rm', e);
        }
      }
      return status;
    });
}
