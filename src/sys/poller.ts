import * as fs from 'node:fs';
import { LoopfsError } from '../base/errors';
import { EFD_CLOEXEC, EFD_NONBLOCK, POLLIN, call, lastErrno, must, sys, type Ptr } from './socket-calls';

/**
 * The one poll(2) of the sockets in sys/unixsock.ts: run on the libuv pool
 * (koffi `.async`) over every fd someone waits on, plus an eventfd that
 * wakes it when the set changes. However many servers and connections wait,
 * at most one pool thread is occupied, and none when nobody waits.
 */

interface Waiter { fd: number; events: number; resolve: () => void; reject: (e: Error) => void }

const waiters = new Set<Waiter>();
let polling = false;
let wakeFd = -1;
let pollPtr: Ptr = 0n;
let pollCap = 0;

/** Resolves when `fd` is ready for `events` (POLLIN, POLLOUT). */
export function wait(fd: number, events: number): Promise<void> {
  return new Promise((resolve, reject) => {
    waiters.add({ fd, events, resolve, reject });
    kick();
  });
}

function kick(): void {
  if (!polling) return startPoll();
  // Wake the running poll so it picks up the new set (eventfd counter += 1).
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(1n);
  try { fs.writeSync(wakeFd, one); } catch { /* counter saturated: it is awake anyway */ }
}

function startPoll(): void {
  if (waiters.size === 0) return;
  const { k, f, t } = sys();
  if (wakeFd < 0) wakeFd = must(call(() => f.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)), 'eventfd');
  const snapshot = [...waiters];
  const n = snapshot.length + 1;
  const size = k.sizeof(t.pollfd);
  if (pollCap < n) {
    if (pollPtr) k.free(pollPtr);
    pollCap = Math.max(n, 2 * pollCap, 16);
    pollPtr = k.alloc('uint8_t', pollCap * size) as Ptr;
  }
  const view = Buffer.from(k.view(pollPtr, n * size));
  k.encode(pollPtr, 0, t.pollfd, { fd: wakeFd, events: POLLIN, revents: 0 });
  snapshot.forEach((w, i) => k.encode(pollPtr, (i + 1) * size, t.pollfd, { fd: w.fd, events: w.events, revents: 0 }));
  polling = true;
  f.poll.async(pollPtr, n, -1, (err: unknown, rc: number) => {
    polling = false;
    const e = rc < 0 ? lastErrno() : undefined; // errno is the worker's, inside this callback
    if (err || (e && e !== 'EINTR')) {
      // Cannot happen with valid arguments; fail the waiters rather than spin.
      const error = err instanceof Error ? err : new LoopfsError(e ?? 'EIO', 'poll');
      for (const w of snapshot) if (waiters.delete(w)) w.reject(error);
    } else if (rc > 0) {
      if (view.readInt16LE(6) !== 0) {
        try { fs.readSync(wakeFd, Buffer.alloc(8)); } catch { /* EAGAIN: already drained */ }
      }
      // Matched by identity, not fd number: a waiter removed meanwhile is not woken.
      snapshot.forEach((w, i) => {
        if (view.readInt16LE((i + 1) * size + 6) !== 0 && waiters.delete(w)) w.resolve();
      });
    }
    startPoll();
  });
}

/** Rejects every wait on `fd` with ECANCELED (its socket is closing). */
export function cancelWaiters(fd: number, what: string): void {
  let any = false;
  for (const w of waiters) {
    if (w.fd !== fd) continue;
    waiters.delete(w);
    w.reject(new LoopfsError('ECANCELED', what, 'socket closed'));
    any = true;
  }
  if (any && polling) kick();
}
