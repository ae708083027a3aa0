import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { possibleCpus, queuesOf } from '../../src/fuse/uring';

/**
 * The ring has one queue per possible CPU (the kernel's num_possible_cpus()),
 * and it takes requests only once every queue has an entry: the count read
 * from /sys/devices/system/cpu/possible must be the kernel's.
 */
const test = suite('fuse over io_uring: the queue count');

test('the kernel\'s cpu list formats: the count of CPUs in the mask', () => {
  assert.is(possibleCpus('0\n'), 1);
  assert.is(possibleCpus('0-1\n'), 2);
  assert.is(possibleCpus('0-3,8-11'), 8);
  assert.is(possibleCpus('0,2,5'), 3);
});

test('this machine: at least the CPUs online', () => {
  const n = possibleCpus(fs.readFileSync('/sys/devices/system/cpu/possible', 'utf8'));
  assert.ok(n >= os.cpus().length, `${n} possible, ${os.cpus().length} online`);
});

test('every queue gets entries from some thread, and every thread registers some, however threads and CPUs compare', () => {
  for (const spread of [true, false]) {
    for (let threads = 1; threads <= 8; threads++) {
      for (let queues = 1; queues <= 8; queues++) {
        const lists = Array.from({ length: threads }, (_, t) => queuesOf(t, threads, queues, spread));
        const covered = new Set(lists.flat());
        assert.is(covered.size, queues, `${threads} threads, ${queues} queues, spread ${spread}`);
        assert.ok(lists.every((l) => l.length > 0 && l.every((q) => q >= 0 && q < queues)));
        // Spread: no two threads share a queue while there are at least as many queues as threads.
        if (spread && queues >= threads) assert.is(lists.flat().length, queues);
      }
    }
  }
});

test.run();
