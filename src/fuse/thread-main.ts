import * as fs from 'node:fs';
import { parentPort, receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { toLoopfsError } from '../base/errors';
import { uringLoop, type Channel, type UringData } from './uring';
import { SPLICE_MIN, splicer } from './splice';
import { GROW_AFTER, READING, SEQUENCE } from './types';

/**
 * The loop of the threads that read /dev/fuse (see threads.ts), generic:
 * it knows FUSE requests and the table of backed handles, not what a handle
 * maps. A program for the threads (bundled on its own and started from its
 * text: the single executable has no file to point a Worker at) calls
 * runThread with a ThreadBackend that serves READ and WRITE of a backed
 * handle; the loop does the rest.
 *
 * It posts an ArrayBuffer per forwarded request: the sequence number at 0,
 * the request from FORWARD_HEADER on. A request of a handle that is not in
 * the table (or no longer), or that the backend declines, is forwarded.
 * A backend's thrown error becomes the reply's errno (toLoopfsError). With an
 * O_DIRECT descriptor and no aligned memory, a handle's requests are
 * forwarded.
 */

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
  tag: number;
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
  /**
   * The thread's buffers for O_DIRECT (see alignedMemory): requests are read
   * so that WRITE data starts maxAlign-aligned, direct reads land in an
   * aligned buffer. undefined: O_DIRECT handles are forwarded.
   */
  memory?: SharedArrayBuffer;
  /** Offset of the first maxAlign-aligned byte of `memory`. */
  memoryBase?: number;
  /** Data shared with the threads so far (Readers.share): [tag, data]. */
  shared: [number, unknown][];
  /** Where later shares arrive: messages [tag, data]. */
  port?: MessagePort;
  /** Serve requests from a FUSE-over-io_uring ring (uring.ts) instead of reading /dev/fuse. */
  uring?: UringData;
  /** READ replies may be spliced (ThreadIO.replySplice). */
  splice?: boolean;
  /** Where the thread loads koffi from for splice (sys/ffi.ts koffiPath); undefined: no splice. */
  koffi?: string;
}

/** A backed handle as a thread sees it: a copy of its slot. */
export interface BackedSlot {
  fd: number;
  /** The O_DIRECT descriptor, or -1. */
  directFd: number;
  align: number;
  start: number;
  length: number;
  readOnly: boolean;
  /** BackedRange.shared's tag, 0 for none. */
  tag: number;
}

/** The request and reply buffers of a thread, and its replies. */
export interface ThreadIO {
  /** A WRITE's data (a view made once, not per request). */
  readonly writeData: Buffer;
  /** Where a READ's data goes for replyRead: the reply buffer from REPLY_DATA on. */
  readonly readData: Buffer;
  /** An aligned buffer of the request size for O_DIRECT reads; undefined without aligned memory. */
  readonly dout: Buffer | undefined;
  /** Replies to a READ with readData[0, len). */
  replyRead(len: number): void;
  /** Replies to a READ with buf[0, len) (buf: dout). */
  replyReadFrom(buf: Buffer, len: number): void;
  /**
   * Replies to a READ with len bytes of `file` at `pos`, spliced (splice.ts);
   * false: nothing was sent (no splice on this thread, len below SPLICE_MIN,
   * or the file did not have all len bytes) — reply the ordinary way.
   */
  replySplice(file: number, pos: number, len: number): boolean;
  /** Replies to a WRITE: n bytes written. */
  replyWritten(n: number): void;
  /** Replies with an error: a positive errno. */
  replyError(errno: number): void;
  /** The data shared under `tag` (Readers.share); undefined if it has not arrived. */
  shared(tag: number): unknown;
}

export interface ThreadBackend {
  /** Serves a READ of up to `size` bytes (capped to the reply buffer) at `off`; false forwards it. */
  read(slot: BackedSlot, off: number, size: number, io: ThreadIO): boolean;
  /** Serves a WRITE of `size` bytes (io.writeData) at `off`; false forwards it. */
  write(slot: BackedSlot, off: number, size: number, io: ThreadIO): boolean;
}

export const WRITE_DATA = 80;
export const REPLY_DATA = 16;
const READ = 15;
const WRITE = 16;

