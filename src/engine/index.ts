/** The userspace block engine: devices over backing-file windows, and their partitions. */
export { Device, windowSize, type AttachOptions, type Backing } from './device';
export { Window, type BlockIO, type Lower } from './window';
export { scanPartitions, PartitionWindow, type PartitionTable } from './partitions';
export { allocAligned, type IoCounts } from './file';
