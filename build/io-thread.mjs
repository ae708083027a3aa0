// The I/O thread program (src/daemon/io-thread.ts), bundled on its own: the
// threads that read /dev/fuse run it from text (a Worker with `eval`; the
// single executable has no file to point a Worker at). The main bundle (and
// every test bundle) gets that text as the constant LOOPFS_IO_THREAD, which
// src/daemon/io-thread-program.ts hands to the FUSE session.
import * as esbuild from 'esbuild';

export const IO_THREAD_ENTRY = 'src/daemon/io-thread.ts';

/** esbuild `define` carrying the bundled thread program. */
export async function ioThreadDefine() {
  const result = await esbuild.build({
    entryPoints: [IO_THREAD_ENTRY],
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    // Nothing native bundled: a thread that splices (src/fuse/splice.ts) loads koffi from the path it is
    // handed (workerData.koffi: the package, or the single executable's unnamed koffi.node).
    external: ['koffi'],
    logLevel: 'warning',
    sourcemap: false,
    write: false,
  });
  const text = result.outputFiles[0].text;
  if (/require\(["']koffi["']\)/.test(text)) throw new Error(`${IO_THREAD_ENTRY}: the thread program must not load koffi`);
  return { LOOPFS_IO_THREAD: JSON.stringify(text) };
}
