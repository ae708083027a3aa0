import * as fs from 'node:fs';
import { LoopfsError, toLoopfsError } from '../base/errors';
import type { ByteOffset } from '../base/types';
import { flock, LOCK_EX, LOCK_NB, LOCK_SH, punchHoleSync } from '../sys/libc';
import { crc32 } from './crc32';
import { FileIO } from './file';
import { newShare, OverlayMap } from './overlay-map';
import type { BlockRange, Lower } from './window';

/**
 * A copy-on-write layer over a base file (SPEC §8): reads come from the base
 * except for the blocks written through the overlay, which live in a delta
 * file. The base is only ever read. The overlay speaks absolute positions of
 * the base file (a Lower), so a Device's window (-o, --sizelimit) and its
 * partitions stack on it unchanged. Its block map and the reads and writes
 * that follow it are overlay-map.ts, in shared memory: the BlockRange it
 * offers carries the map, and the I/O threads serve the device's requests
 * with it, as read/write here do on the main thread.
 *
 * The delta holds block i at dataOffset + i*blockSize (sparse: a block never
 * written is a hole). A block is present in the delta or not (one bit);
 * discard of a block makes it present and punches it, so it reads zeros and
 * masks the base.
 *
 * A named delta persists its map: a header and a bitmap in front of the data
 *
 *   0      header (4096 bytes, see Header)
 *   4096   bitmap, one bit per block, room for `mapBytes` bytes
 *   dataOffset (a multiple of blockSize)  the blocks
 *
 * Crash safety: a block's bit is set in memory only after its data is
 * written; the bitmap is written only after an fdatasync of the delta
 * (sync(), a timer, close), and bits only ever go from 0 to 1 — so a crash
 * at any moment leaves each block either the base's (old) or the delta's
 * with its complete data, whatever part of the bitmap reached the disk. A
 * block whose data was written but whose bit was lost reads the base again;
 * its slot is rewritten whole (or punched) before its bit is next set.
 * An unnamed delta (O_TMPFILE) keeps its map in memory only.
 */

export const OVERLAY_MAGIC = 'LOOPFSOV';
const VERSION = 1;
const HEADER = 4096;
const PAGE = 4096;
export const DEFAULT_OVERLAY_BLOCK = 4096;
/** The bitmap has room for this many times the base's blocks (the base may grow: losetup -c), at least MIN_MAP_BYTES. */
const MAP_ROOM = 4;
const MIN_MAP_BYTES = 1024 * 1024;
/** A dirty bitmap reaches the delta at the latest this long after the write (also without fsync). */
const FLUSH_MS = 1000;

/** O_TMPFILE from asm-generic/fcntl.h (__O_TMPFILE | O_DIRECTORY). */
const O_TMPFILE = 0o20000000 | 0o200000;

export interface DeltaFile {
  fd: number;
  path: string;
  /** true: the map persists in the file (a named DELTA); false: an unnamed temporary file. */
  named: boolean;
}

export interface OverlayStatus {
  blockSize: number;
  /** Blocks present in the delta (written or discarded through the overlay). */
  blocks: number;
  /** blocks × blockSize: bytes of the device that no longer read from the base. */
  changedBytes: number;
  /** Bytes the delta file holds on its filesystem (st_blocks × 512). */
  allocatedBytes: number;
  /** The delta's path, undefined when unnamed. */
  delta: string | undefined;
}

interface Header {
  blockSize: number;
  baseSize: number;
  mapBytes: number;
  dataOffset: number;
  /** CRC-32 of the base's first block when the delta was made (or last committed): a wrong base is refused. */
  baseCrc: number;
}

/** Opens an unnamed temporary delta in `dir` (freed when closed). */
export function tmpDelta(dir: string): DeltaFile {
  try {
    return { fd: fs.openSync(dir, O_TMPFILE | fs.constants.O_RDWR, 0o600), path: `${dir} (unnamed overlay)`, named: false };
  } catch (e) {
    throw toLoopfsError(e, `${dir}: temporary overlay file`);
  }
}

