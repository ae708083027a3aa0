import type { CAC } from 'cac';
import { LoopfsError, usageError } from '../base/errors';
import { MAX_DEVICES } from '../base/loopdev';
import { parseCount, selection, str, type GlobalFlags } from './common';

export interface MountOptions {
  max?: number;
  uid?: number;
  gid?: number;
  remount: boolean;
}

/** Parses `-o max=N,uid=U,gid=G,remount`. */
export function parseMountOptions(text: string | undefined): MountOptions {
  const out: MountOptions = { remount: false };
  if (text === undefined) return out;
  for (const part of text.split(',')) {
    if (part === '') continue;
    const [key, value] = part.split('=', 2) as [string, string | undefined];
    if (key === 'remount' && value === undefined) {
      out.remount = true;
    } else if ((key === 'max' || key === 'uid' || key === 'gid') && value !== undefined) {
      out[key] = parseCount(value, key, key === 'max' ? 1 : 0, key === 'max' ? MAX_DEVICES : 2 ** 32 - 2);
    } else {
      throw usageError('EINVAL', part, 'unknown mount option (known: max=N, uid=U, gid=G, remount)');
    }
  }
  return out;
}

export function register(cli: CAC): void {
  cli
    .command('mount <dir>', 'Create and mount a new loopfs instance at DIR (an existing empty directory)')
    .option('-o, --options <opts>', 'Mount options: max=N (device limit, default 1048576), uid=U, gid=G (owner; root only), remount (change max of a mounted instance)')
    .example('loopfs mount /mnt/loops')
    .example('loopfs mount -o remount,max=8 /mnt/loops')
    .action(async (dir: string, flags: GlobalFlags & { options?: unknown }) => {
      const opts = parseMountOptions(str(flags.options));
      const { mountPinned, selectInstance } = await import('../core/instance');
      const { request } = await import('../core/client');
      if (opts.remount) {
        if (opts.uid !== undefined || opts.gid !== undefined) throw usageError('EINVAL', 'remount', 'only max=N can change on remount');
        if (opts.max === undefined) throw usageError('EINVAL', 'remount', 'nothing to change (give max=N)');
        const rec = await selectInstance({ ...(await selection(flags)()), instance: dir }, false);
        await request(rec.stateDir, 'remount', { max: opts.max });
        return 0;
      }
      const uid = process.getuid?.() ?? 0;
      if (uid !== 0 && (opts.uid !== undefined || opts.gid !== undefined)) throw new LoopfsError('EPERM', 'uid=/gid=', 'only root may mount an instance for another owner');
      const rec = await mountPinned((await selection(flags)()).runDir, dir, { ...(opts.max !== undefined ? { max: opts.max } : {}), ...(opts.uid !== undefined ? { uid: opts.uid } : {}), ...(opts.gid !== undefined ? { gid: opts.gid } : {}) });
      process.stdout.write(`${rec.state!.mountpoint}\n`);
      return 0;
    });
}
