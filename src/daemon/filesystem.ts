import { constants as fsConstants } from 'node:fs';
import { LoopfsError, errnoOf, toLoopfsError } from '../base/errors';
import { S_IFDIR, S_IFREG, RENAME_EXCHANGE, FUSE_ROOT_ID } from '../fuse/kernel';
import type { Attr, DirEntry, Entry, FileSystem, IoctlResult, NodeId, OpenResult, RequestContext, SetattrRequest, StatfsResult } from '../fuse/types';
import type { BlockIO } from '../engine/device';
import type { LoopDevice } from './devices';
import type { Instance } from './instance';
import { DeviceIoctls } from './ioctl';
import { CONTROL_INO, deviceIno, inoTarget, partitionIno } from './inodes';
import { Caller } from '../sys/caller';

/**
 * The instance filesystem of SPEC §2: `/` (inode 1), `loop-control`
 * (inode 2), `loopN` (inode N+3) and `loopNpM`. It turns FUSE calls into
 * calls on the Instance (device table, engine) and nothing more.
 */

export const LOOP_CTL_ADD = 0x4c80;
export const LOOP_CTL_REMOVE = 0x4c81;
export const LOOP_CTL_GET_FREE = 0x4c82;

const O_ACCMODE = 3;
const O_RDONLY = 0;
const O_DIRECT = fsConstants.O_DIRECT;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;

type Node =
  | { kind: 'root' }
  | { kind: 'control' }
  | { kind: 'device'; dev: LoopDevice }
  | { kind: 'partition'; dev: LoopDevice; part: number; io: BlockIO };

interface Handle {
  node: Node;
  writable: boolean;
  /** Written through since it was opened or last flushed. */
  wrote?: boolean;
}

function fail(errno: 'ENOENT' | 'EPERM' | 'EBUSY' | 'ENXIO' | 'EEXIST' | 'EINVAL' | 'ENOTTY' | 'EOPNOTSUPP' | 'EISDIR', what: string): never {
  throw new LoopfsError(errno, what);
}

export class LoopFilesystem implements FileSystem {
  private readonly handles = new Map<number, Handle>();
  private nextFh = 1;
  private readonly created = Date.now();
  private readonly ioctls: DeviceIoctls;

  constructor(readonly inst: Instance) {
    this.ioctls = new DeviceIoctls(inst);
  }

  /** BLKROSET on this entry: writes through it are EPERM, as on a block device so flagged. */
  private roSet(n: Node): boolean {
    return n.kind === 'device' ? n.dev.roSet : n.kind === 'partition' ? !!n.dev.partRo?.has(n.part) : false;
  }

  private node(ino: NodeId): Node {
    if (ino === FUSE_ROOT_ID) return { kind: 'root' };
    if (ino === CONTROL_INO) return { kind: 'control' };
    const { index, part } = inoTarget(ino);
    const dev = this.inst.table.get(index);
    if (part === undefined) {
      if (dev) return { kind: 'device', dev };
    } else {
      const io = dev?.binding?.windows.get(part);
      if (dev && io) return { kind: 'partition', dev, part, io };
    }
    fail('ENOENT', `inode ${ino}`);
  }

  private byName(parent: NodeId, name: string): Node | undefined {
    if (parent !== FUSE_ROOT_ID) return undefined;
    if (name === 'loop-control') return { kind: 'control' };
    const dev = this.inst.table.byEntryName(name);
    if (dev) return { kind: 'device', dev };
    const m = /^(.*)p(\d+)$/.exec(name);
    if (m) {
      const parentDev = this.inst.table.byEntryName(m[1]!);
      const part = Number(m[2]);
      const io = parentDev?.binding?.windows.get(part);
      if (parentDev && io) return { kind: 'partition', dev: parentDev, part, io };
    }
    return undefined;
  }

  private attr(n: Node): Attr {
    const { uid, gid } = this.inst.owner;
    const times = { atimeMs: this.created, mtimeMs: this.created, ctimeMs: this.created };
    switch (n.kind) {
      case 'root':
        return { ino: FUSE_ROOT_ID, size: 0, mode: S_IFDIR | 0o755, nlink: 2, uid, gid, ...times };
      case 'control':
        return { ino: CONTROL_INO, size: 0, mode: S_IFREG | 0o600, nlink: 1, uid, gid, ...times };
      case 'device': {
        const size = n.dev.binding?.device.size ?? 0;
        return { ino: deviceIno(n.dev.index), size, blocks: Math.ceil(size / 512), mode: S_IFREG | 0o600, nlink: 1, uid, gid, blksize: n.dev.binding?.device.sectorSize ?? 4096, ...times };
      }
      case 'partition':
        return { ino: partitionIno(n.dev.index, n.part), size: n.io.size, blocks: Math.ceil(n.io.size / 512), mode: S_IFREG | 0o600, nlink: 1, uid, gid, blksize: n.io.sectorSize, ...times };
    }
  }

