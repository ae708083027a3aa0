import { LoopfsError } from '../base/errors';
import { devMajor, devMinor } from '../base/loopdev';

/**
 * The loop driver's ioctl ABI as the kernel defines it, and the block
 * ioctls a loop device answers: numbers and struct layouts (x86-64 / every
 * LP64 Linux), decoded into plain values and encoded back. No behaviour here.
 */

// include/uapi/linux/loop.h
export const LOOP_SET_FD = 0x4c00;
export const LOOP_CLR_FD = 0x4c01;
export const LOOP_SET_STATUS = 0x4c02;
export const LOOP_GET_STATUS = 0x4c03;
export const LOOP_SET_STATUS64 = 0x4c04;
export const LOOP_GET_STATUS64 = 0x4c05;
export const LOOP_CHANGE_FD = 0x4c06;
export const LOOP_SET_CAPACITY = 0x4c07;
export const LOOP_SET_DIRECT_IO = 0x4c08;
export const LOOP_SET_BLOCK_SIZE = 0x4c09;
export const LOOP_CONFIGURE = 0x4c0a;

export const LO_FLAGS_READ_ONLY = 1;
export const LO_FLAGS_AUTOCLEAR = 4;
export const LO_FLAGS_PARTSCAN = 8;
export const LO_FLAGS_DIRECT_IO = 16;
/** What LOOP_CONFIGURE accepts in lo_flags (anything else: EINVAL). */
export const LOOP_CONFIGURE_SETTABLE_FLAGS = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_PARTSCAN | LO_FLAGS_DIRECT_IO;

export const LO_NAME_SIZE = 64;
export const LO_KEY_SIZE = 32;
const LO_CRYPT_NONE = 0;

// include/uapi/linux/fs.h
export const BLKROSET = 0x125d;
export const BLKROGET = 0x125e;
export const BLKRRPART = 0x125f;
export const BLKGETSIZE = 0x1260;
export const BLKFLSBUF = 0x1261;
export const BLKRASET = 0x1262;
export const BLKRAGET = 0x1263;
export const BLKFRASET = 0x1264;
export const BLKFRAGET = 0x1265;
export const BLKSECTGET = 0x1267;
export const BLKSSZGET = 0x1268;
export const BLKBSZGET = 0x80081270; // _IOR(0x12, 112, size_t); the kernel writes an int
export const BLKGETSIZE64 = 0x80081272; // _IOR(0x12, 114, size_t)
export const BLKDISCARD = 0x1277;
export const BLKIOMIN = 0x1278;
export const BLKIOOPT = 0x1279;
export const BLKALIGNOFF = 0x127a;
export const BLKPBSZGET = 0x127b;
export const BLKDISCARDZEROES = 0x127c;
export const BLKZEROOUT = 0x127f;
// include/uapi/linux/hdreg.h
export const HDIO_GETGEO = 0x0301;

/** The fields of struct loop_info64 that mean something without encryption. */
export interface LoopInfo {
  device: bigint;
  inode: bigint;
  rdevice: bigint;
  offset: bigint;
  sizelimit: bigint;
  number: number;
  encryptType: number;
  keySize: number;
  flags: number;
  /** lo_file_name, LO_NAME_SIZE bytes, NUL-terminated by whoever stores it. */
  fileName: Buffer;
}

/** struct loop_info64: 232 bytes. */
export const LOOP_INFO64_SIZE = 232;
/** struct loop_info (the old one, x86-64): 168 bytes. */
export const LOOP_INFO_SIZE = 168;
/** struct loop_config: fd, block_size, loop_info64, 8 reserved u64. */
export const LOOP_CONFIG_SIZE = 8 + LOOP_INFO64_SIZE + 64;

/**
 * The checks the kernel's loop_set_status_from_info() makes on what a
 * caller sends: a key size within LO_KEY_SIZE and no encryption (EINVAL),
 * offsets that fit a loff_t (EOVERFLOW).
 */
export function checkInfo(i: LoopInfo, what: string): void {
  if (i.keySize > LO_KEY_SIZE) throw new LoopfsError('EINVAL', what, `lo_encrypt_key_size ${i.keySize} is larger than ${LO_KEY_SIZE}`);
  if (i.encryptType !== LO_CRYPT_NONE) throw new LoopfsError('EINVAL', what, `lo_encrypt_type ${i.encryptType}: encryption is not supported`);
  const max = (1n << 63n) - 1n;
  if (i.offset > max || i.sizelimit > max) throw new LoopfsError('EOVERFLOW', what, 'lo_offset or lo_sizelimit does not fit a signed 64-bit offset');
}

