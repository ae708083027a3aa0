/**
 * koffi on an I/O thread (splice.ts, uring.ts), from where the main thread
 * says it is (sys/ffi.ts koffiPath): its package, loaded with require, or in
 * the single executable the unnamed koffi.node the process keeps open,
 * /proc/self/fd/N, loaded with process.dlopen. Once per thread.
 */
let loaded: typeof import('koffi') | undefined;

export function threadKoffi(path: string): typeof import('koffi') {
  if (loaded) return loaded;
  if (path.startsWith('/proc/self/fd/')) {
    const m = { exports: {} };
    process.dlopen(m, path);
    loaded = m.exports as typeof import('koffi');
  } else {
    loaded = require(path) as typeof import('koffi');
  }
  return loaded;
}
