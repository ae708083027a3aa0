import { join } from 'node:path';
import type { AttachRequest, DeviceRef, InstanceClient, InstanceSelector } from '../../core/api';
import type { DeviceIndex, DeviceInfo } from '../../base/types';
import { LoopfsError, errnoOf, type Errno } from '../../base/errors';
import { VERSION } from '../../version';
import { PROG, errWith, errx, losetupErrorText, parseLosetupArgs, type Action, type LosetupArgs } from './args';
import { COLUMNS, EXTRA_COLUMNS, cellValue, formatOldLine, formatTable } from './output';
import { isUtf8Locale } from './text';
import { findOverlap, sizeWarning } from '../../base/loopdev';

/**
 * `loopfs losetup`: util-linux 2.38.1 losetup's actions over an instance.
 * Everything outside comes in through LosetupDeps, so tests can run it on a
 * fake instance.
 */

/** What losetup needs to know of a file it is given (stat(2) as the caller). */
export interface FileStat {
  dev: number;
  ino: number;
  size: number;
  isBlockDevice: boolean;
}

export interface LosetupDeps {
  openInstance(sel: InstanceSelector): Promise<InstanceClient>;
  resolveDevice(arg: string, sel: InstanceSelector): Promise<DeviceRef>;
  stdout(text: string): void;
  stderr(text: string): void;
  /** undefined when stat fails. */
  stat(path: string): Promise<FileStat | undefined>;
  /** realpath(3); undefined when it fails. */
  realpath(path: string): Promise<string | undefined>;
  env: Record<string, string | undefined>;
  /** stdout is a terminal, and its width (0 or undefined: unknown). */
  isTTY: boolean;
  columns?: number;
}

interface UsedDevice {
  client: InstanceClient;
  index: DeviceIndex;
  path: string;
  info?: DeviceInfo;
}

/**
 * Re-labels an error from below with util-linux's words: `what` and
 * strerror(errno), as util-linux's err() prints the errno the kernel gave
 * (`errno` replaces it where util-linux would see another one).
 */
function relabel(err: unknown, what: string, errno?: (e: Errno) => Errno): unknown {
  const e = errnoOf(err);
  if (!e) return err;
  return errWith(errno ? errno(e) : e, what);
}

export async function runLosetup(argv: readonly string[], deps: LosetupDeps): Promise<number> {
  const a = parseLosetupArgs(argv, deps.env);
  const act = a.action;
  if (act.kind === 'help') {
    deps.stdout(usageText());
    return 0;
  }
  if (act.kind === 'version') {
    deps.stdout(`${PROG} from loopfs ${VERSION}\n`);
    return 0;
  }
  const call = new Call(a, deps);
  for (const arg of a.checkDevices) call.checked.set(arg, await call.useDevice(arg, true));
  if (a.deferred) throw a.deferred;
  return (ACTIONS[act.kind] as (c: Call, act: Action) => Promise<number>)(call, act);
}

type ActionOf<K extends Action['kind']> = Extract<Action, { kind: K }>;

/** One function per action (help and version are answered before any device is looked at). */
const ACTIONS: { [K in Exclude<Action['kind'], 'help' | 'version'>]: (c: Call, act: ActionOf<K>) => Promise<number> } = {
  show: showAll,
  'show-one': showOne,
  find,
  create: createAction,
  detach,
  'detach-all': detachAll,
  'set-capacity': setCapacity,
  'set-direct-io': (c, act) => setOne(c, act.device, 'set direct io failed', (u) => u.client.setDirectIo(u.index, act.on)),
  'set-sector-size': (c, act) => setOne(c, act.device, 'set logical block size failed', (u) => u.client.setSectorSize(u.index, act.size)),
};

/** One losetup call: its arguments, the instances' device lists it has read (once each), and its output. */
class Call {
  private readonly lists = new Map<InstanceClient, Promise<DeviceInfo[]>>();
  /** The devices of LosetupArgs.checkDevices, checked before the action, by argument. */
  readonly checked = new Map<string, UsedDevice>();

  constructor(readonly a: LosetupArgs, readonly deps: LosetupDeps) {}

  listOf(c: InstanceClient): Promise<DeviceInfo[]> {
    let l = this.lists.get(c);
    if (!l) this.lists.set(c, (l = c.list()));
    return l;
  }

  /** The bound devices of an instance, by index. */
  async bound(c: InstanceClient): Promise<DeviceInfo[]> {
    return (await this.listOf(c)).filter((d) => d.bound).sort((x, y) => x.index - y.index);
  }

