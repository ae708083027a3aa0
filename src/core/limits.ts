import * as fs from 'node:fs';
import * as path from 'node:path';
import { LoopfsError } from '../base/errors';
import { readPrivateFile } from './state';
import { flock, LOCK_EX, LOCK_SH, LOCK_UN, ofdGetLock, ofdSetLock, F_WRLCK, F_UNLCK } from '../sys/libc';

/**
 * max_loop_devices (SPEC §6): how many devices one uid may hold across the
 * instances of a run directory, and — for instances inside `loopfs run` —
 * across every run directory above it.
 *
 * Each run directory has one `limits` file. Its content is the sysctl value
 * (JSON); its byte-range locks are the ledger: a daemon holding k devices for
 * uid U holds an open-file-description write lock of length k in a slot of
 * U's range. The kernel drops a lock when its holder dies, however it dies,
 * so a crashed instance or a SIGKILLed sandbox never leaves a stale count
 * behind. Check-and-update runs under flock() of the same file.
 */

export const LIMITS_FILE = 'limits';
export const PARENTS_FILE = 'parents.json';
export const DEFAULT_MAX_LOOP_DEVICES = 255;

const UID_SPAN = 2 ** 30;
const SLOT_SPAN = 2 ** 20;
const SLOTS = UID_SPAN / SLOT_SPAN;

export interface Sysctl {
  max_loop_devices: number;
}

/** One level of the hierarchy: a limits file, the uid charged there, and a name for messages. */
export interface LevelRef {
  path: string;
  uid: number;
  label: string;
}

/**
 * Opens a limits file: in a run directory without following symlinks; the
 * levels above a sandbox are named /proc/1/fd/N, which must be followed.
 */
export function openLimitsFile(file: string): number {
  if (file.startsWith('/proc/')) return fs.openSync(file, fs.constants.O_RDWR);
  return fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
}

export function readSysctl(fd: number): Sysctl {
  // Read from offset 0 each time: the fd is long-lived and shared by reads and writes.
  const buf = Buffer.alloc(4096);
  const n = fs.readSync(fd, buf, 0, buf.length, 0);
  const text = buf.toString('utf8', 0, n);
  if (!text.trim()) return { max_loop_devices: DEFAULT_MAX_LOOP_DEVICES };
  try {
    const v = JSON.parse(text) as Partial<Sysctl>;
    if (Number.isSafeInteger(v.max_loop_devices) && v.max_loop_devices! >= 0) return { max_loop_devices: v.max_loop_devices! };
  } catch {
    /* fall through */
  }
  throw new LoopfsError('EINVAL', 'limits', 'the limits file does not parse; left alone');
}

/** Rewrites the value in place: the file (and so every holder's locks) stays the same inode. */
export function writeSysctl(fd: number, v: Sysctl): void {
  flock(fd, LOCK_EX);
  try {
    const text = `${JSON.stringify(v)}\n`;
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, text, 0);
  } finally {
    flock(fd, LOCK_UN);
  }
}

export function readSysctlShared(fd: number): Sysctl {
  flock(fd, LOCK_SH);
  try {
    return readSysctl(fd);
  } finally {
    flock(fd, LOCK_UN);
  }
}

/** Devices held in [start, start+len) by other open files, found by halving the range. */
function heldByOthers(fd: number, start: number, len: number): number {
  const l = ofdGetLock(fd, start, len);
  if (!l) return 0;
  if (len <= SLOT_SPAN) return l.len;
  const half = len / 2;
  return heldByOthers(fd, start, half) + heldByOthers(fd, start + half, half);
}

class Level {
  readonly fd: number;
  private slot = -1;
  held = 0;

  constructor(readonly ref: LevelRef) {
    if (!Number.isSafeInteger(ref.uid) || ref.uid < 0 || ref.uid >= 2 ** 32) throw new LoopfsError('EINVAL', 'uid', `uid ${ref.uid} out of range`);
    this.fd = openLimitsFile(ref.path);
  }

  private get range(): number {
    return this.ref.uid * UID_SPAN;
  }

  /** With the file flock()ed: throws ENOSPC when n more devices would pass the limit. */
  check(n: number): void {
    const limit = readSysctl(this.fd).max_loop_devices;
    const used = heldByOthers(this.fd, this.range, UID_SPAN) + this.held;
    if (used + n > limit) {
      throw new LoopfsError('ENOSPC', 'new device', `per-user limit max_loop_devices=${limit} of ${this.ref.label} reached (uid ${this.ref.uid} holds ${used})`);
    }
  }

  /** With the file flock()ed: records `held + delta` devices. */
  set(delta: number): void {
    if (this.slot < 0) this.slot = this.freeSlot();
    const base = this.range + this.slot * SLOT_SPAN;
    const next = this.held + delta;
    if (next > 0) ofdSetLock(this.fd, F_WRLCK, base, next);
    if (next < this.held) ofdSetLock(this.fd, F_UNLCK, base + next, this.held - next);
    this.held = next;
  }

  private freeSlot(): number {
    for (let s = 0; s < SLOTS; s++) if (!ofdGetLock(this.fd, this.range + s * SLOT_SPAN, SLOT_SPAN)) return s;
    throw new LoopfsError('ENOSPC', 'new device', `more than ${SLOTS} instances of uid ${this.ref.uid} in ${this.ref.label}`);
  }
}

/**
 * The budget of one daemon: its own run directory's level first, then each
 * level above it. reserve() passes only if every level has room.
 */
export class Budget {
  private readonly levels: Level[];

  constructor(refs: LevelRef[]) {
    this.levels = refs.map((r) => new Level(r));
  }

  private locked<T>(fn: () => T): T {
    // Outermost first, the same order everywhere, so two daemons never deadlock.
    const order = [...this.levels].reverse();
    const taken: Level[] = [];
    try {
      for (const l of order) {
        flock(l.fd, LOCK_EX);
        taken.push(l);
      }
      return fn();
    } finally {
      for (const l of taken) flock(l.fd, LOCK_UN);
    }
  }

  reserve(n: number): void {
    this.locked(() => {
      for (const l of this.levels) l.check(n);
      for (const l of this.levels) l.set(n);
    });
  }

  release(n: number): void {
    this.locked(() => {
      for (const l of this.levels) l.set(-Math.min(n, l.held));
    });
  }
}

/**
 * Opens and closes what a daemon's Budget opens at its start: a starter that
 * does not wait for its daemon tells these errors itself.
 */
export function checkLevels(refs: LevelRef[]): void {
  for (const r of refs) fs.closeSync(new Level(r).fd);
}

/** The levels above a run directory (written by `loopfs run` into the sandbox's run directory). */
export function readParents(runDir: string): LevelRef[] {
  const file = path.join(runDir, PARENTS_FILE);
  const text = readPrivateFile(file);
  if (text === undefined) return [];
  try {
    const v = JSON.parse(text) as LevelRef[];
    if (Array.isArray(v) && v.every((r) => typeof r.path === 'string' && Number.isSafeInteger(r.uid) && typeof r.label === 'string')) return v;
  } catch {
    /* fall through */
  }
  throw new LoopfsError('EINVAL', file, 'does not parse; not trusted');
}

/** The whole chain for an instance of `runDir` owned by `uid`: this level, then its parents. */
export function levelsFor(runDir: string, uid: number): LevelRef[] {
  return [{ path: path.join(runDir, LIMITS_FILE), uid, label: runDir }, ...readParents(runDir)];
}
