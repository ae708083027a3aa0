import { LoopfsError } from '../base/errors';
import type { ByteOffset, FileRange } from '../base/types';
import type { OverlayShare } from './overlay-map';

/** A block device as the rest of loopfs sees it: a byte range with a logical sector size. */
export interface BlockIO {
  readonly size: ByteOffset;
  readonly sectorSize: number;
  readonly readOnly: boolean;
  /** Reads up to `length` bytes into dst[0..]; clamps at the end: 0 at or after it. */
  read(dst: Buffer, length: number, position: ByteOffset): Promise<number>;
  /**
   * Writes src[0..length). EROFS if read-only, ENOSPC when starting at or after
   * the end; a write crossing the end writes the part inside and returns the
   * short count (the kernel gives a short write, then ENOSPC).
   */
  write(src: Buffer, length: number, position: ByteOffset): Promise<number>;
  /** fdatasync (datasync) or fsync of the backing file before resolving. */
  sync(datasync: boolean): Promise<void>;
  /** Punches a hole, clamped to the device. */
  discard(position: ByteOffset, length: number): Promise<void>;
  /**
   * Where these bytes are, when a caller may pread/pwrite them itself (with
   * the same clamping and the same choice of descriptor) instead of calling
   * read/write: undefined once the file is closed.
   */
  fileRange?(): BlockRange | undefined;
}

/** A device's range of its backing file (base/types.ts FileRange), with an overlay's map if it has one. */
export interface BlockRange extends FileRange {
  /**
   * An overlay's shared block map (overlay-map.ts): positions are the base's
   * (`fd`), and a block present in the map is read from and written to the
   * delta instead.
   */
  overlay?: OverlayShare;
}

/** What a window maps onto: absolute positions, no bounds of its own. */
export type Lower = Pick<BlockIO, 'read' | 'write' | 'sync' | 'discard' | 'fileRange'>;

/**
 * The one place with window arithmetic (nbdkit's offset filter): `length`
 * bytes starting at `start` of a lower layer. Device is a window over the
 * backing file, PartitionWindow a window over a device; a request never
 * leaves [start, start+length) of the lower layer.
 *
 * read/write are plain functions returning the lower layer's promise: no
 * async wrapper, no allocation on the hot path.
 */
export class Window implements BlockIO {
  protected lower: Lower;
  protected start: ByteOffset;
  protected length: ByteOffset;
  /** Changes only through Device.setSectorSize (LOOP_SET_BLOCK_SIZE). */
  sectorSize: number;
  readonly readOnly: boolean;
  /** Names the window in error messages. */
  protected label: string;

  constructor(lower: Lower, start: ByteOffset, length: ByteOffset, sectorSize: number, readOnly: boolean, label: string) {
    this.lower = lower;
    this.start = start;
    this.length = length;
    this.sectorSize = sectorSize;
    this.readOnly = readOnly;
    this.label = label;
  }

  get size(): ByteOffset {
    return this.length;
  }

  read(dst: Buffer, length: number, position: ByteOffset): Promise<number> {
    if (!validRequest(dst, length, position)) return Promise.reject(badRequest(this.label, dst, length, position));
    const n = readSpan(this.length, position, length);
    if (n === 0) return Promise.resolve(0);
    return this.lower.read(dst, n, this.start + position);
  }

  write(src: Buffer, length: number, position: ByteOffset): Promise<number> {
    if (!validRequest(src, length, position)) return Promise.reject(badRequest(this.label, src, length, position));
    if (this.readOnly) return Promise.reject(new LoopfsError('EROFS', this.label, 'the device is read-only'));
    const n = writeSpan(this.length, position, length);
    if (n === 0) return Promise.resolve(0);
    if (n < 0) {
      return Promise.reject(new LoopfsError('ENOSPC', this.label, `write at ${position} is at or past the end of the device (${this.length} bytes)`));
    }
    return this.lower.write(src, n, this.start + position);
  }

  sync(datasync: boolean): Promise<void> {
    return this.lower.sync(datasync);
  }

  fileRange(): BlockRange | undefined {
    const r = this.lower.fileRange?.();
    if (!r) return undefined;
    const length = Math.max(0, Math.min(this.length, r.length - this.start));
    return { ...r, start: r.start + this.start, length, readOnly: r.readOnly || this.readOnly };
  }

  discard(position: ByteOffset, length: number): Promise<void> {
    if (!isOffset(position) || !isOffset(length)) {
      return Promise.reject(new LoopfsError('EINVAL', this.label, `discard of ${length} bytes at ${position}`));
    }
    if (this.readOnly) return Promise.reject(new LoopfsError('EROFS', this.label, 'the device is read-only'));
    const size = this.length;
    if (position >= size || length === 0) return Promise.resolve();
    return this.lower.discard(this.start + position, Math.min(length, size - position));
  }
}

/** Bytes of a `length`-byte read at `position` inside a window of `size` bytes: clamped at the end, 0 at or after it. */
export function readSpan(size: ByteOffset, position: ByteOffset, length: number): number {
  return position >= size ? 0 : Math.min(length, size - position);
}

/**
 * Bytes of a `length`-byte write at `position` inside a window of `size`
 * bytes: clamped at the end (a short write); -1 (ENOSPC) when a write of
 * some bytes starts at or after the end.
 */
export function writeSpan(size: ByteOffset, position: ByteOffset, length: number): number {
  if (length === 0) return 0;
  return position >= size ? -1 : Math.min(length, size - position);
}

function isOffset(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}

function validRequest(buf: Buffer, length: number, position: number): boolean {
  return isOffset(position) && isOffset(length) && length <= buf.length;
}

function badRequest(label: string, buf: Buffer, length: number, position: number): LoopfsError {
  return new LoopfsError('EINVAL', label, `request of ${length} bytes at ${position} with a ${buf.length}-byte buffer`);
}
