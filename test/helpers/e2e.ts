import { suite, type Test } from 'uvu';
import { existsSync } from 'node:fs';
import { Sandbox } from './cli';

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
  const noHook = Object.assign(() => {}, { each: () => {} });
  return Object.assign(skipper, { run: s.run, before: noHook, after: noHook, skip: s.skip, only: s.only }) as Test;
}

/**
 * How to register tests that need something besides what their suite needs
 * (a tool, a shell): while `missing` is undefined, as `test` does; where it
 * says what is absent, each test is reported as skipped with that reason,
 * and under LOOPFS_REQUIRE_E2E=1 (CI) it fails instead. Never a test that
 * returns early and so passes without running.
 */
export function requiring(test: Test, missing: string | undefined): (name: string, fn: () => void | Promise<void>) => void {
  if (!missing) return (name, fn) => test(name, fn);
  if (process.env.LOOPFS_REQUIRE_E2E === '1') {
    return (name) => test(name, () => {
      throw new Error(`required (LOOPFS_REQUIRE_E2E=1) but ${missing}`);
    });
  }
  return (name, fn) => {
    console.log(`  skipping "${name}": ${missing}`);
    test.skip(name, fn);
  };
}

/**
 * An e2e suite whose every test runs in a fresh Sandbox
 * (/tmp/loopfs-e2e-TAG-*): `use` gets it before each test (and may set
 * more up in it); after each test, however it ended, `release` undoes what
 * the sandbox's cleanup does not know of (kernel loop devices, say), then
 * the sandbox is cleaned up.
 */
export function sandboxSuite(name: string, tag: string, use: (sb: Sandbox) => void, release?: (sb: Sandbox) => void): Test {
  const test = e2eSuite(name);
  let sb: Sandbox | undefined;
  test.before.each(() => {
    sb = new Sandbox(tag);
    use(sb);
  });
  test.after.each(() => {
    const done = sb;
    sb = undefined;
    if (!done) return;
    try {
      release?.(done);
    } finally {
      done.cleanup();
    }
  });
  return test;
}

function e2eMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root';
  if (!existsSync('/dev/fuse')) return '/dev/fuse is missing';
  return undefined;
}
