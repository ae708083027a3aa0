import type { CAC } from 'cac';
import { LoopfsError, usageError } from '../base/errors';
import type { OverlayAction } from '../core/api';
import type { OverlayInfo } from '../base/types';
import { selection, type GlobalFlags } from './common';
import { reportError } from './report';

const ACTIONS: readonly OverlayAction[] = ['status', 'discard', 'commit'];

export function register(cli: CAC): void {
  cli
    .command('overlay <action> [...devices]', 'Copy-on-write devices (losetup --overlay): status, discard or commit their changes')
    .option('--json', 'status: JSON output')
    .example('loopfs overlay status loop0')
    .example('loopfs overlay discard /run/loopfs/default/loop0')
    .example('loopfs overlay commit loop0')
    .action(async (action: string, devices: string[], flags: GlobalFlags & { json?: boolean }) => {
      if (!(ACTIONS as readonly string[]).includes(action)) throw usageError('EINVAL', action, `unknown action (${ACTIONS.join(', ')})`);
      if (devices.length === 0) throw usageError('EINVAL', action, 'no device given');
      if (flags.json && action !== 'status') throw usageError('EINVAL', '--json', 'only with status');
      const { resolveDevice } = await import('../core/instance');
      let status = 0;
      const rows: { name: string; info: OverlayInfo }[] = [];
      const selected = selection(flags);
      for (const d of devices) {
        try {
          const ref = await resolveDevice(d, await selected());
          if (ref.partition !== undefined) throw new LoopfsError('EINVAL', d, 'a partition is not an overlay device; name its device');
          const info = await ref.client.overlay(ref.index, action as OverlayAction).catch((e: unknown) => {
            throw e instanceof LoopfsError ? new LoopfsError(e.errno, d, e.reason) : e;
          });
          rows.push({ name: d, info });
        } catch (e) {
          status = reportError('overlay', e);
        }
      }
      if (action === 'status') process.stdout.write(flags.json ? statusJson(rows) : rows.map(statusLine).join(''));
      return status;
    });
}

/** One line: NAME: DELTA, N bytes changed (B blocks of S bytes), A bytes allocated. */
function statusLine(r: { name: string; info: OverlayInfo }): string {
  const i = r.info;
  const blocks = i.changedBytes / i.blockSize;
  return `${r.name}: ${i.delta ?? '(temporary)'}, ${i.changedBytes} bytes changed (${blocks} blocks of ${i.blockSize} bytes), ${i.allocatedBytes} bytes allocated\n`;
}

function statusJson(rows: { name: string; info: OverlayInfo }[]): string {
  const overlays = rows.map((r) => ({
    name: r.name,
    overlay: r.info.delta,
    changed: r.info.changedBytes,
    'block-size': r.info.blockSize,
    allocated: r.info.allocatedBytes,
  }));
  return `${JSON.stringify({ overlays }, null, 2)}\n`;
}