  /** A device of checkDevices. */
  device(arg: string): UsedDevice {
    return this.checked.get(arg) as UsedDevice;
  }

  /** util-linux's loopcxt_set_device (+ is_loopdev when the device must exist). */
  async useDevice(arg: string, mustExist: boolean): Promise<UsedDevice> {
    const what = `${arg}: failed to use device`;
    let ref: DeviceRef;
    try {
      ref = await this.deps.resolveDevice(arg, this.a.selector);
    } catch (err) {
      // util-linux's is_loopdev(): whatever is not a loop device (no such path, not in an instance) is ENODEV.
      throw relabel(err, what, (e) => (e === 'EINVAL' || e === 'ENOENT' || e === 'ENOTDIR' ? 'ENODEV' : e));
    }
    // A partition (loopNpM) is not a loop device, as for the kernel's.
    if (ref.partition !== undefined) throw errWith('ENODEV', what);
    let info: DeviceInfo | undefined;
    if (mustExist) {
      try {
        info = (await this.listOf(ref.client)).find((d) => d.index === ref.index);
      } catch (err) {
        throw relabel(err, what);
      }
      if (!info) throw errWith('ENODEV', what);
    }
    return { client: ref.client, index: ref.index, path: info?.path ?? join(ref.client.mountpoint, `loop${ref.index}`), info };
  }

  /** `--list`: the devices as a table of the chosen columns. */
  table(devs: DeviceInfo[]): void {
    const { a, deps } = this;
    const rows = devs.map((d) => a.columns.map((c) => cellValue(c.name, d)));
    const env = deps.env;
    const envCols = Number(env.COLUMNS);
    const termWidth = deps.columns && deps.columns > 0 ? deps.columns
      : Number.isInteger(envCols) && envCols > 0 && /^\d+$/.test(env.COLUMNS ?? '') ? envCols : 80;
    deps.stdout(formatTable(a.columns, rows, {
      format: a.format, noHeadings: a.noHeadings, isTerm: deps.isTTY, termWidth, utf8: isUtf8Locale(env),
    }));
  }
}

/** `-a`, `-l`, `-j FILE`, no arguments: the bound devices (of FILE), as a table or the old lines. */
async function showAll(c: Call, act: ActionOf<'show'>): Promise<number> {
  const client = await c.deps.openInstance(c.a.selector);
  let devs = await c.bound(client);
  if (act.file !== undefined) devs = await associated(devs, act.file, c.a.offset, c.deps);
  if (c.a.list) c.table(devs);
  else c.deps.stdout(devs.map(formatOldLine).join(''));
  return 0;
}

/** `losetup [-l] DEV`. */
async function showOne(c: Call, act: ActionOf<'show-one'>): Promise<number> {
  const u = c.device(act.device);
  const info = u.info as DeviceInfo;
  if (c.a.list) c.table([info]);
  // util-linux fails here on reading the unbound device's backing file from sysfs.
  else if (!info.bound) throw errWith('ENOENT', u.path);
  else c.deps.stdout(formatOldLine(info));
  return 0;
}

/** `-f` alone: the first free device. */
async function find(c: Call): Promise<number> {
  const client = await c.deps.openInstance(c.a.selector);
  let n: DeviceIndex;
  try {
    n = await client.getFree();
  } catch (err) {
    throw relabel(err, 'cannot find an unused loop device');
  }
  c.deps.stdout(`${join(client.mountpoint, `loop${n}`)}\n`);
  return 0;
}

/** `-f FILE` or `DEV FILE`. */
async function createAction(c: Call, act: ActionOf<'create'>): Promise<number> {
  let dev: UsedDevice | undefined;
  if (act.device !== undefined) {
    try {
      dev = await c.useDevice(act.device, false);
    } catch (err) {
      // util-linux takes DEV as given (a name without a leading "/" as /dev/NAME): it fails to open
      // it, or, for a file that is no device, the loop ioctls fail on it. A block device that is not
      // loopfs's (a kernel loop device) stays "failed to use device": loopfs cannot set it up.
      if (!(err instanceof LoopfsError) || err.errno !== 'ENODEV') throw err;
      const p = act.device.startsWith('/') ? act.device : `/dev/${act.device}`;
      const st = await c.deps.stat(p);
      if (!st) throw errWith('ENOENT', `${p}: failed to set up loop device`);
      if (!st.isBlockDevice) throw errWith('ENOTTY', `${act.file}: failed to set up loop device`);
      throw err;
    }
  }
  return create(c, act.file, dev);
}

