import * as fs from 'node:fs';
import type { MessagePort } from 'node:worker_threads';
import { FIRST_THREAD_AFTER, READING, SEQUENCE, type BackedRange } from './types';
import type { SlotLayout, ThreadData } from './thread-main';
import { queuesOf, type UringData, type UringReply } from './uring';
import { koffi, koffiPath } from '../sys/ffi';
import { eventfd } from '../sys/libc';

/** node:worker_threads, loaded when the first thread starts (~1.4 ms of every daemon's start otherwise). */
function workerThreads(): typeof import('node:worker_threads') {
  return require('node:worker_threads') as typeof import('node:worker_threads');
}

/**
 * The threads that read /dev/fuse, and the table of backed handles they
 * serve themselves.
 *
 * Each thread owns a request and a reply buffer and loops on blocking
 * read(2) of /dev/fuse (thread-main.ts). A READ or WRITE of a handle
 * registered here (a byte range of a file, and whatever its `shared` tag
 * names) is served on that thread by the program's backend with
 * pread/pwrite and a write(2) of the reply: no hop to the main thread, the libuv pool or a
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
const TAG = 7; // BackedRange.shared's tag, 0 for none
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
    Atomics.store(this.i32, w + TAG, range.shared?.tag ?? 0);
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

/** The kernel's number of a forwarded request (fuse_in_header.unique): the order it queued them in. */
function uniqueOf(m: ArrayBuffer): bigint {
  return new DataView(m, FORWARD_HEADER + 8, 8).getBigUint64(0, true);
}

/** The running readers of /dev/fuse (see runThreads). */
export interface Readers {
  /** Resolves once /dev/fuse is gone and every dispatch has settled; rejects with a reader's error. */
  done: Promise<void>;
  /** The threads are needed (a backed handle exists): they start after the main thread's next read. */
  want(): void;
  /**
   * The kernel offers FUSE over io_uring (INIT): the threads, when they
   * start, serve a ring, and the main thread goes on reading /dev/fuse
   * (FORGET, INTERRUPT, what comes before the ring is ready). False when it
   * is too late (the threads run) or koffi cannot be loaded on a thread.
   */
  useUring(ring: Pick<UringData, 'queues' | 'depth' | 'spread'>): boolean;
  /** Hands the reply to a request that came from a ring to its thread; false when it did not. */
  reply(unique: bigint, b: Buffer, len: number): boolean;
  /**
   * Hands `data` (structured-cloned: SharedArrayBuffers stay shared) to every
   * thread under `tag`, before a handle naming the tag is registered; undefined
   * withdraws it. Threads started later get what is shared then.
   */
  share(tag: number, data: unknown): void;
}

/** Where a request from a ring waits for its reply. */
interface Route {
  port: MessagePort;
  eventfd: number;
  route: number;
}
const WAKE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

/**
 * Starts `count` threads running `program` (the text of a bundled program
 * that calls thread-main.ts's runThread with its backend) and hands each forwarded request to `dispatch`, in
 * the order they were read (whichever thread's message comes first).
 *
 * `lazy`: no thread at first. Until want(), the main thread reads /dev/fuse
 * itself, one read(2) at a time on the libuv pool, and dispatches what it
 * reads: an instance that serves nothing but lookups and control requests
 * costs no thread's isolate. After want() main serves FIRST_THREAD_AFTER
 * more requests, then starts one thread (all of them with a ring), and goes on
 * reading until a thread reads /dev/fuse (a thread's runtime takes tens of ms
 * to start); the request it reads then is its last. The first thread asks for
 * the others after GROW_AFTER requests (types.ts). Each request takes its
 * number as it is read, on main or on a thread, so the order holds across the
 * handover.
 */
