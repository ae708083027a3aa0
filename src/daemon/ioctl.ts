import * as fs from 'node:fs';
import { LoopfsError } from '../base/errors';
import type { IoctlResult } from '../fuse/types';
import { CAP_SYS_ADMIN, type Caller } from '../sys/caller';
import type { BlockIO } from '../engine/device';
import type { LoopDevice } from './devices';
import type { Instance } from './instance';
import * as abi from './loop-abi';

/**
 * The loop driver's and the block layer's ioctls on a device entry (`loopN`)
 * or a partition entry (`loopNpM`), with the kernel's rules and errnos, in
 * the kernel's order of checks (drivers/block/loop.c lo_ioctl and
 * block/ioctl.c blkdev_ioctl of Linux 6.x). Arguments that are pointers are
 * read from and written to the caller's memory; descriptors are taken from
 * the caller (sys/caller.ts). Every change ends in the same Instance
 * operation `loopfs losetup` uses.
 */

/** Who asks, through which entry. */
export interface IoctlTarget {
  dev: LoopDevice;
  /** Partition number when the entry is loopNpM. */
  part?: number;
  /** The entry was opened for writing (the kernel's BLK_OPEN_WRITE). */
  writable: boolean;
  /** Whether some partition entry of the device is open now (BLKRRPART: EBUSY). */
  partitionOpen(): boolean;
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFBLK = 0o060000;
const O_ACCMODE = 3;
const O_RDONLY = 0;
/** BLK_DEF_MAX_SECTORS_CAP (include/linux/blkdev.h): 1280 KiB in 512-byte sectors. */
const MAX_SECTORS_PER_REQUEST = 2560;
/** The page size: where the kernel's initial block size of a block device stops growing. */
const PAGE_SIZE = 4096;
const MAX_SECTOR = 65536;

const ok: IoctlResult = { result: 0 };

function u32(arg: bigint): number {
  return Number(BigInt.asUintN(32, arg));
}

function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(n, 0);
  return b;
}

function u64(n: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n), 0);
  return b;
}

/** A loff_t the engine can hold: larger ones (past any real file) are kept at 2^53 − 1. */
function offsetNumber(n: bigint): number {
  return n > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(n);
}

export class DeviceIoctls {
  constructor(private readonly inst: Instance) {}

