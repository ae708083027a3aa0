import * as fs from 'node:fs';
import * as path from 'node:path';

/** The repository's root: the nearest directory above the test bundle whose package.json names loopfs. */
export function repoRoot(): string {
  for (let d = __dirname; d !== path.dirname(d); d = path.dirname(d)) {
    const pkg = path.join(d, 'package.json');
    if (fs.existsSync(pkg) && (JSON.parse(fs.readFileSync(pkg, 'utf8')) as { name?: string }).name === 'loopfs') return d;
  }
  throw new Error('repository root not found');
}
