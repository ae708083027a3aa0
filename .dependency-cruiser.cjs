// Import rules of src/ (issue 13; docs/ARCHITECTURE.md "Layers"), checked by
// `npm run depcheck`, part of `npm test`. Floors, bottom up:
//   base → sys → fuse | engine (siblings, unaware of each other) → daemon | core → commands → main.ts
// An import never runs up a floor, and no two files import each other.
// src/version.ts is a leaf like base/.
const ours = '^src/';
const upward = (name, comment, from, to) => ({ name, comment, severity: 'error', from: { path: from }, to: { path: to } });

module.exports = {
  forbidden: [
    { name: 'no-circular', comment: 'No import circles: the files on a circle cannot be read, tested or replaced alone.',
      severity: 'error', from: { path: ours }, to: { circular: true } },
    { name: 'not-to-unresolvable', comment: 'An import that cannot be resolved escapes every rule here.',
      severity: 'error', from: { path: ours }, to: { couldNotResolve: true } },
    { name: 'base-is-a-leaf', comment: 'base/ (and version.ts) import nothing of ours.',
      severity: 'error', from: { path: '^src/(base/|version\\.ts$)' }, to: { path: ours, pathNot: '^src/base/' } },
    upward('sys-above', 'sys/ imports only base/.', '^src/sys/', '^src/(fuse|engine|daemon|core|commands)/|^src/main\\.ts$'),
    upward('fuse-not-engine', 'fuse/ knows nothing of loop devices: not engine/, nor anything above.', '^src/fuse/', '^src/(engine|daemon|core|commands)/|^src/main\\.ts$'),
    upward('engine-not-fuse', 'engine/ knows nothing of FUSE or the CLI: not fuse/, nor anything above.', '^src/engine/', '^src/(fuse|daemon|core|commands)/|^src/main\\.ts$'),
    upward('daemon-core-not-commands', 'daemon/ and core/ never import the CLI (commands/, main.ts).', '^src/(daemon|core)/', '^src/commands/|^src/main\\.ts$'),
    upward('not-main', 'main.ts is the top: nothing imports it.', ours, '^src/main\\.ts$'),
  ],
  options: {
    // TypeScript 7 has no JavaScript API for dependency-cruiser to parse with; swc parses the .ts files.
    parser: 'swc',
    // `import type` counts: a type-only import up a floor is still a dependency up a floor.
    tsPreCompilationDeps: true,
    doNotFollow: { path: 'node_modules' },
    exclude: { path: 'node_modules' },
    // Our imports leave the extension off (moduleResolution "Bundler").
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default'],
      extensions: ['.ts', '.js', '.mjs', '.cjs', '.json'],
    },
  },
};
