import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import { toLoopfsError } from '../base/errors';
import {
  Op, FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, ATTR_OUT_SIZE, ENTRY_OUT_SIZE, INIT_OUT_SIZE, OPEN_OUT_SIZE,
  WRITE_OUT_SIZE, STATFS_OUT_SIZE, IOCTL_OUT_SIZE, FUSE_ASYNC_READ, FUSE_BIG_WRITES, FUSE_MAX_PAGES, FUSE_DO_READDIRPLUS,
  FUSE_AUTO_INVAL_DATA, FUSE_PARALLEL_DIROPS, FUSE_ATOMIC_O_TRUNC, FUSE_ASYNC_DIO, FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE,
  FOPEN_NONSEEKABLE, FOPEN_PARALLEL_DIRECT_WRITES, FUSE_INIT_EXT, FUSE_DIRECT_IO_ALLOW_MMAP_MINOR_VERSION, FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2, FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE, FATTR_ATIME, FATTR_MTIME, FATTR_FH,
  FUSE_FSYNC_FDATASYNC, FUSE_NOTIFY_INVAL_INODE, FUSE_NOTIFY_INVAL_ENTRY, FUSE_NOTIFY_DELETE, FUSE_OVER_IO_URING_FLAGS2,
} from './kernel';
import { Body, decodeInHeader, packDirents, writeAttrOut, writeEntryOut, writeOutHeader, writeStatfs, OUT_HEADER_SIZE, type InHeader } from './wire';
import type { DirEntry, Entry, FileSystem, KernelNotifier, OpenResult, RequestContext, SetattrRequest } from './types';
import { BackedTable, runThreads, threadData, type Readers } from './threads';
import { possibleCpus } from './uring';

/**
 * One FUSE connection: `workers` threads read requests from /dev/fuse (see
 * threads.ts). READ and WRITE of a backed handle (OpenResult.backing) are
 * served on those threads; every other request is dispatched here, to the
 * FileSystem, each with a request buffer and a (pooled) reply buffer of its
 * own, so a slow request holds nothing but itself. Threads use no libuv
 * pool thread; each costs ~8 MB of memory (its V8 isolate and buffers), so
 * they start with the first backed handle: until then the main thread reads
 * /dev/fuse on one libuv pool thread (SessionOptions.lazyThreads).
 */

export interface SessionOptions {
  /**
   * The program the threads run: the text of a bundled program that calls
   * thread-main.ts's runThread with the backend that serves backed handles.
   */
  threadProgram: string;
  /** Threads reading /dev/fuse: backed READ/WRITE requests served at once (default 4). */
  workers?: number;
  /**
   * Start the threads only once a handle is backed (default true); until
   * then the main thread reads /dev/fuse on the libuv pool, and an idle
   * instance costs no thread's V8 isolate (~7 MB each).
   */
  lazyThreads?: boolean;
  /**
   * Largest READ/WRITE payload (max_write, and max_pages for reads), default
   * 128 KiB: the kernel sends a 1 MiB O_DIRECT request of an ordinary handle
   * as eight at once (FUSE_ASYNC_DIO), which the threads copy in parallel.
   */
  maxWrite?: number;
  /** Seconds the kernel may cache attributes and names. */
  attrTtl?: number;
  /**
   * Take requests through FUSE over io_uring when the kernel offers it in
   * INIT (it does only where /sys/module/fuse/parameters/enable_uring is on),
   * once the threads start; default true. Needs lazyThreads.
   */
  uring?: boolean;
  /** Ring entries each thread registers per queue (default 1: an entry of a busy thread holds its request until that thread is free). */
  uringDepth?: number;
  /** Each thread on queues of its own rather than every thread on every queue (uring.ts queuesOf); default true. */
  uringSpread?: boolean;
  /** The threads may reply to a READ of a backed file range with splice(2) (splice.ts); default true. */
  splice?: boolean;
  debug?: (line: string) => void;
}

