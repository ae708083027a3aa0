import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/**
 * Loads koffi. From node_modules when run from the source tree or the bundle;
 * inside the single executable, from the `koffi.node` asset that the build
 * embedded, written once to a private cache directory (0700, owned by us,
 * never followed through a symlink) because dlopen needs a path.
 */
// The koffi type surface we use; its own .d.ts describes the full module.
export type Koffi = typeof import('koffi');

let cached: Koffi | undefined;

export function koffi(): Koffi {
  if (!cached) cached = load();
  return cached;
}

const req = createRequire(typeof __filename === 'string' ? __filename : process.argv[1] ?? process.cwd());

function load(): Koffi {
  const sea = seaModule();
  if (sea && sea.isSea()) return loadFromAsset(sea);
  return req('koffi') as Koffi;
}

interface SeaModule {
  isSea(): boolean;
  getRawAsset(key: string): ArrayBuffer;
}

function seaModule(): SeaModule | undefined {
  try {
    return req('node:sea') as SeaModule;
  } catch {
    return undefined;
  }
}

function loadFromAsset(sea: SeaModule): Koffi {
  const bytes = Buffer.from(sea.getRawAsset('koffi.node'));
  const uid = process.getuid ? process.getuid() : 0;
  const dir = path.join(os.tmpdir(), `loopfs-${uid}`);
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  const st = fs.lstatSync(dir);
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o077) !== 0) {
    throw new Error(`${dir}: not a private directory of uid ${uid}; refusing to load native code from it`);
  }
  const file = path.join(dir, `koffi-${bytes.length}-${simpleHash(bytes)}.node`);
  if (!fs.existsSync(file)) {
    const tmp = `${file}.${process.pid}`;
    fs.writeFileSync(tmp, bytes, { mode: 0o700 });
    fs.renameSync(tmp, file);
  }
  const mod = { exports: {} as unknown };
  process.dlopen(mod, file);
  return mod.exports as Koffi;
}

function simpleHash(b: Buffer): string {
  let h = 2166136261;
  for (let i = 0; i < b.length; i += 997) h = Math.imul(h ^ b[i]!, 16777619) >>> 0;
  return h.toString(16);
}
