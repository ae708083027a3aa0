import { readRest, writeRest } from './transfer';

/**
 * The block map of an overlay (overlay.ts) and the reads and writes that
 * follow it, synchronous, over shared memory: the I/O threads serve an
 * overlay device's READ and WRITE with it, and the main thread (Overlay)
 * uses the same object for whatever reaches it. Nothing here loads koffi:
 * the I/O thread program bundles it.
 *
 * Shared state (OverlayShare, structured-cloned to the threads):
 *   bits   one bit per block, set (Atomics.or) only after the block's data
 *          is in the delta;
 *   meta   the base's size (a Float64: losetup -c changes it), then Int32s:
 *          the count of present blocks, a "some page dirty" flag, then
 *          LOCKS block locks (a block's lock is its number modulo LOCKS;
 *          0 free, 1 taken);
 *   dirty  one byte per bitmap page whose bits changed since the main
 *          thread last took it (a named delta persists those pages).
 *
 * A write to blocks that are all present goes straight to the delta,
 * without a lock. Otherwise the write takes the locks of its blocks (in
 * ascending lock order: no two writers wait on each other), looks again,
 * copies up an absent block it covers only in part (the base's block,
 * patched, written whole), writes the rest in one piece, and sets the bits
 * of the blocks it filled. Readers take no lock: a block reads from the
 * delta once its bit is set, from the base before.
 */

const PAGE = 4096;
// Int32 words of meta, after the Float64 base size.
const COUNT = 2;
const DIRTY = 3;
const LOCK0 = 4;
export const LOCKS = 4096;

export interface OverlayShare {
  /** Unique in the process: names this map for the threads (BackedRange.shared's tag). */
  id: number;
  bits: SharedArrayBuffer;
  meta: SharedArrayBuffer;
  dirty: SharedArrayBuffer;
  blockSize: number;
  dataOffset: number;
  /** The base, read only (buffered descriptor). */
  baseFd: number;
  deltaFd: number;
  /** The map persists in the delta: track dirty pages. */
  named: boolean;
}

let nextId = 1;

/** A new, empty map of a base of `baseSize` bytes, with room for `bitBytes` bytes of bitmap. */
export function newShare(s: Omit<OverlayShare, 'id' | 'bits' | 'meta' | 'dirty'>, baseSize: number, bitBytes: number): OverlayShare {
  const bits = new SharedArrayBuffer(Math.max(1, bitBytes));
  const meta = new SharedArrayBuffer((LOCK0 + LOCKS) * 4);
  const dirty = new SharedArrayBuffer(Math.max(1, Math.ceil(bitBytes / PAGE)));
  new Float64Array(meta, 0, 1)[0] = baseSize;
  return { ...s, id: nextId++, bits, meta, dirty };
}

export class OverlayMap {
  readonly share: OverlayShare;
  private readonly bits: Uint8Array;
  private readonly meta: Int32Array;
  private readonly size: Float64Array;
  private readonly dirtyPages: Uint8Array;
  private readonly bs: number;
  /** A block's worth of memory for copy-ups. */
  private scratch: Buffer | undefined;

  constructor(share: OverlayShare) {
    this.share = share;
    this.bits = new Uint8Array(share.bits);
    this.meta = new Int32Array(share.meta);
    this.size = new Float64Array(share.meta, 0, 1);
    this.dirtyPages = new Uint8Array(share.dirty);
    this.bs = share.blockSize;
  }

  /** The base's size: the last block may be short. */
  get baseSize(): number {
    return this.size[0]!;
  }

  /** losetup -c: every thread sees the new size (the bitmap has room: the caller checked). */
  set baseSize(n: number) {
    this.size[0] = n;
  }

  /** Blocks present in the delta. */
  get count(): number {
    return Atomics.load(this.meta, COUNT);
  }

  /** Bytes of bitmap (8 blocks each). */
  get bitBytes(): number {
    return this.bits.length;
  }

  has(b: number): boolean {
    const i = b >> 3;
    return i < this.bits.length && (Atomics.load(this.bits, i) & (1 << (b & 7))) !== 0;
  }

