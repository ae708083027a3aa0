// The daemon's side of LOOP_CTL_GET_FREE, timed in process: the same
// Instance and DeviceTable code the daemon runs, with N devices, without the
// FUSE round trip. Bundled and run by bench/run.mjs; prints one JSON line.
import { Instance } from '../src/daemon/instance';
import type { Binding } from '../src/daemon/devices';
import type { KernelNotifier } from '../src/fuse/types';

/** No FUSE session here: nothing to tell a kernel. */
const noKernel: KernelNotifier = { fd: -1, invalidateNode: async () => {}, invalidateEntry: async () => {}, deleteEntry: async () => {}, takeWritten: () => false, unshare: () => {} };
const n = Number(process.argv[2] ?? 10_000);
const inst = new Instance('bench', '/nonexistent', { uid: 0, gid: 0 }, 1 << 20, noKernel);
for (let i = 0; i < n; i++) inst.addDevice(i);

function perCall(fn: () => unknown): number {
  for (let i = 0; i < 100; i++) fn();
  const samples: number[] = [];
  for (let b = 0; b < 15; b++) {
    const calls = 200;
    const t = process.hrtime.bigint();
    for (let i = 0; i < calls; i++) fn();
    samples.push(Number(process.hrtime.bigint() - t) / calls / 1e3);
  }
  samples.sort((a, b) => a - b);
  return samples[samples.length >> 1]!;
}

// Every device unbound: the answer is loop0.
const unbound = perCall(() => inst.getFree());
// Every device bound but the last: the answer is the highest index, the worst case for a scan.
const fake = (): Binding => ({ device: {} as Binding['device'], autoclear: false, partscan: false, partitions: [], windows: new Map() });
for (let i = 0; i < n - 1; i++) inst.table.bind(inst.table.get(i)!, fake());
const last = inst.getFree();
const worst = perCall(() => inst.getFree());
console.log(JSON.stringify({ devices: n, unboundUs: unbound, worstUs: worst, worstIndex: last }));
