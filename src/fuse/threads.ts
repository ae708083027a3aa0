import { constants as osConstants } from 'node:os';
import type { BackedRange } from './types';

/**
 * The threads that read /dev/fuse, and the table of backed handles they
 * serve themselves.
 *
 * Each thread owns a request and a reply buffer and loops on blocking
 * read(2) of /dev/fuse. A READ or WRITE of a handle registered here (a byte
 * range of a plain file) is served on that thread with pread/pwrite and a
 * write(2) of the reply: no hop to the main thread, the libuv pool or a
 * promise, so one request costs a few system calls, and as many requests
 * are in flight as there are threads. Everything else (and any READ/WRITE of
 * a handle that is not registered, or no longer) is copied out, numbered in
 * the order the threads read it, and posted to the main thread, which
 * dispatches in that order (a RELEASE is handled before the request that
 * followed it, whichever thread read which).
 *
 * The table lives in a SharedArrayBuffer. A handle's slot is its fh modulo
 * the table size; the slot records the fh, so a stale or colliding slot is
 * simply not used. A thread announces itself in `inflight` before it looks
 * at `state`, and the main thread sets `state` before it waits for
 * `inflight` to drain (both sequentially consistent), so after revoke()
 * resolves no thread touches the handle's descriptor again.
 */

export const TABLE_SLOTS = 4096;
const SLOT_BYTES = 64;
// Int32 words of a slot.
const STATE = 0; // 0 free, 1 active, 2 revoking
const INFLIGHT = 1;
const WRITTEN = 2;
const READONLY = 3;
const FD = 4;
// Float64 words of a slot (byte offsets 24.., clear of the Int32 words above).
const FH = 3;
const START = 4;
const LENGTH = 5;
const NODE = 6;

type WaitAsync = (a: Int32Array, index: number, value: number, timeout?: number) => { async: boolean; value: Promise<string> | string };

export class BackedTable {
  readonly buffer = new SharedArrayBuffer(TABLE_SLOTS * SLOT_BYTES);
  private readonly i32 = new Int32Array(this.buffer);
  private readonly f64 = new Float64Array(this.buffer);

  private slot(fh: number): number {
    return fh % TABLE_SLOTS;
  }

  private owns(s: number, fh: number): boolean {
    return Atomics.load(this.i32, s * 16 + STATE) === 1 && this.f64[s * 8 + FH] === fh;
  }

  /** Lets the threads serve READ/WRITE of `fh` from `range`. False when its slot is taken (the main thread serves it then). */
  register(fh: number, node: number, range: BackedRange): boolean {
    if (!Number.isSafeInteger(fh) || fh < 0) return false;
    const s = this.slot(fh);
    const w = s * 16;
    if (Atomics.load(this.i32, w + STATE) !== 0) return false;
    const f = s * 8;
    this.f64[f + FH] = fh;
    this.f64[f + START] = range.start;
    this.f64[f + LENGTH] = range.length;
    this.f64[f + NODE] = node;
    Atomics.store(this.i32, w + FD, range.fd);
    Atomics.store(this.i32, w + READONLY, range.readOnly ? 1 : 0);
    Atomics.store(this.i32, w + WRITTEN, 0);
    Atomics.store(this.i32, w + STATE, 1);
    return true;
  }

  /**
   * Stops the threads using `fh`; undefined when no request of it is being
   * served (the common case: the caller goes on synchronously), else a
   * promise of the moment the last one is done.
   */
  revoke(fh: number): Promise<void> | undefined {
    const s = this.slot(fh);
    if (!this.owns(s, fh)) return undefined;
    return this.drain(s);
  }

  /** Revokes every handle of a node (its window changed behind the table's back). */
  revokeNode(node: number): Promise<void> {
    const waits: Promise<void>[] = [];
    for (let s = 0; s < TABLE_SLOTS; s++) {
      if (Atomics.load(this.i32, s * 16 + STATE) === 1 && this.f64[s * 8 + NODE] === node) {
        const p = this.drain(s);
        if (p) waits.push(p);
      }
    }
    return Promise.all(waits).then(() => undefined);
  }

  /** Whether a thread wrote through `fh` since the last call. */
  takeWritten(fh: number): boolean {
    const s = this.slot(fh);
    if (this.f64[s * 8 + FH] !== fh || Atomics.load(this.i32, s * 16 + STATE) === 0) return false;
    return Atomics.exchange(this.i32, s * 16 + WRITTEN, 0) === 1;
  }

  private drain(s: number): Promise<void> | undefined {
    const w = s * 16;
    Atomics.store(this.i32, w + STATE, 2);
    const free = (): void => {
      this.f64[s * 8 + FH] = -1;
      Atomics.store(this.i32, w + STATE, 0);
    };
    if (Atomics.load(this.i32, w + INFLIGHT) === 0) {
      free();
      return undefined;
    }
    const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;
    return (async () => {
      for (;;) {
        const n = Atomics.load(this.i32, w + INFLIGHT);
        if (n === 0) break;
        const r = waitAsync(this.i32, w + INFLIGHT, n, 100);
        if (r.async) await r.value;
      }
      free();
    })();
  }
}

/** Bytes before a forwarded request in its ArrayBuffer: its sequence number (u32, then padding). */
export const FORWARD_HEADER = 8;

/** What a thread is started with. */
export interface ThreadData {
  fd: number;
  bufferSize: number;
  table: SharedArrayBuffer;
  /** One u32: the sequence number of the next forwarded request, shared by the threads. */
  order: SharedArrayBuffer;
  /** Serve backed handles here; false forwards everything (debug logging sees every request). */
  fast: boolean;
  errno: { EROFS: number; ENOSPC: number; EIO: number };
}

