import { LoopfsError } from '../base/errors';

/** The bundled text of io-thread.ts, put here by the build (build/io-thread.mjs) as an esbuild `define`. */
declare const LOOPFS_IO_THREAD: string | undefined;

/** The program the FUSE session's threads run (SessionOptions.threadProgram). */
export function ioThreadProgram(): string {
  if (typeof LOOPFS_IO_THREAD !== 'string') {
    throw new LoopfsError('ENOEXEC', 'the I/O thread program', 'this loopfs was bundled without it (build it with build/build.mjs)');
  }
  return LOOPFS_IO_THREAD;
}
