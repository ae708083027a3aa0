import * as fs from 'node:fs';
import { LoopfsError, toLoopfsError } from '../base/errors';
import * as os from 'node:os';
import type { AttachRequest, AttachResult, OverlayAction } from '../core/api';
import type { DeviceIndex, DeviceInfo, OverlayInfo, PartitionInfo } from '../base/types';
import { findOverlap } from '../base/loopdev';
import { Device, type AttachOptions } from '../engine/device';
import { tmpDelta, type Overlay } from '../engine/overlay';
import { scanPartitions, PartitionWindow } from '../engine/partitions';
import type { BlockIO } from '../engine/window';
import { DeviceTable, NO_WINDOWS, type Binding, type LoopDevice, type TableHooks } from './devices';
import { deviceIno, partitionIno } from './inodes';
import { FUSE_ROOT_ID } from '../fuse/kernel';
import { connectionOfDeviceFd } from '../fuse/mount';
import { deviceOfFd } from '../sys/libc';
import { backingAccess } from './backing';
import { collectWhenQuiet } from './heap';
import type { KernelNotifier } from '../fuse/types';

/**
 * One instance as the daemon holds it: the device table plus the engine
 * devices bound into it. Every entry point (FUSE ioctls on loop-control, the
 * control socket, unlink) goes through these methods, so the rules of SPEC §2
 * and §3 live in one place.
 */

export interface Owner {
  uid: number;
  gid: number;
}

export interface BackingFd {
  fd: number;
  /** Absolute path, as the client resolved it. */
  path: string;
  writable: boolean;
}

/** What LOOP_SET_STATUS may change on a bound device. */
export interface StatusChange {
  offset: number;
  sizelimit: number;
  autoclear: boolean;
  /** Set only: a device that scans partitions keeps doing so. */
  partscan: boolean;
  fileName: Buffer;
}

export class Instance {
  readonly table: DeviceTable;
  /** Devices being set up by an attach that has not finished yet. */
  private readonly settingUp = new Set<DeviceIndex>();

  constructor(
    readonly id: string,
    readonly mountpoint: string,
    readonly owner: Owner,
    max: number,
    /** The FUSE session serving the instance: the kernel's caches to keep honest. */
    readonly kernel: KernelNotifier,
    limits: Pick<TableHooks, 'reserve' | 'release'> = {},
    /** Where unnamed overlay deltas are made (O_TMPFILE): the instance's private state directory. */
    readonly overlayDir?: string,
  ) {
    this.table = new DeviceTable(max, { ...limits, changed: (dev, what, oldName) => this.changed(dev, what, oldName) });
  }

  /** Keeps the kernel's caches honest when devices change behind its back. */
  private changed(dev: LoopDevice, what: string, oldName?: string): void {
    collectWhenQuiet();
    const s = this.kernel;
    const ino = deviceIno(dev.index);
    if (what === 'removed') void s.deleteEntry(FUSE_ROOT_ID, ino, dev.name);
    else if (what === 'renamed' && oldName) void s.invalidateEntry(FUSE_ROOT_ID, oldName);
    void s.invalidateNode(ino);
  }

  addDevice(index?: DeviceIndex): DeviceIndex {
    return this.table.add(index).index;
  }

  removeDevice(index: DeviceIndex): void {
    if (this.settingUp.has(index)) throw new LoopfsError('EBUSY', `loop${index}`, 'device is being set up');
    this.table.remove(index);
  }

  getFree(): DeviceIndex {
    return this.freeDevice().index;
  }

  /** The lowest unbound device not being set up (the table keeps them in a set), or a new one. */
  private freeDevice(): LoopDevice {
    return this.table.getFree();
  }

  list(): DeviceInfo[] {
    return this.table.all().map((d) => this.infoOf(d));
  }

  info(index: DeviceIndex): DeviceInfo {
    return this.infoOf(this.mustGet(index));
  }

  /** The table's info, with the backing file named as it is now (util-linux reads the kernel's d_path). */
  private infoOf(dev: LoopDevice): DeviceInfo {
    const info = this.table.info(dev, this.mountpoint);
    if (dev.binding) info.backFile = dev.binding.device.currentPath();
    const o = dev.binding?.device.overlay;
    if (o) info.overlay = overlayInfo(o);
    return info;
  }

  private mustGet(index: DeviceIndex): LoopDevice {
    const dev = this.table.get(index);
    if (!dev) throw new LoopfsError('ENXIO', `loop${index}`, 'no such device');
    return dev;
  }

