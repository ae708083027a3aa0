import { join } from 'node:path';
import type { AttachRequest, DeviceRef, InstanceClient, InstanceSelector } from '../core/api';
import type { DeviceIndex, DeviceInfo } from '../core/types';
import { LoopfsError, fromSystemError } from '../core/errors';
import { VERSION } from '../version';
import { PROG, parseLosetupArgs, type LosetupArgs } from './losetup-args';
import { COLUMNS, EXTRA_COLUMNS, cellValue, formatOldLine, formatTable } from './losetup-output';
import { isUtf8Locale } from './losetup-text';

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

/**
 * Operations of the kernel's loop driver that InstanceClient does not offer
 * (yet): `losetup --direct-io[=on|off] DEV` and `losetup -b N DEV`. Used when
 * the client has them, else those two fail with EOPNOTSUPP.
 */
export interface LosetupClientExtras {
  setDirectIo?(index: DeviceIndex, on: boolean): Promise<unknown>;
  setSectorSize?(index: DeviceIndex, size: number): Promise<unknown>;
}

interface UsedDevice {
  client: InstanceClient;
  index: DeviceIndex;
  path: string;
  info?: DeviceInfo;
}

/** Re-labels an error from below with util-linux's words, keeping its errno and reason. */
function relabel(err: unknown, what: string): unknown {
  if (err instanceof LoopfsError) return new LoopfsError(err.errno, what, err.reason);
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string' && /^E[A-Z0-9]+$/.test(e.code)) return fromSystemError(err, what);
  return err;
}

export function errorLine(e: LoopfsError): string {
  return `${PROG}: ${e.what}: ${e.reason} (${e.errno})\n`;
}

export async function runLosetup(argv: readonly string[], deps: LosetupDeps): Promise<number> {
  const a = parseLosetupArgs(argv, deps.env);
  const sel = a.selector;
  const act = a.action;
  if (act.kind === 'help') {
    deps.stdout(usageText());
    return 0;
  }
  if (act.kind === 'version') {
    deps.stdout(`${PROG} from loopfs ${VERSION}\n`);
    return 0;
  }

  const lists = new Map<InstanceClient, Promise<DeviceInfo[]>>();
  const listOf = (c: InstanceClient): Promise<DeviceInfo[]> => {
    let l = lists.get(c);
    if (!l) lists.set(c, (l = c.list()));
    return l;
  };
  const bound = async (c: InstanceClient): Promise<DeviceInfo[]> =>
    (await listOf(c)).filter((d) => d.bound).sort((x, y) => x.index - y.index);

  /** util-linux's loopcxt_set_device (+ is_loopdev when the device must exist). */
  const useDevice = async (arg: string, mustExist: boolean): Promise<UsedDevice> => {
    const what = `${arg}: failed to use device`;
    let ref: DeviceRef;
    try {
      ref = await deps.resolveDevice(arg, sel);
    } catch (err) {
      throw relabel(err, what);
    }
    // A partition (loopNpM) is not a loop device, as for the kernel's.
    if (ref.partition !== undefined) throw new LoopfsError('ENODEV', what);
    let info: DeviceInfo | undefined;
    if (mustExist) {
      try {
        info = (await listOf(ref.client)).find((d) => d.index === ref.index);
      } catch (err) {
        throw relabel(err, what);
      }
      if (!info) throw new LoopfsError('ENODEV', what);
    }
    return { client: ref.client, index: ref.index, path: info?.path ?? join(ref.client.mountpoint, `loop${ref.index}`), info };
  };

  const checked = new Map<string, UsedDevice>();
  for (const arg of a.checkDevices) checked.set(arg, await useDevice(arg, true));
  if (a.deferred) throw a.deferred;

  const table = (devs: DeviceInfo[]): void => {
    const rows = devs.map((d) => a.columns.map((c) => cellValue(c.name, d)));
    const env = deps.env;
    const envCols = Number(env.COLUMNS);
    const termWidth = deps.columns && deps.columns > 0 ? deps.columns
      : Number.isInteger(envCols) && envCols > 0 && /^\d+$/.test(env.COLUMNS ?? '') ? envCols : 80;
    deps.stdout(formatTable(a.columns, rows, {
      format: a.format, noHeadings: a.noHeadings, isTerm: deps.isTTY, termWidth, utf8: isUtf8Locale(env),
    }));
  };

  switch (act.kind) {
    case 'show': {
      const client = await deps.openInstance(sel);
      let devs = await bound(client);
      if (act.file !== undefined) devs = await associated(devs, act.file, a.offset, deps);
      if (a.list) table(devs);
      else deps.stdout(devs.map(formatOldLine).join(''));
      return 0;
    }
    case 'show-one': {
      const u = checked.get(act.device) as UsedDevice;
      const info = u.info as DeviceInfo;
      if (a.list) table([info]);
      // util-linux fails here on reading the unbound device's backing file from sysfs.
      else if (!info.bound) throw new LoopfsError('ENOENT', u.path);
      else deps.stdout(formatOldLine(info));
      return 0;
    }
    case 'find': {
      const client = await deps.openInstance(sel);
      let n: DeviceIndex;
      try {
        n = await client.getFree();
      } catch (err) {
        throw relabel(err, 'cannot find an unused loop device');
      }
      deps.stdout(`${join(client.mountpoint, `loop${n}`)}\n`);
      return 0;
    }
    case 'create':
      return create(a, act.file, act.device === undefined ? undefined : await useDevice(act.device, false), deps, bound);
    case 'detach': {
      let failed = 0;
      for (let i = 0; i < act.devices.length; i++) {
        let u: UsedDevice;
        try {
          u = i === 0 ? (checked.get(act.devices[0]) as UsedDevice) : await useDevice(act.devices[i], true);
        } catch (err) {
          if (!(err instanceof LoopfsError)) throw err;
          deps.stderr(errorLine(err));
          failed++;
          continue;
        }
        failed += await detachOne(u.client, u.index, u.path, deps);
      }
      return failed ? 1 : 0;
    }
    case 'detach-all': {
      const client = await deps.openInstance(sel);
      let failed = 0;
      for (const d of await bound(client)) failed += await detachOne(client, d.index, d.path, deps);
      return failed ? 1 : 0;
    }
    case 'set-capacity': {
      const u = checked.get(act.device) as UsedDevice;
      try {
        await u.client.setCapacity(u.index);
      } catch (err) {
        throw relabel(err, `${u.path}: set capacity failed`);
      }
      return 0;
    }
    case 'set-direct-io':
    case 'set-sector-size': {
      const u = checked.get(act.device) as UsedDevice;
      const x = u.client as InstanceClient & LosetupClientExtras;
      const what = act.kind === 'set-direct-io' ? `${u.path}: set direct io failed` : `${u.path}: set logical block size failed`;
      try {
        if (act.kind === 'set-direct-io' && x.setDirectIo) await x.setDirectIo(u.index, act.on);
        else if (act.kind === 'set-sector-size' && x.setSectorSize) await x.setSectorSize(u.index, act.size);
        else throw new LoopfsError('EOPNOTSUPP', what, 'Operation not supported');
      } catch (err) {
        throw relabel(err, what);
      }
      return 0;
    }
  }
}

