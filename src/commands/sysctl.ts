import type { CAC } from 'cac';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { usageError } from '../base/errors';
import { MAX_DEVICES } from '../base/loopdev';
import { parseCount, selection, type GlobalFlags } from './common';

const NAMES = ['max_loop_devices'] as const;

export function register(cli: CAC): void {
  cli
    .command('sysctl [setting]', 'Read or set the per-user device limit of this run directory: max_loop_devices (default 255)')
    .example('loopfs sysctl')
    .example('loopfs sysctl max_loop_devices=16')
    .action(async (setting: string | undefined, flags: GlobalFlags) => {
      const [name, value] = setting === undefined ? ['max_loop_devices', undefined] : (setting.split('=', 2) as [string, string | undefined]);
      if (!(NAMES as readonly string[]).includes(name)) throw usageError('ENOENT', name, `unknown setting (known: ${NAMES.join(', ')})`);
      const newValue = value === undefined ? undefined : parseCount(value, name, 0, MAX_DEVICES);
      const { openLimitsFile, readSysctlShared, writeSysctl, LIMITS_FILE } = await import('../core/limits');
      const fd = openLimitsFile(path.join((await selection(flags)()).runDir, LIMITS_FILE));
      try {
        if (newValue !== undefined) writeSysctl(fd, { ...readSysctlShared(fd), max_loop_devices: newValue });
        process.stdout.write(`${name} = ${readSysctlShared(fd).max_loop_devices}\n`);
      } finally {
        fs.closeSync(fd);
      }
      return 0;
    });
}
