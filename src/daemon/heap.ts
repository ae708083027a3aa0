import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { mallocTrim } from '../sys/libc';

/**
 * Gives memory back once a burst of device-table work is over. Attaching a
 * thousand devices promotes the requests' short-lived objects into V8's old
 * generation, which grows without ever reaching a limit that would start a
 * full collection: no full collection, no memory reducer, so the garbage
 * and the pages holding it stay for the daemon's life. Here, QUIET_MS after
 * the last change, full collections (the first compacting), malloc_trim(3)
 * for what the C heap freed, and AGAIN_MS later the same once more: V8
 * keeps the pages a collection emptied, and the young generation's, until
 * a later one. Cheap for a daemon's small heap (a few ms), and only after
 * work that changed the table. Measured by `npm run bench -- --only memory`.
 */
const QUIET_MS = 2000;
const AGAIN_MS = 5000;

let gc: (() => void) | undefined;
let timer: NodeJS.Timeout | undefined;

function collect(second = false): void {
  if (!second) timer = undefined;
  if (!gc) {
    v8.setFlagsFromString('--expose-gc');
    gc = vm.runInNewContext('gc') as () => void;
  }
  // Compaction moves the survivors off half-empty pages, which can then be freed.
  v8.setFlagsFromString('--compact-on-every-full-gc');
  try {
    gc();
  } finally {
    v8.setFlagsFromString('--no-compact-on-every-full-gc');
  }
  // The pages compaction emptied wait in V8's pool: the next full collection unmaps them.
  gc();
  gc();
  if (!second) setTimeout(() => collect(true), AGAIN_MS).unref();
  try {
    mallocTrim();
  } catch {
    /* no malloc_trim (not glibc): the C heap keeps its free pages */
  }
}

/** Something changed: collect once things have been quiet for a while. */
export function collectWhenQuiet(): void {
  if (timer) timer.refresh();
  else timer = setTimeout(() => collect(), QUIET_MS).unref();
}
