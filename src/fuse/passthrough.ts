import { FUSE_DEV_IOC_BACKING_CLOSE, FUSE_DEV_IOC_BACKING_OPEN } from './kernel';
import { ioctlBuf } from '../sys/libc';

/**
 * FUSE passthrough (protocol 7.40, Linux ≥ 6.9): a handle opened with
 * FOPEN_PASSTHROUGH and a backing id has its reads, writes and mmap served
 * by the kernel from the backing file, never reaching the daemon. The id
 * comes from FUSE_DEV_IOC_BACKING_OPEN on /dev/fuse, which needs
 * CAP_SYS_ADMIN: the first refusal turns passthrough off for the session.
 *
 * The kernel lets an inode have one backing file at a time, and refuses
 * (EIO) an open without FOPEN_PASSTHROUGH while one with it is open, and the
 * reverse. So a node is in one mode while it has open handles, chosen by
 * its first opener and followed by the others: passthrough (one id, shared
 * by all handles, closed with the last) when the first opener is buffered,
 * the ordinary path when it is O_DIRECT (the kernel then splits a large
 * O_DIRECT request into several sent at once, which a passthrough handle,
 * served by us with FOPEN_DIRECT_IO, does not).
 */
export class Passthrough {
  /** Negotiated at INIT. */
  enabled = false;
  private refused = false;
  /** Nodes with open handles: their backing id (undefined: the ordinary path), file and count. */
  private readonly byNode = new Map<number, { id: number | undefined; fd: number; count: number }>();
  private readonly nodeOfFh = new Map<number, number>();

  constructor(private readonly devFd: number, private readonly log?: (line: string) => void) {}

  /**
   * The backing id handle `fh` of `node` opens with, or undefined (the
   * ordinary path). `direct`: the open is O_DIRECT.
   */
  open(fh: number, node: number, fd: number, direct: boolean): number | undefined {
    if (!this.enabled) return undefined;
    let b = this.byNode.get(node);
    // A node keeps its backing file while open (devices are rebound only when closed).
    if (b && b.fd !== fd) return undefined;
    if (!b) {
      b = { id: direct || this.refused ? undefined : this.backingOpen(fd), fd, count: 0 };
      this.byNode.set(node, b);
    }
    b.count++;
    this.nodeOfFh.set(fh, node);
    return b.id;
  }

  private backingOpen(fd: number): number | undefined {
    const map = Buffer.alloc(16);
    map.writeInt32LE(fd, 0);
    try {
      return ioctlBuf(this.devFd, FUSE_DEV_IOC_BACKING_OPEN, map);
    } catch (e) {
      this.refused = true;
      this.log?.(`passthrough off: FUSE_DEV_IOC_BACKING_OPEN: ${(e as Error).message}`);
      return undefined;
    }
  }

  /** At RELEASE of `fh`: the kernel is done with it; the last handle of a node closes its id. */
  release(fh: number): void {
    const node = this.nodeOfFh.get(fh);
    if (node === undefined) return;
    this.nodeOfFh.delete(fh);
    const b = this.byNode.get(node)!;
    if (--b.count > 0) return;
    this.byNode.delete(node);
    if (b.id === undefined) return;
    const id = Buffer.alloc(4);
    id.writeUInt32LE(b.id, 0);
    try {
      ioctlBuf(this.devFd, FUSE_DEV_IOC_BACKING_CLOSE, id);
    } catch (e) {
      this.log?.(`FUSE_DEV_IOC_BACKING_CLOSE ${b.id}: ${(e as Error).message}`);
    }
  }
}