  /**
   * LOOP_CONFIGURE: picks the device (the one named, or the lowest free,
   * reserved synchronously so concurrent attaches never share it), builds
   * the engine device, scans partitions, binds. On any failure nothing is
   * left: the backing fd is closed and a device created here is removed.
   * An fd not open for reading (O_PATH, O_WRONLY) is EBADF.
   */
  async attach(req: AttachRequest, backing: BackingFd, fileName?: Buffer, delta?: { fd: number; path: string }): Promise<AttachResult> {
    let created = false;
    // A named overlay delta is ours to close until the engine takes it.
    let deltaFd = delta?.fd;
    const dropDelta = (): void => {
      if (deltaFd !== undefined) closeQuietly(deltaFd);
      deltaFd = undefined;
    };
    let dev: LoopDevice;
    try {
      // Whoever handed the fd over, it must be open for reading (and writing, to be writable).
      if (!backingAccess(backing.fd, backing.path).writable) backing = { ...backing, writable: false };
      if (req.index === undefined) {
        const before = this.table.count;
        dev = this.freeDevice();
        created = this.table.count > before;
      } else {
        dev = this.table.get(req.index) ?? (created = true, this.table.add(req.index));
        if (dev.bound || this.settingUp.has(dev.index)) throw new LoopfsError('EBUSY', dev.name, 'device is already bound');
      }
    } catch (e) {
      closeQuietly(backing.fd);
      dropDelta();
      throw e;
    }
    this.settingUp.add(dev.index);
    this.table.hold(dev, true);
    let device: Device | undefined;
    try {
      await this.notOwnEntry(backing);
      let overlay: AttachOptions['overlay'];
      if (req.overlay && delta) {
        deltaFd = undefined; // notOwnEntry closes it on failure, the engine after
        await this.notOwnEntry(delta);
        overlay = { delta: { ...delta, named: true } };
      } else if (req.overlay) {
        overlay = { delta: tmpDelta(this.overlayDir ?? os.tmpdir()) };
      }
      // From this call on the engine owns the backing fd (it closes it on failure).
      device = await Device.attach(
        { fd: backing.fd, path: backing.path, writable: backing.writable && !req.readOnly },
        // readOnly is what was asked: the engine itself falls back to read-only (and warns) for a read-only fd.
        { offset: req.offset ?? 0, sizelimit: req.sizelimit ?? 0, sectorSize: req.sectorSize ?? 512, readOnly: !!req.readOnly, directIo: !!req.directIo, overlay },
      );
      if (req.nooverlap) {
        const reuse = this.overlapping(device, req.index === undefined);
        if (reuse) {
          // util-linux -L: an identical window is reused (and loses autoclear), not duplicated.
          await device.close();
          device = undefined;
          if (created) this.table.remove(dev.index);
          reuse.binding!.autoclear = false;
          return { device: this.infoOf(reuse), warnings: [] };
        }
      }
      const warnings = [...device.warnings];
      const binding: Binding = { device, autoclear: !!req.autoclear, partscan: !!req.partscan, partitions: [], windows: NO_WINDOWS, fileName };
      if (req.partscan) {
        const table = await scanPartitions(device);
        if (table.warning) warnings.push(table.warning);
        binding.partitions = table.partitions;
        binding.windows = windowsOf(device, table.partitions);
      }
      this.table.bind(dev, binding);
      for (const p of binding.partitions) void this.kernel.invalidateEntry(FUSE_ROOT_ID, `${dev.name}p${p.number}`);
      return { device: this.infoOf(dev), warnings };
    } catch (e) {
      dropDelta();
      if (device) await device.close().catch(() => {});
      if (created && !dev.bound && this.table.get(dev.index) === dev) this.table.remove(dev.index);
      throw e;
    } finally {
      this.settingUp.delete(dev.index);
      this.table.hold(dev, false);
    }
  }

