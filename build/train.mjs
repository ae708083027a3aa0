// Trains the single executable's code caches (build/sea-main.cjs): runs the
// bundle through its loader on plain node, as the CLI, a daemon and a
// sandbox's init, on a throw-away run directory, and keeps for each kind of
// process the V8 code cache of what it compiled (OUTDIR/KEY.bin). A cache
// that a fresh process rejects is dropped. Needs root and /dev/fuse for the
// daemon's and the sandbox's paths; without them only what the CLI reaches
// before it fails is trained. Never fails the build: a step that fails
// trains less.
//
//   trainCodeCache(loaderPath, outdir) → { keys: [...], ms }
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The loader's own wrapper of the bundle (build/sea-main.cjs), to check each cache against. */
function wrapped(bundle) {
  const text = fs.readFileSync(bundle, 'utf8');
  return `(function (exports, require, module, __filename, __dirname) {${text.startsWith('#!') ? `//${text.slice(2)}` : text}\n})`;
}

export function trainCodeCache(loader, outdir) {
  const t0 = Date.now();
  fs.rmSync(outdir, { recursive: true, force: true });
  fs.mkdirSync(outdir, { recursive: true });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-train-'));
  const runDir = path.join(work, 'run');
  const mnt = path.join(work, 'mnt');
  const img = path.join(work, 'disk.img');
  fs.mkdirSync(mnt);
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 32 * 2 ** 20);
  // koffi from this checkout, wherever OUTDIR is (the bench builds elsewhere).
  const env = { ...process.env, LOOPFS_TRAIN_CACHE: outdir, LOOPFS_RUNDIR: runDir, NODE_OPTIONS: '', NODE_PATH: path.join(ROOT, 'node_modules') };
  for (const k of ['LOOPFS', 'LOOPFS_DEBUG', 'LOOPFS_DEV0', 'LOOPFS_DEVICES']) delete env[k];
  const sh = (cmd, args) => spawnSync(cmd, args, { env, encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'pipe'] });
  const loopfs = (...args) => sh(process.execPath, [loader, ...args]);
  const root = process.getuid?.() === 0 && fs.existsSync('/dev/fuse');
  try {
    // The CLI's usage and error paths: no instance needed.
    loopfs('--help');
    loopfs('losetup', '--help');
    loopfs('losetup', '--bogus');
    // One daemon only: each writes its cache as it exits, the last one's is kept.
    if (root) {
      loopfs('mount', mnt);
      loopfs('--instance', mnt, 'losetup', '-f', '--show', path.join(work, 'missing.img'));
      const dev = loopfs('--instance', mnt, 'losetup', '-f', '--show', img).stdout.trim();
      if (dev) {
        loopfs('--instance', mnt, 'losetup', '-a');
        loopfs('--instance', mnt, 'losetup', '-l', '-O', 'NAME,SIZELIMIT,OFFSET,BACK-FILE');
        sh('mkfs.ext4', ['-q', '-F', dev]);
        sh('e2fsck', ['-fn', dev]);
        sh('blockdev', ['--getsize64', '--getss', '--flushbufs', dev]);
        sh('dd', [`if=${dev}`, 'of=/dev/null', 'bs=64K', 'count=64', 'iflag=direct']);
        loopfs('--instance', mnt, 'losetup', '-d', dev);
      }
      loopfs('list');
      loopfs('umount', mnt);
      loopfs('run', '--attach', img, '--', 'sh', '-c', 'e2fsck -fn "$LOOPFS_DEV0" && loopfs losetup -a');
    }
  } finally {
    // Whatever a failed step left: a daemon of this run directory, a mount.
    if (root) {
      for (const dir of [mnt, path.join(runDir, 'default')]) {
        if (loopfs('umount', '--lazy', dir).status !== 0) sh('umount', ['-l', dir]);
      }
    }
    fs.rmSync(work, { recursive: true, force: true });
  }
  // A daemon that is still writing its cache at exit finishes within moments.
  for (let i = 0; i < 50 && fs.readdirSync(outdir).some((f) => /\.bin\.\d+$/.test(f)); i++) spawnSync('sleep', ['0.1']);
  const keys = [];
  const check = spawnSync(process.execPath, ['-e', `
    const fs = require('node:fs'), vm = require('node:vm');
    const [source, dir] = [fs.readFileSync(0, 'utf8'), process.argv[1]];
    for (const f of fs.readdirSync(dir)) {
      if (!f.endsWith('.bin')) { fs.rmSync(dir + '/' + f); continue; }
      const s = new vm.Script(source, { filename: 'loopfs.cjs', cachedData: fs.readFileSync(dir + '/' + f) });
      if (s.cachedDataRejected) fs.rmSync(dir + '/' + f); else console.log(f.slice(0, -4));
    }`, outdir], { input: wrapped(path.join(path.dirname(loader), 'loopfs.cjs')), encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
  if (check.status === 0) keys.push(...check.stdout.split('\n').filter(Boolean));
  else fs.rmSync(outdir, { recursive: true, force: true });
  return { keys, ms: Date.now() - t0 };
}
