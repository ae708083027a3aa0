import { constants } from 'node:os';
import { runThread, type BackedSlot, type ThreadIO } from '../fuse/thread-main';
import { OverlayMap, type OverlayShare } from '../engine/overlay-map';
import { transfer } from '../engine/transfer';
import { readSpan, writeSpan } from '../engine/window';

/**
 * The program of the threads that read /dev/fuse (a second bundle entry,
 * build/io-thread.mjs): fuse/thread-main.ts's loop, with the backend that
 * serves a device's (or partition's) READ and WRITE with the engine's rules
 * — the window's clamping (engine/window.ts), the file's transfer rules and
 * choice of the O_DIRECT descriptor (engine/transfer.ts) — as
 * Window.read/write over FileIO would on the main thread; an overlay's
 * handle with the overlay's shared block map (engine/overlay-map.ts), as
 * Overlay.read/write do.
 *
 * A read-only range refuses a write with EPERM (a read-only block device's
 * errno, as LoopFilesystem.write).
 */

const { EPERM, ENOSPC } = constants.errno;

/** The overlays this thread has seen, by their shared data (gone with it once the main thread withdraws it). */
const overlays = new WeakMap<OverlayShare, OverlayMap>();

/** The handle's overlay map; undefined for a plain range, null when its map has not arrived (forward the request). */
function overlayOf(slot: BackedSlot, io: ThreadIO): OverlayMap | undefined | null {
  if (slot.tag === 0) return undefined;
  const share = io.shared(slot.tag) as OverlayShare | undefined;
  if (!share) return null;
  let m = overlays.get(share);
  if (!m) overlays.set(share, (m = new OverlayMap(share)));
  return m;
}

runThread({
  read(slot: BackedSlot, off: number, size: number, io: ThreadIO): boolean {
    const overlay = overlayOf(slot, io);
    if (overlay === null) return false;
    const len = readSpan(slot.length, off, size);
    const pos = slot.start + off;
    if (overlay) {
      overlay.read(io.readData, len, pos);
      io.replyRead(len);
      return true;
    }
    if (io.dout && slot.directFd >= 0 && len > 0 && pos % slot.align === 0 && len % slot.align === 0) {
      transfer(false, slot, io.dout, len, pos, true);
      io.replyReadFrom(io.dout, len);
      return true;
    }
    // A plain file's range, buffered: spliced from the page cache (one copy, not two); else, or when the
    // file ends inside the range (its rules below), read.
    if (len > 0 && slot.directFd < 0 && io.replySplice(slot.fd, pos, len)) return true;
    if (len > 0) transfer(false, slot, io.readData, len, pos, false);
    io.replyRead(len);
    return true;
  },

  write(slot: BackedSlot, off: number, size: number, io: ThreadIO): boolean {
    const overlay = overlayOf(slot, io);
    if (overlay === null) return false;
    if (slot.readOnly) {
      io.replyError(EPERM);
      return true;
    }
    const len = writeSpan(slot.length, off, size);
    if (len < 0) {
      io.replyError(ENOSPC);
      return true;
    }
    const data = io.writeData;
    const pos = slot.start + off;
    if (len === 0) io.replyWritten(0);
    else io.replyWritten(overlay ? overlay.write(data, len, pos) : transfer(true, slot, data, len, pos, io.dout !== undefined));
    return true;
  },
});
