import * as fs from 'node:fs';
import { LoopfsError } from '../base/errors';
import type { ByteOffset } from '../base/types';

/**
 * The rules of one transfer with the backing file, synchronous: what the I/O
 * threads run for every request and FileIO for the rare end of one (a short
 * transfer, O_DIRECT refusing). Nothing here loads koffi: the I/O thread
 * program bundles it.
 *
 * A read that the file (it shrank after attach) ends inside succeeds whole,
 * the rest zeros; one that starts at or past the file's end fails EIO — what
 * a kernel loop device does. A write that fails after some bytes went
 * through returns the count.
 */

/** Reads buf[done, length) from position + done; returns length. */
export function readRest(fd: number, buf: Buffer, done: number, length: number, position: ByteOffset): number {
  while (done < length) {
    const got = fs.readSync(fd, buf, done, length - done, position + done);
    if (got === 0) {
      if (done === 0) throw new LoopfsError('EIO', `read of ${length} bytes at ${position}`, 'the backing file ends before this request');
      buf.fill(0, done, length);
      break;
    }
    done += got;
  }
  return length;
}

/** Writes buf[done, length) at position + done; returns the bytes written in all (short if a later piece failed). */
export function writeRest(fd: number, buf: Buffer, done: number, length: number, position: ByteOffset): number {
  while (done < length) {
    let put: number;
    try {
      put = fs.writeSync(fd, buf, done, length - done, position + done);
    } catch (e) {
      if (done > 0) return done;
      throw e;
    }
    if (put === 0) {
      if (done > 0) return done;
      throw new LoopfsError('EIO', `write of ${length} bytes at ${position}`, 'the backing file accepted no bytes');
    }
    done += put;
  }
  return done;
}

/** Where a transfer may go: the buffered descriptor, and an O_DIRECT one for requests aligned to `align`. */
export interface Descriptors {
  fd: number;
  /** -1 or undefined: none. */
  directFd?: number;
  align?: number;
}

/**
 * One whole transfer of buf[0, length) at `position`: to the O_DIRECT
 * descriptor when position and length are aligned (the caller vouches for
 * buf's memory: `alignedMemory`), the rest — or all of it, if O_DIRECT
 * refuses it (EINVAL) — through the buffered one.
 */
export function transfer(write: boolean, d: Descriptors, buf: Buffer, length: number, position: ByteOffset, alignedMemory: boolean): number {
  let done = 0;
  const dfd = d.directFd ?? -1;
  const align = d.align ?? 4096;
  if (alignedMemory && dfd >= 0 && length > 0 && position % align === 0 && length % align === 0) {
    try {
      done = write ? fs.writeSync(dfd, buf, 0, length, position) : fs.readSync(dfd, buf, 0, length, position);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
    }
  }
  return write ? writeRest(d.fd, buf, done, length, position) : readRest(d.fd, buf, done, length, position);
}
