import type { CAC } from 'cac';
import { selection, type GlobalFlags } from './common';
import { LoopfsError } from '../base/errors';
import { reportError } from './report';

export function register(cli: CAC): void {
  cli
    .command('gc', 'Remove the state of instances whose daemon is gone and unmount their dead mounts; stop orphaned and unresponsive ones')
    .example('loopfs gc')
    .example('loopfs gc --run-dir /srv/ci/loopfs')
    .action(async (flags: GlobalFlags) => {
      const { listInstances } = await import('../core/registry');
      const { reap, probeInstance, stopInstance, forceStop } = await import('../core/instance');
      let status = 0;
      const all = listInstances((await selection(flags)()).runDir);
      // Live daemons are asked all at once: a wedged one costs its deadline once.
      const probes = await Promise.all(all.map((r) => (r.alive && r.state ? probeInstance(r).catch(() => ({ health: 'answers' as const, why: undefined })) : undefined)));
      for (const [i, r] of all.entries()) {
        if (r.alive && r.state) {
          // A live daemon stays, unless nothing can manage it: no control socket or state (orphaned), or no answer.
          const probe = probes[i]!;
          if (probe.health === 'answers') continue;
          try {
            const done = probe.health === 'unresponsive' ? await forceStop(r, probe.why ?? 'the daemon does not answer') : await stopInstance({ ...r, orphaned: probe.why ?? 'no control socket' }, true);
            const what = done.how === 'aborted' ? `aborted ${r.id} (${r.state.mountpoint}): ${done.why}` : `stopped ${r.id} (${r.state.mountpoint}): orphaned, ${probe.why}`;
            process.stdout.write(`${what}\n`);
          } catch (e) {
            status = reportError('gc', e);
          }
          continue;
        }
        if (r.alive) continue;
        if (!r.state) {
          // Never trusted, never removed: a person should look at it.
          status = reportError('gc', new LoopfsError(r.problemErrno ?? 'EINVAL', r.problem ?? r.stateDir, ''));
          continue;
        }
        await reap(r);
        process.stdout.write(`removed ${r.id} (${r.state.mountpoint})\n`);
      }
      return status;
    });
}
