import type { CAC } from 'cac';
import { selection, type GlobalFlags } from './common';

export interface ListedInstance {
  id: string;
  mountpoint: string | null;
  owner: string | null;
  devices: number | null;
  bound: number | null;
  open: number | null;
  max: number | null;
  pid: number | null;
  health: 'alive' | 'dead' | 'unmounted' | 'broken' | 'orphaned' | 'unresponsive';
  problem?: string;
}

export function register(cli: CAC): void {
  cli
    .command('list', 'List the instances of this run directory: id, mountpoint, owner, devices, max, daemon pid, health')
    .option('--json', 'Print JSON (an array of instances)')
    .example('loopfs list')
    .example('loopfs list --json')
    .action(async (flags: GlobalFlags & { json?: boolean }) => {
      const { listInstances } = await import('../core/registry');
      const { requestWithin } = await import('../core/client');
      const { ANSWER_DEADLINE_MS } = await import('../core/instance');
      // Asked all at once: a wedged instance costs its deadline once, not once per instance before it.
      const out: ListedInstance[] = await Promise.all(listInstances((await selection(flags)()).runDir).map(async (r) => {
        const s = r.state;
        const item: ListedInstance = {
          id: r.id, mountpoint: s?.mountpoint ?? null, owner: s ? `${s.uid}:${s.gid}` : null, devices: null, bound: null, open: null,
          max: s?.max ?? null, pid: s?.pid ?? null, health: !s ? 'broken' : r.alive ? 'alive' : 'dead',
          ...(r.problem ? { problem: r.problem } : {}),
        };
        if (r.alive && r.orphaned) {
          // Alive, but out of reach of its control socket: loopfs umount and gc still stop it.
          item.health = 'orphaned';
          item.problem = r.orphaned;
        } else if (r.alive) {
          try {
            const st = await requestWithin(r.stateDir, 'status', {}, ANSWER_DEADLINE_MS);
            Object.assign(item, { devices: st.devices, bound: st.bound, open: st.open, max: st.max });
            if (!r.mounted) item.health = 'unmounted';
          } catch (e) {
            const errno = (e as { errno?: string }).errno;
            item.health = errno === 'ETIMEDOUT' ? 'unresponsive' : errno === 'ESRCH' || errno === 'EPIPE' ? 'orphaned' : 'dead';
            item.problem = (e as Error).message;
          }
        }
        return item;
      }));
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
        return 0;
      }
      const { table } = await import('./table');
      const { paint } = await import('./ui');
      const c = paint(process.stdout);
      const health = { alive: c.green, dead: c.red, unmounted: c.yellow, broken: c.red, orphaned: c.yellow, unresponsive: c.red };
      const rows = out.map((i) => [i.id, i.mountpoint ?? '-', i.owner ?? '-', i.devices === null ? '-' : `${i.devices}/${i.bound}/${i.open}`, String(i.max ?? '-'), String(i.pid ?? '-'), health[i.health](i.health) + (i.problem ? ` (${i.problem})` : '')]);
      process.stdout.write(table(['ID', 'MOUNTPOINT', 'OWNER', 'DEVICES/BOUND/OPEN', 'MAX', 'PID', 'HEALTH'], rows));
      return 0;
    });
}