/** The buffers of one request being dispatched. */
interface Worker {
  in: Buffer;
  out: Buffer;
}

type Handler = (s: Session, w: Worker, h: InHeader, b: Body, ctx: RequestContext) => Promise<number | null> | number | null;

const KiB = 1 << 10;
/** Notifications written at once: the libuv pool less one thread for the main thread's read and one for a socket's poll. */
const NOTIFY_SLOTS = Math.max(1, (Number(process.env.UV_THREADPOOL_SIZE) || 4) - 2);

export class Session<F extends FileSystem = FileSystem> implements KernelNotifier {
  readonly fd: number;
  /** The FileSystem served. */
  readonly fsys: F;
  private readonly maxWrite: number;
  private readonly attrTtl: number;
  private readonly workers: number;
  private readonly debug: ((line: string) => void) | undefined;
  private readonly inflight = new Map<bigint, AbortController>();
  private readonly backed = new BackedTable();
  private initialized = false;
  private readonly lazyThreads: boolean;
  private readonly splice: boolean;
  private notifying = 0;
  private readonly notifyQueue: (() => void)[] = [];
  private readonly threadProgram: string;
  private wantThreads = (): void => {};
  private readers: Readers | undefined;
  private readonly wantUring: boolean;
  private readonly uringDepth: number;
  private readonly uringSpread: boolean;
  /** Whether requests come through io_uring (once the threads run). */
  uring = false;
  private share: (tag: number, data: unknown) => void = () => {};
  private readonly sharedTags = new Set<number>();
  /** Directory listings captured at OPENDIR, so READDIR offsets stay stable. */
  private readonly dirs = new Map<number, DirEntry[]>();
  private nextDirFh = 1;

  /** `fsys`: the FileSystem served, or its maker, given this session as the FileSystem's KernelNotifier. */
  constructor(fd: number, fsys: F | ((kernel: KernelNotifier) => F), opts: SessionOptions) {
    this.fd = fd;
    this.maxWrite = opts.maxWrite ?? 128 * KiB;
    this.attrTtl = opts.attrTtl ?? 1;
    this.workers = opts.workers ?? 4;
    this.lazyThreads = opts.lazyThreads ?? true;
    this.wantUring = opts.uring ?? true;
    this.uringDepth = opts.uringDepth ?? 1;
    this.uringSpread = opts.uringSpread ?? true;
    this.splice = opts.splice ?? true;
    this.threadProgram = opts.threadProgram;
    this.debug = opts.debug;
    this.fsys = typeof fsys === 'function' ? (fsys as (kernel: KernelNotifier) => F)(this) : fsys;
  }

  /** Serves until the filesystem is unmounted (a read fails ENODEV). */
  serve(): Promise<void> {
    const size = this.maxWrite + 64 * KiB;
    const outs: Buffer[] = [];
    const readers = runThreads(this.threadProgram, Math.max(1, this.workers), threadData(this.fd, size, this.backed, !this.debug, this.splice), async (req) => {
      const w = { in: req, out: outs.pop() ?? Buffer.allocUnsafe(size) };
      try {
        await this.dispatch(w, req.length);
      } finally {
        if (outs.length < 8) outs.push(w.out);
      }
    }, this.lazyThreads);
    this.wantThreads = readers.want;
    this.readers = readers;
    this.share = readers.share;
    return readers.done;
  }

