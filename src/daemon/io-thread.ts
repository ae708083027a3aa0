import { constants } from 'node:os';
import { REPLY_DATA, runThread, WRITE_DATA, type BackedSlot, type ThreadIO } from '../fuse/thread-main';
import { transfer } from '../engine/transfer';
import { readSpan, writeSpan } from '../engine/window';

/**
 * The program of the threads that read /dev/fuse (a second bundle entry,
 * build/io-thread.mjs): fuse/thread-main.ts's loop, with the backend that
 * serves a device's (or partition's) READ and WRITE with the engine's rules
 * — the window's clamping (engine/window.ts), the file's transfer rules and
 * choice of the O_DIRECT descriptor (engine/transfer.ts) — as
 * Window.read/write over FileIO would on the main thread.
 *
 * A read-only range refuses a write with EPERM (a read-only block device's
 * errno, as LoopFilesystem.write).
 */

const { EPERM, ENOSPC } = constants.errno;

runThread({
  read(slot: BackedSlot, off: number, size: number, io: ThreadIO): boolean {
    const len = readSpan(slot.length, off, size);
    const pos = slot.start + off;
    if (io.dout && slot.directFd >= 0 && len > 0 && pos % slot.align === 0 && len % slot.align === 0) {
      transfer(false, slot, io.dout, len, pos, true);
      io.replyReadFrom(io.dout, len);
      return true;
    }
    if (len > 0) transfer(false, slot, io.out.subarray(REPLY_DATA), len, pos, false);
    io.replyRead(len);
    return true;
  },

  write(slot: BackedSlot, off: number, size: number, io: ThreadIO): boolean {
    if (slot.readOnly) {
      io.replyError(EPERM);
      return true;
    }
    const len = writeSpan(slot.length, off, size);
    if (len < 0) {
      io.replyError(ENOSPC);
      return true;
    }
    io.replyWritten(len === 0 ? 0 : transfer(true, slot, io.req.subarray(WRITE_DATA), len, slot.start + off, io.dout !== undefined));
    return true;
  },
});