async function detachOne(client: InstanceClient, index: DeviceIndex, path: string, deps: LosetupDeps): Promise<number> {
  try {
    await client.detach(index);
    return 0;
  } catch (err) {
    const e = relabel(err, `${path}: detach failed`);
    if (!(e instanceof LoopfsError)) throw e;
    deps.stderr(errorLine(e));
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

async function create(
  a: LosetupArgs,
  file: string,
  dev: UsedDevice | undefined,
  deps: LosetupDeps,
  bound: (c: InstanceClient) => Promise<DeviceInfo[]>,
): Promise<number> {
  const setupFailed = `${file}: failed to set up loop device`;
  // Checks loopfs makes itself where the kernel would silently round or accept (SPEC §3).
  if (a.sizelimit !== undefined && a.sizelimit % 512 !== 0) {
    throw new LoopfsError('EINVAL', setupFailed, `size limit ${a.sizelimit} is not a multiple of 512`);
  }
  if (a.sectorSize && !(a.sectorSize >= 512 && a.sectorSize <= 65536 && (a.sectorSize & (a.sectorSize - 1)) === 0)) {
    throw new LoopfsError('EINVAL', setupFailed, `sector size ${a.sectorSize} is not a power of 2 from 512 to 65536`);
  }
  const st = await deps.stat(file);
  const offset = a.offset ?? 0;
  if (st && !st.isBlockDevice && offset > st.size) {
    throw new LoopfsError('EINVAL', setupFailed, `offset ${offset} is beyond the end of the file (${st.size} bytes)`);
  }

  const client = dev ? dev.client : await deps.openInstance(a.selector);
  let device: DeviceInfo | undefined;
  // An overlay never writes its base: -L has nothing to guard.
  if (a.nooverlap && a.overlay === undefined) device = await overlap(client, dev !== undefined, a, file, st, bound);
  if (!device) {
    const req: AttachRequest = { file };
    if (dev) req.index = dev.index;
    if (a.offset !== undefined) req.offset = a.offset;
    if (a.sizelimit !== undefined) req.sizelimit = a.sizelimit;
    if (a.sectorSize) req.sectorSize = a.sectorSize;
    if (a.readOnly) req.readOnly = true;
    if (a.partscan) req.partscan = true;
    if (a.directIo) req.directIo = true;
    if (a.nooverlap) req.nooverlap = true;
    if (a.overlay !== undefined) req.overlay = a.overlay === true ? {} : { delta: a.overlay };
    try {
      const res = await client.attach(req);
      for (const w of res.warnings) deps.stderr(`${PROG}: ${w}\n`);
      device = res.device;
    } catch (err) {
      const e = err instanceof LoopfsError ? err : undefined;
      throw relabel(err, !dev && e?.errno === 'ENOSPC' ? 'cannot find an unused loop device' : setupFailed);
    }
  }
  if (a.show) deps.stdout(`${device.path}\n`);
  warnSize(file, a, st, deps);
  return 0;
}

/**
 * `-L`: util-linux's loopcxt_find_overlap() over the instance's devices.
 * With -f, a device with the same file, offset and size limit is reused
 * (returned); any other overlap, or any overlap at all with `DEV FILE`, is
 * an error. The daemon checks again, atomically, with req.nooverlap.
 */
async function overlap(
  client: InstanceClient,
  hasDev: boolean,
  a: LosetupArgs,
  file: string,
  st: FileStat | undefined,
  bound: (c: InstanceClient) => Promise<DeviceInfo[]>,
): Promise<DeviceInfo | undefined> {
  const offset = a.offset ?? 0;
  const sizelimit = a.sizelimit ?? 0;
  for (const d of await bound(client)) {
    if (!isUsed(d, st, file, undefined)) continue;
    if (d.sizelimit === sizelimit && d.offset === offset && !hasDev) {
      if (d.readOnly && !a.readOnly) throw new LoopfsError('EBUSY', `${file}: overlapping read-only loop device exists`);
      // util-linux also clears the reused device's autoclear flag; InstanceClient has no call for that.
      return d;
    }
    if (d.sizelimit !== 0 && offset >= d.offset + d.sizelimit) continue;
    if (sizelimit !== 0 && offset + sizelimit <= d.offset) continue;
    throw new LoopfsError('EBUSY', `${file}: overlapping loop device exists`);
  }
  return undefined;
}

/** util-linux warn_size(): the file's usable size is under, or not a multiple of, 512 bytes. */
function warnSize(file: string, a: LosetupArgs, st: FileStat | undefined, deps: LosetupDeps): void {
  let size = BigInt(a.sizelimit ?? 0);
  if (!size) {
    if (!st || st.isBlockDevice) return;
    size = BigInt(st.size);
    if (a.offset !== undefined) size = (size - BigInt(a.offset)) & ((1n << 64n) - 1n);
  }
  if (size < 512n) {
    deps.stderr(`${PROG}: ${file}: Warning: file is smaller than 512 bytes; the loop device may be useless or invisible for system tools.\n`);
  } else if (size % 512n) {
    deps.stderr(`${PROG}: ${file}: Warning: file does not fit into a 512-byte sector; the end of the file will be ignored.\n`);
  }
}

export function usageText(): string {
  const cols = [...COLUMNS, ...EXTRA_COLUMNS].map((c) => ` ${c.name.padStart(12)}  ${c.help}\n`).join('');
  return `
Usage:
 ${PROG} [options] [<loopdev>]
 ${PROG} [options] -f | <loopdev> <file>

Set up and control loop devices of a loopfs instance.

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
     --overlay[=<file>]        copy-on-write: <file> is only read, writes go to
                                 the overlay file (default: a temporary one)
     --show                    print device name after setup (with -f)
 -v, --verbose                 verbose mode

 -J, --json                    use JSON --list output format
 -l, --list                    list info about all or specified (default)
 -n, --noheadings              don't print headings for --list output
 -O, --output <cols>           specify columns to output for --list
     --output-all              output all columns
     --raw                     use raw --list output format

     --instance <dir|id>       the loopfs instance (default: $LOOPFS, else "default")
     --run-dir <dir>           the run directory of the instances

 -h, --help                    display this help
 -V, --version                 display version

Available output columns:
${cols}
For more details see loopfs-losetup(8).
`;
}
