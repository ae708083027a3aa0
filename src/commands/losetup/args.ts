import { LoopfsError, toLoopfsError, type Errno } from '../../base/errors';
import type { InstanceSelector } from '../../core/api';
import { GetoptError, getoptLong, type LongOpt } from './getopt';
import { COLUMNS, DEFAULT_COLUMNS, columnByName, type ColumnInfo, type TableFormat } from './output';
import { sizeOrError } from './size';
import { strerror } from './strerror';

/**
 * The command line of util-linux 2.38.1 `losetup` (sys-utils/losetup.c
 * main()), turned into one action. Pure: naming a device here only records
 * the argument; run.ts resolves it.
 */

export const PROG = 'loopfs losetup';

/**
 * Errors are worded as util-linux words them, and printed by losetupErrorText
 * as `PROG: what` (util-linux's errx(), an empty reason) or `PROG: what:
 * strerror` (its err() and warn(), the reason), with no "(ERRNO)": a script
 * reading losetup's stderr sees util-linux's lines. The errno stays on the
 * error for callers (and decides nothing else: losetup exits 1). An error of
 * loopfs's own, which util-linux never prints (an instance that cannot
 * start, say), keeps its reason and names its errno, as every loopfs
 * command's error does.
 */
export const errx = (what: string, errno: Errno = 'EINVAL'): LoopfsError => new LoopfsError(errno, what, '');
export const errWith = (errno: Errno, what: string): LoopfsError => new LoopfsError(errno, what, strerror(errno));

/** The text losetup prints on stderr for an error: one line, and util-linux's "Try" line after a usage error. */
export function losetupErrorText(err: unknown): string {
  const e = toLoopfsError(err);
  // A system error from below is worded as util-linux's err() words it: strerror(errno).
  const reason = e === err ? e.reason : e.reason && strerror(e.errno);
  const own = reason !== '' && reason !== strerror(e.errno);
  const line = reason ? `${e.what}: ${reason}${own ? ` (${e.errno})` : ''}` : e.what;
  const tryHelp = err instanceof GetoptError ? `Try '${PROG} --help' for more information.\n` : '';
  return `${PROG}: ${line}\n${tryHelp}`;
}

const OPT_SIZELIMIT = 128;
const OPT_SHOW = 129;
const OPT_RAW = 130;
const OPT_DIO = 131;
const OPT_OUTPUT_ALL = 132;
/** loopfs's own: a copy-on-write device (`--overlay[=DELTA]`). */
const OPT_OVERLAY = 133;
/** loopfs's own: which instance (`--instance DIR|ID`) and run directory. */
const OPT_INSTANCE = 256;
const OPT_RUNDIR = 257;
const ch = (c: string): number => c.charCodeAt(0);

const SHORTOPTS = 'ab:c:d:Dfhj:JlLno:O:PrvV';
/** In util-linux's order, which decides the lists in "ambiguous" and "mutually exclusive" messages. */
const LONGOPTS: readonly LongOpt[] = [
  { name: 'all', arg: 'none', val: ch('a') },
  { name: 'set-capacity', arg: 'required', val: ch('c') },
  { name: 'detach', arg: 'required', val: ch('d') },
  { name: 'detach-all', arg: 'none', val: ch('D') },
  { name: 'find', arg: 'none', val: ch('f') },
  { name: 'nooverlap', arg: 'none', val: ch('L') },
  { name: 'help', arg: 'none', val: ch('h') },
  { name: 'associated', arg: 'required', val: ch('j') },
  { name: 'json', arg: 'none', val: ch('J') },
  { name: 'list', arg: 'none', val: ch('l') },
  { name: 'sector-size', arg: 'required', val: ch('b') },
  { name: 'noheadings', arg: 'none', val: ch('n') },
  { name: 'offset', arg: 'required', val: ch('o') },
  { name: 'output', arg: 'required', val: ch('O') },
  { name: 'output-all', arg: 'none', val: OPT_OUTPUT_ALL },
  { name: 'sizelimit', arg: 'required', val: OPT_SIZELIMIT },
  { name: 'partscan', arg: 'none', val: ch('P') },
  { name: 'read-only', arg: 'none', val: ch('r') },
  { name: 'direct-io', arg: 'optional', val: OPT_DIO },
  { name: 'overlay', arg: 'optional', val: OPT_OVERLAY },
  { name: 'raw', arg: 'none', val: OPT_RAW },
  { name: 'show', arg: 'none', val: OPT_SHOW },
  { name: 'verbose', arg: 'none', val: ch('v') },
  { name: 'version', arg: 'none', val: ch('V') },
  { name: 'instance', arg: 'required', val: OPT_INSTANCE },
  { name: 'run-dir', arg: 'required', val: OPT_RUNDIR },
];

