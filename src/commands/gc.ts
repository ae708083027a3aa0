import type { CAC } from 'cac';
import { selector, type GlobalFlags } from './common';
import { errorLine } from './report';

export function register(cli: CAC): void {
  cli
    .command('gc', 'Remove the state of instances whose daemon is gone and unmount their dead mounts')
    .example('loopfs gc')
    .example('loopfs gc --run-dir /srv/ci/loopfs')
    .action(async (flags: GlobalFlags) => {
      const { ensureRunDir } = await import('../core/rundir');
      const { listInstances } = await import('../core/registry');
      const { reap } = await import('../core/instance');
      let status = 0;
      for (const r of listInstances(ensureRunDir(selector(flags).runDir))) {
        if (r.alive) continue;
        if (!r.state) {
          // Never trusted, never removed: a person should look at it.
          errorLine('loopfs gc', r.problem ?? r.stateDir, r.problemErrno ?? 'EINVAL');
          status = 1;
          continue;
        }
        await reap(r);
        process.stdout.write(`removed ${r.id} (${r.state.mountpoint})\n`);
      }
      return status;
    });
}