function nameField(src: Buffer): Buffer {
  const b = Buffer.alloc(LO_NAME_SIZE);
  src.copy(b, 0, 0, LO_NAME_SIZE - 1);
  return b;
}

export function decodeInfo64(b: Buffer): LoopInfo {
  return {
    device: b.readBigUInt64LE(0),
    inode: b.readBigUInt64LE(8),
    rdevice: b.readBigUInt64LE(16),
    offset: b.readBigUInt64LE(24),
    sizelimit: b.readBigUInt64LE(32),
    number: b.readUInt32LE(40),
    encryptType: b.readUInt32LE(44),
    keySize: b.readUInt32LE(48),
    flags: b.readUInt32LE(52),
    fileName: nameField(b.subarray(56, 56 + LO_NAME_SIZE)),
  };
}

export function encodeInfo64(i: LoopInfo): Buffer {
  const b = Buffer.alloc(LOOP_INFO64_SIZE);
  b.writeBigUInt64LE(i.device, 0);
  b.writeBigUInt64LE(i.inode, 8);
  b.writeBigUInt64LE(i.rdevice, 16);
  b.writeBigUInt64LE(i.offset, 24);
  b.writeBigUInt64LE(i.sizelimit, 32);
  b.writeUInt32LE(i.number, 40);
  b.writeUInt32LE(i.flags, 52);
  i.fileName.copy(b, 56, 0, LO_NAME_SIZE);
  return b;
}

/**
 * struct loop_info (x86-64): int lo_number; __kernel_old_dev_t (unsigned
 * long) lo_device; unsigned long lo_inode; lo_rdevice; int lo_offset,
 * lo_encrypt_type, lo_encrypt_key_size, lo_flags; char lo_name[64];
 * unsigned char lo_encrypt_key[32]; unsigned long lo_init[2]; char reserved[4].
 * As loop_info64_from_old(): lo_sizelimit becomes 0.
 */
export function decodeInfoOld(b: Buffer): LoopInfo {
  return {
    device: b.readBigUInt64LE(8),
    inode: b.readBigUInt64LE(16),
    rdevice: b.readBigUInt64LE(24),
    // The int is sign-extended, as in the kernel: a negative one is past loff_t (EOVERFLOW).
    offset: BigInt.asUintN(64, BigInt(b.readInt32LE(32))),
    sizelimit: 0n,
    number: b.readInt32LE(0),
    encryptType: b.readUInt32LE(36),
    keySize: b.readUInt32LE(40),
    flags: b.readInt32LE(44),
    fileName: nameField(b.subarray(48, 48 + LO_NAME_SIZE)),
  };
}

/** loop_info64_to_old(): EOVERFLOW when a value does not fit the old struct (lo_offset is an int). */
export function encodeInfoOld(i: LoopInfo, what: string): Buffer {
  if (i.offset > 0x7fffffffn) throw new LoopfsError('EOVERFLOW', what, `lo_offset ${i.offset} does not fit struct loop_info`);
  const b = Buffer.alloc(LOOP_INFO_SIZE);
  b.writeInt32LE(i.number, 0);
  b.writeBigUInt64LE(i.device, 8);
  b.writeBigUInt64LE(i.inode, 16);
  b.writeBigUInt64LE(i.rdevice, 24);
  b.writeInt32LE(Number(i.offset), 32);
  b.writeInt32LE(i.flags, 44);
  i.fileName.copy(b, 48, 0, LO_NAME_SIZE);
  return b;
}

export interface LoopConfig {
  fd: number;
  blockSize: number;
  info: LoopInfo;
}

export function decodeConfig(b: Buffer): LoopConfig {
  return { fd: b.readUInt32LE(0), blockSize: b.readUInt32LE(4), info: decodeInfo64(b.subarray(8, 8 + LOOP_INFO64_SIZE)) };
}

/** A Linux dev_t as Node's stat gives it (glibc's encoding) → the kernel's huge_encode_dev(). */
export function hugeEncodeDev(dev: number | bigint): bigint {
  const major = BigInt(devMajor(dev));
  const minor = BigInt(devMinor(dev));
  return (minor & 0xffn) | (major << 8n) | ((minor & ~0xffn) << 12n);
}

/** The file name a loop device was given, up to its first NUL. */
export function fileNameString(name: Buffer): string {
  const end = name.indexOf(0);
  return name.subarray(0, end < 0 ? name.length : end).toString('latin1');
}
