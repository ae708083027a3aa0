import { constants as osConstants } from 'node:os';
import { Worker as Thread } from 'node:worker_threads';
import type { BackedRange } from './types';
import { koffi } from '../sys/ffi';

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
const DFD = 5; // the O_DIRECT descriptor, or -1
const ALIGN = 6;
// Float64 words of a slot (byte offsets 32.., clear of the Int32 words above).
const FH = 4;
const START = 5;
const LENGTH = 6;
const NODE = 7;
/** The largest O_DIRECT alignment a range may ask for (the engine's limit). */
const MAX_ALIGN = 65536;

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
    Atomics.store(this.i32, w + DFD, range.directFd ?? -1);
    Atomics.store(this.i32, w + ALIGN, range.align ?? 4096);
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
const FORWARD_HEADER = 8;

/**
 * Starts `count` threads and hands each forwarded request to `dispatch`, in
 * the order the threads read them (whichever thread's message comes first).
 * Resolves once every thread has seen /dev/fuse go away and every dispatch
 * has settled; rejects with a thread's error, if one failed.
 */
export function runThreads(count: number, data: ThreadData, dispatch: (req: Buffer) => Promise<void>): Promise<void> {
  let live = count;
  let pending = 0;
  let failure: unknown;
  let next = 0;
  const early = new Map<number, ArrayBuffer>();
  return new Promise<void>((resolve, reject) => {
    const settle = (): void => (failure ? reject(failure) : resolve());
    const start = (m: ArrayBuffer): void => {
      pending++;
      void dispatch(Buffer.from(m, FORWARD_HEADER)).finally(() => {
        if (--pending === 0 && live === 0) settle();
      });
    };
    for (let i = 0; i < count; i++) {
      const t = new Thread(THREAD_SOURCE, { eval: true, workerData: { ...data, ...alignedMemory(data.bufferSize) } });
      t.on('message', (m: unknown) => {
        if (!(m instanceof ArrayBuffer)) return;
        const seq = new Uint32Array(m, 0, 1)[0]!;
        if (seq !== next) {
          early.set(seq, m);
          return;
        }
        start(m);
        next = (next + 1) >>> 0;
        for (let e = early.get(next); e; e = early.get(next)) {
          early.delete(next);
          start(e);
          next = (next + 1) >>> 0;
        }
      });
      t.on('error', (e) => (failure ??= e));
      t.on('exit', () => {
        if (--live === 0 && pending === 0) settle();
      });
    }
  });
}

/** What a thread is started with. */
export interface ThreadData {
  fd: number;
  bufferSize: number;
  table: SharedArrayBuffer;
  /** One u32: the sequence number of the next forwarded request, shared by the threads. */
  order: SharedArrayBuffer;
  /** Serve backed handles here; false forwards everything (debug logging sees every request). */
  fast: boolean;
  errno: { EPERM: number; ENOSPC: number; EIO: number };
  /**
   * The thread's buffers for O_DIRECT (see alignedMemory): requests are read
   * so that WRITE data starts MAX_ALIGN-aligned, direct reads land in an
   * aligned buffer. undefined: O_DIRECT handles are forwarded.
   */
  memory?: SharedArrayBuffer;
  /** Offset of the first MAX_ALIGN-aligned byte of `memory`. */
  memoryBase?: number;
}

export function threadData(fd: number, bufferSize: number, table: BackedTable, fast: boolean): ThreadData {
  const e = osConstants.errno;
  return { fd, bufferSize, table: table.buffer, order: new SharedArrayBuffer(4), fast, errno: { EPERM: e.EPERM, ENOSPC: e.ENOSPC, EIO: e.EIO } };
}

/**
 * One thread's memory for O_DIRECT: shared, so that its address (which the
 * thread cannot see; koffi gives it here) stays put and the thread can place
 * its buffers on alignment boundaries. Undefined when the address cannot be
 * had: the thread forwards O_DIRECT requests then.
 */
export function alignedMemory(bufferSize: number): { memory: SharedArrayBuffer; memoryBase: number } | undefined {
  const span = Math.ceil(bufferSize / MAX_ALIGN) * MAX_ALIGN;
  const memory = new SharedArrayBuffer(MAX_ALIGN + MAX_ALIGN + 2 * span);
  try {
    // koffi takes the address of a view, not of a SharedArrayBuffer itself.
    const address = Number(BigInt(koffi().address(new Uint8Array(memory))) % BigInt(MAX_ALIGN));
    return { memory, memoryBase: (MAX_ALIGN - address) % MAX_ALIGN };
  } catch {
    return undefined;
  }
}

/**
 * The thread's program (CommonJS, run with `eval`: the single executable has
 * no file to point a Worker at). It posts an ArrayBuffer per forwarded
 * request and `{ exit: code }` when /dev/fuse is gone; any other read error
 * is thrown (the Worker's 'error' event).
 *
 * Semantics of a backed handle, as the engine's Window and FileIO have them:
 * a read is clamped to the range (0 bytes at or past its end); where the
 * file (it shrank) ends inside a read, the rest is zeros, or EIO if the read
 * starts at or past the file's end; a write is EPERM on a read-only range
 * (a read-only block device's errno), ENOSPC at or past the end, cut short where it crosses
 * the end; a write that fails after some bytes went through returns the
 * count. With an O_DIRECT descriptor, a request whose position and length
 * are aligned goes to it (memory is aligned by construction), anything else
 * and whatever it refuses (EINVAL) or leaves short to the buffered one.
 */