  /**
   * EBADF for a backing file on this instance itself (one of its own
   * entries), closing it: the daemon would wait on itself, as a loop device
   * backed by itself would (the kernel's EBADF). Told by the mount the
   * descriptor is on and the FUSE connection this daemon serves, without a
   * stat: a stat of our own file is answered by this very process, and many
   * of them at once (64 racing LOOP_SET_FDs) would hold every thread that
   * could read the answer's request.
   */
  async notOwnEntry(backing: { fd: number; path: string }): Promise<void> {
    try {
      // Our mount's device is 0:N, N its connection: compared with the fd's, as the kernel has it cached.
      const own = connectionOfDeviceFd(this.kernel.fd);
      let ours: boolean;
      if (own !== undefined) {
        const dev = deviceOfFd(backing.fd);
        ours = dev.major === 0 && dev.minor === own;
      } else {
        // A kernel that names no connection: ask by stat, asynchronously.
        const st = await new Promise<fs.BigIntStats>((res, rej) => fs.fstat(backing.fd, { bigint: true }, (e, s) => (e ? rej(e) : res(s))));
        const mine = await new Promise<bigint | undefined>((res) => fs.stat(this.mountpoint, { bigint: true }, (e, s) => res(e ? undefined : s.dev)));
        ours = st.dev === mine;
      }
      if (ours) throw new LoopfsError('EBADF', backing.path, 'a file of this instance cannot back one of its devices');
    } catch (e) {
      closeQuietly(backing.fd);
      throw toLoopfsError(e, backing.path);
    }
  }

  /**
   * --nooverlap (findOverlap): the device mapping exactly this window of the
   * same file (to reuse, when the device is to be found), or EBUSY when
   * another device maps an overlapping region.
   */
  private overlapping(d: Device, findsDevice: boolean): LoopDevice | undefined {
    const bound = this.table.all().flatMap((dev) => {
      const b = dev.binding?.device;
      return b ? [{ dev, b, offset: b.offset, sizelimit: b.sizelimit, readOnly: b.readOnly, overlay: b.overlay }] : [];
    });
    const found = findOverlap(bound, (o) => o.b.dev === d.dev && o.b.ino === d.ino, d, findsDevice);
    if (found?.kind === 'read-only') throw new LoopfsError('EBUSY', d.path, `overlapping read-only loop device exists (${found.device.dev.name})`);
    if (found?.kind === 'overlap') throw new LoopfsError('EBUSY', d.path, `overlapping loop device exists (${found.device.dev.name})`);
    return found?.device.dev;
  }

  /**
   * LOOP_CLR_FD: unbinds now, or — while open by others than the caller
   * (`callerOpens`: the caller's own opens, 1 for an ioctl) — marks
   * autoclear and unbinds at last close.
   */
  async detach(index: DeviceIndex, callerOpens = 0): Promise<void> {
    const dev = this.mustGet(index);
    if (!dev.binding) throw new LoopfsError('ENXIO', dev.name, 'device is not bound');
    if (dev.openCount > callerOpens) {
      dev.binding.autoclear = true;
      return;
    }
    await this.unbind(dev);
  }

  async detachAll(): Promise<void> {
    for (const dev of this.table.all()) if (dev.bound) await this.detach(dev.index);
  }

  private async unbind(dev: LoopDevice): Promise<void> {
    const parts = dev.binding?.partitions ?? [];
    const b = this.table.unbind(dev);
    for (const p of parts) void this.kernel.deleteEntry(FUSE_ROOT_ID, partitionIno(dev.index, p.number), `${dev.name}p${p.number}`);
    const overlay = b?.device.overlay;
    if (overlay) this.kernel.unshare(overlay.mapId);
    await b?.device.close();
  }

  /**
   * BLKRRPART, as udev has the kernel do when a writer of a whole disk closes
   * it: re-reads the partition table of a partscan device and publishes the
   * loopNpM entries anew. The caller makes sure no partition is open (the
   * kernel's EBUSY). A table that cannot be read leaves the entries as they are.
   */
  async rescanPartitions(dev: LoopDevice): Promise<void> {
    const b = dev.binding;
    if (!b?.partscan) return;
    let parts: PartitionInfo[];
    let windows: ReadonlyMap<number, BlockIO>;
    try {
      parts = (await scanPartitions(b.device)).partitions;
      windows = windowsOf(b.device, parts);
    } catch {
      return;
    }
    if (dev.binding !== b) return;
    const old = b.partitions;
    b.partitions = parts;
    b.windows = windows;
    const s = this.kernel;
    for (const p of old) {
      if (!windows.has(p.number)) void s.deleteEntry(FUSE_ROOT_ID, partitionIno(dev.index, p.number), `${dev.name}p${p.number}`);
    }
    for (const p of parts) {
      void s.invalidateEntry(FUSE_ROOT_ID, `${dev.name}p${p.number}`);
      void s.invalidateNode(partitionIno(dev.index, p.number));
    }
  }