/** Groups of mutually exclusive options, as util-linux lists them (its third row is out of ASCII order, so -O never conflicts). */
const EXCL: readonly (readonly number[])[] = [
  [ch('D'), ch('a'), ch('c'), ch('d'), ch('f'), ch('j')],
  [ch('D'), ch('c'), ch('d'), ch('f'), ch('l')],
  [ch('D'), ch('c'), ch('d'), ch('f'), ch('O')],
  [ch('J'), OPT_RAW],
];

export type Action =
  /** `-f FILE` or `DEV FILE` (device: the DEV argument). */
  | { kind: 'create'; device?: string; file: string }
  /** `-d DEV…`: devices[0] is the last -d argument, the rest are the non-option arguments. */
  | { kind: 'detach'; devices: string[] }
  | { kind: 'detach-all' }
  /** `-f` alone: print the first free device. */
  | { kind: 'find' }
  /** `-a`, `-l`, `-j FILE`, no arguments. */
  | { kind: 'show'; file?: string }
  /** `losetup [-l] DEV`. */
  | { kind: 'show-one'; device: string }
  | { kind: 'set-capacity'; device: string }
  | { kind: 'set-direct-io'; device: string; on: boolean }
  | { kind: 'set-sector-size'; device: string; size: number }
  | { kind: 'help' }
  | { kind: 'version' };

export interface LosetupArgs {
  action: Action;
  /**
   * Devices util-linux checks (they must exist as loop devices) before its
   * remaining usage checks: every -d and -c argument, then the DEV of
   * `losetup DEV`. The DEV of `DEV FILE` need not exist yet.
   */
  checkDevices: string[];
  /** A usage error util-linux reports only once checkDevices passed. */
  deferred?: LoopfsError;
  selector: InstanceSelector;
  /** --list (table) rather than the old `-a` lines. */
  list: boolean;
  columns: ColumnInfo[];
  format: TableFormat;
  noHeadings: boolean;
  /** -o, when given (also the filter of `-j FILE -o N`). */
  offset?: number;
  /** --sizelimit, when given. */
  sizelimit?: number;
  /** -b; 0 when not given. */
  sectorSize: number;
  readOnly: boolean;
  partscan: boolean;
  directIo: boolean;
  show: boolean;
  nooverlap: boolean;
  /** --overlay: true, or --overlay=DELTA: the delta's path. */
  overlay?: true | string;
}

const usage = (what: string): LoopfsError => errx(what);

export function parseLosetupArgs(argv: readonly string[], env: Record<string, string | undefined> = {}): LosetupArgs {
  const o = newOptions();
  const excl = EXCL.map(() => 0);
  const args = getoptLong(argv, SHORTOPTS, LONGOPTS, env.POSIXLY_CORRECT !== undefined, (c, optarg, tokens) => {
    exclusive(excl, c);
    return applyOption(o, c, optarg, tokens);
  });
  if (o.act === 'help' || o.act === 'version') return result(o, { kind: o.act });
  // util-linux looks at argc; loopfs's own --instance/--run-dir do not count.
  const action = chooseAction(o, args, 1 + argv.length - o.extTokens);
  return result(o, action, deferredError(o, action));
}

/** The options seen so far, as util-linux's main() keeps them in its locals. */
interface Options {
  act?: Action['kind'];
  /** -j FILE; then the FILE of `-f FILE`. */
  file?: string;
  checkDevices: string[];
  /** The argument of the last -c or -d. */
  lastDevOpt?: string;
  list: boolean;
  outarg?: string;
  columns: ColumnInfo[];
  raw: boolean;
  json: boolean;
  noHeadings: boolean;
  offset?: number;
  sizelimit?: number;
  sectorSize: number;
  setSectorSize: boolean;
  readOnly: boolean;
  partscan: boolean;
  /** --direct-io[=on] during setup (LO_FLAGS_DIRECT_IO). */
  dioFlag: boolean;
  /** --direct-io given at all, and its value (`--direct-io DEV`). */
  setDio: boolean;
  useDio: boolean;
  show: boolean;
  nooverlap: boolean;
  overlay?: true | string;
  /** argv tokens taken by loopfs's own --instance/--run-dir. */
  extTokens: number;
  selector: InstanceSelector;
}

