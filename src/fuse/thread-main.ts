/**
 * The program of the threads that read /dev/fuse (see threads.ts), typed
 * like the rest. It runs with `eval` (the single executable has no file to
 * point a Worker at): threads.ts starts each thread with the text of
 * threadMain(), so the function is whole in itself — it refers to nothing
 * outside its body but its workerData and the builtins it requires.
 *
 * It posts an ArrayBuffer per forwarded request: the sequence number at 0,
 * the request from FORWARD_HEADER on. A READ of a backed handle is served
 * within the range: short at its end (EOF past it); where the file (it
 * shrank) ends inside a read, the rest is zeros, or EIO if the read starts
 * at or past the file's end. A write is EPERM on a read-only range (a
 * read-only block device's errno), ENOSPC at or past the end, cut short
 * where it crosses the end; a write that fails after some bytes went
 * through returns the count. With an O_DIRECT descriptor, a request whose
 * position and length are aligned goes to it (memory is aligned by
 * construction), anything else and whatever it refuses (EINVAL) or leaves
 * short to the buffered one.
 */

import type { ThreadIo, UringData } from './uring';

/** Where the words of a slot of the backed table are (threads.ts BackedTable), and its sizes. */
export interface SlotLayout {
  slots: number;
  maxAlign: number;
  forwardHeader: number;
  /** Int32 words of a slot (16 per slot). */
  state: number;
  inflight: number;
  written: number;
  readOnly: number;
  fd: number;
  dfd: number;
  align: number;
  /** Float64 words of a slot (8 per slot). */
  fh: number;
  start: number;
  length: number;
}

/** What a thread is started with. */
export interface ThreadData {
  fd: number;
  bufferSize: number;
  table: SharedArrayBuffer;
  layout: SlotLayout;
  /** One u32: the sequence number of the next forwarded request, shared by the threads. */
  order: SharedArrayBuffer;
  /** Serve backed handles here; false forwards everything (debug logging sees every request). */
  fast: boolean;
  errno: { EPERM: number; ENOSPC: number; EIO: number };
  /**
   * The thread's buffers for O_DIRECT (see alignedMemory): requests are read
   * so that WRITE data starts maxAlign-aligned, direct reads land in an
   * aligned buffer. undefined: O_DIRECT handles are forwarded.
   */
  memory?: SharedArrayBuffer;
  /** Offset of the first maxAlign-aligned byte of `memory`. */
  memoryBase?: number;
  /** Serve requests from a FUSE-over-io_uring ring (uring.ts) instead of reading /dev/fuse. */
  uring?: UringData;
}

/** The transport over io_uring (uring.ts uringLoop), passed in as a function like threadMain. */
type Transport = (io: ThreadIo, u: UringData) => boolean;