/** `-d DEV…`: each in turn; a failure is reported and the rest still detached. */
async function detach(c: Call, act: ActionOf<'detach'>): Promise<number> {
  let failed = 0;
  let prev: UsedDevice | undefined;
  for (let i = 0; i < act.devices.length; i++) {
    let u: UsedDevice;
    try {
      u = i === 0 ? c.device(act.devices[0]) : await c.useDevice(act.devices[i], true);
    } catch (err) {
      if (!(err instanceof LoopfsError) || !prev) throw err;
      c.deps.stderr(losetupErrorText(err));
      // util-linux's A_DELETE loop detaches again the device it still holds (prints "detach failed").
      u = prev;
    }
    failed += await detachOne(u.client, u.index, u.path, c.deps);
    prev = u;
  }
  return failed ? 1 : 0;
}

/** `-D`: every bound device of the instance. */
async function detachAll(c: Call): Promise<number> {
  const client = await c.deps.openInstance(c.a.selector);
  let failed = 0;
  for (const d of await c.bound(client)) failed += await detachOne(client, d.index, d.path, c.deps);
  return failed ? 1 : 0;
}

/** `-c DEV`. */
function setCapacity(c: Call, act: ActionOf<'set-capacity'>): Promise<number> {
  return setOne(c, act.device, 'set capacity failed', (u) => u.client.setCapacity(u.index));
}

/** A change of one checked device (`-c`, `--direct-io DEV`, `-b N DEV`), its failure worded `DEV: failed`. */
async function setOne(c: Call, device: string, failed: string, change: (u: UsedDevice) => Promise<unknown>): Promise<number> {
  const u = c.device(device);
  try {
    await change(u);
  } catch (err) {
    throw relabel(err, `${u.path}: ${failed}`);
  }
  return 0;
}

async function detachOne(client: InstanceClient, index: DeviceIndex, path: string, deps: LosetupDeps): Promise<number> {
  try {
    await client.detach(index);
    return 0;
  } catch (err) {
    const e = relabel(err, `${path}: detach failed`);
    if (!(e instanceof LoopfsError)) throw e;
    deps.stderr(losetupErrorText(e));
    return 1;
  }
}

/**
 * util-linux loopcxt_is_used(): the same file by device and inode when both
 * are known, else by name; and the same offset when one was given.
 */
function isUsed(d: DeviceInfo, st: FileStat | undefined, name: string, offset: number | undefined): boolean {
  let same: boolean;
  if (st && d.backIno !== undefined && d.backDev !== undefined) same = d.backIno === st.ino && d.backDev === st.dev;
  else same = d.backFile === name;
  return same && (offset === undefined || d.offset === offset);
}

/** `-j FILE [-o N]`: the devices bound to FILE (tried as given, then canonicalized). */
async function associated(devs: DeviceInfo[], file: string, offset: number | undefined, deps: LosetupDeps): Promise<DeviceInfo[]> {
  const st = await deps.stat(file);
  let canonical: string | undefined;
  const out: DeviceInfo[] = [];
  for (const d of devs) {
    let used = isUsed(d, st, canonical ?? file, offset);
    if (!used && canonical === undefined) {
      canonical = (await deps.realpath(file)) ?? file;
      used = isUsed(d, st, canonical, offset);
    }
    if (used) out.push(d);
  }
  return out;
}

async function create(c: Call, file: string, dev: UsedDevice | undefined): Promise<number> {
  const { a, deps } = c;
  // Like util-linux: a size limit that is no multiple of 512 and an offset
  // past the end are accepted (the size is rounded down; a device of size
  // 0); a bad sector size is the kernel's EINVAL, from the engine.
  const setupFailed = `${file}: failed to set up loop device`;
  const st = await deps.stat(file);

  const client = dev ? dev.client : await deps.openInstance(a.selector);
  let device: DeviceInfo | undefined;
  if (a.nooverlap) device = await overlap(c, client, dev !== undefined, file, st);
  if (!device) {
    // A bound DEV is busy (LOOP_CONFIGURE's EBUSY), found here before the daemon is handed the file.
    if (dev && (await c.bound(client)).some((d) => d.index === dev.index)) throw errWith('EBUSY', setupFailed);
    const req = attachRequest(a, file);
    if (dev) req.index = dev.index;
    try {
      const res = await client.attach(req);
      for (const w of res.warnings) deps.stderr(`${PROG}: ${w}\n`);
      device = res.device;
    } catch (err) {
      const e = err instanceof LoopfsError ? err : undefined;
      // An overlay is loopfs's own: util-linux has no words for what fails there (a delta that is not one, say).
      if (e && a.overlay !== undefined) throw e;
      throw relabel(err, !dev && e?.errno === 'ENOSPC' ? 'cannot find an unused loop device' : setupFailed);
    }
  }
  if (a.show) deps.stdout(`${device.path}\n`);
  const warning = sizeWarning(file, a.sizelimit, st && !st.isBlockDevice ? st.size : undefined, a.offset);
  if (warning) deps.stderr(`${PROG}: ${warning}\n`);
  return 0;
}

