// Bundles src/main.ts into dist/loopfs.cjs (CommonJS: what a Node single
// executable runs). The single executable step is in build/sea.mjs.
import * as esbuild from 'esbuild';
import { chmodSync, mkdirSync } from 'node:fs';

mkdirSync('dist', { recursive: true });
await esbuild.build({
  entryPoints: ['src/main.ts'],
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  outfile: 'dist/loopfs.cjs',
  external: ['koffi'],
  banner: { js: '#!/usr/bin/env node' },
  logLevel: 'warning',
  sourcemap: false,
});
chmodSync('dist/loopfs.cjs', 0o755);
