import { LoopfsError } from '../base/errors';
import { closeFds } from './socket-calls';
import type { UnixConn } from './unixsock';

/**
 * A line protocol over a UnixConn: '\n'-terminated lines, each with the fds
 * that came with it.
 */

interface LineState {
  buf: Buffer;
  /** fds of each recv, at the offset in buf of that recv's last byte. */
  fds: { at: number; fds: number[] }[];
  chain: Promise<unknown>;
}

const lineStates = new WeakMap<UnixConn, LineState>();

/**
 * The next '\n'-terminated line (without the '\n') and the fds sent with it.
 * `line` is null on EOF before a newline; the fds of such an incomplete line
 * are closed and `fds` is empty. A line longer than `limit` bytes is EMSGSIZE
 * (its fds closed; the connection is then unusable). Leftover bytes stay with
 * the connection for the next call. Received fds are the caller's to close.
 */
export function readLine(conn: UnixConn, limit = 1 << 20): Promise<{ line: string | null; fds: number[] }> {
  let st = lineStates.get(conn);
  if (!st) {
    const s = (st = { buf: Buffer.alloc(0), fds: [], chain: Promise.resolve() });
    lineStates.set(conn, s);
    // Closing the connection closes the fds buffered for lines not yet read.
    conn.onClose(() => dropFds(s));
  }
  const s = st;
  const p = s.chain.then(() => readLineNow(conn, s, limit));
  s.chain = p.catch(() => undefined);
  return p;
}

async function readLineNow(conn: UnixConn, s: LineState, limit: number): Promise<{ line: string | null; fds: number[] }> {
  let scanned = 0;
  for (;;) {
    const nl = s.buf.indexOf(0x0a, scanned);
    if (nl >= 0) {
      // Fds belong to the line holding the last byte of the recv they came
      // with: the kernel ends a read right after a message that carries fds.
      const fds = s.fds.filter((e) => e.at <= nl).flatMap((e) => e.fds);
      s.fds = s.fds.filter((e) => e.at > nl).map((e) => ({ at: e.at - nl - 1, fds: e.fds }));
      const line = s.buf.toString('utf8', 0, nl);
      s.buf = s.buf.subarray(nl + 1);
      return { line, fds };
    }
    scanned = s.buf.length;
    if (s.buf.length > limit) {
      dropFds(s);
      throw new LoopfsError('EMSGSIZE', 'control message', `line longer than ${limit} bytes`);
    }
    const { data, fds } = await conn.recv();
    if (data.length === 0) {
      closeFds(fds);
      dropFds(s);
      s.buf = Buffer.alloc(0);
      return { line: null, fds: [] };
    }
    s.buf = s.buf.length ? Buffer.concat([s.buf, data]) : data;
    if (fds.length) s.fds.push({ at: s.buf.length - 1, fds });
  }
}

function dropFds(s: LineState): void {
  for (const e of s.fds) closeFds(e.fds);
  s.fds = [];
}