export class Overlay implements Lower {
  readonly blockSize: number;
  private readonly base: FileIO;
  private readonly delta: FileIO;
  private readonly named: boolean;
  private readonly dataOffset: number;
  private mapBytes: number;
  private baseSize: number;
  private baseCrc: number;
  /** The block map and the I/O that follows it, shared with the I/O threads (overlay-map.ts). */
  private readonly map: OverlayMap;
  /** Serializes map flushes, resets and commits. */
  private chain: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(base: FileIO, delta: DeltaFile, h: Header, bits?: Uint8Array) {
    this.base = base;
    this.delta = new FileIO(delta.fd, delta.path);
    this.named = delta.named;
    this.blockSize = h.blockSize;
    this.baseSize = h.baseSize;
    this.mapBytes = h.mapBytes;
    this.dataOffset = h.dataOffset;
    this.baseCrc = h.baseCrc;
    // Room for MAP_ROOM times the base's blocks, at least a page (the base may grow: losetup -c); a named delta's whole map.
    const room = this.named ? this.mapBytes : Math.max(PAGE, Math.ceil((Math.ceil(h.baseSize / this.blockSize) * MAP_ROOM) / 8));
    this.map = new OverlayMap(newShare({ blockSize: this.blockSize, dataOffset: this.dataOffset, baseFd: base.fd, deltaFd: this.delta.fd, named: this.named }, h.baseSize, room));
    if (bits) this.map.load(bits);
    if (this.named) {
      // Bits set by any thread reach the delta at the latest FLUSH_MS later (also without fsync).
      this.timer = setInterval(() => {
        if (!this.map.dirty) return;
        this.flushMap(true).catch(() => {
          // a failed flush leaves the pages dirty; the next sync reports it
        });
      }, FLUSH_MS).unref();
    }
  }

  /**
   * Builds the overlay of `base` (baseSize bytes) with `delta`. A named delta
   * that is empty gets a header; one that has a header must match the base
   * (size and first block) and is used with its own block size. The delta is
   * locked (flock, exclusive): one overlay at a time. The base gets a shared
   * flock, which commit() needs to take exclusively. On failure the delta fd
   * is closed (the overlay owned it); the base stays the caller's.
   */
  static async open(base: FileIO, baseSize: ByteOffset, delta: DeltaFile, blockSize = DEFAULT_OVERLAY_BLOCK): Promise<Overlay> {
    try {
      lockOrBusy(base.fd, LOCK_SH, base.path, 'the base is being committed into by another overlay');
      if (!Number.isInteger(blockSize) || blockSize < PAGE || blockSize > 1 << 24 || (blockSize & (blockSize - 1)) !== 0) {
        throw new LoopfsError('EINVAL', `overlay block size ${blockSize}`, 'not a power of two from 4096 to 16 MiB');
      }
      if (!delta.named) {
        if (!fs.fstatSync(delta.fd).isFile()) throw new LoopfsError('EINVAL', delta.path, 'an overlay file must be a regular file');
        const blocks = Math.ceil(baseSize / blockSize);
        cover(delta.fd, 0, blocks * blockSize);
        return new Overlay(base, delta, { blockSize, baseSize, mapBytes: 0, dataOffset: 0, baseCrc: 0 });
      }
      lockOrBusy(delta.fd, LOCK_EX, delta.path, 'the overlay file is in use by another device');
      const st = fs.fstatSync(delta.fd);
      if (!st.isFile()) throw new LoopfsError('EINVAL', delta.path, 'an overlay file must be a regular file');
      const crc = await firstBlockCrc(base, baseSize, blockSize);
      if (st.size === 0) {
        const blocks = Math.ceil(baseSize / blockSize);
        const mapBytes = roundUp(Math.max(MIN_MAP_BYTES, Math.ceil((blocks * MAP_ROOM) / 8)), PAGE);
        const h: Header = { blockSize, baseSize, mapBytes, dataOffset: roundUp(HEADER + mapBytes, blockSize), baseCrc: crc };
        writeHeader(delta.fd, h);
        cover(delta.fd, h.dataOffset, blocks * blockSize);
        fs.fdatasyncSync(delta.fd);
        return new Overlay(base, delta, h);
      }
      const h = readHeader(delta.fd, delta.path);
      if (h.baseSize !== baseSize) {
        throw new LoopfsError('EINVAL', delta.path, `the overlay was made over a base of ${h.baseSize} bytes, this one has ${baseSize}`);
      }
      const crcNow = h.blockSize === blockSize ? crc : await firstBlockCrc(base, baseSize, h.blockSize);
      if (crcNow !== h.baseCrc) throw new LoopfsError('EINVAL', delta.path, 'the overlay was made over another base (its first block differs)');
      const blocks = Math.ceil(baseSize / h.blockSize);
      const bits = new Uint8Array(Math.ceil(blocks / 8));
      cover(delta.fd, h.dataOffset, blocks * h.blockSize);
      const n = fs.readSync(delta.fd, bits, 0, bits.length, HEADER);
      bits.fill(0, n);
      return new Overlay(base, delta, h, bits);
    } catch (e) {
      try {
        fs.closeSync(delta.fd);
      } catch {
        // the error that matters is the one below
      }
      throw toLoopfsError(e, delta.path);
    }
  }

