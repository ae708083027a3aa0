import { ATTR_SIZE, ENTRY_OUT_SIZE, IN_HEADER_SIZE, OUT_HEADER_SIZE, DIRENT_BASE } from './kernel';
import type { Attr, DirEntry, Entry, StatfsResult } from './types';

/** Encoding and decoding of FUSE wire structs (little-endian, x86_64 layout). */

export interface InHeader {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
}

export function decodeInHeader(b: Buffer): InHeader {
  return {
    len: b.readUInt32LE(0),
    opcode: b.readUInt32LE(4),
    unique: b.readBigUInt64LE(8),
    nodeid: Number(b.readBigUInt64LE(16)),
    uid: b.readUInt32LE(24),
    gid: b.readUInt32LE(28),
    pid: b.readUInt32LE(32),
  };
}

/** A cursor over a request body. */
export class Body {
  constructor(readonly buf: Buffer, public pos = IN_HEADER_SIZE) {}
  u32(at: number): number {
    return this.buf.readUInt32LE(this.pos + at);
  }
  u64(at: number): number {
    return Number(this.buf.readBigUInt64LE(this.pos + at));
  }
  big64(at: number): bigint {
    return this.buf.readBigUInt64LE(this.pos + at);
  }
  /** NUL-terminated strings following a fixed part of `skip` bytes. */
  strings(skip: number, count: number): string[] {
    const out: string[] = [];
    let p = this.pos + skip;
    for (let i = 0; i < count; i++) {
      const end = this.buf.indexOf(0, p);
      const stop = end < 0 ? this.buf.length : end;
      out.push(this.buf.toString('utf8', p, stop));
      p = stop + 1;
    }
    return out;
  }
  bytes(at: number, len: number): Buffer {
    return this.buf.subarray(this.pos + at, this.pos + at + len);
  }
}

export function writeOutHeader(b: Buffer, len: number, error: number, unique: bigint): void {
  b.writeUInt32LE(len, 0);
  b.writeInt32LE(error, 4);
  b.writeBigUInt64LE(unique, 8);
}

function secs(ms: number | undefined): [bigint, number] {
  const t = ms ?? 0;
  const s = Math.floor(t / 1000);
  return [BigInt(s), Math.round((t - s * 1000) * 1e6)];
}

export function writeAttr(b: Buffer, at: number, a: Attr): void {
  b.fill(0, at, at + ATTR_SIZE);
  b.writeBigUInt64LE(BigInt(a.ino), at);
  b.writeBigUInt64LE(BigInt(a.size), at + 8);
  b.writeBigUInt64LE(BigInt(a.blocks ?? Math.ceil(a.size / 512)), at + 16);
  const [as, ans] = secs(a.atimeMs);
  const [ms, mns] = secs(a.mtimeMs);
  const [cs, cns] = secs(a.ctimeMs);
  b.writeBigUInt64LE(as, at + 24);
  b.writeBigUInt64LE(ms, at + 32);
  b.writeBigUInt64LE(cs, at + 40);
  b.writeUInt32LE(ans, at + 48);
  b.writeUInt32LE(mns, at + 52);
  b.writeUInt32LE(cns, at + 56);
  b.writeUInt32LE(a.mode, at + 60);
  b.writeUInt32LE(a.nlink, at + 64);
  b.writeUInt32LE(a.uid, at + 68);
  b.writeUInt32LE(a.gid, at + 72);
  b.writeUInt32LE(0, at + 76);
  b.writeUInt32LE(a.blksize ?? 4096, at + 80);
}

function ttl(b: Buffer, at: number, atNsec: number, seconds: number): void {
  const s = Math.floor(seconds);
  b.writeBigUInt64LE(BigInt(s), at);
  b.writeUInt32LE(Math.round((seconds - s) * 1e9), atNsec);
}

export function writeEntryOut(b: Buffer, at: number, e: Entry): void {
  b.writeBigUInt64LE(BigInt(e.attr.ino), at);
  b.writeBigUInt64LE(0n, at + 8);
  ttl(b, at + 16, at + 32, e.entryTtl ?? 1);
  ttl(b, at + 24, at + 36, e.attrTtl ?? 1);
  writeAttr(b, at + 40, e.attr);
}

export function writeAttrOut(b: Buffer, at: number, a: Attr, attrTtl: number): void {
  ttl(b, at, at + 8, attrTtl);
  b.writeUInt32LE(0, at + 12);
  writeAttr(b, at + 16, a);
}

export function writeStatfs(b: Buffer, at: number, s: StatfsResult): void {
  b.fill(0, at, at + 80);
  b.writeBigUInt64LE(BigInt(s.blocks), at);
  b.writeBigUInt64LE(BigInt(s.bfree), at + 8);
  b.writeBigUInt64LE(BigInt(s.bavail), at + 16);
  b.writeBigUInt64LE(BigInt(s.files), at + 24);
  b.writeBigUInt64LE(BigInt(s.ffree), at + 32);
  b.writeUInt32LE(s.bsize, at + 40);
  b.writeUInt32LE(s.namelen, at + 44);
  b.writeUInt32LE(s.bsize, at + 48);
}

const DT_DIR = 4;
const DT_REG = 8;

function direntType(mode: number): number {
  return (mode & 0o170000) === 0o040000 ? DT_DIR : DT_REG;
}

/**
 * Packs directory entries starting at index `from` (the kernel's offset) into
 * at most `max` bytes. With `plus`, each record is a fuse_direntplus whose
 * entry_out comes from `entryOf`. Returns the bytes written.
 */
export function packDirents(b: Buffer, at: number, max: number, entries: DirEntry[], from: number, plus?: (d: DirEntry) => Entry | undefined): number {
  let p = at;
  for (let i = from; i < entries.length; i++) {
    const d = entries[i]!;
    const nameLen = Buffer.byteLength(d.name);
    const head = (plus ? ENTRY_OUT_SIZE : 0) + DIRENT_BASE;
    const rec = (head + nameLen + 7) & ~7;
    if (p + rec - at > max) break;
    b.fill(0, p, p + rec);
    if (plus) {
      const e = plus(d);
      if (e) writeEntryOut(b, p, e);
      p += ENTRY_OUT_SIZE;
    }
    b.writeBigUInt64LE(BigInt(d.ino), p);
    b.writeBigUInt64LE(BigInt(i + 1), p + 8);
    b.writeUInt32LE(nameLen, p + 16);
    b.writeUInt32LE(direntType(d.mode), p + 20);
    b.write(d.name, p + DIRENT_BASE, 'utf8');
    p += rec - (plus ? ENTRY_OUT_SIZE : 0);
  }
  return p - at;
}

export { IN_HEADER_SIZE, OUT_HEADER_SIZE };