  async ioctl(t: IoctlTarget, caller: Caller, cmd: number, arg: bigint): Promise<IoctlResult> {
    const name = t.part === undefined ? t.dev.name : `${t.dev.name}p${t.part}`;
    switch (cmd) {
      // --- the loop driver (lo_ioctl): on a partition it acts on the whole device ---
      case abi.LOOP_SET_FD:
        return this.configure(t, caller, u32(arg), 0, undefined);
      case abi.LOOP_CONFIGURE: {
        const c = abi.decodeConfig(caller.read(arg, abi.LOOP_CONFIG_SIZE));
        return this.configure(t, caller, c.fd, c.blockSize, c.info);
      }
      case abi.LOOP_CHANGE_FD: {
        const taken = caller.takeFd(u32(arg));
        await this.inst.changeFd(t.dev.index, { fd: taken.fd, path: fdPath(taken.fd), writable: false });
        return ok;
      }
      case abi.LOOP_CLR_FD:
        // The caller's own open does not keep the device: with no other opener it goes now.
        await this.inst.detach(t.dev.index, 1);
        return ok;
      case abi.LOOP_SET_STATUS:
      case abi.LOOP_SET_STATUS64: {
        this.mayConfigure(t, caller, name);
        const raw = cmd === abi.LOOP_SET_STATUS ? caller.read(arg, abi.LOOP_INFO_SIZE) : caller.read(arg, abi.LOOP_INFO64_SIZE);
        const info = cmd === abi.LOOP_SET_STATUS ? abi.decodeInfoOld(raw) : abi.decodeInfo64(raw);
        this.bound(t.dev);
        abi.checkInfo(info, name);
        await this.inst.setStatus(t.dev.index, {
          offset: offsetNumber(info.offset),
          sizelimit: offsetNumber(info.sizelimit),
          autoclear: (info.flags & abi.LO_FLAGS_AUTOCLEAR) !== 0,
          partscan: (info.flags & abi.LO_FLAGS_PARTSCAN) !== 0,
          fileName: info.fileName,
        });
        return ok;
      }
      case abi.LOOP_GET_STATUS:
      case abi.LOOP_GET_STATUS64: {
        if (arg === 0n) throw new LoopfsError('EINVAL', name, 'no buffer for the status');
        const info = this.status(t.dev);
        caller.write(arg, cmd === abi.LOOP_GET_STATUS ? abi.encodeInfoOld(info, name) : abi.encodeInfo64(info));
        return ok;
      }
      case abi.LOOP_SET_CAPACITY:
        this.mayConfigure(t, caller, name);
        await this.inst.setCapacity(t.dev.index);
        await this.inst.refresh(t.dev);
        return ok;
      case abi.LOOP_SET_DIRECT_IO:
        this.mayConfigure(t, caller, name);
        this.inst.setDirectIo(t.dev.index, arg !== 0n);
        // The kernel drops the device's page cache when direct I/O changes: so do we.
        await this.inst.refresh(t.dev);
        return ok;
      case abi.LOOP_SET_BLOCK_SIZE: {
        this.mayConfigure(t, caller, name);
        const d = this.bound(t.dev).device;
        if (BigInt(d.sectorSize) === arg) return ok;
        await this.inst.setSectorSize(t.dev.index, arg > BigInt(MAX_SECTOR) ? 0 : Number(arg));
        await this.inst.refresh(t.dev);
        return ok;
      }

      // --- the block layer (blkdev_common_ioctl), on the entry's own bytes ---
      case abi.BLKROSET: {
        this.admin(caller, name);
        const ro = caller.read(arg, 4).readInt32LE(0) !== 0;
        if (t.part === undefined) t.dev.roSet = ro;
        else if (ro) (t.dev.partRo ??= new Set()).add(t.part);
        else t.dev.partRo?.delete(t.part);
        // Handles served outside the FileSystem go back through it, which now says EPERM.
        await this.inst.refresh(t.dev, t.part);
        return ok;
      }
      case abi.BLKROGET:
        caller.write(arg, int32(this.readOnly(t) ? 1 : 0));
        return ok;
      case abi.BLKRRPART: {
        this.admin(caller, name);
        if (t.part !== undefined) throw new LoopfsError('EINVAL', name, 'a partition has no partition table to re-read');
        const b = t.dev.binding;
        if (!b?.partscan) throw new LoopfsError('EINVAL', name, 'the device does not scan partitions (no partscan)');
        // The last close of a partition reaches us a moment after close(2)
        // returned (FUSE sends RELEASE without waiting): give it that moment.
        for (let i = 0; i < 25 && t.partitionOpen(); i++) await new Promise((r) => setTimeout(r, 10));
        if (t.partitionOpen()) throw new LoopfsError('EBUSY', name, 'a partition is open');
        await this.inst.rescanPartitions(t.dev);
        return ok;
      }
      case abi.BLKGETSIZE:
        caller.write(arg, u64(Math.floor(this.io(t).size / 512)));
        return ok;
      case abi.BLKRAGET:
      case abi.BLKFRAGET:
        if (arg === 0n) throw new LoopfsError('EINVAL', name, 'no buffer for the read-ahead');
        caller.write(arg, u64(t.dev.readAheadSectors));
        return ok;
      case abi.BLKRASET:
      case abi.BLKFRASET:
        this.admin(caller, name);
        // Kept in whole pages, as the kernel's ra_pages.
        t.dev.readAheadSectors = Number((BigInt.asUintN(64, arg) * 512n) / BigInt(PAGE_SIZE)) * (PAGE_SIZE / 512);
        return ok;
      case abi.BLKSECTGET: {
        // The request size limit of a queue with no hardware limit (BLK_DEF_MAX_SECTORS_CAP), as a loop device's.
        const b = Buffer.alloc(2);
        b.writeUInt16LE(MAX_SECTORS_PER_REQUEST);
        caller.write(arg, b);
        return ok;
      }
      case abi.BLKGETSIZE64:
        return { result: 0, out: u64(this.io(t).size) };
      case abi.BLKSSZGET:
      case abi.BLKPBSZGET:
      case abi.BLKIOMIN:
        // A loop device's physical block and minimum I/O are its logical block.
        caller.write(arg, int32(this.sectorSize(t.dev)));
        return ok;
      case abi.BLKIOOPT:
      case abi.BLKALIGNOFF:
      case abi.BLKDISCARDZEROES:
        // No optimal I/O size, no alignment offset, discarded data is not promised as zeros.
        caller.write(arg, int32(0));
        return ok;
      case abi.BLKBSZGET:
        // The block device inode's block size: the kernel writes an int through a size_t-sized code.
        return { result: 0, out: int32(initialBlockSize(this.sectorSize(t.dev), this.io(t).size)) };
      case abi.BLKFLSBUF:
        this.admin(caller, name);
        await this.io(t).sync(false);
        await this.inst.refresh(t.dev, t.part);
        return ok;
      case abi.BLKDISCARD:
        await this.discard(t, caller, arg, name);
        return ok;
      case abi.BLKZEROOUT:
        await this.zeroout(t, caller, arg, name);
        return ok;
      case abi.HDIO_GETGEO:
        // The loop driver has no getgeo.
        throw new LoopfsError('ENOTTY', name, 'a loop device has no geometry');
      default:
        // What neither the block layer nor the loop driver knows: lo_ioctl's EINVAL.
        throw new LoopfsError('EINVAL', name, `unknown ioctl 0x${cmd.toString(16)}`);
    }
  }