  /** The id of the map shared with the I/O threads (BackedRange.shared's tag). */
  get mapId(): number {
    return this.map.share.id;
  }

  /** The delta's path, undefined for an unnamed one. */
  get deltaPath(): string | undefined {
    return this.named ? this.delta.path : undefined;
  }

  status(): OverlayStatus {
    let allocated = 0;
    try {
      allocated = fs.fstatSync(this.delta.fd).blocks * 512;
    } catch {
      // closed: nothing allocated that we can see
    }
    const blocks = this.map.count;
    return { blockSize: this.blockSize, blocks, changedBytes: blocks * this.blockSize, allocatedBytes: allocated, delta: this.deltaPath };
  }

  /**
   * The base's descriptor and the shared map: the I/O threads serve the
   * overlay's reads and writes with overlay-map.ts as read/write here do.
   * None once closed.
   */
  fileRange(): BlockRange | undefined {
    if (this.closed) return undefined;
    return { fd: this.base.fd, start: 0, length: Number.MAX_SAFE_INTEGER, readOnly: false, overlay: this.map.share };
  }

  read(dst: Buffer, length: number, position: ByteOffset): Promise<number> {
    return this.io(() => this.map.read(dst, length, position), 'read', length, position);
  }

  write(src: Buffer, length: number, position: ByteOffset): Promise<number> {
    return this.io(() => this.map.write(src, length, position), 'write', length, position);
  }

  discard(position: ByteOffset, length: number): Promise<void> {
    return this.io(() => this.map.discard(position, length, punchHoleSync), 'discard', length, position);
  }

  /** Runs one synchronous map operation (the main thread's share of the I/O: the threads serve the rest). */
  private io<T>(fn: () => T, what: string, length: number, position: number): Promise<T> {
    if (this.closed) return Promise.reject(new LoopfsError('ENXIO', this.delta.path, 'the device has been detached'));
    try {
      return Promise.resolve(fn());
    } catch (e) {
      const w = `${this.delta.path}: overlay ${what} of ${length} bytes at ${position}`;
      return Promise.reject(e instanceof LoopfsError ? new LoopfsError(e.errno, w, e.reason) : toLoopfsError(e, w));
    }
  }

  /**
   * A named delta: the data, then the bitmap (flushMap). An unnamed one is
   * not flushed at all: it has no name and is freed with the device or the
   * daemon, so nothing on the disk could ever read it back after a crash —
   * an fsync would only make the device wait for the disk (ext4 allocating
   * every hole the job filled) for nothing. Its pages reach the disk as the
   * kernel's writeback decides.
   */
  sync(datasync: boolean): Promise<void> {
    if (!this.named) return Promise.resolve();
    return this.flushMap(datasync);
  }

