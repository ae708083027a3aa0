import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/**
 * Loads koffi. From node_modules when run from the source tree or the bundle;
 * inside the single executable, from the `koffi.node` asset that the build
 * embedded (see loadFromAsset: no file of a guessable name is involved).
 */
// The koffi type surface we use; its own .d.ts describes the full module.
export type Koffi = typeof import('koffi');

let cached: Koffi | undefined;
/** The unnamed koffi.node of the single executable, open for the worker threads (koffiPath). */
let keptFd: number | undefined;

export function koffi(): Koffi {
  if (!cached) cached = load();
  return cached;
}

const req = createRequire(typeof __filename === 'string' ? __filename : process.argv[1] ?? process.cwd());

/**
 * Where a worker thread can load koffi from: the package (require), or in
 * the single executable the unnamed koffi.node, kept open for that
 * (process.dlopen of /proc/self/fd/N); undefined where it cannot be had.
 */
export function koffiPath(): string | undefined {
  const sea = seaModule();
  if (sea && sea.isSea()) return keptFd === undefined ? undefined : `/proc/self/fd/${keptFd}`;
  try {
    return req.resolve('koffi');
  } catch {
    return undefined;
  }
}

function load(): Koffi {
  const sea = seaModule();
  if (sea && sea.isSea()) return loadFromAsset(sea);
  return req('koffi') as Koffi;
}

export interface SeaModule {
  isSea(): boolean;
  getRawAsset(key: string): ArrayBuffer;
}

export function seaModule(): SeaModule | undefined {
  try {
    return req('node:sea') as SeaModule;
  } catch {
    return undefined;
  }
}

/**
 * dlopen needs a path, and a path in a shared directory such as /tmp can be
 * squatted or swapped by another user. So the file gets no name at all: an
 * O_TMPFILE (unnamed, ours alone, gone with its last descriptor) loaded
 * through /proc/self/fd/N. Where the file system cannot do O_TMPFILE, a fresh
 * mkdtemp(3) directory (random name, created exclusively, 0700) holds it
 * just for the dlopen. Nothing is cached: writing ~1 MB costs about as much
 * as checking a cache would (man loopfs(8), SECURITY).
 */
function loadFromAsset(sea: SeaModule): Koffi {
  const bytes = new Uint8Array(sea.getRawAsset('koffi.node'));
  const errors: string[] = [];
  // A directory mounted noexec cannot serve dlopen: try the next one.
  const dirs = [...new Set([os.tmpdir(), process.env.XDG_RUNTIME_DIR, '/dev/shm', '/tmp'].filter((d): d is string => !!d))];
  for (const dir of dirs) {
    try {
      return dlopenUnnamed(dir, bytes) ?? dlopenInPrivateDir(dir, bytes);
    } catch (e) {
      errors.push(`${dir}: ${(e as Error).message}`);
    }
  }
  throw new Error(`cannot load the native module koffi.node (${errors.join('; ')})`);
}

// <asm-generic/fcntl.h>: __O_TMPFILE | O_DIRECTORY
const O_TMPFILE = 0o20200000;

/** dlopen of an unnamed file in `dir`; undefined when the file system has no O_TMPFILE. */
function dlopenUnnamed(dir: string, bytes: Uint8Array): Koffi | undefined {
  let fd: number;
  try {
    fd = fs.openSync(dir, O_TMPFILE | fs.constants.O_RDWR, 0o500);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EOPNOTSUPP' || code === 'EISDIR' || code === 'EINVAL') return undefined;
    throw e;
  }
  try {
    writeAll(fd, bytes);
    const k = dlopen(`/proc/self/fd/${fd}`);
    keptFd = fd;
    return k;
  } finally {
    if (keptFd !== fd) fs.closeSync(fd);
  }
}

/** @internal Exported for the test of this fall-back in a single executable. */
export function dlopenInPrivateDir(dir: string, bytes: Uint8Array): Koffi {
  const priv = fs.mkdtempSync(path.join(dir, 'loopfs-'));
  try {
    const st = fs.lstatSync(priv);
    const uid = process.geteuid ? process.geteuid() : 0;
    if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o777) !== 0o700) throw new Error(`${priv}: not a private directory of uid ${uid}`);
    const file = path.join(priv, 'koffi.node');
    const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o500);
    try {
      writeAll(fd, bytes);
    } finally {
      fs.closeSync(fd);
    }
    try {
      return dlopen(file);
    } finally {
      fs.rmSync(file, { force: true });
    }
  } finally {
    fs.rmdirSync(priv);
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  for (let off = 0; off < bytes.length;) off += fs.writeSync(fd, bytes, off, bytes.length - off);
}

function dlopen(file: string): Koffi {
  const mod = { exports: {} as unknown };
  process.dlopen(mod, file);
  return mod.exports as Koffi;
}