export function runThreads(program: string, count: number, data: ThreadData, dispatch: (req: Buffer) => Promise<void>, lazy = false): Readers {
  /** Readers of /dev/fuse that have not ended: the main thread while it reads, and every thread started. */
  let live = lazy ? 1 : 0;
  let pending = 0;
  let failure: unknown;
  let next = 0;
  let wanted = !lazy;
  /** Requests main has read since want(). */
  let servedOnMain = 0;
  /** Threads started so far. */
  let running = 0;
  let ring: Pick<UringData, 'queues' | 'depth' | 'spread' | 'koffi'> | undefined;
  const routes = new Map<bigint, Route>();
  const early = new Map<number, ArrayBuffer>();
  let startThreads = (_n: number): void => {};
  const order = new Uint32Array(data.order);
  const shared = new Map<number, unknown>();
  const ports: MessagePort[] = [];
  const done = new Promise<void>((resolve, reject) => {
    const settle = (): void => (failure ? reject(failure) : resolve());
    const start = (m: ArrayBuffer): void => {
      pending++;
      const req = Buffer.from(m, FORWARD_HEADER);
      void dispatch(req).finally(() => {
        // A ring entry must get an answer, or it is lost to the queue.
        const r = routes.get(req.readBigUInt64LE(8));
        if (r) sendReply(r, req.readBigUInt64LE(8), Buffer.from([16, 0, 0, 0, 0xfb, 0xff, 0xff, 0xff, ...req.subarray(8, 16)]), 16);
        if (--pending === 0 && live === 0) settle();
      });
    };
    // A request's number is taken just after its read(2), so two threads that read two requests in a row
    // may number them the wrong way round (a RELEASE, then an ioctl that must see that close). Every number
    // taken is followed by its message: once `next` is here, the numbers taken by then (a round) are waited
    // for and dispatched in the order the kernel queued them (their unique); later ones make the next round.
    let roundEnd: number | undefined;
    const received = (m: ArrayBuffer): void => {
      early.set(new Uint32Array(m, 0, 1)[0]!, m);
      for (;;) {
        if (roundEnd === undefined) {
          if (!early.has(next)) return;
          roundEnd = Atomics.load(order, SEQUENCE);
        }
        for (let s = next; s !== roundEnd; s = (s + 1) >>> 0) if (!early.has(s)) return;
        const round: ArrayBuffer[] = [];
        for (; next !== roundEnd; next = (next + 1) >>> 0) {
          round.push(early.get(next)!);
          early.delete(next);
        }
        roundEnd = undefined;
        if (round.length > 1) round.sort((x, y) => (uniqueOf(x) < uniqueOf(y) ? -1 : 1));
        for (const r of round) start(r);
      }
    };
    const readerGone = (): void => {
      if (--live === 0 && pending === 0) settle();
    };
    startThreads = (n: number): void => {
      while (running < n) {
        const i = running++;
        live++;
        let uring: UringData | undefined;
        let wake: Route | undefined;
        if (ring) {
          const c = new (workerThreads().MessageChannel)();
          const efd = eventfd();
          uring = { ...ring, mine: queuesOf(i, count, ring.queues, ring.spread), payload: data.bufferSize, port: c.port2, eventfd: efd };
          wake = { port: c.port1, eventfd: efd, route: 0 };
        }
        const { port1, port2 } = new (workerThreads().MessageChannel)();
        port1.unref();
        ports.push(port1);
        const memory = alignedMemory(data.bufferSize);
        // After alignedMemory: it loads koffi, which keeps the single executable's unnamed koffi.node open.
        const workerData: ThreadData = { ...data, ...memory, shared: [...shared], port: port2, uring, koffi: data.splice ? koffiPath() : undefined };
        const t = new (workerThreads().Worker)(program, { eval: true, workerData, transferList: uring ? [port2, uring.port] : [port2] });
        t.on('message', (m: unknown) => {
          if (!(m instanceof ArrayBuffer)) {
            // The first thread is busy: the others start now (thread-main.ts, GROW_AFTER).
            if ((m as { grow?: boolean }).grow && live > 0) startThreads(count);
            return;
          }
          const route = new Uint32Array(m, 4, 1)[0]!;
          if (route && wake) routes.set(Buffer.from(m, FORWARD_HEADER + 8, 8).readBigUInt64LE(0), { ...wake, route: route - 1 });
          received(m);
        });
        t.on('error', (e) => (failure ??= e));
        t.on('exit', () => {
          if (wake) {
            for (const [unique, r] of routes) if (r.port === wake.port) routes.delete(unique);
            wake.port.close();
            fs.closeSync(wake.eventfd);
          }
          ports.splice(ports.indexOf(port1), 1);
          port1.close();
          readerGone();
        });
      }
    };
    if (!lazy) return startThreads(count);
    const buf = Buffer.allocUnsafe(data.bufferSize);
    const readOnMain = (): void => {
      fs.read(data.fd, buf, 0, data.bufferSize, null, (err, n) => {
        if (err) {
          if (err.code === 'ENOENT' || err.code === 'EINTR' || err.code === 'EAGAIN') return readOnMain();
          if (err.code !== 'ENODEV') failure ??= err;
          return readerGone();
        }
        if (n >= 40) {
          const ab = new ArrayBuffer(FORWARD_HEADER + n);
          new Uint32Array(ab, 0, 1)[0] = Atomics.add(order, SEQUENCE, 1);
          buf.copy(Buffer.from(ab), FORWARD_HEADER, 0, n);
          received(ab);
        }
        if (!wanted) return readOnMain();
        // Main serves a light load itself (FIRST_THREAD_AFTER), then one thread starts (a ring needs
        // them all at once), which asks for the others once the load is sustained (GROW_AFTER).
        if (running === 0 && ++servedOnMain < FIRST_THREAD_AFTER) return readOnMain();
        if (running === 0) startThreads(ring ? count : 1);
        // With a ring, FORGET and INTERRUPT still come through /dev/fuse; without, main reads on
        // (and serves what it reads) until a thread reads: a thread's runtime takes tens of ms to start.
        if (ring || Atomics.load(order, READING) === 0) return readOnMain();
        readerGone();
      });
    };
    readOnMain();
  });
  return {
    done,
    want: () => {
      wanted = true;
    },
    useUring: (r) => {
      const path = koffiPath();
      if (running > 0 || !path) return false;
      ring = { ...r, koffi: path };
      return true;
    },
    reply: (unique, b, len) => {
      const r = routes.get(unique);
      if (!r) return false;
      sendReply(r, unique, b, len);
      return true;
    },
    share: (tag, value) => {
      if (value === undefined) shared.delete(tag);
      else shared.set(tag, value);
      for (const p of ports) p.postMessage([tag, value]);
    },
  };

  function sendReply(r: Route, unique: bigint, b: Buffer, len: number): void {
    routes.delete(unique);
    const reply = new ArrayBuffer(len);
    b.copy(Buffer.from(reply), 0, 0, len);
    r.port.postMessage({ route: r.route, reply } satisfies UringReply, [reply]);
    try {
      fs.writeSync(r.eventfd, WAKE);
    } catch {
      // The thread is gone (the connection with it).
    }
  }
}


const LAYOUT: SlotLayout = {
  slots: TABLE_SLOTS, maxAlign: MAX_ALIGN, forwardHeader: FORWARD_HEADER,
  state: STATE, inflight: INFLIGHT, written: WRITTEN, readOnly: READONLY, fd: FD, dfd: DFD, align: ALIGN,
  tag: TAG, fh: FH, start: START, length: LENGTH,
};

export function threadData(fd: number, bufferSize: number, table: BackedTable, fast: boolean, splice = false): ThreadData {
  return { fd, bufferSize, table: table.buffer, layout: LAYOUT, order: new SharedArrayBuffer(8), fast, shared: [], splice };
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

