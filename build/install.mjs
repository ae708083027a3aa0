// Installs (or uninstalls) loopfs under a prefix, the way `make install`
// would: the single executable, the man pages and the shell completions.
//
//   PREFIX=/usr/local npm run install-local      (PREFIX defaults to /usr/local)
//   DESTDIR=/tmp/stage PREFIX=/usr npm run install-local
//   npm run uninstall-local                      (removes exactly those files)
//
// One line per file on stdout. Exits 1, touching nothing, when the single
// executable has not been built.
import { chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const mode = process.argv[2] ?? 'install';
if (mode !== 'install' && mode !== 'uninstall') {
  console.error(`usage: node build/install.mjs [install|uninstall]  (got '${mode}')`);
  process.exit(2);
}

const prefix = resolve(process.env.PREFIX || '/usr/local');
const destdir = process.env.DESTDIR ? resolve(process.env.DESTDIR) : '';
// DESTDIR is prepended as a string, as make's $(DESTDIR)$(PREFIX) is.
const target = (rel) => `${destdir}${join(prefix, rel)}`;

/** [source in the repo, destination under PREFIX, mode] */
const files = [
  ['dist/loopfs', 'bin/loopfs', 0o755],
  ...readdirSync(join(REPO, 'man'))
    .filter((f) => /\.8$/.test(f))
    .sort()
    .map((f) => [`man/${f}`, `share/man/man8/${f}`, 0o644]),
  ['completions/loopfs.bash', 'share/bash-completion/completions/loopfs', 0o644],
  ['completions/_loopfs', 'share/zsh/site-functions/_loopfs', 0o644],
  ['completions/loopfs.fish', 'share/fish/vendor_completions.d/loopfs.fish', 0o644],
];

if (mode === 'install') {
  const bin = join(REPO, 'dist/loopfs');
  if (!existsSync(bin) || !statSync(bin).isFile()) {
    console.error('install: dist/loopfs (the single executable) is missing: run `npm run build` first, then `npm run install-local` again.');
    process.exit(1);
  }
  for (const [src, rel, perm] of files) {
    const to = target(rel);
    mkdirSync(dirname(to), { recursive: true, mode: 0o755 });
    // Copy beside the target, then rename over it: replacing a running binary
    // never fails with ETXTBSY, and nobody sees a half-written file.
    const tmp = join(dirname(to), `.${rel.split('/').pop()}.${process.pid}.tmp`);
    try {
      copyFileSync(join(REPO, src), tmp);
      chmodSync(tmp, perm);
      renameSync(tmp, to);
    } catch (e) {
      rmSync(tmp, { force: true });
      console.error(`install: ${to}: ${e.message}`);
      process.exit(1);
    }
    console.log(`installed ${to}`);
  }
} else {
  let status = 0;
  for (const [, rel] of files) {
    const to = target(rel);
    try {
      if (!lstatSync(to, { throwIfNoEntry: false })) {
        console.log(`not installed ${to}`);
        continue;
      }
      rmSync(to);
      console.log(`removed ${to}`);
    } catch (e) {
      console.error(`uninstall: ${to}: ${e.message}`);
      status = 1;
    }
  }
  process.exit(status);
}