  private async dispatch(w: Worker, n: number): Promise<void> {
    const h = decodeInHeader(w.in);
    const body = new Body(w.in.subarray(0, n));
    const row = TABLE[h.opcode];
    this.debug?.(`${Op[h.opcode] ?? h.opcode} unique=${h.unique} node=${h.nodeid} uid=${h.uid} pid=${h.pid}`);
    if (!row) return this.replyError(w, h.unique, 'ENOSYS');
    if (!this.initialized && h.opcode !== Op.INIT) return this.replyError(w, h.unique, 'EIO');
    const ac = new AbortController();
    const ctx: RequestContext = { uid: h.uid, gid: h.gid, pid: h.pid, signal: ac.signal };
    this.inflight.set(h.unique, ac);
    try {
      const len = await row(this, w, h, body, ctx);
      if (len !== null) this.send(w.out, OUT_HEADER_SIZE + len, 0, h.unique);
    } catch (e) {
      const code = -toLoopfsError(e).code;
      this.debug?.(`  -> error ${code}${code === osConstants.errno.EIO ? `: ${(e as Error)?.stack ?? e}` : ''}`);
      this.send(w.out, OUT_HEADER_SIZE, -code, h.unique);
    } finally {
      this.inflight.delete(h.unique);
    }
  }

  private replyError(w: Worker, unique: bigint, name: keyof typeof osConstants.errno): void {
    this.send(w.out, OUT_HEADER_SIZE, -osConstants.errno[name], unique);
  }

  private send(b: Buffer, len: number, error: number, unique: bigint): void {
    writeOutHeader(b, len, error, unique);
    if (this.readers?.reply(unique, b, len)) return;
    try {
      fs.writeSync(this.fd, b, 0, len);
    } catch (e) {
      // ENOENT: the request was interrupted and is gone; ENODEV: unmounted.
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENODEV') throw e;
    }
  }

  /**
   * Notifications are written from the libuv pool, never from the loop
   * thread: an invalidation may wait on a page lock that a pending READ holds,
   * and that READ needs this thread to be answered. At most NOTIFY_SLOTS at
   * once: until the threads start, that READ is read by the main thread on
   * the pool too, and a storm of blocked invalidations must leave it a thread.
   */
  private notify(code: number, payload: Buffer): Promise<void> {
    const b = Buffer.alloc(OUT_HEADER_SIZE + payload.length);
    writeOutHeader(b, b.length, code, 0n);
    payload.copy(b, OUT_HEADER_SIZE);
    return new Promise((resolve) => {
      const write = (): void => {
        this.notifying++;
        fs.write(this.fd, b, 0, b.length, null, () => {
          this.notifying--;
          this.notifyQueue.shift()?.();
          resolve();
        });
      };
      if (this.notifying < NOTIFY_SLOTS) write();
      else this.notifyQueue.push(write);
    });
  }

  /**
   * Drops the kernel's cached attributes and (len 0 = all) cached pages of a
   * node. Its backed handles go back to the FileSystem's read/write: what
   * they map may have changed.
   */
  invalidateNode(node: number): Promise<void> {
    void this.backed.revokeNode(node);
    const p = Buffer.alloc(24);
    p.writeBigUInt64LE(BigInt(node), 0);
    p.writeBigInt64LE(0n, 8);
    p.writeBigInt64LE(0n, 16);
    return this.notify(FUSE_NOTIFY_INVAL_INODE, p);
  }

  /** Drops a cached name in a directory (after a rename or removal done behind the kernel's back). */
  invalidateEntry(parent: number, name: string): Promise<void> {
    const nb = Buffer.from(name);
    const p = Buffer.alloc(16 + nb.length + 1);
    p.writeBigUInt64LE(BigInt(parent), 0);
    p.writeUInt32LE(nb.length, 8);
    nb.copy(p, 16);
    return this.notify(FUSE_NOTIFY_INVAL_ENTRY, p);
  }

  /** Tells the kernel a name is gone (like inval entry, and also prunes the dentry if open). */
  deleteEntry(parent: number, child: number, name: string): Promise<void> {
    const nb = Buffer.from(name);
    const p = Buffer.alloc(24 + nb.length + 1);
    p.writeBigUInt64LE(BigInt(parent), 0);
    p.writeBigUInt64LE(BigInt(child), 8);
    p.writeUInt32LE(nb.length, 16);
    nb.copy(p, 24);
    return this.notify(FUSE_NOTIFY_DELETE, p);
  }

