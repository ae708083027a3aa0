import { LoopfsError } from '../base/errors';
import { MAX_INDEX } from '../base/loopdev';
import type { DeviceIndex, DeviceInfo, PartitionInfo } from '../base/types';
import type { Device, BlockIO } from '../engine/device';

/**
 * The device table of one instance: which loopN exist, their entry names,
 * what each is bound to and how often it is open. All mutations happen on
 * the daemon's one JS thread, so "find the lowest free device and bind it"
 * is atomic with respect to every other request (SPEC §6: no two
 * `losetup -f` ever get the same device).
 */


export interface Binding {
  device: Device;
  autoclear: boolean;
  partscan: boolean;
  partitions: PartitionInfo[];
  /** One window per partition, by partition number; replaced whole, never changed (NO_WINDOWS is shared). */
  windows: ReadonlyMap<number, BlockIO>;
  /** lo_file_name as LOOP_GET_STATUS returns it (LO_NAME_SIZE bytes); by default the path, as losetup sets it. */
  fileName?: Buffer;
}

/** The windows of a binding without partitions: one empty map for all of them. */
export const NO_WINDOWS: ReadonlyMap<number, BlockIO> = new Map();

export class LoopDevice {
  name: string;
  binding: Binding | undefined;
  openCount = 0;
  /**
   * BLKROSET on the device entry (`partRo`: on partition entries): writes
   * through it fail EPERM. Like the kernel's block device flag, it outlives
   * a binding; a partition's goes with the partition.
   */
  roSet = false;
  /** Made by the first BLKROSET on a partition entry. */
  partRo: Set<number> | undefined;
  /**
   * Read-ahead in 512-byte sectors (BLKRAGET/BLKRASET, one value for the
   * disk and its partitions, as the kernel's bdi): the block layer's default
   * for a queue without an optimal I/O size, 128 KiB.
   */
  readAheadSectors = 256;
  /** Bound at least once: the kernel's queue keeps the discard limit a binding gave it. */
  boundOnce = false;
  constructor(readonly index: DeviceIndex) {
    this.name = `loop${index}`;
  }
  get bound(): boolean {
    return this.binding !== undefined;
  }
}

export interface TableHooks {
  /** Called before a device is created; throws (ENOSPC) when a per-user limit forbids it. */
  reserve?(count: number): void;
  /** Called after a device is removed, to give back what reserve took. */
  release?(count: number): void;
  /** The set of devices or names changed (kernel caches to invalidate). */
  changed?(dev: LoopDevice, what: 'added' | 'removed' | 'bound' | 'unbound' | 'renamed', oldName?: string): void;
}

/**
 * A set of device numbers (0..MAX_INDEX) answering "lowest member" in three
 * word lookups: a bitmap, plus a bitmap of its non-zero words, plus one of
 * those. 132 KiB, whatever the number of devices.
 */
export class IndexSet {
  private readonly l0 = new Uint32Array((MAX_INDEX + 1) >>> 5);
  private readonly l1 = new Uint32Array((MAX_INDEX + 1) >>> 10);
  private readonly l2 = new Uint32Array((MAX_INDEX + 1) >>> 15);

  /** Every number a member (fill) or none. */
  constructor(fill = false) {
    if (fill) {
      this.l0.fill(0xffffffff);
      this.l1.fill(0xffffffff);
      this.l2.fill(0xffffffff);
    }
  }

  has(i: number): boolean {
    return (this.l0[i >>> 5]! & (1 << (i & 31))) !== 0;
  }

  add(i: number): void {
    this.l0[i >>> 5]! |= 1 << (i & 31);
    this.l1[i >>> 10]! |= 1 << ((i >>> 5) & 31);
    this.l2[i >>> 15]! |= 1 << ((i >>> 10) & 31);
  }

  delete(i: number): void {
    const w = i >>> 5;
    if ((this.l0[w]! &= ~(1 << (i & 31))) !== 0) return;
    if ((this.l1[w >>> 5]! &= ~(1 << (w & 31))) !== 0) return;
    this.l2[w >>> 10]! &= ~(1 << ((w >>> 5) & 31));
  }

  /** The lowest member, or -1. */
  first(): number {
    for (let k = 0; k < this.l2.length; k++) {
      const top = this.l2[k]!;
      if (top === 0) continue;
      const j = (k << 5) + lowBit(top);
      const w = (j << 5) + lowBit(this.l1[j]!);
      return (w << 5) + lowBit(this.l0[w]!);
    }
    return -1;
  }
}