  lookup(_ctx: RequestContext, parent: NodeId, name: string): Entry {
    const n = this.byName(parent, name);
    if (!n) fail('ENOENT', name);
    // Names are never cached: devices come and go through the control socket.
    return { attr: this.attr(n), entryTtl: 0 };
  }

  getattr(_ctx: RequestContext, ino: NodeId): Attr {
    return this.attr(this.node(ino));
  }

  /**
   * Modes and owners are fixed. A size is EINVAL, as truncate(2) of a block
   * device is; open(O_TRUNC), as dd does it, never comes here
   * (FUSE_ATOMIC_O_TRUNC: the OPEN carries the flag, which open ignores).
   */
  setattr(_ctx: RequestContext, ino: NodeId, req: SetattrRequest): Attr {
    if (req.mode !== undefined || req.uid !== undefined || req.gid !== undefined) fail('EPERM', `inode ${ino}`);
    const n = this.node(ino);
    if (req.size !== undefined && n.kind !== 'root') fail('EINVAL', `inode ${ino}: truncate`);
    return this.attr(n);
  }

  readdir(_ctx: RequestContext, ino: NodeId): DirEntry[] {
    if (ino !== FUSE_ROOT_ID) fail('ENOENT', `inode ${ino}`);
    const out: DirEntry[] = [
      { name: '.', ino: FUSE_ROOT_ID, mode: S_IFDIR },
      { name: '..', ino: FUSE_ROOT_ID, mode: S_IFDIR },
      { name: 'loop-control', ino: CONTROL_INO, mode: S_IFREG, attr: this.attr({ kind: 'control' }) },
    ];
    for (const dev of this.inst.table.all()) {
      out.push({ name: dev.name, ino: deviceIno(dev.index), mode: S_IFREG, attr: this.attr({ kind: 'device', dev }) });
      for (const [part, io] of dev.binding?.windows ?? []) {
        out.push({ name: `${dev.name}p${part}`, ino: partitionIno(dev.index, part), mode: S_IFREG, attr: this.attr({ kind: 'partition', dev, part, io }) });
      }
    }
    return out;
  }

  /**
   * As a block device opens: a read-only device opens for writing too, and
   * each write fails EPERM. A bound window of a plain descriptor or of an
   * overlay: the session's threads serve READ/WRITE themselves.
   *
   * Writable O_DIRECT opens are FOPEN_DIRECT_IO: a write crossing the end
   * of the device is then sent piece after piece and comes back short, as
   * on a block device. (The page-cache path's O_DIRECT sends the pieces at
   * once and makes any piece's ENOSPC or short count the whole write's
   * error; reads have no such problem and keep it.)
   *
   * No FUSE passthrough: the kernel would read the backing file at its own
   * size, not the device's, which is fixed at attach (the file may grow or
   * shrink behind it).
   */
  open(_ctx: RequestContext, ino: NodeId, flags: number): OpenResult {
    const n = this.node(ino);
    const writable = (flags & O_ACCMODE) !== O_RDONLY;
    let io: BlockIO | undefined;
    if (n.kind === 'device' || n.kind === 'partition') {
      io = n.kind === 'device' ? n.dev.binding?.device : n.io;
      this.inst.opened(n.dev);
    }
    const fh = this.nextFh++;
    this.handles.set(fh, { node: n, writable });
    const directIo = io !== undefined && writable && (flags & O_DIRECT) !== 0;
    // A BLKROSET entry: every write comes here, to be refused.
    if (this.roSet(n)) return { fh, directIo };
    const range = io?.fileRange?.();
    // An overlay's map goes to the threads with the handle (its id is the tag).
    const backing = range?.overlay ? { ...range, shared: { tag: range.overlay.id, data: range.overlay } } : range;
    return { fh, backing, directIo };
  }

