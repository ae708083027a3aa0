/** The filesystem interface the session calls. Knows files and directories, nothing more. */

import type { FileRange } from '../base/types';

export type NodeId = number;

export interface Attr {
  ino: NodeId;
  size: number;
  blocks?: number;
  mode: number;      // including S_IFDIR / S_IFREG
  nlink: number;
  uid: number;
  gid: number;
  atimeMs?: number;
  mtimeMs?: number;
  ctimeMs?: number;
  blksize?: number;
}

export interface Entry {
  attr: Attr;
  /** Seconds the kernel may cache the name and the attributes. */
  entryTtl?: number;
  attrTtl?: number;
}

export interface DirEntry {
  name: string;
  ino: NodeId;
  /** S_IFDIR or S_IFREG bits of the entry's mode. */
  mode: number;
  /** Full attributes, offered to the kernel with READDIRPLUS (saves a LOOKUP per entry). */
  attr?: Attr;
}

export interface RequestContext {
  uid: number;
  gid: number;
  pid: number;
  /** Aborted when the kernel sends FUSE_INTERRUPT for this request. */
  signal: AbortSignal;
}

export interface OpenResult {
  fh: number;
  directIo?: boolean;
  keepCache?: boolean;
  nonSeekable?: boolean;
  /**
   * READ and WRITE of this handle are plain pread/pwrite of a file: the
   * session serves them on its threads without calling read/write (see
   * threads.ts for the exact semantics) until the handle is released or its
   * node invalidated. Session.takeWritten(fh) tells whether it wrote.
   */
  backing?: BackedRange;
}

/** A range of a file the threads serve themselves (base/types.ts FileRange), with what their backend needs. */
export interface BackedRange extends FileRange {
  /**
   * What else the threads' backend needs to serve the handle, shared with
   * every thread (Readers.share) under `tag` (a positive int32, unique in the
   * session) before the handle is registered; `data` is structured-cloned
   * (SharedArrayBuffers stay shared).
   */
  shared?: { tag: number; data: unknown };
}

export interface SetattrRequest {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atimeMs?: number;
  mtimeMs?: number;
  fh?: number;
}

export interface StatfsResult {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
}

export interface IoctlResult {
  result: number;
  out?: Buffer;
}

/**
 * What a FileSystem may do outside a request: tell the kernel that what it
 * cached is stale, and ask what the session's threads did. Given to the
 * FileSystem's maker when the Session is constructed (Session's `fsys`).
 */
export interface KernelNotifier {
  /** The /dev/fuse descriptor served (it names the FUSE connection). */
  readonly fd: number;
  invalidateNode(node: NodeId): Promise<void>;
  invalidateEntry(parent: NodeId, name: string): Promise<void>;
  deleteEntry(parent: NodeId, child: NodeId, name: string): Promise<void>;
  /** Whether a WRITE to backed handle `fh` was served on a thread since the last call. */
  takeWritten(fh: number): boolean;
  /** The threads may forget what was shared under `tag` (BackedRange.shared): no handle names it any more. */
  unshare(tag: number): void;
}

/**
 * What a FUSE filesystem implements. Errors are thrown as LoopfsErrors (any
 * other error answers as toLoopfsError makes it: its errno `code`, else
 * EIO); a missing optional method answers ENOSYS.
 */
export interface FileSystem {
  lookup(ctx: RequestContext, parent: NodeId, name: string): Promise<Entry> | Entry;
  forget?(node: NodeId, nlookup: number): void;
  getattr(ctx: RequestContext, node: NodeId): Promise<Attr> | Attr;
  setattr?(ctx: RequestContext, node: NodeId, req: SetattrRequest): Promise<Attr> | Attr;
  open?(ctx: RequestContext, node: NodeId, flags: number): Promise<OpenResult> | OpenResult;
  /** Fills `buf` (at most `size` bytes from `offset`) and returns the count; 0 = end of file. */
  read?(ctx: RequestContext, node: NodeId, fh: number, offset: number, size: number, buf: Buffer): Promise<number> | number;
  write?(ctx: RequestContext, node: NodeId, fh: number, offset: number, data: Buffer): Promise<number> | number;
  flush?(ctx: RequestContext, node: NodeId, fh: number): Promise<void> | void;
  /**
   * Called as the RELEASE is dispatched, before any request read after it
   * (a close(2) of a block device is over when it returns: an ioctl after it
   * must not see that opener); `drained` resolves once no I/O thread touches
   * the handle's descriptor any more.
   */
  release?(ctx: RequestContext, node: NodeId, fh: number, drained: Promise<void>): Promise<void> | void;
  fsync?(ctx: RequestContext, node: NodeId, fh: number, datasync: boolean): Promise<void> | void;
  fallocate?(ctx: RequestContext, node: NodeId, fh: number, offset: number, length: number, mode: number): Promise<void> | void;
  ioctl?(ctx: RequestContext, node: NodeId, fh: number, cmd: number, arg: bigint, input: Buffer, outSize: number): Promise<IoctlResult> | IoctlResult;
  readdir(ctx: RequestContext, node: NodeId): Promise<DirEntry[]> | DirEntry[];
  statfs?(ctx: RequestContext, node: NodeId): Promise<StatfsResult> | StatfsResult;
  access?(ctx: RequestContext, node: NodeId, mask: number): Promise<void> | void;
  unlink?(ctx: RequestContext, parent: NodeId, name: string): Promise<void> | void;
  rmdir?(ctx: RequestContext, parent: NodeId, name: string): Promise<void> | void;
  rename?(ctx: RequestContext, parent: NodeId, name: string, newParent: NodeId, newName: string, flags: number): Promise<void> | void;
  mknod?(ctx: RequestContext, parent: NodeId, name: string, mode: number): Promise<Entry> | Entry;
  mkdir?(ctx: RequestContext, parent: NodeId, name: string, mode: number): Promise<Entry> | Entry;
  symlink?(ctx: RequestContext, parent: NodeId, name: string, target: string): Promise<Entry> | Entry;
  link?(ctx: RequestContext, node: NodeId, newParent: NodeId, newName: string): Promise<Entry> | Entry;
  create?(ctx: RequestContext, parent: NodeId, name: string, mode: number, flags: number): Promise<Entry & OpenResult>;
}

/** Words of ThreadData.order (u32): the next request's sequence number, and how many threads read /dev/fuse. */
export const SEQUENCE = 0;
export const READING = 1;

/**
 * When the I/O threads start (threads.ts): the main thread serves the first
 * FIRST_THREAD_AFTER requests after a device is opened itself, then one
 * thread starts, which asks for the others once it has served GROW_AFTER.
 * Formatting or checking one image (a few hundred requests) costs no
 * thread's start, whose runtime takes both CPUs of a small machine for tens
 * of ms; a sustained load has them all within its first milliseconds.
 */
export const FIRST_THREAD_AFTER = 256;
export const GROW_AFTER = 512;