  /**
   * LOOP_CONFIGURE (and LOOP_SET_FD: a zeroed config with only the fd): the
   * kernel's checks in its order — the fd (EBADF), the file a regular file
   * or block device (EINVAL), the device free (EBUSY), the flags, the struct,
   * the block size (EINVAL) — then Instance.attach, the one attach there is.
   */
  private async configure(t: IoctlTarget, caller: Caller, fd: number, blockSize: number, info: abi.LoopInfo | undefined): Promise<IoctlResult> {
    const name = t.dev.name;
    const taken = caller.takeFd(fd);
    const path = fdPath(taken.fd);
    // Closes the fd when it throws (EBADF for a file of this instance).
    await this.inst.notOwnEntry({ fd: taken.fd, path });
    let owned = true;
    try {
      const st = await fstat(taken.fd);
      const type = st.mode & S_IFMT;
      if (type !== S_IFREG && type !== S_IFBLK) throw new LoopfsError('EINVAL', name, 'the descriptor is not a regular file or block device');
      if (t.dev.bound) throw new LoopfsError('EBUSY', name, 'device is already bound');
      const flags = info?.flags ?? 0;
      if (flags & ~abi.LOOP_CONFIGURE_SETTABLE_FLAGS) throw new LoopfsError('EINVAL', name, `lo_flags 0x${flags.toString(16)} has bits LOOP_CONFIGURE does not set`);
      if (info) abi.checkInfo(info, name);
      if (blockSize !== 0 && !(blockSize >= 512 && blockSize <= MAX_SECTOR && (blockSize & (blockSize - 1)) === 0)) {
        throw new LoopfsError('EINVAL', name, `block size ${blockSize} is not a power of two from 512 to ${MAX_SECTOR}`);
      }
      // A device opened read-only, or a file open read-only, makes a read-only device.
      const writable = (taken.flags & O_ACCMODE) !== O_RDONLY && t.writable;
      owned = false;
      await this.inst.attach(
        {
          file: path,
          index: t.dev.index,
          offset: offsetNumber(info?.offset ?? 0n),
          sizelimit: offsetNumber(info?.sizelimit ?? 0n),
          sectorSize: blockSize || 512,
          readOnly: (flags & abi.LO_FLAGS_READ_ONLY) !== 0 || !writable,
          partscan: (flags & abi.LO_FLAGS_PARTSCAN) !== 0,
          directIo: (flags & abi.LO_FLAGS_DIRECT_IO) !== 0,
          autoclear: (flags & abi.LO_FLAGS_AUTOCLEAR) !== 0,
        },
        { fd: taken.fd, path, writable },
        info?.fileName ?? Buffer.alloc(abi.LO_NAME_SIZE),
      );
    } finally {
      if (owned) fs.closeSync(taken.fd);
    }
    // The caller's next read must see the new size, not the cached 0.
    await this.inst.refresh(t.dev);
    return ok;
  }

  /** LOOP_GET_STATUS64 as loop_get_status() fills it: the backing file's identity now. */
  private status(dev: LoopDevice): abi.LoopInfo {
    const b = this.bound(dev);
    const d = b.device;
    const st = d.stat();
    let flags = 0;
    if (d.readOnly) flags |= abi.LO_FLAGS_READ_ONLY;
    if (b.autoclear) flags |= abi.LO_FLAGS_AUTOCLEAR;
    if (b.partscan) flags |= abi.LO_FLAGS_PARTSCAN;
    if (d.directIo) flags |= abi.LO_FLAGS_DIRECT_IO;
    let fileName = b.fileName;
    if (!fileName) {
      // Bound through `loopfs losetup`: the name util-linux's losetup gives the kernel, the path.
      fileName = Buffer.alloc(abi.LO_NAME_SIZE);
      Buffer.from(d.path).copy(fileName, 0, 0, abi.LO_NAME_SIZE - 1);
    }
    return {
      device: abi.hugeEncodeDev(st.dev),
      inode: st.ino,
      rdevice: abi.hugeEncodeDev(st.rdev),
      offset: BigInt(d.offset),
      sizelimit: BigInt(d.sizelimit),
      number: dev.index,
      encryptType: 0,
      keySize: 0,
      flags,
      fileName,
    };
  }

