'use strict';
// The single executable's main script: compiles the bundle (the asset
// `loopfs.cjs`) with the V8 code cache trained for this kind of process (the
// asset `cache/KEY`, made by build/train.mjs), then runs it as Node would run
// a CommonJS file. Node's own `useCodeCache` holds only the bundle's top
// level (what compiling it makes, before anything runs), so every function a
// command calls was compiled as it ran; a trained cache holds the functions
// that each kind of process (the CLI, a daemon, a sandbox's init) ran.
//
// Run by plain node (`node dist/loopfs-main.cjs`, what build/train.mjs does),
// it compiles dist/loopfs.cjs beside it instead. With LOOPFS_TRAIN_CACHE=DIR
// it loads DIR/KEY.bin if present and writes back, at exit, what this process
// compiled on top: training runs add up.
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');

let sea;
try {
  sea = require('node:sea');
  if (!sea.isSea()) sea = undefined;
} catch {
  sea = undefined;
}

/** What kind of process this is: the trained caches are one for each. */
function cacheKey(args) {
  const KEYS = ['__daemon', '__run-init', 'losetup', 'mount', 'run'];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--instance' || a === '--run-dir') i++;
    else if (!a.startsWith('-')) return KEYS.includes(a) ? a : 'cli';
  }
  return 'cli';
}

const args = process.argv.slice(2);
const key = cacheKey(args);
const bundle = sea ? process.execPath : path.join(__dirname, 'loopfs.cjs');
const text = sea ? Buffer.from(sea.getRawAsset('loopfs.cjs')).toString('utf8') : fs.readFileSync(bundle, 'utf8');
const train = sea ? undefined : process.env.LOOPFS_TRAIN_CACHE;
let cachedData;
try {
  if (sea) cachedData = Buffer.from(sea.getRawAsset(`cache/${key}`));
  else if (train) cachedData = fs.readFileSync(path.join(train, `${key}.bin`));
} catch {
  cachedData = undefined; // none for this kind: compiled as it runs
}
// A shebang line becomes a comment: the wrapper comes before it. (build/train.mjs checks with the same text.)
const source = `(function (exports, require, module, __filename, __dirname) {${text.startsWith('#!') ? `//${text.slice(2)}` : text}\n})`;
// Named as in stack traces, where its lines are the bundle's (a cache keeps the name it was trained with).
const script = new vm.Script(source, { filename: 'loopfs.cjs', cachedData });
if (process.env.LOOPFS_DEBUG === '1') {
  process.stderr.write(`loopfs: code cache ${key}: ${cachedData === undefined ? 'none' : script.cachedDataRejected ? 'rejected' : 'used'}\n`);
}
if (train) {
  process.on('exit', () => {
    // A cache carries the hash of V8's flags: what the daemon changes at run time goes back to
    // V8's defaults first (build/train.mjs checks that each cache is accepted by a fresh process).
    const v8 = require('node:v8');
    for (const f of ['--semi-space-growth-factor=2', '--no-expose-gc', '--no-compact-on-every-full-gc']) v8.setFlagsFromString(f);
    const out = path.join(train, `${key}.bin`);
    const tmp = `${out}.${process.pid}`;
    fs.writeFileSync(tmp, script.createCachedData());
    fs.renameSync(tmp, out);
  });
}
const mod = { exports: {}, filename: bundle, id: '.', loaded: false };
script.runInThisContext()(mod.exports, require, mod, bundle, path.dirname(bundle));