/** The request `losetup [-f|DEV] [options] FILE` sends (also `loopfs run --attach`'s). */
export function attachRequest(a: LosetupArgs, file: string): AttachRequest {
  const req: AttachRequest = { file };
  if (a.offset !== undefined) req.offset = a.offset;
  if (a.sizelimit !== undefined) req.sizelimit = a.sizelimit;
  if (a.sectorSize) req.sectorSize = a.sectorSize;
  if (a.readOnly) req.readOnly = true;
  if (a.partscan) req.partscan = true;
  if (a.directIo) req.directIo = true;
  if (a.nooverlap) req.nooverlap = true;
  if (a.overlay !== undefined) req.overlay = a.overlay === true ? {} : { delta: a.overlay };
  return req;
}

/**
 * `-L` (findOverlap) over the instance's devices: with -f, a device with
 * the same file, offset and size limit is reused (returned); any other
 * overlap is an error. The daemon checks again, atomically, with
 * req.nooverlap.
 */
async function overlap(c: Call, client: InstanceClient, hasDev: boolean, file: string, st: FileStat | undefined): Promise<DeviceInfo | undefined> {
  const { a } = c;
  const want = { offset: a.offset ?? 0, sizelimit: a.sizelimit ?? 0, readOnly: a.readOnly, overlay: a.overlay !== undefined };
  const found = findOverlap(await c.bound(client), (d) => isUsed(d, st, file, undefined), want, !hasDev);
  if (found?.kind === 'read-only') throw errx(`${file}: overlapping read-only loop device exists`, 'EBUSY');
  if (found?.kind === 'overlap') throw errx(`${file}: overlapping loop device exists`, 'EBUSY');
  // util-linux also clears the reused device's autoclear flag; InstanceClient has no call for that.
  return found?.device;
}

/**
 * util-linux 2.38's `losetup --help`, word for word, with the program name
 * and man page that are loopfs's, and loopfs's own options under a heading
 * of their own ("loopfs additions:").
 */
export function usageText(): string {
  const cols = COLUMNS.map(columnLine).join('');
  return `
Usage:
 ${PROG} [options] [<loopdev>]
 ${PROG} [options] -f | <loopdev> <file>

Set up and control loop devices.

Options:
 -a, --all                     list all used devices
 -d, --detach <loopdev>...     detach one or more devices
 -D, --detach-all              detach all used devices
 -f, --find                    find first unused device
 -c, --set-capacity <loopdev>  resize the device
 -j, --associated <file>       list all devices associated with <file>
 -L, --nooverlap               avoid possible conflict between devices

 -o, --offset <num>            start at offset <num> into file
     --sizelimit <num>         device is limited to <num> bytes of the file
 -b, --sector-size <num>       set the logical sector size to <num>
 -P, --partscan                create a partitioned loop device
 -r, --read-only               set up a read-only loop device
     --direct-io[=<on|off>]    open backing file with O_DIRECT
     --show                    print device name after setup (with -f)
 -v, --verbose                 verbose mode

 -J, --json                    use JSON --list output format
 -l, --list                    list info about all or specified (default)
 -n, --noheadings              don't print headings for --list output
 -O, --output <cols>           specify columns to output for --list
     --output-all              output all columns
     --raw                     use raw --list output format

 -h, --help                    display this help
 -V, --version                 display version

${LOOPFS_ADDITIONS}
Available output columns:
${cols}
For more details see loopfs-losetup(8).
`;
}

function columnLine(c: { name: string; help: string }): string {
  return ` ${c.name.padStart(12)}  ${c.help}\n`;
}

/** The part of usageText() that util-linux does not have: loopfs's own options and columns. */
export const LOOPFS_ADDITIONS = `loopfs additions:
     --instance <dir|id>       the loopfs instance (default: $LOOPFS, else "default")
     --run-dir <dir>           the run directory of the instances
     --overlay[=<file>]        copy-on-write: <file> is only read, writes go to
                                 the overlay file (default: a temporary one)
 columns (with -O):
${EXTRA_COLUMNS.map(columnLine).join('')}`;
