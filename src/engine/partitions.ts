import { LoopfsError } from '../base/errors';
import type { PartitionInfo } from '../base/types';
import { crc32 } from './crc32';
import { Window, type BlockIO } from './window';

/**
 * Partition tables as Linux reads them (block/partitions/msdos.c, efi.c,
 * core.c), so loopNpM match what the kernel would publish for the same
 * image. One deliberate difference: a GPT whose primary header is bad is
 * read from the backup header at the last LBA (Linux needs the `gpt` boot
 * option for that; libblkid and sfdisk do it always).
 */

export interface PartitionTable {
  type: 'dos' | 'gpt' | null;
  partitions: PartitionInfo[];
  /** Why the table was (partly) ignored; absent when all was well or there was no table. */
  warning?: string;
}

/** A sub-window of a device: reads and writes never leave the partition. */
export class PartitionWindow extends Window implements BlockIO {
  readonly info: PartitionInfo;

  constructor(parent: BlockIO, info: PartitionInfo) {
    const { number, start, size } = info;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(size) || start < 0 || size < 0 || start + size > parent.size) {
      throw new LoopfsError('EINVAL', `partition ${number}`, `${size} bytes at ${start} do not fit in the device (${parent.size} bytes)`);
    }
    super(parent, start, size, parent.sectorSize, parent.readOnly, `partition ${number}`);
    this.info = { number, start, size };
  }
}

// DISK_MAX_PARTS: partitions are numbered 1..255.
const LIMIT = 256;
const MBR_SIG_OFF = 510;
const PT_OFF = 0x1be;
const EXTENDED = new Set([0x05, 0x0f, 0x85]);
const GPT_PROTECTIVE = 0xee;

/** Slots found by a parser, in 512-byte units as the kernel's sector_t (before the end-of-device check). */
type Slots = Map<number, { start: bigint; size: bigint }>;

export async function scanPartitions(io: BlockIO): Promise<PartitionTable> {
  const warnings: string[] = [];
  const mbr = await readAt(io, 0, 512);
  if (!mbr || mbr.readUInt16LE(MBR_SIG_OFF) !== 0xaa55) return { type: null, partitions: [] };

  let type: PartitionTable['type'] = null;
  let slots: Slots | undefined;
  if (protectiveEntry(mbr) >= 0) {
    slots = await readGpt(io, warnings);
    if (slots) type = 'gpt';
  } else if (hasEntryOfType(mbr, GPT_PROTECTIVE)) {
    warnings.push('the MBR has a GPT entry that does not start at LBA 1; not a valid protective MBR');
  } else {
    slots = await readDos(io, mbr, warnings);
    if (slots) type = 'dos';
  }
  const partitions = slots ? addPartitions(io, slots, warnings) : [];
  return warnings.length ? { type, partitions, warning: warnings.join('; ') } : { type, partitions };
}

/** block/partitions/core.c: empty slots skipped, slots past the end dropped, slots crossing it truncated. */
function addPartitions(io: BlockIO, slots: Slots, warnings: string[]): PartitionInfo[] {
  const capacity = BigInt(io.size) / 512n;
  const out: PartitionInfo[] = [];
  for (const [number, slot] of [...slots].sort((a, b) => a[0] - b[0])) {
    let { start, size } = slot;
    if (size === 0n) continue;
    if (start >= capacity) {
      warnings.push(`partition ${number} starts beyond the end of the device; ignored`);
      continue;
    }
    if (start + size > capacity) {
      warnings.push(`partition ${number} extends beyond the end of the device; truncated`);
      size = capacity - start;
    }
    out.push({ number, start: Number(start * 512n), size: Number(size * 512n) });
  }
  return out;
}

// ---- MBR (msdos.c) ----

function entry(sector: Buffer, i: number): { boot: number; type: number; start: number; count: number } {
  const o = PT_OFF + 16 * i;
  return { boot: sector[o]!, type: sector[o + 4]!, start: sector.readUInt32LE(o + 8), count: sector.readUInt32LE(o + 12) };
}

function hasEntryOfType(mbr: Buffer, type: number): boolean {
  for (let i = 0; i < 4; i++) if (entry(mbr, i).type === type) return true;
  return false;
}

