import * as fs from 'node:fs';
import * as path from 'node:path';
import { LoopfsError, toLoopfsError } from '../base/errors';
import type { InstanceStatus } from '../core/protocol';
import { SOCKET_FILE, instanceState, readState, writeState } from '../core/state';
import { UnixServer } from '../sys/unixsock';
import { setCloexec } from '../sys/libc';
import { mountFuse, unmountFuse, type Mounted } from '../fuse/mount';
import { Session } from '../fuse/session';
import type { KernelNotifier } from '../fuse/types';
import { Budget, levelsFor } from '../core/limits';
import { ControlServer } from './control';
import { LoopFilesystem } from './filesystem';
import { Instance } from './instance';
import { ioThreadProgram } from './io-thread-program';

/**
 * The daemon of one instance: `loopfs __daemon --id … --mountpoint … --state …`.
 * Serves the FUSE filesystem and the control socket, and removes its state
 * (and a mountpoint it owns) when the mount goes away — unmounted by
 * `loopfs umount`, by umount(8), or lazily after the last close.
 *
 * Started by root, it is handed a mount already made and a control socket
 * already listening (`--fuse-fd`, `--control-fd`, core/instance.ts): the
 * kernel holds the first requests, and the control socket's clients, until
 * it serves them, and its starter does not wait for it. Started by an
 * ordinary user, it mounts through fusermount3 and binds the socket itself,
 * then reports "ready" (or the error) on fd 3 to the process that started it.
 */

interface DaemonArgs {
  id: string;
  mountpoint: string;
  state: string;
  max: number;
  uid: number;
  gid: number;
  removeMountpoint: boolean;
  boundMountpoint: boolean;
  runDir: string;
  /** The mount and the control socket made by the starter, when it made them. */
  adopted?: { fuseFd: number; controlFd: number };
}

function parseArgs(argv: string[]): DaemonArgs {
  const get = (k: string): string => {
    const i = argv.indexOf(`--${k}`);
    if (i < 0 || i + 1 >= argv.length) throw new LoopfsError('EINVAL', `--${k}`, 'missing daemon argument');
    return argv[i + 1]!;
  };
  return {
    id: get('id'),
    mountpoint: get('mountpoint'),
    state: get('state'),
    max: Number(get('max')),
    uid: Number(get('uid')),
    gid: Number(get('gid')),
    removeMountpoint: argv.includes('--remove-mountpoint'),
    boundMountpoint: argv.includes('--bound-mountpoint'),
    runDir: get('run-dir'),
    ...(argv.includes('--fuse-fd') ? { adopted: { fuseFd: Number(get('fuse-fd')), controlFd: Number(get('control-fd')) } } : {}),
  };
}

const READY_FD = 3;

function tellParent(line: string): void {
  try {
    fs.writeSync(READY_FD, `${line}\n`);
    fs.closeSync(READY_FD);
  } catch {
    /* the parent is gone; nothing to tell */
  }
}

export async function runDaemon(argv: string[]): Promise<number> {
  const a = parseArgs(argv);
  const debug = process.env.LOOPFS_DEBUG === '1';
  const log = (s: string): void => {
    process.stderr.write(`${new Date().toISOString()} ${s}\n`);
  };
  // No process.title: it rewrites /proc/PID/cmdline, which liveness checks read.
  let control: ControlServer;
  let session: Session<LoopFilesystem>;
  let inst: Instance;
  let mounted: Mounted;
  try {
    // Devices count against the owner's max_loop_devices here and in every run directory above.
    const budget = new Budget(levelsFor(a.runDir, a.uid));
    const limits = { reserve: (n: number) => budget.reserve(n), release: (n: number) => budget.release(n) };
    // allow_other lets root reach an instance it mounted for another owner; an
    // ordinary user's instance (through fusermount3) is the owner's alone.
    if (a.adopted) setCloexec(a.adopted.fuseFd); // what the daemon starts (umount(8)) must not hold the connection
    mounted = a.adopted
      ? { fd: a.adopted.fuseFd, mountpoint: a.mountpoint, release: () => {} }
      : await mountFuse(a.mountpoint, { source: 'loopfs', subtype: 'loopfs', uid: a.uid, gid: a.gid, allowOther: process.geteuid?.() === 0 });
    // The instance is made with the session that serves it, as its KernelNotifier.
    const made = (kernel: KernelNotifier): LoopFilesystem => new LoopFilesystem(new Instance(a.id, a.mountpoint, { uid: a.uid, gid: a.gid }, a.max, kernel, limits, a.state));
    // io_uring where the administrator switched it on (the kernel offers it then); LOOPFS_URING=0 keeps /dev/fuse.
    session = new Session(mounted.fd, made, {
      threadProgram: ioThreadProgram(), debug: debug ? log : undefined,
      uring: process.env.LOOPFS_URING !== '0', uringDepth: Number(process.env.LOOPFS_URING_DEPTH) || undefined,
      uringSpread: process.env.LOOPFS_URING_SPREAD !== '0', splice: process.env.LOOPFS_SPLICE !== '0',
    });
    inst = session.fsys.inst;
    const socket = path.join(a.state, SOCKET_FILE);
    control = new ControlServer(a.adopted ? UnixServer.adopt(a.adopted.controlFd, socket) : UnixServer.listen(socket), inst, {
      status: (): InstanceStatus => ({ id: a.id, mountpoint: a.mountpoint, uid: a.uid, gid: a.gid, max: inst.table.max, pid: process.pid, devices: inst.table.count, bound: inst.boundDevices, open: inst.openDevices }),
      remount: (max) => {
        inst.table.max = max;
        writeState(a.state, { ...readState(a.state), max });
      },
      umount: async (lazy) => {
        if (!lazy && inst.openDevices > 0) throw new LoopfsError('EBUSY', a.mountpoint, `${inst.openDevices} device(s) open`);
        await unmountFuse(a.mountpoint, lazy);
      },
    }, log);
  } catch (e) {
    const err = toLoopfsError(e, a.mountpoint);
    if (!a.adopted) {
      tellParent(`error ${err.errno} ${JSON.stringify({ what: err.what, reason: err.reason })}`);
      return 1;
    }
    // Nobody waits for an adopted start: say why in the log, and take down what was handed over.
    log(`cannot serve the instance: ${err.what}: ${err.reason} (${err.errno})`);
    await unmountFuse(a.mountpoint, true).catch(() => undefined);
    fs.rmSync(a.state, { recursive: true, force: true });
    if (a.removeMountpoint) {
      try {
        fs.rmdirSync(a.mountpoint);
      } catch {
        /* left for loopfs gc */
      }
    }
    return 1;
  }
  // An adopted start's record was written by its starter.
  if (!a.adopted) writeState(a.state, instanceState(a, process.pid));

  const served = control.serve();
  const stop = (): void => {
    // SIGTERM/SIGINT: leave like a lazy umount would.
    unmountFuse(a.mountpoint, true).catch((e) => log(`unmount on signal: ${(e as Error).message}`));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('SIGHUP', () => {});
  if (!a.adopted) tellParent('ready');

  try {
    await session.serve();
  } catch (e) {
    log(`session: ${(e as Error).stack ?? e}`);
  }
  mounted.release();
  await control.close();
  await served;
  await inst.shutdown();
  fs.rmSync(a.state, { recursive: true, force: true });
  if (a.removeMountpoint) {
    try {
      fs.rmdirSync(a.mountpoint);
    } catch (e) {
      log(`remove ${a.mountpoint}: ${(e as Error).message}`);
    }
  }
  return 0;
}