function lowBit(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/** The device number a name stands for when it is exactly `loopN` (which keeps N from being created). */
function canonicalIndex(name: string): number {
  const m = /^loop(0|[1-9]\d{0,6})$/.exec(name);
  const i = m ? Number(m[1]) : -1;
  return i <= MAX_INDEX ? i : -1;
}

export class DeviceTable {
  private readonly byIndex = new Map<DeviceIndex, LoopDevice>();
  private readonly byName = new Map<string, LoopDevice>();
  /** Devices that exist, are unbound and are not held: LOOP_CTL_GET_FREE is its lowest member. */
  private readonly free = new IndexSet();
  /** Numbers neither used by a device nor taken by an entry name `loopN`: LOOP_CTL_ADD's lowest. */
  private readonly unused = new IndexSet(true);
  /** Devices held by an attach in progress: not free although unbound. */
  private readonly held = new Set<DeviceIndex>();

  constructor(public max: number, private readonly hooks: TableHooks = {}) {}

  get count(): number {
    return this.byIndex.size;
  }

  get(index: DeviceIndex): LoopDevice | undefined {
    return this.byIndex.get(index);
  }

  byEntryName(name: string): LoopDevice | undefined {
    return this.byName.get(name);
  }

  all(): LoopDevice[] {
    return [...this.byIndex.values()].sort((a, b) => a.index - b.index);
  }

  /** LOOP_CTL_ADD: a specific index, or (undefined) the lowest unused one. */
  add(index?: DeviceIndex): LoopDevice {
    if (index !== undefined && (!Number.isSafeInteger(index) || index < 0 || index > MAX_INDEX)) {
      throw new LoopfsError('EINVAL', `loop${index}`, `device number must be between 0 and ${MAX_INDEX}`);
    }
    if (index !== undefined && this.byIndex.has(index)) throw new LoopfsError('EEXIST', `loop${index}`, 'device exists');
    if (this.byIndex.size >= this.max) {
      throw new LoopfsError('ENOSPC', index === undefined ? 'new device' : `loop${index}`, `instance limit reached (max=${this.max})`);
    }
    const i = index ?? this.lowestUnused();
    const name = `loop${i}`;
    if (this.byName.has(name)) throw new LoopfsError('EEXIST', name, 'an entry of that name exists (a renamed device)');
    this.hooks.reserve?.(1);
    const dev = new LoopDevice(i);
    this.byIndex.set(i, dev);
    this.byName.set(dev.name, dev);
    this.unused.delete(i);
    this.refreshFree(dev);
    this.hooks.changed?.(dev, 'added');
    return dev;
  }

  /** LOOP_CTL_REMOVE: only an unbound device nobody has open. */
  remove(index: DeviceIndex): void {
    const dev = this.byIndex.get(index);
    if (!dev) throw new LoopfsError('ENODEV', `loop${index}`, 'no such device');
    if (dev.bound || dev.openCount > 0) throw new LoopfsError('EBUSY', dev.name, dev.bound ? 'device is bound' : 'device is open');
    this.byIndex.delete(index);
    this.byName.delete(dev.name);
    this.free.delete(index);
    this.held.delete(index);
    this.refreshUnused(index);
    this.refreshUnused(canonicalIndex(dev.name));
    this.hooks.release?.(1);
    this.hooks.changed?.(dev, 'removed');
  }

  /** LOOP_CTL_GET_FREE: the lowest unbound device not held, created when there is none. */
  getFree(): LoopDevice {
    const i = this.free.first();
    return i >= 0 ? this.byIndex.get(i)! : this.add();
  }

  /** Keeps an unbound device out of getFree() while an attach sets it up (or gives it back). */
  hold(dev: LoopDevice, on: boolean): void {
    if (on) this.held.add(dev.index);
    else this.held.delete(dev.index);
    this.refreshFree(dev);
  }

  private refreshFree(dev: LoopDevice): void {
    if (this.byIndex.get(dev.index) === dev && !dev.bound && !this.held.has(dev.index)) this.free.add(dev.index);
    else this.free.delete(dev.index);
  }

  private refreshUnused(i: number): void {
    if (i < 0 || i > MAX_INDEX) return;
    if (this.byIndex.has(i) || this.byName.has(`loop${i}`)) this.unused.delete(i);
    else this.unused.add(i);
  }

  rename(from: string, to: string): void {
    const dev = this.byName.get(from);
    if (!dev) throw new LoopfsError('ENOENT', from, 'no such entry');
    if (from === to) return;
    if (this.byName.has(to)) throw new LoopfsError('EEXIST', to, 'an entry of that name exists');
    this.byName.delete(from);
    dev.name = to;
    this.byName.set(to, dev);
    this.refreshUnused(canonicalIndex(from));
    this.refreshUnused(canonicalIndex(to));
    this.hooks.changed?.(dev, 'renamed', from);
  }

  bind(dev: LoopDevice, binding: Binding): void {
    if (dev.bound) throw new LoopfsError('EBUSY', dev.name, 'device is bound');
    dev.binding = binding;
    dev.boundOnce = true;
    this.refreshFree(dev);
    this.hooks.changed?.(dev, 'bound');
  }

  /** Unbinds now; the caller closes the engine device. */
  unbind(dev: LoopDevice): Binding | undefined {
    const b = dev.binding;
    if (!b) return undefined;
    dev.binding = undefined;
    this.refreshFree(dev);
    this.hooks.changed?.(dev, 'unbound');
    return b;
  }

  private lowestUnused(): DeviceIndex {
    const i = this.unused.first();
    if (i < 0) throw new LoopfsError('ENOSPC', 'new device', 'no device numbers left');
    return i;
  }

  info(dev: LoopDevice, mountpoint: string): DeviceInfo {
    const b = dev.binding;
    const base: DeviceInfo = {
      index: dev.index,
      path: `${mountpoint}/${dev.name}`,
      bound: !!b,
      openCount: dev.openCount,
      offset: 0,
      sizelimit: 0,
      size: 0,
      sectorSize: 512,
      readOnly: false,
      autoclear: false,
      partscan: false,
      directIo: false,
      partitions: [],
    };
    if (!b) return base;
    const d = b.device;
    return {
      ...base,
      backFile: d.path,
      backIno: d.ino,
      backDev: d.dev,
      offset: d.offset,
      sizelimit: d.sizelimit,
      size: d.size,
      sectorSize: d.sectorSize,
      readOnly: d.readOnly,
      autoclear: b.autoclear,
      partscan: b.partscan,
      directIo: d.directIo,
      partitions: b.partitions,
    };
  }
}