  release(_ctx: RequestContext, _ino: NodeId, fh: number, drained: Promise<void>): void {
    const h = this.handles.get(fh);
    if (!h) return;
    this.handles.delete(fh);
    if (h.node.kind === 'device' || h.node.kind === 'partition') this.inst.closed(h.node.dev, drained);
  }

  private io(fh: number): { io: BlockIO | undefined; name: string } {
    const h = this.handles.get(fh);
    if (!h) fail('EINVAL', `file handle ${fh}`);
    const n = h.node;
    if (n.kind === 'device') return { io: n.dev.binding?.device, name: n.dev.name };
    // A partition handle outlives a detach: its window then reads as gone.
    if (n.kind === 'partition') return { io: n.dev.binding?.windows.get(n.part), name: `${n.dev.name}p${n.part}` };
    if (n.kind === 'control') return { io: undefined, name: 'loop-control' };
    fail('EISDIR', '/');
  }

  async read(_ctx: RequestContext, _ino: NodeId, fh: number, offset: number, size: number, buf: Buffer): Promise<number> {
    const { io } = this.io(fh);
    if (!io) return 0;
    return io.read(buf, size, offset);
  }

  async write(_ctx: RequestContext, _ino: NodeId, fh: number, offset: number, data: Buffer): Promise<number> {
    const { io, name } = this.io(fh);
    if (!io) fail('ENXIO', name);
    const h = this.handles.get(fh)!;
    // A read-only block device refuses each write with EPERM (blkdev_write_iter):
    // bound read-only, or flagged by BLKROSET.
    if (this.roSet(h.node) || io.readOnly) fail('EPERM', name);
    h.wrote = true;
    return io.write(data, data.length, offset);
  }

  /**
   * close(2) of a descriptor that wrote to a whole device re-reads its
   * partition table unless a partition is open: what udev has the kernel do
   * (and sfdisk, fdisk, parted do with BLKRRPART, which a file cannot get).
   * FLUSH comes before close(2) returns, so the entries are there when
   * `sfdisk` exits.
   */
  async flush(_ctx: RequestContext, _ino: NodeId, fh: number): Promise<void> {
    const h = this.handles.get(fh);
    const wroteOnThread = this.inst.kernel.takeWritten(fh);
    if (!h || !(h.wrote || wroteOnThread) || h.node.kind !== 'device') return;
    h.wrote = false;
    const dev = h.node.dev;
    for (const o of this.handles.values()) if (o.node.kind === 'partition' && o.node.dev === dev) return;
    await this.inst.rescanPartitions(dev);
  }

  async fsync(_ctx: RequestContext, _ino: NodeId, fh: number, datasync: boolean): Promise<void> {
    const { io } = this.io(fh);
    await io?.sync(datasync);
  }

