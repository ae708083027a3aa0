import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { sandboxSuite } from '../helpers/e2e';
import { Sandbox } from '../helpers/cli';
import { attach, q, randomFile, releaseKernelState, sha, shOk } from '../helpers/disk';

// SPEC §3 (direct I/O, partitions): the engine under concurrent requests of
// every size and alignment, through the kernel, keeps every byte where it
// belongs, with O_DIRECT on (aligned requests direct, others bounced or
// buffered) as with it off.
let sb: Sandbox;
const test = sandboxSuite('engine: concurrent I/O through the instance filesystem', 'eio', (s) => (sb = s), releaseKernelState);

function bash(cmd: string): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn('bash', ['-c', cmd], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr.on('data', (d: Buffer) => (stderr += d));
    c.on('close', (status) => resolve({ status, stderr }));
  });
}

/** How many of the daemon's descriptors on `file` are open O_DIRECT (fdinfo flags, octal). */
function directFds(file: string): number {
  const pid = sb.daemons()[0]!;
  let n = 0;
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) !== file) continue;
      const flags = parseInt(/flags:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))![1]!, 8);
      if (flags & fs.constants.O_DIRECT) n++;
    } catch {
      /* closed meanwhile */
    }
  }
  return n;
}

for (const dio of [true, false]) {
  test(`${dio ? 'direct I/O' : 'buffered'}: concurrent writers and readers on two partitions, odd block sizes included, each see exactly their bytes`, async () => {
    const img = randomFile(path.join(sb.root, 'e.img'), 24 << 20);
    shOk(`sfdisk -q ${q(img)}`, { input: 'label: gpt\n,10M,L\n,10M,L\n' });
    const parts = (JSON.parse(shOk(`sfdisk -J ${q(img)}`)) as { partitiontable: { partitions: { start: number; size: number }[] } }).partitiontable.partitions;
    const dev = attach(sb, img, ['-P', ...(dio ? ['--direct-io=on'] : [])]);
    assert.is(sb.ok(['losetup', '-n', '-O', 'DIO', dev]), dio ? '1' : '0');
    const outside = [sha(img, 0, parts[0]!.start * 512), sha(img, (parts[1]!.start + parts[1]!.size) * 512)];

    // Four writers per partition, each on its own quarter, with its own block size.
    const quarter = 2 << 20;
    const jobs: { part: number; at: number; src: string; bs: number }[] = [];
    for (const part of [1, 2]) {
      for (let i = 0; i < 4; i++) {
        jobs.push({ part, at: i * quarter, src: randomFile(path.join(sb.root, `src${part}-${i}`), quarter), bs: [4096, 1 << 20, 4096 * 3 - 1000, 512][i]! });
      }
    }
    const w = await Promise.all(jobs.map((j) =>
      bash(`dd if=${q(j.src)} of=${q(`${dev}p${j.part}`)} bs=${j.bs} seek=${j.at} oflag=seek_bytes conv=notrunc,fsync status=none`)));
    for (const r of w) assert.is(r.status, 0, r.stderr);
    for (const j of jobs) {
      assert.is(sha(img, parts[j.part - 1]!.start * 512 + j.at, quarter), sha(j.src), `p${j.part} at ${j.at} (bs=${j.bs}) in the file`);
    }
    assert.equal([sha(img, 0, parts[0]!.start * 512), sha(img, (parts[1]!.start + parts[1]!.size) * 512)], outside, 'nothing outside the partitions changed');
    // Concurrent readers, again with odd sizes, through the whole device and through the partitions.
    const r = await Promise.all(jobs.map((j, i) => {
      const viaWhole = i % 2 === 0;
      const base = viaWhole ? parts[j.part - 1]!.start * 512 + j.at : j.at;
      return bash(`cmp <(dd if=${q(viaWhole ? dev : `${dev}p${j.part}`)} bs=${j.bs + 512} skip=${base} count=${quarter} iflag=skip_bytes,count_bytes status=none) ${q(j.src)}`);
    }));
    for (const x of r) assert.is(x.status, 0, x.stderr || 'the bytes read differ');
    assert.is(directFds(img) > 0, dio, `the daemon ${dio ? 'has' : 'has no'} O_DIRECT descriptor on the file`);
    assert.is(fs.statSync(img).size, 24 << 20);
  });
}

test.run();
