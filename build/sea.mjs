// Makes the single executable (Node SEA): the CJS bundle plus koffi's native
// module as the asset `koffi.node` (src/sys/ffi.ts loads it from there),
// injected into a copy of this very node binary. No network, no `pkg`.
//
//   node build/sea.mjs [BUNDLE [OUT]]     default: dist/loopfs.cjs → dist/loopfs
//
// Work happens in a private directory beside OUT and the result is renamed
// into place, so concurrent builds never see a half-written binary. When the
// blob and the node binary are unchanged since the last build of OUT, the
// slow injection (~4 s: postject rewrites a ~100 MB ELF) is skipped.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

/** Path of the koffi.node matching this node: its platform, arch and libc. */
export function koffiNativePath() {
  const fromRoot = createRequire(path.join(ROOT, 'package.json'));
  const fromKoffi = createRequire(fromRoot.resolve('koffi'));
  const pkg = `@koromix/koffi-${process.platform}-${process.arch}`;
  let dir;
  try {
    dir = path.dirname(fromKoffi.resolve(`${pkg}/package.json`));
  } catch {
    throw new Error(`${pkg} is not installed: koffi has no prebuilt module for ${process.platform}-${process.arch} here`);
  }
  const header = /** @type {{ glibcVersionRuntime?: string }} */ (process.report.getReport().header);
  const libc = process.platform === 'linux' && !header.glibcVersionRuntime ? 'musl' : process.platform;
  const file = path.join(dir, `${libc}_${process.arch}`, 'koffi.node');
  if (!fs.existsSync(file)) throw new Error(`${file}: missing (koffi prebuild for ${libc} ${process.arch})`);
  return file;
}

function run(args, what) {
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
  if (r.status !== 0) {
    process.stderr.write(r.stdout + r.stderr);
    throw new Error(`${what} failed (${r.error?.message ?? `exit status ${r.status}`})`);
  }
}

/**
 * Builds OUT from BUNDLE; returns { out, cached }. Its main script is the
 * loader build/sea-main.cjs; the bundle is the asset `loopfs.cjs`, and each
 * CACHES/KEY.bin (build/train.mjs) the asset `cache/KEY`.
 */
export function buildSea(bundle = path.join(ROOT, 'dist/loopfs.cjs'), out = path.join(ROOT, 'dist/loopfs'), caches = undefined) {
  bundle = path.resolve(bundle);
  out = path.resolve(out);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const work = fs.mkdtempSync(path.join(path.dirname(out), '.sea-'));
  try {
    const blob = path.join(work, 'sea-prep.blob');
    const config = path.join(work, 'sea-config.json');
    const assets = { 'koffi.node': koffiNativePath(), 'loopfs.cjs': bundle };
    for (const f of caches && fs.existsSync(caches) ? fs.readdirSync(caches) : []) {
      if (f.endsWith('.bin')) assets[`cache/${f.slice(0, -4)}`] = path.join(caches, f);
    }
    fs.writeFileSync(config, JSON.stringify({
      main: path.join(ROOT, 'build/sea-main.cjs'),
      output: blob,
      disableExperimentalSEAWarning: true,
      useCodeCache: true,
      assets,
    }));
    run(['--experimental-sea-config', config], 'node --experimental-sea-config');

    // Same blob into the same node as last time: the binary is already right.
    const node = fs.statSync(process.execPath);
    const stamp = createHash('sha256').update(fs.readFileSync(blob))
      .update(`${process.execPath}\0${node.size}\0${node.mtimeMs}\0${process.version}`).digest('hex');
    const stampFile = path.join(path.dirname(out), `.${path.basename(out)}.sea-stamp`);
    // The stamp also names OUT's size and mtime: a binary replaced since is rebuilt.
    const stampOf = () => { const s = fs.statSync(out, { throwIfNoEntry: false }); return s && `${stamp} ${s.size} ${s.mtimeMs}`; };
    let old = '';
    try { old = fs.readFileSync(stampFile, 'utf8'); } catch { /* first build */ }
    if (old && old === stampOf()) return { out, cached: true };

    const exe = path.join(work, path.basename(out));
    fs.copyFileSync(process.execPath, exe);
    fs.chmodSync(exe, 0o755);
    const postject = path.join(path.dirname(createRequire(path.join(ROOT, 'package.json')).resolve('postject')), 'cli.js');
    // Its own CLI, in a child: LIEF's warnings about node's many notes stay out of the build output.
    run([postject, exe, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', FUSE], 'postject');
    fs.renameSync(exe, out);
    fs.writeFileSync(stampFile, stampOf() ?? '');
    return { out, cached: false };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [bundle, out] = process.argv.slice(2);
  const t0 = Date.now();
  const r = buildSea(bundle, out);
  console.log(`${path.relative(process.cwd(), r.out)}: single executable${r.cached ? ' (unchanged)' : ''}, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}