  /**
   * fallocate(2) as on a block device (blkdev_fallocate): only zeroing
   * (FALLOC_FL_ZERO_RANGE, with or without KEEP_SIZE) and PUNCH_HOLE|KEEP_SIZE,
   * both done by punching the backing file; a range from inside the device
   * past its end is cut at the end with KEEP_SIZE, else EINVAL; a range not
   * on sector boundaries is EINVAL; a read-only device EPERM.
   */
  async fallocate(_ctx: RequestContext, _ino: NodeId, fh: number, offset: number, length: number, mode: number): Promise<void> {
    const { io, name } = this.io(fh);
    if (!io) fail('ENXIO', name);
    if (mode !== (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) && mode !== FALLOC_FL_ZERO_RANGE && mode !== (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) {
      fail('EOPNOTSUPP', name);
    }
    const size = io.size;
    if (offset >= size) fail('EINVAL', `${name}: fallocate at ${offset}, past the end`);
    if (offset + length > size) {
      if (!(mode & FALLOC_FL_KEEP_SIZE)) fail('EINVAL', `${name}: fallocate past the end`);
      length = size - offset;
    }
    if (offset % io.sectorSize !== 0 || length % io.sectorSize !== 0) fail('EINVAL', `${name}: fallocate not on sector boundaries`);
    if (io.readOnly || this.roSet(this.handles.get(fh)!.node)) fail('EPERM', name);
    return io.discard(offset, length);
  }

  /**
   * LOOP_CTL_* on loop-control, with the kernel's results: ADD → index,
   * REMOVE → 0, GET_FREE → index. On a device or partition entry: the loop
   * and block ioctls (ioctl.ts).
   *
   * Never ENOSYS: the kernel's FUSE takes an ENOSYS answer to an ioctl for
   * "this filesystem has no ioctls", answers ENOTTY and sends no ioctl of
   * the mount again. So where /dev/loop-control says ENOSYS (an unknown
   * code), loop-control says ENOTTY.
   */
  async ioctl(ctx: RequestContext, ino: NodeId, fh: number, cmd: number, arg: bigint): Promise<IoctlResult> {
    try {
      return await this.anyIoctl(ctx, ino, fh, cmd, arg);
    } catch (e) {
      if (errnoOf(e) !== 'ENOSYS') throw e;
      const err = toLoopfsError(e, `inode ${ino}`);
      throw new LoopfsError('ENOTTY', err.what, err.reason);
    }
  }

  private async anyIoctl(ctx: RequestContext, ino: NodeId, fh: number, cmd: number, arg: bigint): Promise<IoctlResult> {
    if (ino === CONTROL_INO) return this.controlIoctl(cmd, arg);
    const h = this.handles.get(fh);
    const n = h?.node;
    if (!h || !n || (n.kind !== 'device' && n.kind !== 'partition')) fail('ENOTTY', `inode ${ino}`);
    const dev = n.dev;
    const partitionOpen = (): boolean => [...this.handles.values()].some((o) => o.node.kind === 'partition' && o.node.dev === dev);
    return this.ioctls.ioctl({ dev, part: n.kind === 'partition' ? n.part : undefined, writable: h.writable, partitionOpen }, new Caller(ctx.pid), cmd, arg);
  }

  private controlIoctl(cmd: number, arg: bigint): IoctlResult {
    // The kernel passes the argument as an int: -1 means "any number" for ADD.
    const n = Number(BigInt.asIntN(32, arg));
    switch (cmd) {
      case LOOP_CTL_ADD:
        return { result: this.inst.addDevice(n < 0 ? undefined : n) };
      case LOOP_CTL_REMOVE:
        if (n < 0) fail('EINVAL', `loop${n}`);
        this.inst.removeDevice(n);
        return { result: 0 };
      case LOOP_CTL_GET_FREE:
        return { result: this.inst.getFree() };
      default:
        fail('ENOTTY', 'loop-control');
    }
  }

  unlink(_ctx: RequestContext, parent: NodeId, name: string): void {
    const n = this.byName(parent, name);
    if (!n) fail('ENOENT', name);
    if (n.kind !== 'device') fail('EPERM', name);
    this.inst.removeDevice(n.dev.index);
  }

  rename(_ctx: RequestContext, parent: NodeId, name: string, newParent: NodeId, newName: string, flags: number): void {
    if (parent !== FUSE_ROOT_ID || newParent !== FUSE_ROOT_ID) fail('EPERM', name);
    if (name === 'loop-control' || newName === 'loop-control') fail('EPERM', 'loop-control');
    if (flags & RENAME_EXCHANGE) fail('EINVAL', name);
    const n = this.byName(parent, name);
    if (!n) fail('ENOENT', name);
    if (n.kind !== 'device') fail('EPERM', name);
    if (this.byName(parent, newName)) fail('EEXIST', newName);
    this.inst.table.rename(name, newName);
  }

  statfs(): StatfsResult {
    const t = this.inst.table;
    let bytes = 0;
    for (const d of t.all()) bytes += d.binding?.device.size ?? 0;
    const bsize = 4096;
    return { blocks: Math.ceil(bytes / bsize), bfree: 0, bavail: 0, files: t.max + 2, ffree: Math.max(0, t.max - t.count), bsize, namelen: 255 };
  }

  // Nothing can be created in an instance but through loop-control (SPEC §2).
  mknod(_c: RequestContext, _p: NodeId, name: string): Entry {
    fail('EPERM', name);
  }
  mkdir(_c: RequestContext, _p: NodeId, name: string): Entry {
    fail('EPERM', name);
  }
  symlink(_c: RequestContext, _p: NodeId, name: string): Entry {
    fail('EPERM', name);
  }
  link(_c: RequestContext, _n: NodeId, _p: NodeId, name: string): Entry {
    fail('EPERM', name);
  }
  async create(_c: RequestContext, _p: NodeId, name: string): Promise<Entry & OpenResult> {
    fail('EPERM', name);
  }
  rmdir(_c: RequestContext, _p: NodeId, name: string): void {
    fail(this.byName(FUSE_ROOT_ID, name) ? 'EPERM' : 'ENOENT', name);
  }
}
