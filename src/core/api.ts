import type { ByteOffset, DeviceIndex, DeviceInfo, OverlayInfo } from '../base/types';

/**
 * What commands/ may ask of an instance. core/ implements it over the control
 * socket; commands only parse flags, call this, and print.
 */

export interface AttachRequest {
  /** Backing file path as the user gave it; the client opens it with the caller's rights. */
  file: string;
  /** `losetup DEV FILE`: this device; undefined (`-f`): the lowest free one, created if needed. */
  index?: DeviceIndex;
  offset?: ByteOffset;
  sizelimit?: ByteOffset;
  sectorSize?: number;
  readOnly?: boolean;
  partscan?: boolean;
  directIo?: boolean;
  autoclear?: boolean;
  /** `-L`: refuse if another device of the instance maps an overlapping region of the same file. */
  nooverlap?: boolean;
  /**
   * `--overlay[=DELTA]`: a copy-on-write device; `file` is the base, opened
   * read-only. `delta` (absolute) is opened or created by the client with
   * the caller's rights; without it the daemon makes an unnamed temporary one.
   */
  overlay?: { delta?: string };
}

/** `loopfs overlay ACTION DEV`. */
export type OverlayAction = 'status' | 'discard' | 'commit';

export interface AttachResult {
  device: DeviceInfo;
  /** Non-fatal notes to print as warnings (attached read-only, no O_DIRECT, corrupt partition table). */
  warnings: string[];
}

export interface InstanceClient {
  /** Instance id ("default", or the id shown by `loopfs list`). */
  readonly id: string;
  readonly mountpoint: string;
  /** All devices of the instance, bound and unbound, by index. */
  list(): Promise<DeviceInfo[]>;
  attach(req: AttachRequest): Promise<AttachResult>;
  /** LOOP_CLR_FD: unbind; if open, sets autoclear and unbinds on last close. ENXIO if unbound. */
  detach(index: DeviceIndex): Promise<void>;
  /** Detach every bound device (`losetup -D`). */
  detachAll(): Promise<void>;
  /** Re-read the backing file size (`losetup -c`). */
  setCapacity(index: DeviceIndex): Promise<DeviceInfo>;
  /** LOOP_SET_DIRECT_IO (`losetup --direct-io[=on|off] DEV`). */
  setDirectIo(index: DeviceIndex, on: boolean): Promise<DeviceInfo>;
  /** LOOP_SET_BLOCK_SIZE (`losetup -b N DEV`). */
  setSectorSize(index: DeviceIndex, size: number): Promise<DeviceInfo>;
  /** `loopfs overlay ACTION DEV` of a copy-on-write device. */
  overlay(index: DeviceIndex, action: OverlayAction): Promise<OverlayInfo>;
  /** LOOP_CTL_ADD / REMOVE / GET_FREE. */
  addDevice(index?: DeviceIndex): Promise<DeviceIndex>;
  removeDevice(index: DeviceIndex): Promise<void>;
  getFree(): Promise<DeviceIndex>;
}

/** Where a command finds its instance: `--instance DIR|ID`, else $LOOPFS, else the default instance. */
export interface InstanceSelector {
  instance?: string;
  runDir?: string;
}

/** A device named on the command line, resolved to its instance and index. */
export interface DeviceRef {
  client: InstanceClient;
  index: DeviceIndex;
  /** Partition number when the path names loopNpM. */
  partition?: number;
}