/** efi.c is_pmbr_valid: an 0xEE entry starting at LBA 1 (a hybrid MBR counts too). */
function protectiveEntry(mbr: Buffer): number {
  for (let i = 0; i < 4; i++) {
    const e = entry(mbr, i);
    if (e.type === GPT_PROTECTIVE && e.start === 1) return i;
  }
  return -1;
}

async function readDos(io: BlockIO, mbr: Buffer, warnings: string[]): Promise<Slots | undefined> {
  // A boot indicator other than 0/0x80: a filesystem's boot sector (FAT, NTFS), not a table.
  for (let i = 0; i < 4; i++) {
    const b = entry(mbr, i).boot;
    if (b !== 0 && b !== 0x80) return undefined;
  }
  const ssz = BigInt(io.sectorSize / 512);
  const slots: Slots = new Map();
  const next = { n: 5 };
  for (let i = 0; i < 4; i++) {
    const e = entry(mbr, i);
    const start = BigInt(e.start) * ssz;
    const size = BigInt(e.count) * ssz;
    if (size === 0n) continue;
    if (EXTENDED.has(e.type)) {
      // Linux publishes the extended partition itself, but only its first
      // sector or two, "leaving room for LILO".
      slots.set(i + 1, { start, size: min(size, max(ssz, 2n)) });
      await readExtended(io, start, size, slots, next, warnings);
      continue;
    }
    slots.set(i + 1, { start, size });
  }
  return slots;
}

/** msdos.c parse_extended: the chain of EBRs, logical partitions numbered from 5. */
async function readExtended(io: BlockIO, first: bigint, firstSize: bigint, slots: Slots, next: { n: number }, warnings: string[]): Promise<void> {
  const ssz = BigInt(io.sectorSize / 512);
  let thisSector = first;
  let thisSize = firstSize;
  let loops = 0;
  for (;;) {
    if (++loops > 100) {
      warnings.push('the chain of extended partitions loops; stopped after 100 links');
      return;
    }
    if (next.n === LIMIT) return;
    const ebr = thisSector * 512n + 512n <= BigInt(io.size) ? await readAt(io, Number(thisSector * 512n), 512) : undefined;
    if (!ebr) {
      warnings.push(`an extended boot record at sector ${thisSector} lies beyond the end of the device`);
      return;
    }
    if (ebr.readUInt16LE(MBR_SIG_OFF) !== 0xaa55) return;
    for (let i = 0; i < 4; i++) {
      const e = entry(ebr, i);
      if (e.count === 0 || EXTENDED.has(e.type)) continue;
      const offs = BigInt(e.start) * ssz;
      const size = BigInt(e.count) * ssz;
      const at = thisSector + offs;
      // The 3rd and 4th entries sometimes hold garbage: only trust them inside the extended partition.
      if (i >= 2 && (offs + size > thisSize || at < first || at + size > first + firstSize)) continue;
      slots.set(next.n, { start: at, size });
      loops = 0;
      if (++next.n === LIMIT) return;
    }
    let link = -1;
    for (let i = 0; i < 4; i++) {
      const e = entry(ebr, i);
      if (e.count !== 0 && EXTENDED.has(e.type)) {
        link = i;
        break;
      }
    }
    if (link < 0) return;
    const e = entry(ebr, link);
    thisSector = first + BigInt(e.start) * ssz;
    thisSize = BigInt(e.count) * ssz;
  }
}

// ---- GPT (efi.c) ----

const GPT_SIGNATURE = 0x5452415020494645n; // "EFI PART"
const GPT_HEADER_MIN = 92;
const GPT_ENTRY_SIZE = 128;
// The kernel reads the entry array with one kmalloc: KMALLOC_MAX_SIZE.
const GPT_ENTRIES_MAX = 4 << 20;
const U64 = (1n << 64n) - 1n;

interface Gpt {
  alternate: bigint;
  entries: Buffer;
  count: number;
}