/** Runs the loop on this thread until /dev/fuse is gone. */
export function runThread(backend: ThreadBackend): void {
  const { fd, bufferSize, table, layout: L, order, fast, memory, memoryBase, shared, port, uring, koffi } = workerData as ThreadData;
  const seq = new Uint32Array(order);
  const i32 = new Int32Array(table);
  const f64 = new Float64Array(table);
  const H = REPLY_DATA;
  // With aligned memory: WRITE data (at WRITE_DATA) starts on a maxAlign boundary, and so does dout.
  const span = Math.ceil(bufferSize / L.maxAlign) * L.maxAlign;
  const req0 = memory ? Buffer.from(memory, (memoryBase ?? 0) + L.maxAlign - WRITE_DATA, bufferSize) : Buffer.allocUnsafe(bufferSize);
  const dout = memory ? Buffer.from(memory, (memoryBase ?? 0) + L.maxAlign + span, bufferSize) : undefined;
  const out0 = Buffer.allocUnsafe(bufferSize);
  // Where requests are and replies go: /dev/fuse, or the ring entry the request came from (uring.ts).
  const device: Channel = {
    req: req0,
    out: out0,
    writeData: req0.subarray(WRITE_DATA),
    readData: out0.subarray(REPLY_DATA),
    write: (len) => void fs.writeSync(fd, out0, 0, len),
    writev: (bufs) => void fs.writevSync(fd, bufs),
  };
  let ch = device;
  const known = new Map<number, unknown>(shared);
  const spliced = koffi && fast ? splicer(koffi, fd, bufferSize) : undefined;
  /** The Int32 word index of the slot being served (its WRITTEN flag). */
  let current = 0;

  const u64 = (b: Buffer, at: number): number => b.readUInt32LE(at) + b.readUInt32LE(at + 4) * 4294967296;

  /** A reply that cannot be sent because its request is gone is dropped: ENOENT (interrupted), ENODEV (unmounted). */
  const gone = (e: unknown): void => {
    const code = (e as { code?: string }).code;
    if (code !== 'ENOENT' && code !== 'ENODEV') throw e;
  };

  const header = (len: number, error: number): void => {
    const out = ch.out;
    out.writeUInt32LE(len, 0);
    out.writeInt32LE(error, 4);
    ch.req.copy(out, 8, 8, 16);
  };

  const reply = (len: number, error: number): void => {
    header(len, error);
    try {
      ch.write(len);
    } catch (e) {
      gone(e);
    }
  };

  const io: ThreadIO = {
    get writeData() {
      return ch.writeData;
    },
    get readData() {
      return ch.readData;
    },
    dout,
    replyRead: (len) => reply(H + len, 0),
    replyReadFrom: (buf, len) => {
      header(H + len, 0);
      try {
        ch.writev([ch.out.subarray(0, H), buf.subarray(0, len)]);
      } catch (e) {
        gone(e);
      }
    },
    replySplice: (file, pos, len) => {
      // A request from a ring entry is answered in the entry, never on /dev/fuse.
      if (!spliced || len < SPLICE_MIN || ch !== device) return false;
      header(H + len, 0);
      return spliced.reply(ch.out, file, pos, len);
    },
    replyWritten: (n) => {
      if (n > 0) Atomics.store(i32, current + L.written, 1);
      ch.out.writeUInt32LE(n, H);
      ch.out.writeUInt32LE(0, H + 4);
      reply(H + 8, 0);
    },
    replyError: (errno) => reply(H, -errno),
    shared: (tag) => {
      if (!known.has(tag) && port) {
        for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
          const [t, data] = m.message as [number, unknown];
          if (data === undefined) known.delete(t);
          else known.set(t, data);
        }
      }
      return known.get(tag);
    },
  };

  /** The slot being served, one object filled per request (a backend keeps no reference to it). */
  const slot: BackedSlot = { fd: -1, directFd: -1, align: 0, start: 0, length: 0, readOnly: false, tag: 0 };

  /** Serves a READ/WRITE of a backed handle; false if the handle is not (or no longer) backed, or the backend declines. */
  const serve = (op: number): boolean => {
    const fh = u64(ch.req, 40);
    const s = fh % L.slots;
    const w = s * 16;
    Atomics.add(i32, w + L.inflight, 1);
    try {
      if (Atomics.load(i32, w + L.state) !== 1 || f64[s * 8 + L.fh] !== fh) return false;
      slot.directFd = i32[w + L.dfd]!;
      if (slot.directFd >= 0 && !memory) return false;
      slot.fd = i32[w + L.fd]!;
      slot.align = i32[w + L.align]!;
      slot.start = f64[s * 8 + L.start]!;
      slot.length = f64[s * 8 + L.length]!;
      slot.readOnly = i32[w + L.readOnly] === 1;
      slot.tag = i32[w + L.tag]!;
      current = w;
      const req = ch.req;
      const off = u64(req, 48);
      const size = req.readUInt32LE(56);
      try {
        return op === READ ? backend.read(slot, off, Math.min(size, bufferSize - H), io) : backend.write(slot, off, size, io);
      } catch (e) {
        reply(H, toLoopfsError(e).code);
        return true;
      }
    } finally {
      if (Atomics.sub(i32, w + L.inflight, 1) === 1 && Atomics.load(i32, w + L.state) === 2) Atomics.notify(i32, w + L.inflight);
    }
  };

  const forward = (r: Buffer, n: number, route: number): void => {
    const ab = new ArrayBuffer(L.forwardHeader + n);
    const head = new Uint32Array(ab, 0, 2);
    head[0] = Atomics.add(seq, SEQUENCE, 1);
    head[1] = route + 1;
    r.copy(Buffer.from(ab), L.forwardHeader, 0, n);
    parentPort!.postMessage(ab, [ab]);
  };

  if (uring) {
    const served = uringLoop({
      fd, fast, serve, forward,
      bind: (c) => {
        ch = c;
      },
    }, uring);
    ch = device;
    // No ring to be had: read /dev/fuse like the threads without one.
    if (served) return port?.close();
  }

  const req = req0;
  // From here on the main thread may stop reading (threads.ts).
  Atomics.add(seq, READING, 1);
  let served = 0;
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(fd, req, 0, bufferSize, null);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === 'ENOENT' || code === 'EINTR' || code === 'EAGAIN') continue;
      if (code === 'ENODEV') {
        parentPort!.postMessage({ exit: 'ENODEV' });
        break;
      }
      throw e;
    }
    if (n < 40) continue;
    if (++served === GROW_AFTER) parentPort!.postMessage({ grow: true });
    const op = req.readUInt32LE(4);
    if (fast && (op === READ || op === WRITE) && serve(op)) continue;
    forward(req, n, -1);
  }
  port?.close();
}