  /**
   * losetup -c: the base is now `baseSize` bytes. A named delta records it.
   * EFBIG when the bitmap has no room for that many blocks (a named delta's
   * map, or MAP_ROOM times the blocks the base had at attach): the map is
   * shared with the I/O threads and does not move.
   */
  async resize(baseSize: ByteOffset): Promise<void> {
    if (baseSize === this.baseSize) return;
    const blocks = Math.ceil(baseSize / this.blockSize);
    if (Math.ceil(blocks / 8) > this.map.bitBytes) {
      throw new LoopfsError('EFBIG', this.delta.path, `the overlay's map has room for a base of ${this.map.bitBytes * 8 * this.blockSize} bytes`);
    }
    this.baseSize = baseSize;
    this.map.baseSize = baseSize;
    cover(this.delta.fd, this.dataOffset, blocks * this.blockSize);
    if (this.named) {
      await this.serial(async () => {
        await this.delta.sync(true);
        writeHeader(this.delta.fd, this.header());
        await this.delta.sync(true);
      });
    }
  }

  /**
   * Throws every change away: the device reads the base again. The bitmap is
   * cleared (and, when named, persisted) before the data is punched, so a
   * crash in between leaves an empty overlay. The caller makes sure no I/O
   * runs (the device is closed).
   */
  reset(): Promise<void> {
    return this.serial(async () => {
      this.map.clear();
      if (this.named) {
        await writeAt(this.delta.fd, Buffer.alloc(this.mapBytes), HEADER);
        await this.delta.sync(true);
      }
      const st = fs.fstatSync(this.delta.fd);
      if (st.size > this.dataOffset) await this.delta.discard(this.dataOffset, st.size - this.dataOffset);
    });
  }

  /**
   * Writes the changed blocks into the base through `baseRw` (a read-write
   * descriptor of the same file), fsyncs it, then empties the overlay. A
   * crash part way leaves the overlay whole, and committing again finishes.
   * The caller makes sure nothing else uses the base and no I/O runs here.
   */
  commit(baseRw: number): Promise<void> {
    return this.serial(async () => {
      // Our own shared lock becomes exclusive only if no other overlay holds one.
      lockOrBusy(this.base.fd, LOCK_EX, this.base.path, 'the base is in use by another overlay');
      try {
        await this.copyBack(baseRw);
      } finally {
        flock(this.base.fd, LOCK_SH);
      }
    }).then(() => this.reset());
  }

  private async copyBack(baseRw: number): Promise<void> {
    const bs = this.blockSize;
    const buf = Buffer.allocUnsafe(bs);
    const blocks = this.map.bitBytes * 8;
    for (let b = 0; b < blocks; b++) {
      if (!this.map.has(b)) continue;
      const len = Math.min(bs, this.baseSize - b * bs);
      if (len <= 0) break;
      await this.delta.read(buf, len, this.dataOffset + b * bs);
      await writeAt(baseRw, buf.subarray(0, len), b * bs);
    }
    fs.fsyncSync(baseRw);
    this.baseCrc = await firstBlockCrc(this.base, this.baseSize, bs);
    if (this.named) {
      writeHeader(this.delta.fd, this.header());
      await this.delta.sync(true);
    }
  }

