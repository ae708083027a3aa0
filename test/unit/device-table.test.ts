import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DeviceTable, IndexSet, type Binding } from '../../src/daemon/devices';
import { MAX_INDEX } from '../../src/base/loopdev';
import type { LoopDevice } from '../../src/daemon/devices';

// LOOP_CTL_GET_FREE and LOOP_CTL_ADD (any number) answer from index sets, not
// by scanning: they must give exactly what a scan gives.
const test = suite('device table: get-free and add pick the lowest number');

const binding = (): Binding => ({ device: {} as Binding['device'], autoclear: false, partscan: false, partitions: [], windows: new Map() });

/** What a scan of the table answers (the behaviour before the index sets). */
function scanFree(t: DeviceTable, held: Set<number>): number | undefined {
  return t.all().find((d) => !d.bound && !held.has(d.index))?.index;
}

function scanUnused(t: DeviceTable): number {
  let i = 0;
  while (t.get(i) || t.byEntryName(`loop${i}`)) i++;
  return i;
}

test('IndexSet: lowest member across words and levels', () => {
  const s = new IndexSet();
  assert.is(s.first(), -1);
  for (const i of [MAX_INDEX, 70_000, 1025, 33, 31]) s.add(i);
  assert.is(s.first(), 31);
  s.delete(31);
  assert.is(s.first(), 33);
  s.delete(33);
  assert.is(s.first(), 1025);
  s.delete(1025);
  s.delete(70_000);
  assert.is(s.first(), MAX_INDEX);
  assert.ok(s.has(MAX_INDEX));
  s.delete(MAX_INDEX);
  assert.is(s.first(), -1);
  const full = new IndexSet(true);
  assert.is(full.first(), 0);
  for (let i = 0; i < 100; i++) full.delete(i);
  assert.is(full.first(), 100);
});

test('get-free skips bound and held devices and creates one when none is free', () => {
  const t = new DeviceTable(1 << 20);
  assert.is(t.getFree().index, 0); // created
  t.bind(t.get(0)!, binding());
  assert.is(t.getFree().index, 1); // created
  t.add(5);
  t.hold(t.get(1)!, true);
  assert.is(t.getFree().index, 5);
  t.hold(t.get(1)!, false);
  assert.is(t.getFree().index, 1);
  t.unbind(t.get(0)!);
  assert.is(t.getFree().index, 0);
});

test('add without a number takes the lowest not used by a device or a loopN entry name', () => {
  const t = new DeviceTable(1 << 20);
  t.add(0);
  t.add(2);
  t.rename('loop0', 'loop1'); // device 0 is named loop1: number 1 cannot be created
  assert.is(t.add().index, 3);
  t.rename('loop1', 'disk');
  assert.is(t.add().index, 1);
  t.remove(2);
  assert.is(t.add().index, 2);
});

test('random operations: the sets agree with a scan of the table', () => {
  let seed = 12345;
  const rnd = (n: number): number => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n;
  const t = new DeviceTable(1 << 20);
  const held = new Set<number>();
  const pick = (): LoopDevice | undefined => t.get(rnd(300));
  for (let step = 0; step < 20_000; step++) {
    const op = rnd(8);
    try {
      if (op === 0) t.add(rnd(300));
      else if (op === 1) t.add();
      else if (op === 2) {
        const d = pick();
        if (d && !held.has(d.index)) t.remove(d.index);
      } else if (op === 3) {
        const d = pick();
        if (d && !d.bound) t.bind(d, binding());
      } else if (op === 4) {
        const d = pick();
        if (d) t.unbind(d);
      } else if (op === 5) {
        const d = pick();
        if (d) {
          const on = !held.has(d.index);
          if (on) held.add(d.index);
          else held.delete(d.index);
          t.hold(d, on);
        }
      } else if (op === 6) {
        const d = pick();
        if (d) t.rename(d.name, rnd(2) ? `loop${rnd(300)}` : `x${rnd(50)}`);
      } else {
        const expect = scanFree(t, held);
        const before = scanUnused(t);
        const got = t.getFree();
        assert.is(got.index, expect ?? before, `step ${step}`);
      }
    } catch (e) {
      if (!/EEXIST|ENOENT|EBUSY|ENODEV/.test((e as { errno?: string }).errno ?? '')) throw e;
    }
    for (const i of [...held]) if (!t.get(i)) held.delete(i);
  }
});

test.run();
