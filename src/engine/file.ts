import * as fs from 'node:fs';
import { LoopfsError, toLoopfsError } from '../base/errors';
import type { ByteOffset } from '../base/types';
import { koffi } from '../sys/ffi';
import { punchHole } from '../sys/libc';
import { readRest, writeRest } from './transfer';
import type { BlockRange, Lower } from './window';
import { devMajor, devMinor } from '../base/loopdev';

/**
 * The bottom of the stack: pread/pwrite on the backing file at absolute
 * positions, no bounds (the Window above clamps). With direct I/O on, a
 * request whose position and length are aligned goes to the O_DIRECT
 * descriptor (through an aligned bounce buffer if the caller's memory is
 * not aligned); anything else uses the buffered descriptor, which the kernel
 * keeps coherent with O_DIRECT (it flushes and invalidates the page cache
 * around direct I/O).
 */

type Kind = 0 | 1;
const READ: Kind = 0;
const WRITE: Kind = 1;

type IoCallback = (err: NodeJS.ErrnoException | null, n: number) => void;
type IoFn = (fd: number, buf: Buffer, offset: number, length: number, position: number, cb: IoCallback) => void;
const IO: readonly [IoFn, IoFn] = [fs.read as unknown as IoFn, fs.write as unknown as IoFn];

/** Bounce buffers are pooled by power-of-two size up to this; bigger ones are one-off. */
const BOUNCE_MAX = 1 << 20;
const BOUNCE_POOL = 16;

export interface IoCounts {
  /** Requests that went to the O_DIRECT descriptor with the caller's buffer. */
  direct: number;
  /** Requests that went O_DIRECT through a bounce buffer. */
  bounced: number;
  /** Requests served by the buffered descriptor. */
  buffered: number;
}

export class FileIO implements Lower {
  readonly fd: number;
  readonly path: string;
  /** The O_DIRECT descriptor, -1 until openDirect() succeeds. */
  private dfd = -1;
  private directOn = false;
  /** Alignment O_DIRECT needs for memory, position and length. */
  private align = 4096;
  private inflight = 0;
  private closed = false;
  private idle: (() => void) | undefined;
  /** Free bounce buffers by size (powers of two); made by the first bounce (most devices never bounce). */
  private pool: Map<number, Buffer[]> | undefined;
  readonly counts: IoCounts = { direct: 0, bounced: 0, buffered: 0 };

  constructor(fd: number, path: string) {
    this.fd = fd;
    this.path = path;
  }

  get direct(): boolean {
    return this.directOn;
  }

  set direct(on: boolean) {
    this.directOn = on && this.dfd >= 0;
  }

  get dioAlignment(): number {
    return this.align;
  }

  /**
   * Opens a second descriptor with O_DIRECT through /proc/self/fd (same file,
   * same access mode). Throws LoopfsError when the filesystem refuses it.
   * The descriptor stays open until close(), even when direct I/O is turned
   * off, so a request in flight never sees it closed.
   */
  openDirect(writable: boolean, stDev: number): void {
    if (this.dfd < 0) {
      const flags = (writable ? fs.constants.O_RDWR : fs.constants.O_RDONLY) | fs.constants.O_DIRECT;
      try {
        this.dfd = fs.openSync(`/proc/self/fd/${this.fd}`, flags);
      } catch (e) {
        throw toLoopfsError(e, `${this.path}: O_DIRECT`);
      }
      this.align = logicalBlockSize(stDev);
    }
    this.directOn = true;
  }

  read(dst: Buffer, length: number, position: ByteOffset): Promise<number> {
    return this.request(READ, dst, length, position);
  }

  /** The descriptors, unbounded (see BlockRange); none once closed. */
  fileRange(): BlockRange | undefined {
    if (this.closed) return undefined;
    const direct = this.directOn ? { directFd: this.dfd, align: this.align } : {};
    return { fd: this.fd, start: 0, length: Number.MAX_SAFE_INTEGER, readOnly: false, ...direct };
  }

  write(src: Buffer, length: number, position: ByteOffset): Promise<number> {
    return this.request(WRITE, src, length, position);
  }

