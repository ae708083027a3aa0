import * as fs from 'node:fs';
import { LoopfsError, toLoopfsError } from '../base/errors';
import type { ByteOffset } from '../base/types';
import { flock, LOCK_EX, LOCK_NB, LOCK_SH } from '../sys/libc';
import { crc32 } from './crc32';
import { FileIO } from './file';
import type { Lower } from './window';

/**
 * A copy-on-write layer over a base file (SPEC §8): reads come from the base
 * except for the blocks written through the overlay, which live in a delta
 * file. The base is only ever read. The overlay speaks absolute positions of
 * the base file (a Lower), so a Device's window (-o, --sizelimit) and its
 * partitions stack on it unchanged; it never offers a FileRange, so every
 * request comes through here.
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
export const DEFAULT_OVERLAY_BLOCK = 64 * 1024;
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
  /** Present blocks, set after their data is written. */
  private bits: Uint8Array;
  private count = 0;
  /** Bitmap pages changed since they were last written. */
  private dirty = new Set<number>();
  /** Blocks being copied up: later writers to the same block wait. */
  private busy = new Map<number, Promise<void>>();
  /** Serializes map flushes, resets and commits. */
  private chain: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(base: FileIO, delta: DeltaFile, h: Header, bits: Uint8Array) {
    this.base = base;
    this.delta = new FileIO(delta.fd, delta.path);
    this.named = delta.named;
    this.blockSize = h.blockSize;
    this.baseSize = h.baseSize;
    this.mapBytes = h.mapBytes;
    this.dataOffset = h.dataOffset;
    this.baseCrc = h.baseCrc;
    this.bits = bits;
    for (const b of bits) this.count += popcount(b);
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
        return new Overlay(base, delta, { blockSize, baseSize, mapBytes: 0, dataOffset: 0, baseCrc: 0 }, new Uint8Array(Math.ceil(blocks / 8)));
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
        return new Overlay(base, delta, h, new Uint8Array(Math.ceil(blocks / 8)));
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
    return { blockSize: this.blockSize, blocks: this.count, changedBytes: this.count * this.blockSize, allocatedBytes: allocated, delta: this.deltaPath };
  }

  read(dst: Buffer, length: number, position: ByteOffset): Promise<number> {
    const bs = this.blockSize;
    const end = position + length;
    // Split into runs of blocks that are all present or all absent; most requests are one run.
    const first = this.has(Math.floor(position / bs));
    let cut = (Math.floor(position / bs) + 1) * bs;
    while (cut < end && this.has(cut / bs) === first) cut += bs;
    if (cut >= end) return this.readRun(first, dst, 0, length, position);
    const parts: Promise<number>[] = [];
    let at = position;
    let present = first;
    while (at < end) {
      let stop = Math.min(end, (Math.floor(at / bs) + 1) * bs);
      while (stop < end && this.has(stop / bs) === present) stop = Math.min(end, stop + bs);
      parts.push(this.readRun(present, dst, at - position, stop - at, at));
      at = stop;
      present = this.has(Math.floor(at / bs));
    }
    return Promise.all(parts).then(() => length);
  }

  async write(src: Buffer, length: number, position: ByteOffset): Promise<number> {
    const bs = this.blockSize;
    const end = position + length;
    const parts: Promise<unknown>[] = [];
    let at = position;
    while (at < end) {
      const b = Math.floor(at / bs);
      if (this.has(b)) {
        let stop = Math.min(end, (b + 1) * bs);
        while (stop < end && this.has(stop / bs)) stop = Math.min(end, stop + bs);
        parts.push(this.delta.write(src.subarray(at - position), stop - at, this.dataOffset + at));
        at = stop;
      } else if (at % bs === 0 && at + 2 * bs <= end && this.free(b) && this.free(b + 1)) {
        // Whole blocks none of which is in the delta yet: one write for the run, no base read.
        let stop = at + 2 * bs;
        while (stop + bs <= end && this.free(stop / bs)) stop += bs;
        parts.push(this.writeRun(b, stop / bs, src.subarray(at - position)));
        at = stop;
      } else {
        const stop = Math.min(end, (b + 1) * bs);
        const from = at;
        parts.push(this.copyUp(b, (blk, off) => src.copy(blk, off, from - position, stop - position), from - b * bs, stop - from, src.subarray(from - position), from));
        at = stop;
      }
    }
    await settleAll(parts);
    return length;
  }

  async discard(position: ByteOffset, length: number): Promise<void> {
    const parts: Promise<unknown>[] = [];
    for (const [b, from, stop] of this.pieces(position, length)) {
      if (this.has(b)) parts.push(this.delta.discard(this.dataOffset + from, stop - from));
      else parts.push(this.copyUp(b, (blk, off) => blk.fill(0, off, off + stop - from), from - b * this.blockSize, stop - from, undefined, from, true));
    }
    await settleAll(parts);
  }

  /** The pieces of [position, position + length) that lie in one block each: [block, from, stop). */
  private *pieces(position: number, length: number): Generator<[number, number, number]> {
    const bs = this.blockSize;
    const end = position + length;
    for (let from = position; from < end; ) {
      const b = Math.floor(from / bs);
      const stop = Math.min(end, (b + 1) * bs);
      yield [b, from, stop];
      from = stop;
    }
  }

  sync(datasync: boolean): Promise<void> {
    if (!this.named) return this.delta.sync(datasync);
    return this.flushMap(datasync);
  }

  /**
   * losetup -c: the base is now `baseSize` bytes. A named delta records it
   * (EFBIG when its bitmap has no room for that many blocks).
   */
  async resize(baseSize: ByteOffset): Promise<void> {
    if (baseSize === this.baseSize) return;
    const blocks = Math.ceil(baseSize / this.blockSize);
    if (this.named && Math.ceil(blocks / 8) > this.mapBytes) {
      throw new LoopfsError('EFBIG', this.delta.path, `the overlay's map has room for a base of ${this.mapBytes * 8 * this.blockSize} bytes`);
    }
    if (Math.ceil(blocks / 8) > this.bits.length) {
      const bits = new Uint8Array(Math.ceil(blocks / 8));
      bits.set(this.bits);
      this.bits = bits;
    }
    this.baseSize = baseSize;
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
   * crash in between leaves an empty overlay.
   */
  reset(): Promise<void> {
    return this.serial(async () => {
      await this.idle();
      this.bits.fill(0);
      this.count = 0;
      this.dirty.clear();
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
      await this.idle();
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
    {
      const bs = this.blockSize;
      const buf = Buffer.allocUnsafe(bs);
      const blocks = this.bits.length * 8;
      for (let b = 0; b < blocks; b++) {
        if (!this.has(b)) continue;
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
  }

  /** Persists the map, then closes the delta (an unnamed one is freed). The base stays the caller's. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    let first: unknown;
    try {
      await this.idle();
      if (this.named) await this.flushMap(true);
    } catch (e) {
      first = e;
    }
    this.closed = true;
    await this.delta.close();
    if (first) throw first;
  }

  private has(b: number): boolean {
    return (this.bits[b >> 3]! & (1 << (b & 7))) !== 0;
  }

  private set(b: number): void {
    const i = b >> 3;
    if (i >= this.bits.length) return;
    const m = 1 << (b & 7);
    if (this.bits[i]! & m) return;
    this.bits[i]! |= m;
    this.count++;
    if (this.named) {
      this.dirty.add(Math.floor(i / PAGE));
      this.timer ??= setTimeout(() => {
        this.timer = undefined;
        this.flushMap(true).catch(() => {
          // a failed flush leaves the pages dirty; the next sync reports it
        });
      }, FLUSH_MS).unref();
    }
  }

  /** Neither in the delta nor being copied up. */
  private free(b: number): boolean {
    return !this.has(b) && !this.busy.has(b);
  }

  /** Blocks [b0, b1), all free (checked by the caller in the same tick), written whole from `data`. */
  private async writeRun(b0: number, b1: number, data: Buffer): Promise<void> {
    const p = this.delta.write(data, (b1 - b0) * this.blockSize, this.dataOffset + b0 * this.blockSize).then(() => {
      for (let b = b0; b < b1; b++) this.set(b);
    });
    const done = p.then(
      () => undefined,
      () => undefined,
    );
    for (let b = b0; b < b1; b++) this.busy.set(b, done);
    try {
      await p;
    } finally {
      for (let b = b0; b < b1; b++) if (this.busy.get(b) === done) this.busy.delete(b);
    }
  }

  private readRun(present: boolean, dst: Buffer, at: number, length: number, position: number): Promise<number> {
    const buf = at === 0 ? dst : dst.subarray(at);
    return present ? this.delta.read(buf, length, this.dataOffset + position) : this.base.read(buf, length, position);
  }

  /**
   * Makes block b present holding its new bytes. A request covering the whole
   * block writes `whole` (or punches, for a discard) without reading the base;
   * otherwise the base's block is read, `patch` applied, and the block written
   * whole. One copy-up per block at a time; a block that became present while
   * waiting is written in place instead.
   */
  private async copyUp(b: number, patch: (blk: Buffer, off: number) => void, off: number, len: number, whole: Buffer | undefined, position: number, punch = false): Promise<void> {
    for (let w = this.busy.get(b); w; w = this.busy.get(b)) await w;
    if (this.has(b)) {
      if (punch) await this.delta.discard(this.dataOffset + position, len);
      else await this.delta.write(whole!, len, this.dataOffset + position);
      return;
    }
    const bs = this.blockSize;
    const slot = this.dataOffset + b * bs;
    const p = (async () => {
      const blockLen = Math.min(bs, Math.max(0, this.baseSize - b * bs)) || bs;
      if (off === 0 && len >= blockLen) {
        if (punch) await this.delta.discard(slot, bs);
        else await this.delta.write(whole!, blockLen, slot);
      } else {
        const blk = Buffer.allocUnsafe(blockLen);
        await this.base.read(blk, blockLen, b * bs);
        patch(blk, off);
        await this.delta.write(blk, blockLen, slot);
        if (punch) await this.delta.discard(slot + off, len);
      }
      this.set(b);
    })();
    const done = p.then(
      () => undefined,
      () => undefined,
    );
    this.busy.set(b, done);
    try {
      await p;
    } finally {
      this.busy.delete(b);
    }
  }

  /** Resolves when no copy-up is in flight. */
  private async idle(): Promise<void> {
    while (this.busy.size > 0) await Promise.all(this.busy.values());
  }

  /** Data first (fdatasync), then the bitmap pages that were dirty before it, then fdatasync again. */
  private flushMap(datasync: boolean): Promise<void> {
    return this.serial(async () => {
      if (this.closed) return;
      const pages = [...this.dirty];
      this.dirty.clear();
      const snaps = pages.map((p) => Buffer.from(this.bits.subarray(p * PAGE, Math.min(this.bits.length, (p + 1) * PAGE))));
      try {
        await this.delta.sync(true);
        if (pages.length === 0) return;
        for (let i = 0; i < pages.length; i++) await writeAt(this.delta.fd, snaps[i]!, HEADER + pages[i]! * PAGE);
        await this.delta.sync(datasync);
      } catch (e) {
        for (const p of pages) this.dirty.add(p);
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

function popcount(b: number): number {
  let n = 0;
  for (; b; b &= b - 1) n++;
  return n;
}

function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

/** Waits for all, then throws the first failure (no request left running behind an error). */
async function settleAll(parts: Promise<unknown>[]): Promise<void> {
  const r = await Promise.allSettled(parts);
  for (const x of r) if (x.status === 'rejected') throw x.reason;
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
