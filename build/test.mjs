// Runs the uvu suites: bundles each test/**/*.test.ts with esbuild (the
// tests are TypeScript, like the code), then runs them one file at a time so
// an e2e suite's mounts never overlap another's. Prints a closing
// "N passed, N failed, N skipped" line and exits non-zero on any failure.
import * as esbuild from 'esbuild';
import { spawnSync } from 'node:child_process';
import { readdirSync, rmSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ioThreadDefine } from './io-thread.mjs';

const args = process.argv.slice(2);
const filter = args.find((a) => !a.startsWith('-'));
const dirs = ['test/unit', 'test/e2e'];
const files = dirs.flatMap((d) => readdirSync(d).filter((f) => f.endsWith('.test.ts')).map((f) => join(d, f)))
  .filter((f) => !filter || f.includes(filter));

// One build directory per run, so two runs (a developer's and a helper's) never collide.
const outdir = `.build/test-${process.pid}`;
mkdirSync(outdir, { recursive: true });
process.on('exit', () => rmSync(outdir, { recursive: true, force: true }));
await esbuild.build({
  entryPoints: files,
  // Tests that start a FUSE session directly get the same thread program as the binary.
  define: await ioThreadDefine(),
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  outdir,
  outbase: 'test',
  outExtension: { '.js': '.cjs' },
  external: ['koffi', 'uvu', 'uvu/*'],
  logLevel: 'warning',
});

let passed = 0, failed = 0, skipped = 0;
const failedFiles = [];
for (const f of files) {
  const out = join(outdir, f.replace(/^test\//, '').replace(/\.ts$/, '.cjs'));
  console.log(`\n# ${f}`);
  const r = spawnSync(process.execPath, [out], { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', env: { ...process.env } });
  process.stdout.write(r.stdout);
  const num = (label) => Number((r.stdout.match(new RegExp(`${label}:\\s+(\\d+)`)) ?? [])[1] ?? 0);
  // uvu counts skipped tests outside Total: failed = Total - Passed.
  const total = num('Total'), p = num('Passed'), s = num('Skipped');
  passed += p; skipped += s;
  const f_ = r.status === 0 ? total - p : Math.max(1, total - p);
  failed += f_;
  if (f_ > 0 || r.status !== 0) failedFiles.push(f);
}
if (failedFiles.length) console.log(`\nfailed files: ${failedFiles.join(', ')}`);
console.log(`\n${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed > 0 ? 1 : 0);