  /** Persists the map, then closes the delta (an unnamed one is freed). The base stays the caller's. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    let first: unknown;
    try {
      if (this.named) await this.flushMap(true);
    } catch (e) {
      first = e;
    }
    this.closed = true;
    await this.delta.close();
    if (first) throw first;
  }

  /** Data first (fdatasync), then the bitmap pages that were dirty before it, then fdatasync again. */
  private flushMap(datasync: boolean): Promise<void> {
    return this.serial(async () => {
      if (this.closed) return;
      const map = this.map;
      const pages = map.takeDirty();
      const snaps = pages.map((p) => map.page(p));
      try {
        await this.delta.sync(true);
        if (pages.length === 0) return;
        for (let i = 0; i < pages.length; i++) await writeAt(this.delta.fd, snaps[i]!, HEADER + pages[i]! * PAGE);
        await this.delta.sync(datasync);
      } catch (e) {
        map.redirty(pages);
        throw e;
      }
    });
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private header(): Header {
    return { blockSize: this.blockSize, baseSize: this.baseSize, mapBytes: this.mapBytes, dataOffset: this.dataOffset, baseCrc: this.baseCrc };
  }
}

/**
 * The delta's size covers every block slot (a sparse tail): a block never
 * written, or punched at the end, reads zeros rather than past the file's end.
 */
function cover(fd: number, dataOffset: number, bytes: number): void {
  const want = dataOffset + bytes;
  if (fs.fstatSync(fd).size < want) fs.ftruncateSync(fd, want);
}

function lockOrBusy(fd: number, op: number, what: string, reason: string): void {
  try {
    flock(fd, op | LOCK_NB);
  } catch (e) {
    if (e instanceof LoopfsError && (e.errno === 'EAGAIN' || e.errno === 'EWOULDBLOCK')) throw new LoopfsError('EBUSY', what, reason);
    throw e;
  }
}

function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

async function firstBlockCrc(base: FileIO, baseSize: number, blockSize: number): Promise<number> {
  const n = Math.min(baseSize, blockSize);
  const buf = Buffer.alloc(n);
  if (n > 0) await base.read(buf, n, 0);
  return crc32(buf);
}

function writeAt(fd: number, buf: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) =>
    fs.write(fd, buf, 0, buf.length, position, (err, n) => (err ? reject(toLoopfsError(err, 'overlay map')) : n === buf.length ? resolve() : reject(new LoopfsError('EIO', 'overlay map', 'short write')))),
  );
}

// Header: magic[8] version u32 blockSize u32 baseSize u64 mapBytes u64 dataOffset u64 baseCrc u32 crc u32 (of the bytes before it)
const H_CRC = 44;

function writeHeader(fd: number, h: Header): void {
  const b = Buffer.alloc(HEADER);
  b.write(OVERLAY_MAGIC, 0, 'latin1');
  b.writeUInt32LE(VERSION, 8);
  b.writeUInt32LE(h.blockSize, 12);
  b.writeBigUInt64LE(BigInt(h.baseSize), 16);
  b.writeBigUInt64LE(BigInt(h.mapBytes), 24);
  b.writeBigUInt64LE(BigInt(h.dataOffset), 32);
  b.writeUInt32LE(h.baseCrc, 40);
  b.writeUInt32LE(crc32(b, 0, H_CRC), H_CRC);
  // Only the first sector changes after creation: one atomic sector write.
  fs.writeSync(fd, b, 0, 512, 0);
}

function readHeader(fd: number, path: string): Header {
  const b = Buffer.alloc(512);
  const n = fs.readSync(fd, b, 0, 512, 0);
  if (n < H_CRC + 4 || b.toString('latin1', 0, 8) !== OVERLAY_MAGIC) throw new LoopfsError('EINVAL', path, 'not a loopfs overlay file (and not empty)');
  if (b.readUInt32LE(H_CRC) !== crc32(b, 0, H_CRC)) throw new LoopfsError('EINVAL', path, 'the overlay header is damaged');
  const version = b.readUInt32LE(8);
  if (version !== VERSION) throw new LoopfsError('EINVAL', path, `overlay format version ${version} (this loopfs reads ${VERSION})`);
  return {
    blockSize: b.readUInt32LE(12),
    baseSize: Number(b.readBigUInt64LE(16)),
    mapBytes: Number(b.readBigUInt64LE(24)),
    dataOffset: Number(b.readBigUInt64LE(32)),
    baseCrc: b.readUInt32LE(40),
  };
}
