import * as fs from 'node:fs';
import { LoopfsError, toLoopfsError } from '../base/errors';
import type { ByteOffset } from '../base/types';
import { deviceOfFd, ioctlBuf } from '../sys/libc';
import { FileIO, type IoCounts } from './file';
import { Overlay, type DeltaFile } from './overlay';
import { Window, type BlockIO } from './window';

export type { BlockIO } from './window';

export interface AttachOptions {
  /** Start of the window in the backing file; default 0; integer in [0, file size]. */
  offset?: ByteOffset;
  /** Window length cap; default 0 = none; the device size is rounded down to the sector size. */
  sizelimit?: ByteOffset;
  /** Logical sector size; default 512; a power of two in [512, 65536]. */
  sectorSize?: number;
  readOnly?: boolean;
  /** Try O_DIRECT; if impossible, stays off and `warnings` says why. */
  directIo?: boolean;
  /**
   * A copy-on-write device (SPEC §8): the backing file is the base, only
   * read; writes go to this delta, which the Device then owns.
   */
  overlay?: { delta: DeltaFile; blockSize?: number };
}

/** The backing file, opened by the caller with the caller's rights. The Device owns and closes fd. */
export interface Backing {
  fd: number;
  path: string;
  writable: boolean;
}

const MIN_SECTOR = 512;
const MAX_SECTOR = 65536;

// linux/fs.h: _IOR(0x12, 114, size_t)
const BLKGETSIZE64 = 0x80081272;

/** A loop device's engine: a window of the backing file (see Window). */
export class Device extends Window implements BlockIO {
  readonly path: string;
  /** st_dev of the backing file, as a Linux dev_t number. */
  readonly dev: number;
  readonly ino: number;
  /** Change together, through setWindow (LOOP_SET_STATUS). */
  offset: ByteOffset;
  sizelimit: ByteOffset;
  /** What attach (or a later setting of directIo) wants the user to know, one sentence each. */
  readonly warnings: string[] = [];
  private readonly file: FileIO;
  private readonly writableFd: boolean;
  private fileSize: ByteOffset;
  /** The copy-on-write layer between the window and the base file, for an overlay device. */
  readonly overlay: Overlay | undefined;

  private constructor(file: FileIO, st: fs.Stats, fileSize: ByteOffset, offset: ByteOffset, sizelimit: ByteOffset, sectorSize: number, readOnly: boolean, writableFd: boolean, overlay?: Overlay) {
    super(overlay ?? file, offset, windowSize(fileSize, offset, sizelimit, sectorSize), sectorSize, readOnly, file.path);
    this.overlay = overlay;
    this.file = file;
    this.path = file.path;
    this.dev = st.dev;
    this.ino = st.ino;
    this.offset = offset;
    this.sizelimit = sizelimit;
    this.fileSize = fileSize;
    this.writableFd = writableFd;
  }