  /**
   * LOOP_SET_STATUS: a new window (the size figured anew, partitions read
   * anew), autoclear set or cleared, partscan set (never cleared), the file
   * name. The caller has checked the struct (loop-abi.ts).
   */
  async setStatus(index: DeviceIndex, st: StatusChange): Promise<DeviceInfo> {
    const dev = this.mustGet(index);
    const b = dev.binding;
    if (!b) throw new LoopfsError('ENXIO', dev.name, 'device is not bound');
    const d = b.device;
    const moved = d.offset !== st.offset || d.sizelimit !== st.sizelimit;
    if (moved) d.setWindow(st.offset, st.sizelimit);
    b.fileName = st.fileName;
    b.autoclear = st.autoclear;
    const scan = st.partscan && !b.partscan;
    if (st.partscan) b.partscan = true;
    if (moved) await this.kernel.invalidateNode(deviceIno(dev.index));
    if (scan || (moved && b.partscan)) await this.rescanPartitions(dev);
    return this.infoOf(dev);
  }

  /**
   * LOOP_CHANGE_FD: a read-only device moves to another file of the same
   * size (EINVAL otherwise); the engine's old file is closed. Owns `backing`.
   */
  async changeFd(index: DeviceIndex, backing: BackingFd): Promise<DeviceInfo> {
    let dev: LoopDevice;
    try {
      dev = this.mustGet(index);
      if (!dev.binding) throw new LoopfsError('ENXIO', dev.name, 'device is not bound');
      if (!dev.binding.device.readOnly) throw new LoopfsError('EINVAL', dev.name, 'only a read-only device can change its backing file');
      if (dev.binding.device.overlay) throw new LoopfsError('EINVAL', dev.name, 'an overlay device keeps its base (its delta holds blocks of that file)');
    } catch (e) {
      closeQuietly(backing.fd);
      throw e;
    }
    const b = dev.binding;
    const old = b.device;
    await this.notOwnEntry(backing);
    const next = await Device.attach(
      { fd: backing.fd, path: backing.path, writable: false },
      { offset: old.offset, sizelimit: old.sizelimit, sectorSize: old.sectorSize, readOnly: true, directIo: old.directIo },
    );
    const oldSize = await old.currentSize().catch(() => -1);
    if (next.size !== oldSize || dev.binding !== b) {
      await next.close();
      throw new LoopfsError('EINVAL', dev.name, `the new backing file gives ${next.size} bytes, not ${oldSize}`);
    }
    b.device = next;
    b.windows = windowsOf(next, b.partitions);
    await this.kernel.invalidateNode(deviceIno(dev.index));
    await old.close();
    if (b.partscan) await this.rescanPartitions(dev);
    return this.infoOf(dev);
  }

  async setCapacity(index: DeviceIndex): Promise<DeviceInfo> {
    const dev = this.mustGet(index);
    if (!dev.binding) throw new LoopfsError('ENXIO', dev.name, 'device is not bound');
    await dev.binding.device.refreshCapacity();
    // Done when it returns, as LOOP_SET_CAPACITY is: a descriptor open all along sees the new size at once.
    await this.kernel.invalidateNode(deviceIno(dev.index));
    return this.infoOf(dev);
  }

  /** LOOP_SET_DIRECT_IO: EINVAL, with the reason, when the backing file cannot do O_DIRECT. */
  setDirectIo(index: DeviceIndex, on: boolean): DeviceInfo {
    const dev = this.mustGet(index);
    const d = dev.binding?.device;
    if (!d) throw new LoopfsError('ENXIO', dev.name, 'device is not bound');
    const before = d.warnings.length;
    d.directIo = on;
    if (on && !d.directIo) {
      const why = d.warnings.slice(before).join('; ').replace(/^.*?set direct io failed: /, '').replace(/\s*\(E[A-Z0-9]+\)$/, '');
      throw new LoopfsError('EINVAL', dev.name, why || 'direct I/O is not possible');
    }
    return this.infoOf(dev);
  }

  /** LOOP_SET_BLOCK_SIZE: the size is rounded down to the new sector and partitions are read anew. */
  async setSectorSize(index: DeviceIndex, size: number): Promise<DeviceInfo> {
    const dev = this.mustGet(index);
    const d = dev.binding?.device;
    if (!d) throw new LoopfsError('ENXIO', dev.name, 'device is not bound');
    d.setSectorSize(size);
    await this.kernel.invalidateNode(deviceIno(dev.index));
    await this.rescanPartitions(dev);
    return this.infoOf(dev);
  }

