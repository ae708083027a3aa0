/** Shared value types. Plain numbers on the wire, named here so signatures say what they hold. */

/** N of loopN, per instance, starting at 0. */
export type DeviceIndex = number;
/** A byte offset or length. Safe integers only (< 2^53). */
export type ByteOffset = number;

/** What the daemon reports about one device (the columns of `losetup -l`). */
export interface DeviceInfo {
  index: DeviceIndex;
  /** Path of the device entry inside the instance mount: DIR/loopN. */
  path: string;
  bound: boolean;
  /** Number of open file handles on the device (and its partitions). */
  openCount: number;
  backFile?: string;
  backIno?: number;
  backDev?: number;          // st_dev of the backing file, as a Linux dev_t
  offset: ByteOffset;
  sizelimit: ByteOffset;     // 0 = no limit
  size: ByteOffset;          // bytes visible through the device
  sectorSize: number;        // logical sector size (LOG-SEC)
  readOnly: boolean;
  autoclear: boolean;
  partscan: boolean;
  directIo: boolean;
  /** Partitions published when partscan found a table. */
  partitions: PartitionInfo[];
  /** Set for a copy-on-write device (`losetup --overlay`): its delta and what changed. */
  overlay?: OverlayInfo;
}

/** A copy-on-write device's delta (SPEC §8). */
export interface OverlayInfo {
  /** The named delta file; null for an unnamed one (freed at detach). */
  delta: string | null;
  /** Bytes of the device that read from the delta instead of the base (whole blocks). */
  changedBytes: ByteOffset;
  /** The delta's block size (granularity of changedBytes). */
  blockSize: number;
  /** Bytes the delta file holds on its filesystem. */
  allocatedBytes: ByteOffset;
}

export interface PartitionInfo {
  number: number;            // M of loopNpM
  start: ByteOffset;         // relative to the device
  size: ByteOffset;
}

/**
 * `length` bytes of the file open as `fd`, from `start`: what the engine
 * hands out for a device (engine/window.ts BlockRange) and what the FUSE
 * threads serve (fuse/types.ts BackedRange), each adding its own field.
 */
export interface FileRange {
  fd: number;
  start: ByteOffset;
  length: ByteOffset;
  readOnly: boolean;
  /**
   * With direct I/O on: the O_DIRECT descriptor, for requests whose absolute
   * position and length are multiples of `align` (from aligned memory);
   * anything else, or what it refuses (EINVAL) or leaves short, goes to `fd`.
   */
  directFd?: number;
  align?: number;
}