  private set(b: number): void {
    const i = b >> 3;
    if (i >= this.bits.length) return;
    const m = 1 << (b & 7);
    if (Atomics.or(this.bits, i, m) & m) return;
    Atomics.add(this.meta, COUNT, 1);
    if (this.share.named) {
      Atomics.store(this.dirtyPages, Math.floor(i / PAGE), 1);
      Atomics.store(this.meta, DIRTY, 1);
    }
  }

  /** Whether some bitmap page changed since takeDirty() last ran. */
  get dirty(): boolean {
    return Atomics.load(this.meta, DIRTY) !== 0;
  }

  /** The bitmap pages changed since the last call (their dirty marks cleared), in order. */
  takeDirty(): number[] {
    if (Atomics.exchange(this.meta, DIRTY, 0) === 0) return [];
    const pages: number[] = [];
    for (let p = 0; p < this.dirtyPages.length; p++) if (Atomics.exchange(this.dirtyPages, p, 0)) pages.push(p);
    return pages;
  }

  /** Marks pages dirty again (their write failed). */
  redirty(pages: number[]): void {
    for (const p of pages) Atomics.store(this.dirtyPages, p, 1);
    if (pages.length) Atomics.store(this.meta, DIRTY, 1);
  }

  /** A copy of bitmap page p (up to the bitmap's end). */
  page(p: number): Buffer {
    return Buffer.from(this.bits.slice(p * PAGE, Math.min(this.bits.length, (p + 1) * PAGE)));
  }

  /** Bitmap bytes [0, n) from `src` (opening a named delta). */
  load(src: Uint8Array): void {
    const n = Math.min(src.length, this.bits.length);
    this.bits.set(src.subarray(0, n));
    let count = 0;
    for (let i = 0; i < n; i++) count += popcount(this.bits[i]!);
    Atomics.store(this.meta, COUNT, count);
  }

  /** Every block absent (no I/O may run). */
  clear(): void {
    this.bits.fill(0);
    this.dirtyPages.fill(0);
    Atomics.store(this.meta, DIRTY, 0);
    Atomics.store(this.meta, COUNT, 0);
  }

  /** Reads `length` bytes at base position `position` into dst[0..]. */
  read(dst: Buffer, length: number, position: number): number {
    const bs = this.bs;
    const end = position + length;
    for (let at = position; at < end; ) {
      const present = this.has(Math.floor(at / bs));
      let stop = Math.min(end, (Math.floor(at / bs) + 1) * bs);
      while (stop < end && this.has(stop / bs) === present) stop = Math.min(end, stop + bs);
      const buf = at === position ? dst : dst.subarray(at - position);
      if (present) readRest(this.share.deltaFd, buf, 0, stop - at, this.share.dataOffset + at);
      else readRest(this.share.baseFd, buf, 0, stop - at, at);
      at = stop;
    }
    return length;
  }

  /** Writes src[0, length) at base position `position`; the count written (short if the delta refused the rest). */
  write(src: Buffer, length: number, position: number): number {
    if (length === 0) return 0;
    const b0 = Math.floor(position / this.bs);
    const b1 = Math.floor((position + length - 1) / this.bs);
    let all = true;
    for (let b = b0; b <= b1 && all; b++) all = this.has(b);
    if (all) return writeRest(this.share.deltaFd, src, 0, length, this.share.dataOffset + position);
    if (b0 === b1 && this.whole(b0, position, position + length)) return this.writeBlock(src, length, position, b0);
    return this.locked(b0, b1, () =>
      this.change(position, length, b0, b1, (blk, off, s, e) => src.copy(blk, off, s - position, e - position), (from, to) =>
        writeRest(this.share.deltaFd, src, from - position, to - position, this.share.dataOffset + position) - (from - position),
      ),
    );
  }

  /**
   * Makes [position, position + length) read zeros and mask the base: an
   * absent block covered in part is copied up with zeros, the rest is
   * punched at once (`punch`: synchronous) and its blocks become present.
   */
  discard(position: number, length: number, punch: (fd: number, position: number, length: number) => void): void {
    if (length === 0) return;
    const b0 = Math.floor(position / this.bs);
    const b1 = Math.floor((position + length - 1) / this.bs);
    this.locked(b0, b1, () =>
      this.change(position, length, b0, b1, (blk, off, s, e) => blk.fill(0, off, off + e - s), (from, to) => {
        punch(this.share.deltaFd, this.share.dataOffset + from, to - from);
        return to - from;
      }),
    );
  }

