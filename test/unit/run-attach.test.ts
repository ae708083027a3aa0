import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { parseAttach, runArgv } from '../../src/commands/run';
import { LoopfsError } from '../../src/base/errors';

// `loopfs run --attach IMG[,OPT…]`: how the argument is split and read (losetup's parser).

test('IMG is all up to the first ",-"; the rest are losetup words, split at every comma', async () => {
  assert.equal(await parseAttach('disk.img'), { file: 'disk.img' });
  assert.equal(await parseAttach('a,b.img'), { file: 'a,b.img' });
  assert.equal(await parseAttach('a,b.img,-P,-r'), { file: 'a,b.img', partscan: true, readOnly: true });
  assert.equal(await parseAttach('d.img,-o,1048576,--sizelimit=2M,-b4096'), { file: 'd.img', offset: 1048576, sizelimit: 2 * 2 ** 20, sectorSize: 4096 });
  // Clusters and abbreviations, as losetup's getopt_long takes them.
  assert.equal(await parseAttach('d.img,-rP,--direct-io=on,-L'), { file: 'd.img', readOnly: true, partscan: true, directIo: true, nooverlap: true });
  assert.equal(await parseAttach('d.img,--sizel=4096'), { file: 'd.img', sizelimit: 4096 });
  assert.equal(await parseAttach('d.img,--overlay'), { file: 'd.img', overlay: {} });
  assert.equal(await parseAttach('d.img,--overlay=j.delta'), { file: 'd.img', overlay: { delta: 'j.delta' } });
});

test('what is not a setup option of losetup -f is a usage error naming the argument', async () => {
  for (const [spec, text] of [
    ['d.img,-Q', /invalid option/],
    ['d.img,-o', /failed to parse offset/], // (-o takes the next word, as in losetup -f -o IMG)
    ['d.img,-a', /mutually exclusive/],
    ['d.img,-D', /mutually exclusive/],
    ['d.img,-j,x', /mutually exclusive/],
    ['d.img,-O,NAME', /not a setup option/],
    ['d.img,--raw', /not a setup option/],
    ['d.img,-h', /not a setup option/],
    ['d.img,--run-dir=/x', /not a setup option/],
    ['d.img,-P,more', /unexpected arguments/],
    ['d.img,--overlay=', /wants a file name/],
    ['', /no image given/],
    [',-r', /no image given/],
  ] as [string, RegExp][]) {
    let err: unknown;
    try {
      await parseAttach(spec);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof LoopfsError, `${spec}: ${String(err)}`);
    const e = err as LoopfsError;
    assert.ok(e.usage, spec);
    assert.is(e.what, `--attach ${spec}`);
    assert.match(e.reason, text, spec);
  }
});

test('--attach takes the next word: CMD starts after it', () => {
  assert.equal(runArgv(['run', '--attach', 'd.img', 'sh', '-c', 'x']), ['run', '--attach', 'd.img', '--', 'sh', '-c', 'x']);
});

test.run();