  /**
   * Validates the options against the backing file and builds the device.
   * On failure the fd is closed (the Device owned it) and a LoopfsError
   * (EINVAL for bad options) is thrown.
   */
  static async attach(backing: Backing, opts: AttachOptions): Promise<Device> {
    let dev: Device;
    let delta = opts.overlay?.delta;
    try {
      const offset = opts.offset ?? 0;
      const sizelimit = opts.sizelimit ?? 0;
      const sectorSize = opts.sectorSize ?? MIN_SECTOR;
      if (!Number.isSafeInteger(offset) || offset < 0) {
        throw new LoopfsError('EINVAL', `offset ${offset}`, 'not a non-negative integer');
      }
      if (!Number.isSafeInteger(sizelimit) || sizelimit < 0) {
        throw new LoopfsError('EINVAL', `sizelimit ${sizelimit}`, 'not a non-negative integer');
      }
      checkSectorSize(sectorSize);
      const st = await fstat(backing);
      const fileSize = backingSize(backing, st);
      // As the kernel's loop: a size limit that is no multiple of the sector and an offset past the end are fine (windowSize).
      if (opts.overlay) {
        // The base is only read; the delta decides whether the device can be written.
        const file = new FileIO(backing.fd, backing.path);
        const d = delta!;
        delta = undefined; // Overlay.open owns it now (closes it on failure)
        const overlay = await Overlay.open(file, fileSize, d, opts.overlay.blockSize);
        dev = new Device(file, st, fileSize, offset, sizelimit, sectorSize, !!opts.readOnly, false, overlay);
      } else {
        const readOnly = !!opts.readOnly || !backing.writable;
        dev = new Device(new FileIO(backing.fd, backing.path), st, fileSize, offset, sizelimit, sectorSize, readOnly, backing.writable);
      }
      if (!opts.overlay && !opts.readOnly && !backing.writable) dev.warnings.push(`${backing.path}: Warning: file is not writable; attached read-only.`);
    } catch (e) {
      try {
        fs.closeSync(backing.fd);
      } catch {
        // already unusable; the error that matters is the one below
      }
      if (delta) {
        try {
          fs.closeSync(delta.fd);
        } catch {
          // as above
        }
      }
      throw toLoopfsError(e, backing.path);
    }
    if (opts.directIo) dev.directIo = true;
    return dev;
  }

  /**
   * Whether requests go O_DIRECT. Setting it true opens the O_DIRECT
   * descriptor if needed; when that is impossible it stays false and a
   * warning is pushed. Setting it false keeps the descriptor until close().
   */
  get directIo(): boolean {
    return this.file.direct;
  }

  set directIo(on: boolean) {
    if (!on) {
      this.file.direct = false;
      return;
    }
    if (this.overlay) {
      this.warnings.push(`${this.path}: set direct io failed: an overlay device reads and writes through its own buffers`);
      return;
    }
    try {
      this.file.openDirect(this.writableFd && !this.readOnly, this.dev);
    } catch (e) {
      const reason = e instanceof LoopfsError ? `${e.reason} (${e.errno})` : String(e);
      this.warnings.push(`${this.path}: set direct io failed: the filesystem refuses O_DIRECT: ${reason}`);
      return;
    }
    // The kernel's rule (lo_can_use_dio): the window and the logical sector
    // must be aligned to what O_DIRECT needs, or direct I/O stays off.
    const align = this.file.dioAlignment;
    if (this.offset % align !== 0 || this.sectorSize < align) {
      this.file.direct = false;
      this.warnings.push(
        `${this.path}: set direct io failed: offset ${this.offset} and sector size ${this.sectorSize} must be multiples of the backing device's ${align}-byte block`,
      );
    }
  }

  /**
   * The backing file's name now, as the kernel's loop driver shows it (its
   * d_path): a rename followed, " (deleted)" once unlinked; `path` if unknown.
   */
  currentPath(): string {
    try {
      return fs.readlinkSync(`/proc/self/fd/${this.file.fd}`);
    } catch {
      return this.path;
    }
  }

  /** fstat(2) of the backing file now, bigint (LOOP_GET_STATUS's lo_device, lo_inode, lo_rdevice). */
  stat(): fs.BigIntStats {
    return fs.fstatSync(this.file.fd, { bigint: true });
  }

  /** Alignment (bytes) of memory, position and length for O_DIRECT on this file. */
  get dioAlignment(): number {
    return this.file.dioAlignment;
  }

  /** How requests were served so far (direct, bounced, buffered). */
  ioCounts(): IoCounts {
    return { ...this.file.counts };
  }

  /** LOOP_SET_BLOCK_SIZE: a new logical sector size; the device size is rounded down to it. Returns the new size. */
  setSectorSize(sectorSize: number): ByteOffset {
    checkSectorSize(sectorSize);
    this.sectorSize = sectorSize;
    this.length = windowSize(this.fileSize, this.offset, this.sizelimit, sectorSize);
    return this.length;
  }

