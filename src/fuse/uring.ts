import type { MessagePort } from 'node:worker_threads';
import { threadKoffi } from './thread-koffi';

/**
 * FUSE over io_uring (Linux ≥ 6.14, CONFIG_FUSE_IO_URING): the kernel hands
 * requests to buffers the daemon registered on an io_uring, and takes the
 * reply and fetches the next request in one submission
 * (FUSE_IO_URING_CMD_COMMIT_AND_FETCH), instead of a read(2) and a write(2)
 * of /dev/fuse per request.
 *
 * The kernel offers FUSE_OVER_IO_URING in INIT only where an administrator
 * switched it on (/sys/module/fuse/parameters/enable_uring); loopfs never
 * flips that switch. LOOPFS_URING=0 in the daemon's environment keeps it off
 * even then.
 *
 * The ring has one queue per possible CPU; a request goes to the queue of
 * the CPU its task runs on, and the ring only takes requests once every
 * queue has a registered entry. Each I/O thread registers `depth` entries on
 * every queue. A READ/WRITE of a backed handle is served on the thread
 * (thread-main's serve(), its reply landing in the entry's buffers); any
 * other request is forwarded to the main thread like a request read from
 * /dev/fuse, and its reply comes back to the thread through a MessagePort,
 * an eventfd waking the thread from io_uring_enter. FORGET and INTERRUPT
 * still come through /dev/fuse, which the main thread keeps reading; so do
 * the requests sent before the ring is ready. A thread whose registration
 * fails (EOPNOTSUPP: the switch went off after INIT) reads /dev/fuse instead.
 *
 * uringLoop runs on the I/O threads (thread-main.ts's runThread); it
 * loads koffi there, and only there where a ring is to be had.
 */

/** Where a request is read from and its reply goes (/dev/fuse, or a ring entry), with the payload views made once. */
export interface Channel {
  req: Buffer;
  out: Buffer;
  /** req from WRITE_DATA on. */
  writeData: Buffer;
  /** out from REPLY_DATA on. */
  readData: Buffer;
  /** Sends out[0, len). */
  write(len: number): void;
  /** Sends the buffers (the first is out's header). */
  writev(bufs: Buffer[]): void;
}

/** What runThread (thread-main.ts) lends the transport. */
export interface RingHost {
  fd: number;
  /** The request and reply buffers serve() uses, and where its replies go. */
  bind(channel: Channel): void;
  /** Serves a READ/WRITE of a backed handle from the bound buffers; false if not backed. */
  serve(op: number): boolean;
  /** Posts a request (/dev/fuse layout, `n` bytes) to the main thread; `route` names the entry awaiting its reply. */
  forward(req: Buffer, n: number, route: number): void;
  fast: boolean;
}

/** The transport's part of a thread's workerData. */
export interface UringData {
  /** Queues of the ring (the kernel's num_possible_cpus()). */
  queues: number;
  /** The queues this thread registers entries on (queuesOf). */
  mine: number[];
  /** Each thread on its own queues (queuesOf), rather than every thread on every queue. */
  spread: boolean;
  /** Entries registered per queue by each thread. */
  depth: number;
  /** Payload bytes of an entry (≥ the kernel's max_payload_sz). */
  payload: number;
  /** Replies of forwarded requests: { route, reply } messages. */
  port: MessagePort;
  /** Written by the main thread after posting a reply. */
  eventfd: number;
  /** Where koffi is: its package (require) or, in the single executable, /proc/self/fd/N (process.dlopen). */
  koffi: string;
}

export interface UringReply {
  route: number;
  reply: ArrayBuffer;
}

/**
 * The number of possible CPUs, the ring's queue count (num_possible_cpus(),
 * the mask's weight): /sys/devices/system/cpu/possible, e.g. "0-3".
 */
export function possibleCpus(text: string): number {
  let n = 0;
  for (const part of text.trim().split(',')) {
    const [a, b] = part.split('-').map(Number);
    if (a === undefined || Number.isNaN(a)) continue;
    n += (b ?? a) - a + 1;
  }
  return n;
}

