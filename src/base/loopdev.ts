import type { ByteOffset } from './types';

/**
 * The rules of a loop device that the CLI (commands/losetup/) and the daemon
 * (daemon/, engine/) share, each written once, as util-linux's losetup and
 * its library share lib/loopdev.c. Pure functions of plain values.
 */

/**
 * The kernel numbers loop devices below 2^20 (its minors): an instance has
 * at most MAX_DEVICES devices (`mount -o max=N`), numbered 0..MAX_INDEX, and
 * max_loop_devices (`loopfs sysctl`) is at most MAX_DEVICES too.
 */
export const MAX_DEVICES = 1 << 20;
export const MAX_INDEX = MAX_DEVICES - 1;

/** major() of a dev_t as Node's stat gives it (glibc's encoding, gnu_dev_major; the kernel's new_encode_dev agrees). */
export function devMajor(dev: number | bigint): number {
  const d = BigInt(dev);
  return Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn));
}

/** minor() of a dev_t as Node's stat gives it (gnu_dev_minor). */
export function devMinor(dev: number | bigint): number {
  const d = BigInt(dev);
  return Number((d & 0xffn) | ((d >> 12n) & 0xffffff00n));
}

/**
 * util-linux losetup's warn_size(): the text of the warning for a device of
 * `name` whose usable size is under, or not a multiple of, 512 bytes;
 * undefined when there is nothing to say. The size is the size limit, else
 * the file's size less the offset (as an unsigned 64-bit number, as
 * util-linux computes it); `fileSize` undefined (the file cannot be stat'ed,
 * or is a block device) and no size limit: no warning.
 */
export function sizeWarning(name: string, sizelimit: ByteOffset | undefined, fileSize: ByteOffset | undefined, offset: ByteOffset | undefined): string | undefined {
  let size = BigInt(sizelimit ?? 0);
  if (!size) {
    if (fileSize === undefined) return undefined;
    size = BigInt(fileSize);
    if (offset !== undefined) size = (size - BigInt(offset)) & ((1n << 64n) - 1n);
  }
  if (size < 512n) return `${name}: Warning: file is smaller than 512 bytes; the loop device may be useless or invisible for system tools.`;
  if (size % 512n) return `${name}: Warning: file does not fit into a 512-byte sector; the end of the file will be ignored.`;
  return undefined;
}

/** A device's window of its backing file, as --nooverlap compares them (sizelimit 0: to the end of the file). */
export interface LoopWindow {
  offset: ByteOffset;
  sizelimit: ByteOffset;
  readOnly: boolean;
  /** A copy-on-write device (truthy): it never writes its base, and is never reused for another. */
  overlay?: unknown;
}

/** What --nooverlap found among the devices of the same file: one to reuse, or a conflict (EBUSY). */
export type Overlap<D> =
  | { kind: 'reuse'; device: D }
  /** The same window, bound read-only, while a writable device is asked for. */
  | { kind: 'read-only'; device: D }
  | { kind: 'overlap'; device: D };

/**
 * util-linux's loopcxt_find_overlap() and what losetup does with its answer:
 * over the bound devices (in device order) of the same file (`sameFile`),
 * the first whose window intersects `want`'s. One with the very same offset
 * and size limit is reused (util-linux's "full match") when the device is to
 * be found (`-f`), unless it is read-only and `want` is not; with a device
 * named (`DEV FILE`) any intersection is a conflict. Overlay devices are not
 * compared (and a new overlay device is not checked at all: it never writes
 * its base).
 */
export function findOverlap<D extends LoopWindow>(bound: Iterable<D>, sameFile: (d: D) => boolean, want: LoopWindow, findsDevice: boolean): Overlap<D> | undefined {
  if (want.overlay) return undefined;
  for (const d of bound) {
    if (d.overlay || !sameFile(d)) continue;
    if (d.sizelimit === want.sizelimit && d.offset === want.offset && findsDevice) {
      return d.readOnly && !want.readOnly ? { kind: 'read-only', device: d } : { kind: 'reuse', device: d };
    }
    if (d.sizelimit !== 0 && want.offset >= d.offset + d.sizelimit) continue;
    if (want.sizelimit !== 0 && want.offset + want.sizelimit <= d.offset) continue;
    return { kind: 'overlap', device: d };
  }
  return undefined;
}
