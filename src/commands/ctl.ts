import type { CAC } from 'cac';
import { usageError } from '../base/errors';
import { MAX_INDEX } from '../base/loopdev';
import { parseCount, selection, type GlobalFlags } from './common';

export function register(cli: CAC): void {
  cli
    .command('ctl <op> [n]', 'The loop-control operations: add [N], remove N, get-free; prints the device number')
    .example('loopfs ctl add 3')
    .example('loopfs ctl get-free')
    .allowUnknownOptions()
    .action(async (op: string, n: unknown, flags: GlobalFlags & Record<string, unknown>) => {
      // cac reads "-1" as an option named "1": say what it is, a negative number.
      for (const k of Object.keys(flags)) {
        if (/^\d+$/.test(k)) throw usageError('EINVAL', `N=-${k}`, 'not a non-negative integer');
        if (!['--', 'instance', 'runDir', 'run-dir', 'help', 'h'].includes(k)) throw usageError('EINVAL', k.length === 1 ? `-${k}` : `--${k}`, 'unknown option');
      }
      const num = (): number => parseCount(n, 'N', 0, MAX_INDEX);
      let run: (c: import('../core/api').InstanceClient) => Promise<number>;
      if (op === 'add') run = (c) => c.addDevice(n === undefined ? undefined : num());
      else if (op === 'remove') {
        if (n === undefined) throw usageError('EINVAL', 'remove', 'needs a device number');
        run = async (c) => {
          const i = parseRemoveIndex(n);
          await c.removeDevice(i);
          return i;
        };
      } else if (op === 'get-free') {
        if (n !== undefined) throw usageError('EINVAL', String(n), 'get-free takes no argument');
        run = (c) => c.getFree();
      } else throw usageError('EINVAL', op, 'unknown operation (add, remove, get-free)');
      const { openInstance } = await import('../core/instance');
      const client = await openInstance(await selection(flags)());
      process.stdout.write(`${await run(client)}\n`);
      return 0;
    });
}

/** remove accepts any number, as the ioctl does: an absent device is ENODEV, not a usage error. */
function parseRemoveIndex(n: unknown): number {
  return parseCount(n, 'N', 0, Number.MAX_SAFE_INTEGER);
}