  // --- used by the table rows ---

  entry(w: Worker, e: Entry): number {
    writeEntryOut(w.out, OUT_HEADER_SIZE, { entryTtl: this.attrTtl, attrTtl: this.attrTtl, ...e });
    return ENTRY_OUT_SIZE;
  }

  fsOf(): FileSystem {
    return this.fsys;
  }

  get ttl(): number {
    return this.attrTtl;
  }

  init(w: Worker, b: Body): number {
    const major = b.u32(0);
    const minor = b.u32(4);
    const maxReadahead = b.u32(8);
    const kflags = b.u32(12);
    const o = w.out;
    o.fill(0, OUT_HEADER_SIZE, OUT_HEADER_SIZE + INIT_OUT_SIZE);
    o.writeUInt32LE(FUSE_KERNEL_VERSION, OUT_HEADER_SIZE);
    if (major !== FUSE_KERNEL_VERSION) {
      // The kernel retries with our major when it is newer; we speak only 7.
      o.writeUInt32LE(FUSE_KERNEL_MINOR_VERSION, OUT_HEADER_SIZE + 4);
      return 8;
    }
    const want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_DO_READDIRPLUS | FUSE_AUTO_INVAL_DATA
      | FUSE_PARALLEL_DIROPS | FUSE_ATOMIC_O_TRUNC | FUSE_ASYNC_DIO;
    const kflags2 = kflags & FUSE_INIT_EXT ? b.u32(16) : 0;
    // Shared mmap of a handle opened with FOPEN_DIRECT_IO (else ENODEV), the kernel keeping it coherent.
    const dioMmap = minor >= FUSE_DIRECT_IO_ALLOW_MMAP_MINOR_VERSION && (kflags2 & FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2) !== 0;
    const uring = this.wantUring && (kflags2 & FUSE_OVER_IO_URING_FLAGS2) !== 0 && this.readers !== undefined
      && this.readers.useUring({ queues: possibleCpus(readFileOr('/sys/devices/system/cpu/possible', '0')), depth: this.uringDepth, spread: this.uringSpread });
    // The offer is not taken up in the reply: a connection that took it holds
    // every request until all queues have entries (fuse_block_alloc), so the
    // threads would have to start with the mount. Unasked, the ring takes the
    // requests once the threads (started with the first backed handle) have
    // registered on every queue, and /dev/fuse serves until then.
    this.uring = uring;
    const flags2 = dioMmap ? FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2 : 0;
    const ours = dioMmap ? FUSE_DIRECT_IO_ALLOW_MMAP_MINOR_VERSION : FUSE_KERNEL_MINOR_VERSION;
    o.writeUInt32LE(Math.min(minor, ours), OUT_HEADER_SIZE + 4);
    o.writeUInt32LE(maxReadahead, OUT_HEADER_SIZE + 8);
    o.writeUInt32LE(((kflags & want) | (flags2 ? FUSE_INIT_EXT : 0)) >>> 0, OUT_HEADER_SIZE + 12);
    if (flags2) o.writeUInt32LE(flags2, OUT_HEADER_SIZE + 32);
    o.writeUInt16LE(64, OUT_HEADER_SIZE + 16); // max_background
    o.writeUInt16LE(48, OUT_HEADER_SIZE + 18); // congestion_threshold
    o.writeUInt32LE(this.maxWrite, OUT_HEADER_SIZE + 20);
    o.writeUInt32LE(1, OUT_HEADER_SIZE + 24); // time_gran: 1 ns
    o.writeUInt16LE(Math.ceil(this.maxWrite / 4096), OUT_HEADER_SIZE + 28); // max_pages
    this.initialized = true;
    this.debug?.(`INIT kernel ${major}.${minor} flags=0x${kflags.toString(16)} flags2=0x${kflags2.toString(16)} max_readahead=${maxReadahead} uring=${uring}`);
    return INIT_OUT_SIZE;
  }

