import { suite, type Test } from 'uvu';
import { existsSync } from 'node:fs';

/**
 * A uvu suite for end-to-end tests. They need root and /dev/fuse; where those
 * are missing every test is reported as skipped with the reason, and with
 * LOOPFS_REQUIRE_E2E=1 (as CI sets) the missing precondition is a failure.
 */
export function e2eSuite(name: string): Test {
  const s = suite(name);
  const missing = e2eMissing();
  if (!missing) return s;
  if (process.env.LOOPFS_REQUIRE_E2E === '1') {
    s('e2e preconditions', () => {
      throw new Error(`end-to-end tests required (LOOPFS_REQUIRE_E2E=1) but ${missing}`);
    });
    const noop = (() => {}) as unknown as Test;
    return Object.assign(noop, { run: s.run, before: s.before, after: s.after, skip: s.skip, only: s.only }) as Test;
  }
  console.log(`  skipping "${name}": ${missing}`);
  const skipper = ((n: string) => s.skip(n)) as unknown as Test;
  return Object.assign(skipper, { run: s.run, before: () => {}, after: () => {}, skip: s.skip, only: s.only }) as Test;
}

function e2eMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root';
  if (!existsSync('/dev/fuse')) return '/dev/fuse is missing';
  return undefined;
}