/**
 * The queues thread `t` of `threads` registers on. Every thread on every
 * queue, or spread: each queue to threads of its own (thread t takes the
 * queues q with q ≡ t mod threads, or queue t mod queues where threads
 * outnumber queues), so that the kernel never hands a request to an entry
 * whose thread is busy with another. Every queue gets a thread either way
 * (the ring takes requests only then).
 */
export function queuesOf(t: number, threads: number, queues: number, spread: boolean): number[] {
  const all = Array.from({ length: queues }, (_, q) => q);
  if (!spread) return all;
  return threads > queues ? [t % queues] : all.filter((q) => q % threads === t);
}

/**
 * Runs the thread on the ring. Returns false, having registered nothing
 * the kernel kept, when the ring cannot be had (the thread reads /dev/fuse
 * then); returns true when the connection is gone.
 */
export function uringLoop(io: RingHost, u: UringData): boolean {
  const k = threadKoffi(u.koffi);
  const libc = k.load('libc.so.6');
  const syscall = libc.func('long syscall(long, ...)') as (...a: unknown[]) => number;
  const mmap = libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)') as (...a: unknown[]) => unknown;
  const munmap = libc.func('int munmap(void *addr, size_t len)') as (...a: unknown[]) => number;
  const close = libc.func('int close(int fd)') as (fd: number) => number;
  const SYS_io_uring_setup = 425;
  const SYS_io_uring_enter = 426;
  const IORING_SETUP_SQE128 = 1 << 10;
  const IORING_SETUP_SINGLE_ISSUER = 1 << 12;
  const IORING_SETUP_DEFER_TASKRUN = 1 << 13;
  const IORING_ENTER_GETEVENTS = 1;
  const IORING_OP_READ = 22;
  const IORING_OP_URING_CMD = 46;
  const REGISTER = 1;
  const COMMIT_AND_FETCH = 2;
  const PROT_RW = 3;
  const MAP_SHARED = 1;
  const MAP_PRIVATE_ANON = 0x02 | 0x20;
  const MAP_POPULATE = 0x8000;
  const IORING_OFF_SQES = 0x10000000;
  const EINTR = 4;
  const EAGAIN = 11;
  const EBUSY = 16;
  const PAGE = 4096;
  const HEADER = 288; // struct fuse_uring_req_header
  const OP_IN = 128;
  const ENT_IN_OUT = 256;
  const IN_HEADER = 40;
  const WAKE = 0xffffffff;
  const READ = 15;
  const WRITE = 16;

  const failed = (): number => -(k.errno() as number);
  const count = u.mine.length * u.depth;
  const size = 1 << Math.ceil(Math.log2(count + 1));
  const params = Buffer.alloc(120);
  params.writeUInt32LE(IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, 8);
  const ring = Number(syscall(SYS_io_uring_setup, 'uint32_t', size, 'uint8_t *', params));
  if (ring < 0) return false;
  const sqEntries = params.readUInt32LE(0);
  const cqEntries = params.readUInt32LE(4);
  const sqOff = (f: number): number => params.readUInt32LE(40 + f * 4);
  const cqOff = (f: number): number => params.readUInt32LE(80 + f * 4);
  const ringBytes = Math.max(sqOff(6) + sqEntries * 4, cqOff(5) + cqEntries * 16);
  const ringPtr = mmap(null, ringBytes, PROT_RW, MAP_SHARED | MAP_POPULATE, ring, 0);
  const sqePtr = mmap(null, sqEntries * 128, PROT_RW, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
  const stride = PAGE + Math.ceil(u.payload / PAGE) * PAGE;
  const memPtr = mmap(null, count * stride, PROT_RW, MAP_PRIVATE_ANON, -1, 0);
  const maps: [unknown, number][] = [[ringPtr, ringBytes], [sqePtr, sqEntries * 128], [memPtr, count * stride]];
  const bad = (p: unknown): boolean => p === null || BigInt(k.address(p) as bigint) === 0xffffffffffffffffn;
  const release = (): void => {
    for (const [p, len] of maps) if (!bad(p)) munmap(p, len);
    close(ring);
  };
  if (maps.some(([p]) => bad(p))) {
    release();
    return false;
  }
  const ringView = new DataView(k.view(ringPtr, ringBytes) as ArrayBuffer);
  const sqes = Buffer.from(k.view(sqePtr, sqEntries * 128) as ArrayBuffer);
  const mem = Buffer.from(k.view(memPtr, count * stride) as ArrayBuffer);
  const memBase = BigInt(k.address(memPtr) as bigint);
  const sqMask = ringView.getUint32(sqOff(2), true);
  const cqMask = ringView.getUint32(cqOff(2), true);
  for (let i = 0; i < sqEntries; i++) ringView.setUint32(sqOff(6) + i * 4, i, true);

  // Entry e: its header (fuse_uring_req_header) at e*stride, its payload a page on.
  // serve()'s request view ends its 80 bytes of header where the payload
  // starts (WRITE data in place), its reply view its 16 (READ data in place).
  const headerAt = (e: number): number => e * stride;
  const payloadAt = (e: number): number => e * stride + PAGE;
  const iovecs = Buffer.alloc(count * 32);
  for (let e = 0; e < count; e++) {
    iovecs.writeBigUInt64LE(memBase + BigInt(headerAt(e)), e * 32);
    iovecs.writeBigUInt64LE(BigInt(HEADER), e * 32 + 8);
    iovecs.writeBigUInt64LE(memBase + BigInt(payloadAt(e)), e * 32 + 16);
    iovecs.writeBigUInt64LE(BigInt(u.payload), e * 32 + 24);
  }
  const iovBase = BigInt(k.address(iovecs) as bigint);
  const wakeBuf = Buffer.alloc(8);
  const wakeAddr = BigInt(k.address(wakeBuf) as bigint);

  let pending = 0;
  const sqe = (): Buffer => {
    const tail = ringView.getUint32(sqOff(1), true);
    const s = sqes.subarray((tail & sqMask) * 128, (tail & sqMask) * 128 + 128);
    s.fill(0);
    ringView.setUint32(sqOff(1), (tail + 1) >>> 0, true);
    pending++;
    return s;
  };
  const uringCmd = (e: number, op: number, commitId: bigint): void => {
    const s = sqe();
    s.writeUInt8(IORING_OP_URING_CMD, 0);
    s.writeInt32LE(io.fd, 4);
    s.writeUInt32LE(op, 8); // cmd_op
    s.writeBigUInt64LE(iovBase + BigInt(e * 32), 16); // addr: iovec[2]
    s.writeUInt32LE(2, 24);
    s.writeBigUInt64LE(BigInt(e), 32); // user_data
    s.writeBigUInt64LE(commitId, 56); // fuse_uring_cmd_req.commit_id
    s.writeUInt16LE(u.mine[Math.floor(e / u.depth)]!, 64); // .qid
  };
  const armWake = (): void => {
    const s = sqe();
    s.writeUInt8(IORING_OP_READ, 0);
    s.writeInt32LE(u.eventfd, 4);
    s.writeBigUInt64LE(0xffffffffffffffffn, 8);
    s.writeBigUInt64LE(wakeAddr, 16);
    s.writeUInt32LE(8, 24);
    s.writeBigUInt64LE(BigInt(WAKE), 32);
  };
  /** Submits what is queued and waits for `wait` completions; the negative errno on failure. */
  const enter = (wait: number): number => {
    for (;;) {
      const r = Number(syscall(SYS_io_uring_enter, 'int', ring, 'uint32_t', pending, 'uint32_t', wait, 'uint32_t', wait ? IORING_ENTER_GETEVENTS : 0, 'void *', null, 'size_t', 0));
      if (r >= 0) {
        pending -= Math.min(r, pending);
        return 0;
      }
      const err = failed();
      if (err === -EINTR || (err === -EBUSY && wait)) continue;
      return err;
    }
  };
  const completions = function* (): Generator<[number, number]> {
    for (;;) {
      const head = ringView.getUint32(cqOff(0), true);
      if (head === ringView.getUint32(cqOff(1), true)) return;
      const at = cqOff(5) + (head & cqMask) * 16;
      const data = Number(ringView.getBigUint64(at, true));
      const res = ringView.getInt32(at + 8, true);
      ringView.setUint32(cqOff(0), (head + 1) >>> 0, true);
      yield [data, res];
    }
  };

  /** Puts the out header (16 bytes at `out`) and payload_sz into entry e's header, and commits. */
  const commit = (e: number, out: Buffer, len: number): void => {
    const h = headerAt(e);
    out.copy(mem, h, 0, 16);
    mem.writeUInt32LE(len - 16, h + ENT_IN_OUT + 16);
    uringCmd(e, COMMIT_AND_FETCH, mem.readBigUInt64LE(h + ENT_IN_OUT + 8));
  };
  const views = Array.from({ length: count }, (_, e) => {
    const p = payloadAt(e);
    const req = mem.subarray(p - 80, p + u.payload);
    const out = mem.subarray(p - 16, p + u.payload);
    const write = (len: number): void => commit(e, out, len);
    const writev = (bufs: Buffer[]): void => {
      let len = 16;
      for (const b of bufs.slice(1)) len += b.copy(mem, p + len - 16);
      commit(e, bufs[0]!, len);
    };
    return { req, out, writeData: mem.subarray(p, p + u.payload), readData: mem.subarray(p, p + u.payload), write, writev } satisfies Channel;
  });

  /** Entry e holds a request: serve it here or forward it. */
  const handle = (e: number): void => {
    const h = headerAt(e);
    const p = payloadAt(e);
    const op = mem.readUInt32LE(h + 4);
    const payloadSize = mem.readUInt32LE(h + ENT_IN_OUT + 16);
    const total = mem.readUInt32LE(h);
    const opIn = Math.max(0, Math.min(OP_IN, total - IN_HEADER - payloadSize));
    const v = views[e]!;
    if (io.fast && (op === READ || op === WRITE) && opIn === 40) {
      mem.copy(mem, p - 80, h, h + IN_HEADER);
      mem.copy(mem, p - 40, h + OP_IN, h + OP_IN + 40);
      io.bind(v);
      if (io.serve(op)) return;
    }
    const n = IN_HEADER + opIn + payloadSize;
    const req = Buffer.allocUnsafe(n);
    mem.copy(req, 0, h, h + IN_HEADER);
    mem.copy(req, IN_HEADER, h + OP_IN, h + OP_IN + opIn);
    mem.copy(req, IN_HEADER + opIn, p, p + payloadSize);
    req.writeUInt32LE(n, 0);
    io.forward(req, n, e);
  };

  // Register every entry; the kernel refuses until INIT is answered (EAGAIN).
  let registered = 0;
  for (let tries = 0; registered < count; tries++) {
    for (let e = registered; e < count; e++) uringCmd(e, REGISTER, 0n);
    const err = enter(0);
    let refused = err;
    // A registration that the kernel accepts stays pending (no completion until a request comes).
    for (const [data, res] of completions()) {
      if (data === WAKE) continue;
      if (res < 0) refused = res;
      else handle(data);
    }
    if (refused === 0) {
      registered = count;
      break;
    }
    if (refused !== -EAGAIN || registered > 0 || tries > 50) {
      // Nothing the kernel kept waits on this ring: let it go.
      release();
      return false;
    }
    pending = 0;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
  }
  armWake();

  // Loaded here, in the thread: the daemon's main thread imports this module for queuesOf at every start.
  const { receiveMessageOnPort } = require('node:worker_threads') as typeof import('node:worker_threads');
  for (;;) {
    const err = enter(1);
    if (err < 0) break;
    let gone = false;
    for (const [data, res] of completions()) {
      if (data === WAKE) {
        for (let m = receiveMessageOnPort(u.port); m; m = receiveMessageOnPort(u.port)) {
          const { route, reply } = m.message as UringReply;
          const b = Buffer.from(reply);
          const p = payloadAt(route);
          b.copy(mem, p, 16);
          commit(route, b, b.length);
        }
        armWake();
      } else if (res < 0) {
        // ENOTCONN/ECONNABORTED/ECANCELED: the connection is torn down.
        gone = true;
      } else {
        handle(data);
      }
    }
    if (gone) break;
  }
  release();
  return true;
}
