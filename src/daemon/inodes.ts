import type { NodeId } from '../fuse/types';

/**
 * Inode numbers of the instance filesystem (SPEC §2): `/` is FUSE_ROOT_ID (1),
 * `loop-control` 2, `loopN` N+3, `loopNpM` a block of its own above 2^40.
 * Its own module so that the filesystem and the Instance (which invalidates
 * entries) both use it without importing each other.
 */

export const CONTROL_INO = 2;
const PART_BASE = 2 ** 40;
const PART_SPAN = 4096;

export function deviceIno(index: number): NodeId {
  return index + 3;
}

export function partitionIno(index: number, part: number): NodeId {
  return PART_BASE + index * PART_SPAN + part;
}

/** The device index (and partition number, for a partition's inode) an inode number names. */
export function inoTarget(ino: NodeId): { index: number; part?: number } {
  if (ino < PART_BASE) return { index: ino - 3 };
  const rel = ino - PART_BASE;
  return { index: Math.floor(rel / PART_SPAN), part: rel % PART_SPAN };
}
