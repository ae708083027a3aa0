// Bundles src/main.ts into dist/loopfs.cjs (CommonJS: what a Node single
// executable runs), with the I/O thread program (build/io-thread.mjs, a
// second entry) embedded in it as text, then makes the single executable dist/loopfs from it
// (build/sea.mjs). Built-in modules' namespaces are made once each
// (build/shared-namespaces.mjs: an idle daemon's RSS). Prints one line.
//
//   node build/build.mjs [--outdir DIR]      default DIR: dist
import * as esbuild from 'esbuild';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { buildSea } from './sea.mjs';
import { ioThreadDefine } from './io-thread.mjs';
import { shareNamespaces } from './shared-namespaces.mjs';
import { trainCodeCache } from './train.mjs';

const args = process.argv.slice(2);
const at = args.indexOf('--outdir');
const outdir = at >= 0 && args[at + 1] ? args[at + 1] : 'dist';
const t0 = Date.now();

mkdirSync(outdir, { recursive: true });
const bundle = path.join(outdir, 'loopfs.cjs');
// Written aside and renamed: a test running the old bundle never reads half a file.
const result = await esbuild.build({
  entryPoints: ['src/main.ts'],
  define: await ioThreadDefine(),
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  outfile: bundle,
  external: ['koffi'],
  // Kept for `node dist/loopfs.cjs` and direct execution; Node skips it in a single executable too.
  banner: { js: '#!/usr/bin/env node' },
  logLevel: 'warning',
  sourcemap: false,
  write: false,
});
const tmp = `${bundle}.${process.pid}`;
writeFileSync(tmp, shareNamespaces(result.outputFiles[0].text), { mode: 0o755 });
chmodSync(tmp, 0o755);
renameSync(tmp, bundle);
// The single executable's loader (build/sea-main.cjs) beside the bundle, as training runs it.
const loader = path.join(outdir, 'loopfs-main.cjs');
copyFileSync('build/sea-main.cjs', loader);
// Trained once for each bundle, loader and node (and whether this build could reach the daemon's paths).
const caches = path.join(outdir, '.code-cache');
const stampFile = path.join(caches, 'stamp');
const stamp = createHash('sha256').update(readFileSync(bundle)).update(readFileSync(loader)).update(readFileSync('build/train.mjs'))
  .update(`${process.version}\0${process.getuid?.() === 0 && existsSync('/dev/fuse')}`).digest('hex');
let trained = 'code cache unchanged';
if (!existsSync(stampFile) || readFileSync(stampFile, 'utf8') !== stamp) {
  const r = trainCodeCache(loader, caches);
  writeFileSync(stampFile, stamp);
  trained = `code cache trained for ${r.keys.join(', ') || 'nothing'} in ${(r.ms / 1000).toFixed(1)} s`;
}
const sea = buildSea(bundle, path.join(outdir, 'loopfs'), caches);
const mb = (statSync(sea.out).size / 2 ** 20).toFixed(0);
console.log(`built ${bundle} and ${path.join(outdir, 'loopfs')} (${mb} MB${sea.cached ? ', unchanged' : ''}; ${trained}) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