export function threadMain(transport?: Transport): void {
  const fs = require('node:fs') as typeof import('node:fs');
  const { parentPort, workerData } = require('node:worker_threads') as typeof import('node:worker_threads');
  const { fd, bufferSize, table, layout: L, order, fast, errno, memory, memoryBase, uring } = workerData as ThreadData;
  const seq = new Uint32Array(order);
  const i32 = new Int32Array(table);
  const f64 = new Float64Array(table);
  const READ = 15;
  const WRITE = 16;
  const H = 16;
  const WRITE_DATA = 80;
  // With aligned memory: WRITE data (at WRITE_DATA) starts on a maxAlign boundary, and so does dout.
  const span = Math.ceil(bufferSize / L.maxAlign) * L.maxAlign;
  const req0 = memory ? Buffer.from(memory, (memoryBase ?? 0) + L.maxAlign - WRITE_DATA, bufferSize) : Buffer.allocUnsafe(bufferSize);
  let req: Buffer = req0;
  const dout = memory ? Buffer.from(memory, (memoryBase ?? 0) + L.maxAlign + span, bufferSize) : undefined;
  const out0 = Buffer.allocUnsafe(bufferSize);
  let out: Buffer = out0;
  // Where replies go: /dev/fuse, or the ring entry the request came from.
  let writeOut = (len: number): void => void fs.writeSync(fd, out, 0, len);
  let writevOut = (bufs: Buffer[]): void => void fs.writevSync(fd, bufs);
  /** A request's failure: the negative errno of its reply. */
  interface Failure {
    errno?: number;
    code?: string;
  }

  const u64 = (b: Buffer, at: number): number => b.readUInt32LE(at) + b.readUInt32LE(at + 4) * 4294967296;

  const send = (write: () => void): void => {
    try {
      write();
    } catch (e) {
      // ENOENT: the request was interrupted and is gone; ENODEV: unmounted.
      const code = (e as Failure).code;
      if (code !== 'ENOENT' && code !== 'ENODEV') throw e;
    }
  };

  const reply = (len: number, error: number): void => {
    out.writeUInt32LE(len, 0);
    out.writeInt32LE(error, 4);
    req.copy(out, 8, 8, 16);
    send(() => writeOut(len));
  };

  const negErrno = (e: unknown): number => {
    const n = (e as Failure).errno;
    return typeof n === 'number' && n < 0 ? n : -errno.EIO;
  };

  /**
   * Reads buf[at+done, at+len) from pos+done. Where the file (it shrank) ends
   * inside the request: zeros after its end, or EIO if the request starts at
   * or past it.
   */
  const fill = (bfd: number, buf: Buffer, at: number, done: number, len: number, pos: number): number => {
    while (done < len) {
      const got = fs.readSync(bfd, buf, at + done, len - done, pos + done);
      if (got === 0) {
        if (done === 0) throw { errno: -errno.EIO } satisfies Failure;
        buf.fill(0, at + done, at + len);
        break;
      }
      done += got;
    }
    return len;
  };

  const read = (bfd: number, dfd: number, align: number, start: number, length: number, off: number, size: number): void => {
    const len = off >= length ? 0 : Math.min(size, length - off);
    const pos = start + off;
    if (dout && dfd >= 0 && len > 0 && pos % align === 0 && len % align === 0) {
      // O_DIRECT into the aligned buffer; the rest of a short read (or all of
      // it if O_DIRECT refuses it: EINVAL) through the buffered descriptor.
      let done = 0;
      try {
        done = fs.readSync(dfd, dout, 0, len, pos);
      } catch (e) {
        if ((e as Failure).code !== 'EINVAL') throw e;
      }
      fill(bfd, dout, 0, done, len, pos);
      out.writeUInt32LE(H + len, 0);
      out.writeInt32LE(0, 4);
      req.copy(out, 8, 8, 16);
      return send(() => writevOut([out.subarray(0, H), dout.subarray(0, len)]));
    }
    fill(bfd, out, H, 0, len, pos);
    reply(H + len, 0);
  };

  const written = (n: number): void => {
    out.writeUInt32LE(n, H);
    out.writeUInt32LE(0, H + 4);
    reply(H + 8, 0);
  };

  const write = (bfd: number, dfd: number, align: number, start: number, length: number, off: number, size: number, w: number): void => {
    if (i32[w + L.readOnly] === 1) return reply(H, -errno.EPERM);
    if (size === 0) return written(0);
    if (off >= length) return reply(H, -errno.ENOSPC);
    const len = Math.min(size, length - off);
    const pos = start + off;
    let done = 0;
    if (dfd >= 0 && pos % align === 0 && len % align === 0) {
      try {
        done = fs.writeSync(dfd, req, WRITE_DATA, len, pos);
      } catch (e) {
        if ((e as Failure).code !== 'EINVAL') throw e;
      }
    }
    while (done < len) {
      let put: number;
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
    Atomics.store(i32, w + L.written, 1);
    written(done);
  };

  /** Serves a READ/WRITE of a backed handle; false if the handle is not (or no longer) backed. */
  const serve = (op: number): boolean => {
    const fh = u64(req, 40);
    const s = fh % L.slots;
    const w = s * 16;
    Atomics.add(i32, w + L.inflight, 1);
    try {
      if (Atomics.load(i32, w + L.state) !== 1 || f64[s * 8 + L.fh] !== fh) return false;
      const dfd = i32[w + L.dfd]!;
      if (dfd >= 0 && !memory) return false;
      const bfd = i32[w + L.fd]!;
      const align = i32[w + L.align]!;
      const start = f64[s * 8 + L.start]!;
      const length = f64[s * 8 + L.length]!;
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
      if (Atomics.sub(i32, w + L.inflight, 1) === 1 && Atomics.load(i32, w + L.state) === 2) Atomics.notify(i32, w + L.inflight);
    }
  };

  const forward = (r: Buffer, n: number, route: number): void => {
    const ab = new ArrayBuffer(L.forwardHeader + n);
    const head = new Uint32Array(ab, 0, 2);
    head[0] = Atomics.add(seq, 0, 1);
    head[1] = route + 1;
    r.copy(Buffer.from(ab), L.forwardHeader, 0, n);
    parentPort!.postMessage(ab, [ab]);
  };

  if (transport && uring) {
    const io: ThreadIo = {
      fd, fast, serve, forward,
      bind: (r, o, w, wv) => {
        req = r;
        out = o;
        writeOut = w;
        writevOut = wv;
      },
    };
    if (transport(io, uring)) return;
    // No ring: read /dev/fuse like the others.
    req = req0;
    out = out0;
    writeOut = (len) => void fs.writeSync(fd, out, 0, len);
    writevOut = (bufs) => void fs.writevSync(fd, bufs);
  }

  for (;;) {
    let n: number;
    try {
      n = fs.readSync(fd, req, 0, bufferSize, null);
    } catch (e) {
      const code = (e as Failure).code;
      if (code === 'ENOENT' || code === 'EINTR' || code === 'EAGAIN') continue;
      if (code === 'ENODEV') {
        parentPort!.postMessage({ exit: 'ENODEV' });
        break;
      }
      throw e;
    }
    if (n < 40) continue;
    const op = req.readUInt32LE(4);
    if (fast && (op === READ || op === WRITE) && serve(op)) continue;
    forward(req, n, -1);
  }
}
