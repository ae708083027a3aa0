/**
 * Constants of the FUSE kernel protocol, from <linux/fuse.h> (protocol 7.38
 * as shipped in Debian 12's linux-libc-dev). Only what loopfs speaks.
 */

export const FUSE_KERNEL_VERSION = 7;
/** The minor version we answer with: 7.31 has everything below (max_pages, ioctl, readdirplus). */
export const FUSE_KERNEL_MINOR_VERSION = 31;
/** The minor version answered when the kernel offers FUSE_DIRECT_IO_ALLOW_MMAP (7.39, Linux ≥ 6.6). */
export const FUSE_DIRECT_IO_ALLOW_MMAP_MINOR_VERSION = 39;
export const FUSE_ROOT_ID = 1;

export enum Op {
  LOOKUP = 1,
  FORGET = 2,
  GETATTR = 3,
  SETATTR = 4,
  READLINK = 5,
  SYMLINK = 6,
  MKNOD = 8,
  MKDIR = 9,
  UNLINK = 10,
  RMDIR = 11,
  RENAME = 12,
  LINK = 13,
  OPEN = 14,
  READ = 15,
  WRITE = 16,
  STATFS = 17,
  RELEASE = 18,
  FSYNC = 20,
  SETXATTR = 21,
  GETXATTR = 22,
  LISTXATTR = 23,
  REMOVEXATTR = 24,
  FLUSH = 25,
  INIT = 26,
  OPENDIR = 27,
  READDIR = 28,
  RELEASEDIR = 29,
  FSYNCDIR = 30,
  GETLK = 31,
  SETLK = 32,
  SETLKW = 33,
  ACCESS = 34,
  CREATE = 35,
  INTERRUPT = 36,
  BMAP = 37,
  DESTROY = 38,
  IOCTL = 39,
  POLL = 40,
  NOTIFY_REPLY = 41,
  BATCH_FORGET = 42,
  FALLOCATE = 43,
  READDIRPLUS = 44,
  RENAME2 = 45,
  LSEEK = 46,
  COPY_FILE_RANGE = 47,
  SYNCFS = 50,
  TMPFILE = 51,
}

// fuse_init_in/out flags
export const FUSE_ASYNC_READ = 1 << 0;
export const FUSE_ATOMIC_O_TRUNC = 1 << 3;
export const FUSE_BIG_WRITES = 1 << 5;
export const FUSE_AUTO_INVAL_DATA = 1 << 12;
export const FUSE_DO_READDIRPLUS = 1 << 13;
export const FUSE_ASYNC_DIO = 1 << 15;
export const FUSE_PARALLEL_DIROPS = 1 << 18;
export const FUSE_MAX_PAGES = 1 << 22;
/** fuse_init_in/out carry flags2 (the init flags from bit 32 on). */
export const FUSE_INIT_EXT = 1 << 30;
/** FUSE_DIRECT_IO_ALLOW_MMAP (1 << 36), as its bit of flags2: shared mmap of an FOPEN_DIRECT_IO handle. */
export const FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2 = 1 << (36 - 32);

// fuse_open_out.open_flags
export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_NONSEEKABLE = 1 << 2;
export const FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6;

// fuse_setattr_in.valid
export const FATTR_MODE = 1 << 0;
export const FATTR_UID = 1 << 1;
export const FATTR_GID = 1 << 2;
export const FATTR_SIZE = 1 << 3;
export const FATTR_ATIME = 1 << 4;
export const FATTR_MTIME = 1 << 5;
export const FATTR_FH = 1 << 6;

export const FUSE_FSYNC_FDATASYNC = 1 << 0;

// notifications (unique = 0, error = code)
export const FUSE_NOTIFY_INVAL_INODE = 2;
export const FUSE_NOTIFY_INVAL_ENTRY = 3;
export const FUSE_NOTIFY_DELETE = 6;

// wire sizes
export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
export const ATTR_SIZE = 88;
export const ENTRY_OUT_SIZE = 40 + ATTR_SIZE;
export const ATTR_OUT_SIZE = 16 + ATTR_SIZE;
export const INIT_OUT_SIZE = 64;
export const OPEN_OUT_SIZE = 16;
export const WRITE_OUT_SIZE = 8;
export const STATFS_OUT_SIZE = 80;
export const IOCTL_OUT_SIZE = 16;
export const DIRENT_BASE = 24;

// rename2 flags (linux/fs.h)
export const RENAME_EXCHANGE = 1 << 1;

// file type bits (sys/stat.h)
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