function newOptions(): Options {
  return {
    checkDevices: [], list: false, columns: [], raw: false, json: false, noHeadings: false, sectorSize: 0, setSectorSize: false,
    readOnly: false, partscan: false, dioFlag: false, setDio: false, useDio: false, show: false, nooverlap: false, extTokens: 0, selector: {},
  };
}

/** util-linux's err_exclusive_options(): `excl` holds the option seen first in each group of EXCL. */
function exclusive(excl: number[], c: number): void {
  for (let e = 0; e < EXCL.length && EXCL[e][0] <= c; e++) {
    for (const op of EXCL[e]) {
      if (op > c) break;
      if (op !== c) continue;
      if (excl[e] === 0) excl[e] = c;
      else if (excl[e] !== c) {
        const names = EXCL[e].map((x) => {
          const l = LONGOPTS.find((y) => y.val === x);
          return l ? `--${l.name}` : `-${String.fromCharCode(x)}`;
        });
        throw errx(`mutually exclusive arguments: ${names.join(' ')}`);
      }
      break;
    }
  }
}

/** One option (util-linux's getopt_long loop body); true stops the parsing (-h, -V). */
function applyOption(o: Options, c: number, optarg: string | undefined, tokens: number): boolean {
  const arg = optarg ?? '';
  switch (c) {
    case ch('a'): o.act = 'show'; break;
    case ch('b'):
      o.setSectorSize = true;
      o.sectorSize = sizeOrError(arg, 'failed to parse logical block size');
      break;
    case ch('c'): o.act = 'set-capacity'; o.checkDevices.push(arg); o.lastDevOpt = arg; break;
    case ch('r'): o.readOnly = true; break;
    case ch('d'): o.act = 'detach'; o.checkDevices.push(arg); o.lastDevOpt = arg; break;
    case ch('D'): o.act = 'detach-all'; break;
    case ch('f'): o.act = 'find'; break;
    case ch('J'): o.json = true; break;
    case ch('j'): o.act = 'show'; o.file = arg; break;
    case ch('l'): o.list = true; break;
    case ch('L'): o.nooverlap = true; break;
    case ch('n'): o.noHeadings = true; break;
    case OPT_RAW: o.raw = true; break;
    case ch('o'): o.offset = sizeOrError(arg, 'failed to parse offset'); break;
    case ch('O'): o.outarg = arg; o.list = true; break;
    case OPT_OUTPUT_ALL: o.columns = [...COLUMNS]; break;
    case ch('P'): o.partscan = true; break;
    case OPT_SHOW: o.show = true; break;
    case OPT_DIO:
      o.setDio = true;
      o.useDio = true;
      if (optarg !== undefined) {
        if (optarg === 'on') o.useDio = true;
        else if (optarg === 'off') o.useDio = false;
        else throw errx(`argument error: '${optarg}'`);
      }
      if (o.useDio) o.dioFlag = true;
      break;
    case OPT_OVERLAY:
      if (optarg === '') throw new LoopfsError('EINVAL', 'argument error', "'': --overlay= wants a file name");
      o.overlay = optarg ?? true;
      break;
    case ch('v'): break;
    case OPT_SIZELIMIT: o.sizelimit = sizeOrError(arg, 'failed to parse size'); break;
    case OPT_INSTANCE: o.selector.instance = arg; o.extTokens += tokens; break;
    case OPT_RUNDIR: o.selector.runDir = arg; o.extTokens += tokens; break;
    case ch('h'): o.act = 'help'; return true;
    case ch('V'): o.act = 'version'; return true;
  }
  return false;
}

/**
 * What util-linux's main() does after the options: the action the options
 * and the remaining arguments (`args`; `argc` as util-linux counts it) ask
 * for, or a usage error.
 */