  sync(datasync: boolean): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    return this.track(
      new Promise<void>((resolve, reject) => {
        (datasync ? fs.fdatasync : fs.fsync)(this.fd, (err) => (err ? reject(toLoopfsError(err, `${this.path}: fsync`)) : resolve()));
      }),
    );
  }

  discard(position: ByteOffset, length: number): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    const what = `${this.path}: discard`;
    return this.track(
      punchHole(this.fd, position, length).catch((e: unknown) => {
        throw e instanceof LoopfsError ? new LoopfsError(e.errno, what, e.reason) : toLoopfsError(e, what);
      }),
    );
  }

  /** Waits for requests in flight, then closes both descriptors. Later requests fail ENXIO. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.inflight > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    const fds = this.dfd >= 0 ? [this.dfd, this.fd] : [this.fd];
    this.dfd = -1;
    this.directOn = false;
    this.pool = undefined;
    let first: unknown;
    for (const fd of fds) {
      try {
        await new Promise<void>((resolve, reject) => fs.close(fd, (err) => (err ? reject(err) : resolve())));
      } catch (e) {
        first ??= e;
      }
    }
    if (first) throw toLoopfsError(first, `${this.path}: close`);
  }

  private request(kind: Kind, buf: Buffer, length: number, position: ByteOffset): Promise<number> {
    if (this.closed) return Promise.reject(this.closedError());
    const align = this.align;
    if (this.directOn && position % align === 0 && length % align === 0) {
      if (memOffset(buf, align) === 0) {
        this.counts.direct++;
        return this.run(kind, this.dfd, buf, length, position);
      }
      this.counts.bounced++;
      return this.bounced(kind, buf, length, position);
    }
    this.counts.buffered++;
    return this.run(kind, this.fd, buf, length, position);
  }

  /** One pread/pwrite; the common case (complete transfer) settles right in the callback. */
  private run(kind: Kind, fd: number, buf: Buffer, length: number, position: ByteOffset): Promise<number> {
    this.inflight++;
    return new Promise<number>((resolve, reject) => {
      IO[kind](fd, buf, 0, length, position, (err, n) => {
        if (!err && n === length) {
          this.settled();
          resolve(n);
          return;
        }
        let v: number;
        try {
          v = this.finish(kind, fd, buf, length, position, err, n);
        } catch (e) {
          this.settled();
          reject(e);
          return;
        }
        this.settled();
        resolve(v);
      });
    });
  }

  /**
   * The rare cases: O_DIRECT refused the request (EINVAL: retried buffered),
   * a short transfer (continued), a read past the end of a file that shrank
   * after attach (the device's size still covers it): transfer.ts's rules,
   * synchronous (rare, and short).
   */
  private finish(kind: Kind, fd: number, buf: Buffer, length: number, position: ByteOffset, err: NodeJS.ErrnoException | null, n: number): number {
    let done = 0;
    if (err) {
      if (!(fd === this.dfd && err.code === 'EINVAL')) throw toLoopfsError(err, this.what(kind, length, position));
    } else {
      done = n;
    }
    try {
      return kind === READ ? readRest(this.fd, buf, done, length, position) : writeRest(this.fd, buf, done, length, position);
    } catch (e) {
      const what = this.what(kind, length, position);
      throw e instanceof LoopfsError ? new LoopfsError(e.errno, what, e.reason) : toLoopfsError(e, what);
    }
  }

  private async bounced(kind: Kind, buf: Buffer, length: number, position: ByteOffset): Promise<number> {
    const b = this.takeBounce(length);
    try {
      if (kind === WRITE) buf.copy(b, 0, 0, length);
      const n = await this.run(kind, this.dfd, b, length, position);
      if (kind === READ) b.copy(buf, 0, 0, n);
      return n;
    } finally {
      this.giveBounce(b);
    }
  }

  private takeBounce(length: number): Buffer {
    if (length > BOUNCE_MAX) return alignedUnsafe(length, this.align);
    let size = Math.max(4096, this.align);
    while (size < length) size *= 2;
    return this.pool?.get(size)?.pop() ?? alignedUnsafe(size, this.align);
  }

  private giveBounce(b: Buffer): void {
    if (b.length > BOUNCE_MAX || this.closed) return;
    this.pool ??= new Map();
    let free = this.pool.get(b.length);
    if (!free) this.pool.set(b.length, (free = []));
    if (free.length < BOUNCE_POOL) free.push(b);
  }

  private async track<T>(p: Promise<T>): Promise<T> {
    this.inflight++;
    try {
      return await p;
    } finally {
      this.settled();
    }
  }

  private settled(): void {
    if (--this.inflight === 0 && this.idle) {
      const idle = this.idle;
      this.idle = undefined;
      idle();
    }
  }

  private what(kind: Kind, length: number, position: ByteOffset): string {
    return `${this.path}: ${kind === READ ? 'read' : 'write'} of ${length} bytes at ${position}`;
  }

  private closedError(): LoopfsError {
    return new LoopfsError('ENXIO', this.path, 'the device has been detached');
  }
}

/** Base address of each ArrayBuffer modulo 64 KiB; backing stores never move. */
const bases = new WeakMap<ArrayBufferLike, number>();

/** Address of buf[0] modulo `align` (a power of two ≤ 64 KiB). */
export function memOffset(buf: Buffer, align: number): number {
  const ab = buf.buffer;
  let base = bases.get(ab);
  if (base === undefined) {
    base = Number(koffi().address(ab) & 0xffffn);
    bases.set(ab, base);
  }
  return (base + buf.byteOffset) & (align - 1);
}

/**
 * A zeroed Buffer of `size` bytes whose address is a multiple of `align`
 * (a power of two ≤ 64 KiB). Callers that want O_DIRECT without a bounce
 * copy pass such buffers (e.g. the FUSE reply data buffer).
 */
export function allocAligned(size: number, align: number): Buffer {
  return alignedUnsafe(size, align).fill(0);
}

function alignedUnsafe(size: number, align: number): Buffer {
  const raw = Buffer.allocUnsafeSlow(size + align);
  const off = (align - memOffset(raw, align)) & (align - 1);
  return raw.subarray(off, off + size);
}

/**
 * Logical block size of the block device holding the file (what O_DIRECT
 * must be aligned to), from sysfs; 4096 (the page size) when the file is on
 * a filesystem without one (tmpfs, btrfs, overlay: st_dev major 0).
 */
function logicalBlockSize(stDev: number): number {
  const major = devMajor(stDev);
  if (major === 0) return 4096;
  const dir = `/sys/dev/block/${major}:${devMinor(stDev)}`;
  for (const f of [`${dir}/queue/logical_block_size`, `${dir}/../queue/logical_block_size`]) {
    try {
      const n = Number(fs.readFileSync(f, 'utf8').trim());
      if (n >= 512 && n <= 65536 && (n & (n - 1)) === 0) return n;
    } catch {
      // a partition has no queue/ of its own: try its disk
    }
  }
  return 4096;
}