async function readGpt(io: BlockIO, warnings: string[]): Promise<Slots | undefined> {
  const lbs = io.sectorSize;
  const blocks = Math.floor(io.size / lbs);
  if (blocks < 2) {
    warnings.push('GPT: the device is too small to hold a GPT header');
    return undefined;
  }
  const lastLba = BigInt(blocks - 1);
  const primary = await readGptHeader(io, 1n, lastLba);
  let gpt: Gpt;
  if (typeof primary !== 'string') {
    gpt = primary;
    const alt = await readGptHeader(io, primary.alternate, lastLba);
    if (typeof alt === 'string') warnings.push(`GPT: the backup header is invalid (${alt}); using the primary`);
  } else {
    const backup = await readGptHeader(io, lastLba, lastLba);
    if (typeof backup === 'string') {
      warnings.push(`GPT: the primary header is invalid (${primary}) and so is the backup (${backup}); no partitions`);
      return undefined;
    }
    warnings.push(`GPT: the primary header is invalid (${primary}); using the backup`);
    gpt = backup;
  }
  const ssz = BigInt(lbs / 512);
  const slots: Slots = new Map();
  for (let i = 0; i < gpt.count && i < LIMIT - 1; i++) {
    const o = i * GPT_ENTRY_SIZE;
    const e = gpt.entries;
    if (e.readBigUInt64LE(o) === 0n && e.readBigUInt64LE(o + 8) === 0n) continue; // unused entry
    const first = e.readBigUInt64LE(o + 32);
    const last = e.readBigUInt64LE(o + 40);
    if (first > lastLba || last > lastLba) continue;
    // As the kernel's u64 arithmetic: last < first wraps, and core.c then truncates at the end.
    const size = (((last - first + 1n) & U64) * ssz) & U64;
    slots.set(i + 1, { start: first * ssz, size });
  }
  return slots;
}

/** efi.c is_gpt_valid: the header at `lba` and its entry array, or why they are not valid. */
async function readGptHeader(io: BlockIO, lba: bigint, lastLba: bigint): Promise<Gpt | string> {
  const lbs = io.sectorSize;
  if (lba > lastLba) return `header LBA ${lba} is beyond the end of the device`;
  const h = await readAt(io, Number(lba) * lbs, lbs);
  if (!h) return `cannot read LBA ${lba}`;
  if (h.readBigUInt64LE(0) !== GPT_SIGNATURE) return `no GPT signature at LBA ${lba}`;
  const headerSize = h.readUInt32LE(12);
  if (headerSize < GPT_HEADER_MIN || headerSize > lbs) return `header size ${headerSize} is out of range`;
  const crc = h.readUInt32LE(16);
  h.writeUInt32LE(0, 16);
  if (crc32(h, 0, headerSize) !== crc) return 'header CRC32 mismatch';
  if (h.readBigUInt64LE(24) !== lba) return `header says it is at LBA ${h.readBigUInt64LE(24)}, not ${lba}`;
  const firstUsable = h.readBigUInt64LE(40);
  const lastUsable = h.readBigUInt64LE(48);
  if (firstUsable > lastLba || lastUsable > lastLba || lastUsable < firstUsable) return 'usable LBA range is outside the device';
  if (h.readUInt32LE(84) !== GPT_ENTRY_SIZE) return `entry size ${h.readUInt32LE(84)} is not ${GPT_ENTRY_SIZE}`;
  const count = h.readUInt32LE(80);
  const bytes = count * GPT_ENTRY_SIZE;
  if (bytes > GPT_ENTRIES_MAX) return `${count} entries is too many`;
  const entriesLba = h.readBigUInt64LE(72);
  if (entriesLba > lastLba || entriesLba * BigInt(lbs) + BigInt(bytes) > BigInt(io.size)) return 'entry array is beyond the end of the device';
  const entries = await readAt(io, Number(entriesLba) * lbs, bytes);
  if (!entries) return 'cannot read the entry array';
  if (crc32(entries) !== h.readUInt32LE(88)) return 'entry array CRC32 mismatch';
  return { alternate: h.readBigUInt64LE(32), entries, count };
}

// ---- helpers ----

async function readAt(io: BlockIO, position: number, length: number): Promise<Buffer | undefined> {
  if (position + length > io.size) return undefined;
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = await io.read(done === 0 ? buf : buf.subarray(done), length - done, position + done);
    if (n === 0) return undefined;
    done += n;
  }
  return buf;
}

function min(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

function max(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}
