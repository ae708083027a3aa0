import * as fs from 'node:fs';
import { threadKoffi } from './thread-koffi';

/**
 * READ replies by splice(2), on an I/O thread: the reply's header is written
 * into a pipe of the thread's, the data spliced from the backing file into
 * the pipe (page-cache pages by reference, no copy), and the pipe spliced
 * into /dev/fuse (the kernel's fuse_dev_splice_write; the whole reply must
 * be in the pipe). The bytes are copied once, into the reader's pages,
 * instead of twice (pread into the thread's buffer, then write(2) of it).
 *
 * It loads koffi on the thread, from `koffiPath` (thread-main.ts). Anything
 * not served whole — the file ends inside the range, splice refuses the
 * file — leaves the pipe empty and returns false: the caller serves the
 * request the ordinary way, with its rules.
 */
export interface Splicer {
  /** Replies with header[0, 16) (its length already H + len) and len bytes of fd at pos; false: nothing was sent. */
  reply(header: Buffer, fd: number, pos: number, len: number): boolean;
}

/**
 * The smallest READ worth splicing: below it the two copies cost less than
 * the extra system call (4 KiB random reads at queue depth 1 measured no
 * faster, slightly slower, spliced).
 */
export const SPLICE_MIN = 32 * 1024;

const SPLICE_F_MOVE = 1;
const F_SETPIPE_SZ = 1031;
const O_CLOEXEC = 0o2000000;
const PAGE = 4096;

type Fn = (...a: unknown[]) => number;

export function splicer(koffiPath: string, fuseFd: number, bufferSize: number): Splicer | undefined {
  let k: typeof import('koffi');
  try {
    k = threadKoffi(koffiPath);
  } catch {
    return undefined;
  }
  const libc = k.load('libc.so.6');
  const splice = libc.func('long splice(int, void *, int, void *, size_t, unsigned int)') as Fn;
  const pipe2 = libc.func('int pipe2(_Out_ int *fds, int flags)') as Fn;
  const fcntl = libc.func('int fcntl(int, int, ...)') as Fn;
  // The header takes a page of the pipe, the data one more than its pages where it does not start on one.
  let capacity = PAGE;
  while (capacity < bufferSize + 2 * PAGE) capacity *= 2;

  let rd = -1;
  let wr = -1;
  const close = (): void => {
    if (rd >= 0) fs.closeSync(rd);
    if (wr >= 0) fs.closeSync(wr);
    rd = wr = -1;
  };
  const open = (): boolean => {
    const fds = new Int32Array(2);
    if (pipe2(fds, O_CLOEXEC) !== 0) return false;
    [rd, wr] = [fds[0]!, fds[1]!];
    if (fcntl(wr, F_SETPIPE_SZ, 'int', capacity) < capacity) {
      close();
      return false;
    }
    return true;
  };
  if (!open()) return undefined;

  const off = new BigInt64Array(1);
  const scratch = Buffer.allocUnsafe(bufferSize + PAGE);
  /** Empties the pipe of `n` bytes (a reply not sent). */
  const drain = (n: number): void => {
    for (let got = 0; got < n;) {
      const r = fs.readSync(rd, scratch, 0, Math.min(n - got, scratch.length), null);
      if (r <= 0) break;
      got += r;
    }
  };

  return {
    reply(header, fd, pos, len) {
      if (rd < 0 && !open()) return false;
      const H = 16;
      if (fs.writeSync(wr, header, 0, H) !== H) {
        close();
        return false;
      }
      let done = 0;
      while (done < len) {
        off[0] = BigInt(pos + done);
        const n = splice(fd, off, wr, null, len - done, SPLICE_F_MOVE);
        if (n <= 0) break;
        done += n;
      }
      if (done < len) {
        drain(H + done);
        return false;
      }
      const n = splice(rd, null, fuseFd, null, H + len, SPLICE_F_MOVE);
      if (n !== H + len) {
        // Not sent (ENOENT: interrupted, ENODEV: unmounted, or anything else): a fresh pipe next time, the
        // caller's ordinary reply (which ignores ENOENT and ENODEV).
        close();
        return false;
      }
      return true;
    },
  };
}