export function threadData(fd: number, bufferSize: number, table: BackedTable, fast: boolean): ThreadData {
  const e = osConstants.errno;
  return { fd, bufferSize, table: table.buffer, order: new SharedArrayBuffer(4), fast, errno: { EROFS: e.EROFS, ENOSPC: e.ENOSPC, EIO: e.EIO } };
}

/**
 * The thread's program (CommonJS, run with `eval`: the single executable has
 * no file to point a Worker at). It posts an ArrayBuffer per forwarded
 * request and `{ exit: code }` when /dev/fuse is gone; any other read error
 * is thrown (the Worker's 'error' event).
 *
 * Semantics of a backed handle, as the engine's Window and FileIO have them:
 * a read is clamped to the range (0 bytes at or past its end) and a short
 * read of the file (it shrank) is zero-filled; a write is EROFS on a
 * read-only range, ENOSPC at or past the end, cut short where it crosses
 * the end; a write that fails after some bytes went through returns the
 * count.
 */
export const THREAD_SOURCE = String.raw`
'use strict';
const fs = require('node:fs');
const { parentPort, workerData } = require('node:worker_threads');
const { fd, bufferSize, table, order, fast, errno } = workerData;
const seq = new Uint32Array(order);
const i32 = new Int32Array(table);
const f64 = new Float64Array(table);
const SLOTS = ${TABLE_SLOTS};
const req = Buffer.allocUnsafe(bufferSize);
const out = Buffer.allocUnsafe(bufferSize);
const READ = 15, WRITE = 16, H = 16, WRITE_DATA = 80;

function u64(b, at) {
  return b.readUInt32LE(at) + b.readUInt32LE(at + 4) * 4294967296;
}

function reply(len, error) {
  out.writeUInt32LE(len, 0);
  out.writeInt32LE(error, 4);
  req.copy(out, 8, 8, 16);
  try {
    fs.writeSync(fd, out, 0, len);
  } catch (e) {
    // ENOENT: the request was interrupted and is gone; ENODEV: unmounted.
    if (e.code !== 'ENOENT' && e.code !== 'ENODEV') throw e;
  }
}

function negErrno(e) {
  return typeof e.errno === 'number' && e.errno < 0 ? e.errno : -errno.EIO;
}

function read(bfd, start, length, off, size) {
  const len = off >= length ? 0 : Math.min(size, length - off);
  let done = 0;
  while (done < len) {
    const got = fs.readSync(bfd, out, H + done, len - done, start + off + done);
    if (got === 0) {
      out.fill(0, H + done, H + len);
      break;
    }
    done += got;
  }
  reply(H + len, 0);
}

function write(bfd, start, length, off, size, w) {
  if (i32[w + 3] === 1) return reply(H, -errno.EROFS);
  if (size === 0) return written(0);
  if (off >= length) return reply(H, -errno.ENOSPC);
  const len = Math.min(size, length - off);
  let done = 0;
  while (done < len) {
    let put;
    try {
      put = fs.writeSync(bfd, req, WRITE_DATA + done, len - done, start + off + done);
    } catch (e) {
      if (done > 0) break;
      throw e;
    }
    if (put === 0) {
      if (done > 0) break;
      return reply(H, -errno.EIO);
    }
    done += put;
  }
  Atomics.store(i32, w + 2, 1);
  written(done);
}

function written(n) {
  out.writeUInt32LE(n, H);
  out.writeUInt32LE(0, H + 4);
  reply(H + 8, 0);
}

/** Serves a READ/WRITE of a backed handle; false if the handle is not (or no longer) backed. */
function serve(op) {
  const fh = u64(req, 40);
  const s = fh % SLOTS;
  const w = s * 16;
  Atomics.add(i32, w + 1, 1);
  try {
    if (Atomics.load(i32, w) !== 1 || f64[s * 8 + 3] !== fh) return false;
    const bfd = i32[w + 4];
    const start = f64[s * 8 + 4];
    const length = f64[s * 8 + 5];
    const off = u64(req, 48);
    const size = req.readUInt32LE(56);
    try {
      if (op === READ) read(bfd, start, length, off, Math.min(size, bufferSize - H));
      else write(bfd, start, length, off, size, w);
    } catch (e) {
      reply(H, negErrno(e));
    }
    return true;
  } finally {
    if (Atomics.sub(i32, w + 1, 1) === 1 && Atomics.load(i32, w) === 2) Atomics.notify(i32, w + 1);
  }
}

for (;;) {
  let n;
  try {
    n = fs.readSync(fd, req, 0, bufferSize, null);
  } catch (e) {
    if (e.code === 'ENOENT' || e.code === 'EINTR' || e.code === 'EAGAIN') continue;
    if (e.code === 'ENODEV') {
      parentPort.postMessage({ exit: 'ENODEV' });
      break;
    }
    throw e;
  }
  if (n < 40) continue;
  const op = req.readUInt32LE(4);
  if (fast && (op === READ || op === WRITE) && serve(op)) continue;
  const ab = new ArrayBuffer(${FORWARD_HEADER} + n);
  new Uint32Array(ab, 0, 1)[0] = Atomics.add(seq, 0, 1);
  req.copy(Buffer.from(ab), ${FORWARD_HEADER}, 0, n);
  parentPort.postMessage(ab, [ab]);
}
`;