  /** Bytes of block b that the base holds (the last block may be short). */
  private blockLen(b: number): number {
    return Math.min(this.bs, Math.max(0, this.size[0]! - b * this.bs)) || this.bs;
  }

  private whole(b: number, s: number, e: number): boolean {
    return s === b * this.bs && e - s >= this.blockLen(b);
  }

  /**
   * Under the locks of b0..b1: an absent block covered in part (only the
   * first and the last can be) is copied up with `patch` applied; the rest,
   * [from, to), goes to the delta through `rest` (bytes done, short if it
   * stopped early), and the blocks it filled become present.
   */
  private change(position: number, length: number, b0: number, b1: number, patch: (blk: Buffer, off: number, s: number, e: number) => void, rest: (from: number, to: number) => number): number {
    const bs = this.bs;
    const end = position + length;
    const edge = (b: number): boolean => {
      const s = Math.max(position, b * bs);
      const e = Math.min(end, (b + 1) * bs);
      if (this.has(b) || this.whole(b, s, e)) return false;
      this.copyUp(b, (blk, off) => patch(blk, off, s, e), s);
      return true;
    };
    let from = position;
    let to = end;
    if (edge(b0)) from = Math.min(end, (b0 + 1) * bs);
    if (b1 > b0 && edge(b1)) to = b1 * bs;
    if (from >= to) return length;
    const filled = from + rest(from, to);
    for (let b = Math.floor(from / bs); b <= b1 && Math.min(end, (b + 1) * bs) <= filled; b++) this.set(b);
    return filled < to ? filled - position : length;
  }

  /** Block b, absent and locked: the base's block, patched at `s`, written whole into its slot; then present. */
  private copyUp(b: number, patch: (blk: Buffer, off: number) => void, s: number): void {
    const len = this.blockLen(b);
    const blk = (this.scratch ??= Buffer.allocUnsafe(this.bs)).subarray(0, len);
    readRest(this.share.baseFd, blk, 0, len, b * this.bs);
    patch(blk, s - b * this.bs);
    const n = writeRest(this.share.deltaFd, blk, 0, len, this.share.dataOffset + b * this.bs);
    if (n < len) throw Object.assign(new Error('overlay: short write of a block'), { code: 'EIO' });
    this.set(b);
  }

  /**
   * The common case of a random write, without the closures of change():
   * one whole block, absent when looked at, written under its lock (a
   * copy-up of the block elsewhere must not land over it) and then present.
   */
  private writeBlock(src: Buffer, length: number, position: number, b: number): number {
    const l = b % LOCKS;
    this.take(l);
    try {
      const n = writeRest(this.share.deltaFd, src, 0, length, this.share.dataOffset + position);
      if (n === length) this.set(b);
      return n;
    } finally {
      this.give(l);
    }
  }

  private take(l: number): void {
    const i = LOCK0 + l;
    while (Atomics.compareExchange(this.meta, i, 0, 1) !== 0) Atomics.wait(this.meta, i, 1, 100);
  }

  private give(l: number): void {
    Atomics.store(this.meta, LOCK0 + l, 0);
    Atomics.notify(this.meta, LOCK0 + l, 1);
  }

  /** Runs fn holding the locks of blocks b0..b1, taken in ascending lock order. */
  private locked<T>(b0: number, b1: number, fn: () => T): T {
    const n = b1 - b0 + 1;
    const first = b0 % LOCKS;
    const taken: number[] = [];
    const take = (l: number): void => {
      this.take(l);
      taken.push(l);
    };
    try {
      if (n >= LOCKS) for (let l = 0; l < LOCKS; l++) take(l);
      else if (first + n <= LOCKS) for (let l = first; l < first + n; l++) take(l);
      else {
        for (let l = 0; l < first + n - LOCKS; l++) take(l);
        for (let l = first; l < LOCKS; l++) take(l);
      }
      return fn();
    } finally {
      for (const l of taken) this.give(l);
    }
  }
}

function popcount(b: number): number {
  let n = 0;
  for (; b; b &= b - 1) n++;
  return n;
}
