// Attaches N devices to one backing file through an instance's control
// socket, from one process (the client code `losetup -f` runs, without a
// process start per device). Bundled and run by bench/run.mjs:
//   attach.cjs MOUNTPOINT FILE N     prints {"seconds": s}
import { openInstance } from '../src/core/instance';
import { resolveSelector } from '../src/core/rundir';

async function main(): Promise<void> {
  const [mountpoint, file, n] = [process.argv[2]!, process.argv[3]!, Number(process.argv[4])];
  const client = await openInstance(resolveSelector({ instance: mountpoint }));
  const t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await client.attach({ file });
  console.log(JSON.stringify({ seconds: Number(process.hrtime.bigint() - t) / 1e9 }));
}

void main();
