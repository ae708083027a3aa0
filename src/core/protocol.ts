import type { AttachRequest, AttachResult, OverlayAction } from './api';
import type { DeviceIndex, DeviceInfo, OverlayInfo } from '../base/types';
import type { Errno } from '../base/errors';

/**
 * The control protocol between the CLI (core/client.ts) and an instance
 * daemon (daemon/control.ts): one JSON object per line each way over the
 * instance's AF_UNIX socket, one request per connection. A backing file
 * travels as an fd attached to the request line (SCM_RIGHTS). `v` is checked
 * on both sides; a daemon answers a version it does not speak with
 * EPROTONOSUPPORT.
 */
export const PROTOCOL_VERSION = 1;

export interface InstanceStatus {
  id: string;
  mountpoint: string;
  uid: number;
  gid: number;
  max: number;
  pid: number;
  devices: number;
  bound: number;
  open: number;
}

export interface Requests {
  status: { args: Record<string, never>; result: InstanceStatus };
  list: { args: Record<string, never>; result: DeviceInfo[] };
  add: { args: { index?: DeviceIndex }; result: DeviceIndex };
  remove: { args: { index: DeviceIndex }; result: null };
  getFree: { args: Record<string, never>; result: DeviceIndex };
  /**
   * The backing fd rides with the request; `path` is absolute, `writable` says how the client opened it.
   * With req.overlay.delta, the delta's fd follows the backing fd.
   */
  attach: { args: { req: AttachRequest; path: string; writable: boolean }; result: AttachResult };
  detach: { args: { index: DeviceIndex }; result: null };
  detachAll: { args: Record<string, never>; result: null };
  setCapacity: { args: { index: DeviceIndex }; result: DeviceInfo };
  setDirectIo: { args: { index: DeviceIndex; on: boolean }; result: DeviceInfo };
  setSectorSize: { args: { index: DeviceIndex; size: number }; result: DeviceInfo };
  remount: { args: { max: number }; result: null };
  umount: { args: { lazy: boolean }; result: null };
  /** For commit, a read-write fd of the base (opened by the client with the caller's rights) rides with the request. */
  overlay: { args: { index: DeviceIndex; action: OverlayAction }; result: OverlayInfo };
}

export type Op = keyof Requests;

export interface Request<K extends Op = Op> {
  v: number;
  op: K;
  args: Requests[K]['args'];
}

export type Response<K extends Op = Op> =
  | { v: number; ok: true; result: Requests[K]['result'] }
  | { v: number; ok: false; errno: Errno; what: string; reason: string };
