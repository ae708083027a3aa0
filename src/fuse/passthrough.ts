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
 * reverse: so one id per node, shared by all of its open handles and closed
 * with the last of them.
 */
export class Passthrough {
  /** Negotiated at INIT. */
  enabled = false;
  private refused = false;
  private readonly byNode = new Map<number, { id: number; fd: number; count: number }>();
  private readonly nodeOfFh = new Map<number, number>();

  constructor(private readonly devFd: number, private readonly log?: (line: string) => void) {}

  /** The backing id handle `fh` of `node` opens with, or undefined (the ordinary path). */
  open(fh: number, node: number, fd: number): number | undefined {
    if (!this.enabled) return undefined;
    let b = this.byNode.get(node);
    // A node keeps its backing file while open (devices are rebound only when closed).
    if (b && b.fd !== fd) return undefined;
    if (!b) {
      if (this.refused) return undefined;
      const map = Buffer.alloc(16);
      map.writeInt32LE(fd, 0);
      try {
        b = { id: ioctlBuf(this.devFd, FUSE_DEV_IOC_BACKING_OPEN, map), fd, count: 0 };
      } catch (e) {
        this.refused = true;
        this.log?.(`passthrough off: FUSE_DEV_IOC_BACKING_OPEN: ${(e as Error).message}`);
        return undefined;
      }
      this.byNode.set(node, b);
    }
    b.count++;
    this.nodeOfFh.set(fh, node);
    return b.id;
  }

  /** At RELEASE of `fh`: the kernel is done with it; the last handle of a node closes its id. */
  release(fh: number): void {
    const node = this.nodeOfFh.get(fh);
    if (node === undefined) return;
    this.nodeOfFh.delete(fh);
    const b = this.byNode.get(node)!;
    if (--b.count > 0) return;
    this.byNode.delete(node);
    const id = Buffer.alloc(4);
    id.writeUInt32LE(b.id, 0);
    try {
      ioctlBuf(this.devFd, FUSE_DEV_IOC_BACKING_CLOSE, id);
    } catch (e) {
      this.log?.(`FUSE_DEV_IOC_BACKING_CLOSE ${b.id}: ${(e as Error).message}`);
    }
  }
}