export const THREAD_SOURCE = String.raw`
'use strict';
const fs = require('node:fs');
const { parentPort, workerData } = require('node:worker_threads');
const { fd, bufferSize, table, order, fast, errno, memory, memoryBase } = workerData;
const seq = new Uint32Array(order);
const i32 = new Int32Array(table);
const f64 = new Float64Array(table);
const SLOTS = ${TABLE_SLOTS}, MAX_ALIGN = ${MAX_ALIGN};
const READ = 15, WRITE = 16, H = 16, WRITE_DATA = 80;
// With aligned memory: WRITE data (at WRITE_DATA) starts on a MAX_ALIGN boundary, and so does dout.
const aligned = memory !== undefined;
const span = Math.ceil(bufferSize / MAX_ALIGN) * MAX_ALIGN;
const req = aligned ? Buffer.from(memory, memoryBase + MAX_ALIGN - WRITE_DATA, bufferSize) : Buffer.allocUnsafe(bufferSize);
const dout = aligned ? Buffer.from(memory, memoryBase + MAX_ALIGN + span, bufferSize) : undefined;
const out = Buffer.allocUnsafe(bufferSize);

function u64(b, at) {
  return b.readUInt32LE(at) + b.readUInt32LE(at + 4) * 4294967296;
}

function reply(len, error) {
  out.writeUInt32LE(len, 0);
  out.writeInt32LE(error, 4);
  req.copy(out, 8, 8, 16);
  send(() => fs.writeSync(fd, out, 0, len));
}

function send(write) {
  try {
    write();
  } catch (e) {
    // ENOENT: the request was interrupted and is gone; ENODEV: unmounted.
    if (e.code !== 'ENOENT' && e.code !== 'ENODEV') throw e;
  }
}

function negErrno(e) {
  return typeof e.errno === 'number' && e.errno < 0 ? e.errno : -errno.EIO;
}

function read(bfd, dfd, align, start, length, off, size) {
  const len = off >= length ? 0 : Math.min(size, length - off);
  const pos = start + off;
  if (dfd >= 0 && len > 0 && pos % align === 0 && len % align === 0) {
    // O_DIRECT into the aligned buffer; the rest of a short read (or all of
    // it if O_DIRECT refuses it: EINVAL) through the buffered descriptor.
    let done = 0;
    try {
      done = fs.readSync(dfd, dout, 0, len, pos);
    } catch (e) {
      if (e.code !== 'EINVAL') throw e;
    }
    done = fill(bfd, dout, 0, done, len, pos);
    out.writeUInt32LE(H + len, 0);
    out.writeInt32LE(0, 4);
    req.copy(out, 8, 8, 16);
    return send(() => fs.writevSync(fd, [out.subarray(0, H), dout.subarray(0, len)]));
  }
  fill(bfd, out, H, 0, len, pos);
  reply(H + len, 0);
}

/**
 * Reads buf[at+done, at+len) from pos+done. Where the file (it shrank) ends
 * inside the request: zeros after its end, or EIO if the request starts at
 * or past it.
 */
function fill(bfd, buf, at, done, len, pos) {
  while (done < len) {
    const got = fs.readSync(bfd, buf, at + done, len - done, pos + done);
    if (got === 0) {
      if (done === 0) throw { errno: -errno.EIO };
      buf.fill(0, at + done, at + len);
      break;
    }
    done += got;
  }
  return len;
}

function write(bfd, dfd, align, start, length, off, size, w) {
  if (i32[w + ${READONLY}] === 1) return reply(H, -errno.EPERM);
  if (size === 0) return written(0);
  if (off >= length) return reply(H, -errno.ENOSPC);
  const len = Math.min(size, length - off);
  const pos = start + off;
  let done = 0;
  if (dfd >= 0 && pos % align === 0 && len % align === 0) {
    try {
      done = fs.writeSync(dfd, req, WRITE_DATA, len, pos);
    } catch (e) {
      if (e.code !== 'EINVAL') throw e;
    }
  }
  while (done < len) {
    let put;
    try {
      put = fs.writeSync(bfd, req, WRITE_DATA + done, len - done, pos + done);
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
  Atomics.store(i32, w + ${WRITTEN}, 1);
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
  Atomics.add(i32, w + ${INFLIGHT}, 1);
  try {
    if (Atomics.load(i32, w + ${STATE}) !== 1 || f64[s * 8 + ${FH}] !== fh) return false;
    const dfd = i32[w + ${DFD}];
    if (dfd >= 0 && !aligned) return false;
    const bfd = i32[w + ${FD}];
    const align = i32[w + ${ALIGN}];
    const start = f64[s * 8 + ${START}];
    const length = f64[s * 8 + ${LENGTH}];
    const off = u64(req, 48);
    const size = req.readUInt32LE(56);
    try {
      if (op === READ) read(bfd, dfd, align, start, length, off, Math.min(size, bufferSize - H));
      else write(bfd, dfd, align, start, length, off, size, w);
    } catch (e) {
      reply(H, negErrno(e));
    }
    return true;
  } finally {
    if (Atomics.sub(i32, w + ${INFLIGHT}, 1) === 1 && Atomics.load(i32, w + ${STATE}) === 2) Atomics.notify(i32, w + ${INFLIGHT});
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