  /**
   * LOOP_SET_STATUS with a new offset or size limit: the window moves, the
   * size is figured anew (0 when the offset is past the end), and direct
   * I/O stays on only if the new offset still suits it (loop_update_dio).
   * Returns the new size.
   */
  setWindow(offset: ByteOffset, sizelimit: ByteOffset): ByteOffset {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new LoopfsError('EINVAL', `offset ${offset}`, 'not a non-negative integer');
    if (!Number.isSafeInteger(sizelimit) || sizelimit < 0) throw new LoopfsError('EINVAL', `sizelimit ${sizelimit}`, 'not a non-negative integer');
    this.offset = offset;
    this.sizelimit = sizelimit;
    this.start = offset;
    this.length = windowSize(this.fileSize, offset, sizelimit, this.sectorSize);
    if (this.directIo && offset % this.file.dioAlignment !== 0) this.file.direct = false;
    return this.length;
  }

  /** The size the device would have now, from the backing file's size now (the kernel's lo_calculate_size). */
  async currentSize(): Promise<ByteOffset> {
    const b = { fd: this.file.fd, path: this.path };
    return windowSize(backingSize(b, await fstat(b)), this.offset, this.sizelimit, this.sectorSize);
  }

  /** Re-reads the backing file's size (losetup -c). Returns the new device size. */
  async refreshCapacity(): Promise<ByteOffset> {
    const st = await fstat({ fd: this.file.fd, path: this.path });
    const fileSize = backingSize({ fd: this.file.fd, path: this.path }, st);
    // An overlay follows its base's size too (the delta records it).
    await this.overlay?.resize(fileSize);
    this.fileSize = fileSize;
    this.length = windowSize(this.fileSize, this.offset, this.sizelimit, this.sectorSize);
    return this.length;
  }

  /** Waits for requests in flight, then closes the backing file. Later requests fail ENXIO. */
  async close(): Promise<void> {
    if (this.overlay) {
      try {
        await this.overlay.close();
      } finally {
        await this.file.close();
      }
      return;
    }
    return this.file.close();
  }
}

/** min(fileSize − offset, sizelimit || ∞), rounded down to the sector size; 0 if offset is past the end. */
function checkSectorSize(n: number): void {
  if (!Number.isInteger(n) || n < MIN_SECTOR || n > MAX_SECTOR || (n & (n - 1)) !== 0) {
    throw new LoopfsError('EINVAL', `sector size ${n}`, `not a power of two from ${MIN_SECTOR} to ${MAX_SECTOR}`);
  }
}

export function windowSize(fileSize: ByteOffset, offset: ByteOffset, sizelimit: ByteOffset, sectorSize: number): ByteOffset {
  let n = Math.max(0, fileSize - offset);
  if (sizelimit > 0 && sizelimit < n) n = sizelimit;
  return n - (n % sectorSize);
}

/**
 * fstat(2) of a backing fd: at once where its filesystem sits on a block
 * device (nothing there waits on a server), on the libuv pool elsewhere
 * (FUSE, NFS: a slow or gone server must not stop the daemon's loop).
 */
function fstat(b: { fd: number; path: string }): Promise<fs.Stats> {
  let onDisk = false;
  try {
    onDisk = deviceOfFd(b.fd).major !== 0;
  } catch {
    // asked on the pool below
  }
  if (onDisk) {
    try {
      return Promise.resolve(fs.fstatSync(b.fd));
    } catch (e) {
      return Promise.reject(toLoopfsError(e, b.path));
    }
  }
  return new Promise((resolve, reject) => fs.fstat(b.fd, (err, st) => (err ? reject(toLoopfsError(err, b.path)) : resolve(st))));
}

function backingSize(b: { fd: number; path: string }, st: fs.Stats): ByteOffset {
  if (st.isFile()) return st.size;
  if (st.isBlockDevice()) {
    const buf = Buffer.alloc(8);
    ioctlBuf(b.fd, BLKGETSIZE64, buf);
    return Number(buf.readBigUInt64LE(0));
  }
  throw new LoopfsError('EINVAL', b.path, 'not a regular file or block device');
}