function chooseAction(o: Options, args: readonly string[], argc: number): Action {
  let act = o.act;
  if (argc === 1) { act = 'show'; o.list = true; }
  if (!act && argc === 2 && (o.raw || o.json)) { act = 'show'; o.list = true; }
  if (o.list && o.columns.length === 0) o.columns = DEFAULT_COLUMNS.map((n) => columnByName(n) as ColumnInfo);

  let optind = 0;
  if (act === 'find' && optind < args.length) {
    const file = args[optind++];
    if (optind < args.length) throw usage('unexpected arguments');
    return { kind: 'create', file };
  }
  if (o.list && !act && optind === args.length) act = 'show';
  if (!act && optind + 1 === args.length) {
    const device = args[optind++];
    o.checkDevices.push(device);
    if (o.setDio) {
      o.dioFlag = false;
      return { kind: 'set-direct-io', device, on: o.useDio };
    }
    if (o.setSectorSize) return { kind: 'set-sector-size', device, size: o.sectorSize };
    return { kind: 'show-one', device };
  }
  if (!act) {
    if (optind >= args.length) throw usage('no loop device specified');
    const device = args[optind++];
    if (optind >= args.length) throw usage('no file specified');
    return { kind: 'create', device, file: args[optind++] };
  }
  switch (act) {
    case 'detach': return { kind: 'detach', devices: [o.lastDevOpt as string, ...args.slice(optind)] };
    case 'detach-all': return { kind: 'detach-all' };
    case 'find': return { kind: 'find' };
    case 'show': return { kind: 'show', file: o.file };
    case 'set-capacity': return { kind: 'set-capacity', device: o.lastDevOpt as string };
    default: throw new Error(`losetup: action ${act} after the options`);
  }
}

/** The usage error util-linux reports only after checking the devices (LosetupArgs.deferred). */
function deferredError(o: Options, action: Action): LoopfsError | undefined {
  const create = action.kind === 'create';
  if (!create && (o.sizelimit || o.readOnly || o.partscan || o.dioFlag || o.show)) {
    return usage('the options --{sizelimit,partscan,read-only,show} are allowed during loop device setup only');
  }
  if (!create && o.overlay !== undefined) return usage('the option --overlay is allowed during loop device setup only');
  if (o.offset !== undefined && !create && (action.kind !== 'show' || action.file === undefined)) {
    return usage('the option --offset is not allowed in this context');
  }
  if (o.outarg !== undefined) {
    const r = parseColumns(o.outarg, o.columns);
    if (r instanceof LoopfsError) return r;
    o.columns = r;
  }
  return undefined;
}

function result(o: Options, action: Action, deferred?: LoopfsError): LosetupArgs {
  return {
    action, checkDevices: o.checkDevices, deferred, selector: o.selector, list: o.list, columns: o.columns,
    format: o.json ? 'json' : o.raw ? 'raw' : 'human', noHeadings: o.noHeadings, offset: o.offset, sizelimit: o.sizelimit,
    sectorSize: o.sectorSize, readOnly: o.readOnly, partscan: o.partscan, directIo: o.dioFlag, show: o.show,
    nooverlap: o.nooverlap, overlay: o.overlay,
  };
}

/**
 * `-O LIST` (util-linux string_add_to_idarray): replaces the columns, or
 * with a leading "+" appends to them; names are case-insensitive; at most 24
 * columns. util-linux names the rest of the list from the first unknown name
 * on ("unknown column: FOO,RO") and fails silently on empty names and
 * overlong lists; loopfs says what was wrong.
 */
export function parseColumns(outarg: string, current: readonly ColumnInfo[]): ColumnInfo[] | LoopfsError {
  const max = COLUMNS.length * 2;
  const append = outarg.startsWith('+');
  const list = append ? outarg.slice(1) : outarg;
  const out = append ? [...current] : [];
  const bad = (reason: string): LoopfsError => errx(`failed to parse columns: ${reason}`);
  if (list === '') return bad(`'${outarg}': empty column list`);
  let begin = 0;
  for (let p = 0; p < list.length; p++) {
    if (out.length >= max) return bad(`'${outarg}': more than ${max} columns`);
    let end = -1;
    if (list[p] === ',') end = p;
    if (p + 1 === list.length) end = p + 1;
    if (end < 0) continue;
    if (end <= begin) return bad(`'${outarg}': empty column name`);
    const col = columnByName(list.slice(begin, end));
    if (!col) return errx(`unknown column: ${list.slice(begin)}`);
    out.push(col);
    begin = p + 1;
  }
  return out;
}
