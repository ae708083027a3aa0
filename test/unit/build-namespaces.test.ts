import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { repoRoot } from '../helpers/root';

/**
 * build/shared-namespaces.mjs on esbuild's real output: modules importing
 * the same built-in (a namespace import in our code, a default import as in
 * a dependency) share the one namespace made for the first, with the same
 * properties and `default` as esbuild's own; the bundle as esbuild made it
 * (the control) makes one per import.
 */
const test = suite('build: shared namespaces of built-in modules');


const ROOT = repoRoot();
let tmp = '';

test.before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-ns-'));
  fs.writeFileSync(path.join(tmp, 'a.ts'), "import * as fs from 'node:fs';\nexport const a = fs;\n");
  fs.writeFileSync(path.join(tmp, 'b.ts'), "import * as fs from 'node:fs';\nimport * as p from 'node:path';\nexport const b = fs;\nexport const pb = p;\n");
  fs.writeFileSync(path.join(tmp, 'dep.mjs'), "import fsd from 'node:fs';\nimport * as p from 'node:path';\nexport const d = fsd;\nexport const pd = p;\n");
  fs.writeFileSync(path.join(tmp, 'main.ts'), [
    "import { a } from './a';",
    "import { b, pb } from './b';",
    "import { d, pd } from './dep.mjs';",
    'declare const require: (m: string) => any;',
    "const real = require('node:fs');",
    'const keys = Object.keys(real).filter((k) => !(k in a));',
    'console.log(JSON.stringify({ same: a === b && pb === pd, def: (a as any).default === real, d: d === real,',
    '  fn: a.readFileSync === real.readFileSync && pb.join === require("node:path").join, missing: keys,',
    '  read: a.readFileSync(__filename, "utf8").includes("readFileSync") }));',
  ].join('\n'));
  const script = [
    `import * as esbuild from ${JSON.stringify(require.resolve('esbuild', { paths: [ROOT] }))};`,
    `import { shareNamespaces } from ${JSON.stringify(path.join(ROOT, 'build/shared-namespaces.mjs'))};`,
    'import { writeFileSync } from "node:fs";',
    `const r = await esbuild.build({ entryPoints: [${JSON.stringify(path.join(tmp, 'main.ts'))}], bundle: true, platform: 'node', target: 'node20', format: 'cjs', write: false, logLevel: 'warning' });`,
    `writeFileSync(${JSON.stringify(path.join(tmp, 'plain.cjs'))}, r.outputFiles[0].text);`,
    `writeFileSync(${JSON.stringify(path.join(tmp, 'shared.cjs'))}, shareNamespaces(r.outputFiles[0].text));`,
  ].join('\n');
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
});

test.after(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

function run(file: string): { same: boolean; def: boolean; d: boolean; fn: boolean; missing: string[]; read: boolean } {
  const r = spawnSync(process.execPath, [path.join(tmp, file)], { encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

test("esbuild's own bundle makes a namespace per import (the control)", () => {
  const plain = fs.readFileSync(path.join(tmp, 'plain.cjs'), 'utf8');
  assert.ok(plain.includes('__toESM(require("node:fs"), 1)'), 'esbuild wraps the built-in in __toESM');
  assert.not.ok(plain.includes('__toESMShared'));
  assert.equal(run('plain.cjs'), { same: false, def: true, d: true, fn: true, missing: [], read: true });
});

test('after shareNamespaces every importer of a built-in gets the one namespace, with every property and `default`', () => {
  const shared = fs.readFileSync(path.join(tmp, 'shared.cjs'), 'utf8');
  assert.is(shared.split('var __toESMShared = ').length, 2, 'one shared table');
  assert.equal(run('shared.cjs'), { same: true, def: true, d: true, fn: true, missing: [], read: true });
});

test('a text without __toESM is left as it is; one whose __toESM it does not know fails the build', async () => {
  const { shareNamespaces } = (await import(path.join(ROOT, 'build/shared-namespaces.mjs'))) as { shareNamespaces(t: string): string };
  assert.is(shareNamespaces('"use strict";\nconsole.log(1);\n'), '"use strict";\nconsole.log(1);\n');
  assert.throws(() => shareNamespaces('"use strict";\nvar __toESM = (m) => m;\nvar fs = __toESM(require("node:fs"));\n'), /__toESM has a shape/);
});

test.run();