  /** Whether a WRITE to backed handle `fh` was served on a thread since the last call (FileSystem.write never saw it). */
  takeWritten(fh: number): boolean {
    return this.backed.takeWritten(fh);
  }

  /** Registers what an open returned. */
  opened(fh: number, node: number, r: OpenResult): void {
    const shared = r.backing?.shared;
    if (shared && !this.sharedTags.has(shared.tag)) {
      this.sharedTags.add(shared.tag);
      this.share(shared.tag, shared.data);
    }
    if (r.backing && this.backed.register(fh, node, r.backing)) this.wantThreads();
  }

  /**
   * Before the FileSystem's release (which may close the backing file):
   * nothing uses the handle any more. Synchronous (undefined) unless a
   * thread is still serving it, so a release is seen before any request
   * the kernel sent after it.
   */
  releasing(fh: number): Promise<void> | undefined {
    return this.backed.revoke(fh);
  }

  /** The threads may forget what was shared under `tag` (BackedRange.shared): no handle names it any more. */
  unshare(tag: number): void {
    if (this.sharedTags.delete(tag)) this.share(tag, undefined);
  }

  interrupt(unique: bigint): void {
    this.inflight.get(unique)?.abort();
  }

  openDir(entries: DirEntry[]): number {
    const fh = this.nextDirFh++;
    this.dirs.set(fh, entries);
    return fh;
  }

  dirEntries(fh: number): DirEntry[] | undefined {
    return this.dirs.get(fh);
  }

  closeDir(fh: number): void {
    this.dirs.delete(fh);
  }
}


/**
 * A direct-I/O handle of a plain file range (`backing`: positional
 * pread/pwrite, on the threads or, revoked, through the FileSystem) also gets
 * FOPEN_PARALLEL_DIRECT_WRITES: without it the kernel takes the inode lock
 * exclusively around every write of the node, so writers of one device (fio
 * --numjobs, a database's threads) wait for each other where a block device
 * lets them run at once. The kernel still takes it exclusively for a write
 * that reaches past the end.
 */
function openFlags(r: OpenResult): number {
  return (r.directIo ? FOPEN_DIRECT_IO | (r.backing ? FOPEN_PARALLEL_DIRECT_WRITES : 0) : 0)
    | (r.keepCache ? FOPEN_KEEP_CACHE : 0) | (r.nonSeekable ? FOPEN_NONSEEKABLE : 0);
}

function readFileOr(file: string, fallback: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return fallback;
  }
}

/** fuse_open_out (no backing id: no FUSE passthrough). */
function writeOpenOut(o: Buffer, at: number, r: OpenResult): number {
  o.writeBigUInt64LE(BigInt(r.fh), at);
  o.writeUInt32LE(openFlags(r), at + 8);
  o.writeInt32LE(0, at + 12);
  return OPEN_OUT_SIZE;
}

const H = OUT_HEADER_SIZE;

function enosys(): never {
  throw Object.assign(new Error('not implemented'), { code: 'ENOSYS' });
}

/**
 * One row per opcode: decode the body, make one call on the FileSystem,
 * encode the reply. Returns the reply payload length, or null for no reply.
 * An opcode missing here is ENOSYS, answered in exactly one place (dispatch).
 */