  /** blk_ioctl_discard(): EBADF, EOPNOTSUPP, EPERM, EFAULT, EINVAL in that order; then the range is punched. */
  private async discard(t: IoctlTarget, caller: Caller, arg: bigint, name: string): Promise<void> {
    if (!t.writable) throw new LoopfsError('EBADF', name, 'not open for writing');
    // A loop device never bound has no discard limit yet; one bound keeps it after.
    if (!t.dev.boundOnce) throw new LoopfsError('EOPNOTSUPP', name, 'the device was never bound: no discard');
    if (this.readOnly(t)) throw new LoopfsError('EPERM', name, 'the device is read-only');
    const [start, len] = range(caller.read(arg, 16));
    const lbs = BigInt(this.sectorSize(t.dev));
    if (len === 0n) throw new LoopfsError('EINVAL', name, 'discard of 0 bytes');
    if ((start | len) % lbs !== 0n) throw new LoopfsError('EINVAL', name, `discard range not aligned to the ${lbs}-byte sector`);
    const io = this.io(t);
    if (start + len >= 1n << 64n || start + len > BigInt(io.size)) throw new LoopfsError('EINVAL', name, 'discard range past the end of the device');
    await io.discard(Number(start), Number(len));
    await this.inst.refresh(t.dev, t.part);
  }

  /** blk_ioctl_zeroout(): EBADF, EFAULT, EINVAL, then EPERM on a read-only device; the range reads zeros after. */
  private async zeroout(t: IoctlTarget, caller: Caller, arg: bigint, name: string): Promise<void> {
    if (!t.writable) throw new LoopfsError('EBADF', name, 'not open for writing');
    const [start, len] = range(caller.read(arg, 16));
    const end = BigInt.asUintN(64, start + len - 1n);
    const io = this.io(t);
    if (start % 512n !== 0n || len % 512n !== 0n) throw new LoopfsError('EINVAL', name, 'zero-out range not aligned to 512 bytes');
    if (end >= BigInt(io.size) || end < start) throw new LoopfsError('EINVAL', name, 'zero-out range past the end of the device');
    if (this.readOnly(t)) throw new LoopfsError('EPERM', name, 'the device is read-only');
    await io.discard(Number(start), Number(len));
    await this.inst.refresh(t.dev, t.part);
  }

  /** SET_STATUS, SET_CAPACITY, SET_DIRECT_IO, SET_BLOCK_SIZE: an entry open for writing, or CAP_SYS_ADMIN. */
  private mayConfigure(t: IoctlTarget, caller: Caller, name: string): void {
    if (!t.writable && !caller.capable(CAP_SYS_ADMIN)) throw new LoopfsError('EPERM', name, 'not open for writing and no CAP_SYS_ADMIN');
  }

  /** BLKROSET, BLKRRPART, BLKFLSBUF: CAP_SYS_ADMIN or EACCES. */
  private admin(caller: Caller, name: string): void {
    if (!caller.capable(CAP_SYS_ADMIN)) throw new LoopfsError('EACCES', name, 'CAP_SYS_ADMIN is needed');
  }

  private bound(dev: LoopDevice): NonNullable<LoopDevice['binding']> {
    if (!dev.binding) throw new LoopfsError('ENXIO', dev.name, 'device is not bound');
    return dev.binding;
  }

  /** The entry's bytes; an unbound device (or a gone partition) has none: size 0. */
  private io(t: IoctlTarget): BlockIO {
    const b = t.dev.binding;
    const io = t.part === undefined ? b?.device : b?.windows.get(t.part);
    return io ?? EMPTY;
  }

  private sectorSize(dev: LoopDevice): number {
    return dev.binding?.device.sectorSize ?? 512;
  }

  /** bdev_read_only(): the entry's BLKROSET flag or the device bound read-only. */
  private readOnly(t: IoctlTarget): boolean {
    const flag = t.part === undefined ? t.dev.roSet : !!t.dev.partRo?.has(t.part);
    return flag || !!t.dev.binding?.device.readOnly;
  }
}

function range(b: Buffer): [bigint, bigint] {
  return [b.readBigUInt64LE(0), b.readBigUInt64LE(8)];
}

/** fstat on the libuv pool: the file may be on a FUSE mount this thread serves. */
function fstat(fd: number): Promise<fs.Stats> {
  return new Promise((res, rej) => fs.fstat(fd, (e, st) => (e ? rej(e) : res(st))));
}

function fdPath(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return `fd:${fd}`;
  }
}

const EMPTY: BlockIO = {
  size: 0,
  sectorSize: 512,
  readOnly: false,
  read: async () => 0,
  write: async () => {
    throw new LoopfsError('ENXIO', 'device', 'device is not bound');
  },
  sync: async () => {},
  discard: async () => {},
};

/**
 * The block size a block device starts with (block/bdev.c set_init_blocksize):
 * the logical block size, doubled while the size stays a multiple of it, up
 * to the page size.
 */
export function initialBlockSize(sectorSize: number, size: number): number {
  let b = sectorSize;
  while (b < PAGE_SIZE && size % (b * 2) === 0) b *= 2;
  return b;
}