  /**
   * Tells the kernel a device (or one partition) entry changed behind its
   * back: cached size and pages dropped, handles served outside the
   * FileSystem sent back to it. Resolves once the kernel has it.
   */
  async refresh(dev: LoopDevice, part?: number): Promise<void> {
    await this.kernel.invalidateNode(part === undefined ? deviceIno(dev.index) : partitionIno(dev.index, part));
  }

  /**
   * `loopfs overlay ACTION DEV`: status; discard (the device reads its base
   * again); commit (the changes written into the base through `baseRw`, the
   * caller's read-write fd of it, then discarded). Discard and commit want
   * the device closed and writable; commit also a base that nothing else
   * uses (no other device of this instance, no other overlay anywhere:
   * overlays hold a shared flock on their base).
   */
  async overlayOp(index: DeviceIndex, action: OverlayAction, baseRw?: number): Promise<OverlayInfo> {
    const dev = this.mustGet(index);
    const b = dev.binding;
    const o = b?.device.overlay;
    if (!b || !o) throw new LoopfsError('EINVAL', dev.name, 'not an overlay device');
    if (action === 'status') return overlayInfo(o);
    if (dev.openCount > 0) throw new LoopfsError('EBUSY', dev.name, 'device is open');
    if (b.device.readOnly) throw new LoopfsError('EROFS', dev.name, 'the device is read-only');
    if (action === 'commit') {
      if (baseRw === undefined) throw new LoopfsError('EBADF', dev.name, 'no base file descriptor');
      const st = fs.fstatSync(baseRw);
      if (st.dev !== b.device.dev || st.ino !== b.device.ino) throw new LoopfsError('EINVAL', dev.name, 'the file given is not the base of this overlay');
      for (const other of this.table.all()) {
        const ob = other.binding;
        if (other !== dev && ob && ob.device.dev === b.device.dev && ob.device.ino === b.device.ino) {
          throw new LoopfsError('EBUSY', b.device.path, `the base is in use by ${other.name}`);
        }
      }
      await o.commit(baseRw);
    } else {
      await o.reset();
    }
    await this.refresh(dev);
    await this.rescanPartitions(dev);
    return overlayInfo(o);
  }

  opened(dev: LoopDevice): void {
    dev.openCount++;
  }

  /**
   * A close: counted at once (LOOP_CLR_FD right after it sees one opener
   * fewer, as on a kernel loop device); the autoclear of the last one unbinds
   * once the handle's I/O has drained.
   */
  closed(dev: LoopDevice, drained: Promise<void> = Promise.resolve()): void {
    dev.openCount = Math.max(0, dev.openCount - 1);
    const b = dev.binding;
    if (dev.openCount === 0 && b?.autoclear) {
      void drained.then(() => (dev.openCount === 0 && dev.binding === b ? this.unbind(dev) : undefined));
    }
  }

  get openDevices(): number {
    return this.table.all().filter((d) => d.openCount > 0).length;
  }

  get boundDevices(): number {
    return this.table.all().filter((d) => d.bound).length;
  }

  /** Closes every backing file; called when the instance goes away. */
  async shutdown(): Promise<void> {
    for (const dev of this.table.all()) {
      const b = this.table.unbind(dev);
      await b?.device.close().catch(() => {});
    }
  }
}

export type { BlockIO };

/**
 * Closes on the libuv pool: the file may be on this instance's own mount,
 * whose FLUSH this thread would have to answer while waiting for it.
 */
function overlayInfo(o: Overlay): OverlayInfo {
  const s = o.status();
  return { delta: s.delta ?? null, changedBytes: s.changedBytes, blockSize: s.blockSize, allocatedBytes: s.allocatedBytes };
}

/** One window per partition, by number (the shared empty map when there are none). */
function windowsOf(device: Device, parts: PartitionInfo[]): ReadonlyMap<number, BlockIO> {
  return parts.length === 0 ? NO_WINDOWS : new Map(parts.map((p) => [p.number, new PartitionWindow(device, p)]));
}

function closeQuietly(fd: number): void {
  fs.close(fd, () => {
    /* already closed or not: nothing to do */
  });
}