const TABLE: Partial<Record<number, Handler>> = {
  [Op.INIT]: (s, w, _h, b) => s.init(w, b),
  [Op.DESTROY]: () => 0,
  [Op.INTERRUPT]: (s, _w, _h, b) => (s.interrupt(b.big64(0)), null),
  [Op.FORGET]: (s, _w, h, b) => (s.fsOf().forget?.(h.nodeid, b.u64(0)), null),
  [Op.BATCH_FORGET]: (s, _w, _h, b) => {
    const count = b.u32(0);
    for (let i = 0; i < count; i++) s.fsOf().forget?.(b.u64(8 + i * 16), b.u64(16 + i * 16));
    return null;
  },
  [Op.LOOKUP]: async (s, w, h, b, ctx) => s.entry(w, await s.fsOf().lookup(ctx, h.nodeid, b.strings(0, 1)[0]!)),
  [Op.GETATTR]: async (s, w, h, _b, ctx) => {
    writeAttrOut(w.out, H, await s.fsOf().getattr(ctx, h.nodeid), s.ttl);
    return ATTR_OUT_SIZE;
  },
  [Op.SETATTR]: async (s, w, h, b, ctx) => {
    const valid = b.u32(0);
    const req: SetattrRequest = {};
    if (valid & FATTR_FH) req.fh = b.u64(8);
    if (valid & FATTR_SIZE) req.size = b.u64(16);
    if (valid & FATTR_ATIME) req.atimeMs = b.u64(32) * 1000 + b.u32(56) / 1e6;
    if (valid & FATTR_MTIME) req.mtimeMs = b.u64(40) * 1000 + b.u32(60) / 1e6;
    if (valid & FATTR_MODE) req.mode = b.u32(68);
    if (valid & FATTR_UID) req.uid = b.u32(76);
    if (valid & FATTR_GID) req.gid = b.u32(80);
    const f = s.fsOf();
    const attr = f.setattr ? await f.setattr(ctx, h.nodeid, req) : await f.getattr(ctx, h.nodeid);
    writeAttrOut(w.out, H, attr, s.ttl);
    return ATTR_OUT_SIZE;
  },
  [Op.OPEN]: async (s, w, h, b, ctx) => {
    const f = s.fsOf();
    const flags = b.u32(0);
    const r = f.open ? await f.open(ctx, h.nodeid, flags) : { fh: 0 };
    s.opened(r.fh, h.nodeid, r);
    return writeOpenOut(w.out, H, r);
  },
  [Op.READ]: async (s, w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.read) enosys();
    const size = Math.min(b.u32(16), w.out.length - H);
    return f.read(ctx, h.nodeid, b.u64(0), b.u64(8), size, w.out.subarray(H, H + size));
  },
  [Op.WRITE]: async (s, w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.write) enosys();
    const n = await f.write(ctx, h.nodeid, b.u64(0), b.u64(8), b.bytes(40, b.u32(16)));
    w.out.writeUInt32LE(n, H);
    w.out.writeUInt32LE(0, H + 4);
    return WRITE_OUT_SIZE;
  },
  [Op.FLUSH]: async (s, _w, h, b, ctx) => (await s.fsOf().flush?.(ctx, h.nodeid, b.u64(0)), 0),
  [Op.RELEASE]: async (s, _w, h, b, ctx) => {
    const drained = s.releasing(b.u64(0)) ?? Promise.resolve();
    await s.fsOf().release?.(ctx, h.nodeid, b.u64(0), drained);
    await drained;
    return 0;
  },
  [Op.FSYNC]: async (s, _w, h, b, ctx) => (await s.fsOf().fsync?.(ctx, h.nodeid, b.u64(0), (b.u32(8) & FUSE_FSYNC_FDATASYNC) !== 0), 0),
  [Op.FALLOCATE]: async (s, _w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.fallocate) enosys();
    await f.fallocate(ctx, h.nodeid, b.u64(0), b.u64(8), b.u64(16), b.u32(24));
    return 0;
  },
  [Op.IOCTL]: async (s, w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.ioctl) throw Object.assign(new Error('no ioctl'), { code: 'ENOTTY' });
    const inSize = b.u32(24);
    const outSize = b.u32(28);
    const r = await f.ioctl(ctx, h.nodeid, b.u64(0), b.u32(12), b.big64(16), b.bytes(32, inSize), outSize);
    w.out.fill(0, H, H + IOCTL_OUT_SIZE);
    w.out.writeInt32LE(r.result, H);
    const outLen = r.out ? Math.min(r.out.length, outSize) : 0;
    if (r.out) r.out.copy(w.out, H + IOCTL_OUT_SIZE, 0, outLen);
    return IOCTL_OUT_SIZE + outLen;
  },
  [Op.OPENDIR]: async (s, w, h, _b, ctx) => {
    const entries = await s.fsOf().readdir(ctx, h.nodeid);
    return writeOpenOut(w.out, H, { fh: s.openDir(entries) });
  },
  [Op.READDIR]: (s, w, _h, b) => readdir(s, w, b, false),
  [Op.READDIRPLUS]: (s, w, _h, b) => readdir(s, w, b, true),
  [Op.RELEASEDIR]: (s, _w, _h, b) => (s.closeDir(b.u64(0)), 0),
  [Op.FSYNCDIR]: () => 0,
  [Op.STATFS]: async (s, w, h, _b, ctx) => {
    const f = s.fsOf();
    writeStatfs(w.out, H, f.statfs ? await f.statfs(ctx, h.nodeid) : { blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, bsize: 4096, namelen: 255 });
    return STATFS_OUT_SIZE;
  },
  [Op.ACCESS]: async (s, _w, h, b, ctx) => (await s.fsOf().access?.(ctx, h.nodeid, b.u32(0)), 0),
  [Op.UNLINK]: async (s, _w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.unlink) enosys();
    await f.unlink(ctx, h.nodeid, b.strings(0, 1)[0]!);
    return 0;
  },
  [Op.RMDIR]: async (s, _w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.rmdir) enosys();
    await f.rmdir(ctx, h.nodeid, b.strings(0, 1)[0]!);
    return 0;
  },
  [Op.RENAME]: async (s, _w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.rename) enosys();
    const [from, to] = b.strings(8, 2);
    await f.rename(ctx, h.nodeid, from!, b.u64(0), to!, 0);
    return 0;
  },
  [Op.RENAME2]: async (s, _w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.rename) enosys();
    const [from, to] = b.strings(16, 2);
    await f.rename(ctx, h.nodeid, from!, b.u64(0), to!, b.u32(8));
    return 0;
  },
  [Op.MKNOD]: async (s, w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.mknod) enosys();
    return s.entry(w, await f.mknod(ctx, h.nodeid, b.strings(16, 1)[0]!, b.u32(0)));
  },
  [Op.MKDIR]: async (s, w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.mkdir) enosys();
    return s.entry(w, await f.mkdir(ctx, h.nodeid, b.strings(8, 1)[0]!, b.u32(0)));
  },
  [Op.SYMLINK]: async (s, w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.symlink) enosys();
    const [name, target] = b.strings(0, 2);
    return s.entry(w, await f.symlink(ctx, h.nodeid, name!, target!));
  },
  [Op.LINK]: async (s, w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.link) enosys();
    return s.entry(w, await f.link(ctx, b.u64(0), h.nodeid, b.strings(8, 1)[0]!));
  },
  [Op.CREATE]: async (s, w, h, b, ctx) => {
    const f = s.fsOf();
    if (!f.create) enosys();
    const r = await f.create(ctx, h.nodeid, b.strings(16, 1)[0]!, b.u32(4), b.u32(0));
    const n = s.entry(w, r);
    return n + writeOpenOut(w.out, H + n, r);
  },
};

function readdir(s: Session, w: Worker, b: Body, plus: boolean): number {
  const entries = s.dirEntries(b.u64(0)) ?? [];
  const size = Math.min(b.u32(16), w.out.length - H);
  // READDIRPLUS: an entry without attributes goes out with nodeid 0, which
  // the kernel takes as "no attributes offered" (not as ENOENT).
  const entryOf = (d: DirEntry): Entry | undefined => (d.attr ? { attr: d.attr, entryTtl: s.ttl, attrTtl: s.ttl } : undefined);
  return packDirents(w.out, H, size, entries, b.u64(8), plus ? entryOf : undefined);
}
