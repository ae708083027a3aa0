// esbuild turns each `import * as fs from 'node:fs'` (and each default import
// of a built-in in a dependency) into its own `__toESM(require('node:fs'), 1)`:
// a fresh namespace object with one getter per property of the module, made
// by __copyProps's loop. Some fifty of those at start-up made __copyProps hot
// enough for V8 to compile it with TurboFan in every daemon, and the
// optimizing compiler's code then stayed resident: ~3 MB more of the binary's
// pages in an idle instance's RSS (issue 14). Here every importer of the same
// module gets the one namespace made for the first: the same getters and the
// same `default`, made once per module. (A module marked __esModule imported
// outside node mode gets no `default`: its namespaces are made each time, as before.)

const DEFINITION = 'var __toESM = (mod, isNodeMode, target) => (';

/** The bundle's text with __toESM made once per module (unchanged if it has no __toESM). */
export function shareNamespaces(text) {
  const at = text.indexOf(`\n${DEFINITION}`);
  if (at < 0) {
    if (/\b__toESM\(/.test(text)) throw new Error('build: esbuild\'s __toESM has a shape this build does not know (build/shared-namespaces.mjs)');
    return text;
  }
  const shared = [
    'var __toESMShared = /* @__PURE__ */ new WeakMap();',
    'var __toESM = (mod, isNodeMode) => {',
    '  if (mod == null || typeof mod !== "object" && typeof mod !== "function" || !isNodeMode && mod.__esModule) return __toESMEach(mod, isNodeMode);',
    '  let ns = __toESMShared.get(mod);',
    '  if (!ns) __toESMShared.set(mod, ns = __toESMEach(mod, isNodeMode));',
    '  return ns;',
    '};',
  ].join('\n');
  return `${text.slice(0, at + 1)}${shared}\n${text.slice(at + 1).replace(DEFINITION, 'var __toESMEach = (mod, isNodeMode, target) => (')}`;
}
