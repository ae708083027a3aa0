import { LoopfsError } from '../../base/errors';

/**
 * GNU getopt_long as util-linux's losetup calls it: clustered short options,
 * attached or separate arguments, `--name=value`, unambiguous abbreviations
 * of long options, permutation of non-options (unless POSIXLY_CORRECT is
 * set), `--` ending the options. Error texts are glibc's, thrown as
 * GetoptError, which losetup prints with util-linux's second line, "Try '…
 * --help' for more information.".
 */

/** A command-line error found by getopt itself (EINVAL; the message is glibc's, with no strerror). */
export class GetoptError extends LoopfsError {
  constructor(message: string) {
    super('EINVAL', message, '');
  }
}

export type ArgKind = 'none' | 'required' | 'optional';

export interface LongOpt {
  name: string;
  arg: ArgKind;
  /** The short option letter's char code, or a code above 127 for long-only options. */
  val: number;
}

/**
 * Called for each option in command-line order, as util-linux's switch is;
 * `tokens` is how many argv elements a long option took (0 for short ones).
 * Returning true stops the scan (util-linux exits on -h and -V right away).
 */
export type OnOption = (val: number, optarg: string | undefined, tokens: number) => boolean;

/**
 * Scans argv, calling `onOpt` for every option, and returns the non-option
 * arguments in order. `shortopts` is a getopt optstring ("ab:c:…").
 */
export function getoptLong(
  argv: readonly string[],
  shortopts: string,
  longopts: readonly LongOpt[],
  posixlyCorrect: boolean,
  onOpt: OnOption,
): string[] {
  const args: string[] = [];
  const fail = (msg: string): never => {
    throw new GetoptError(msg);
  };
  let i = 0;
  while (i < argv.length) {
    const a = argv[i];
    if (a === '--') {
      args.push(...argv.slice(i + 1));
      break;
    }
    if (!a.startsWith('-') || a === '-') {
      if (posixlyCorrect) {
        args.push(...argv.slice(i));
        break;
      }
      args.push(a);
      i++;
      continue;
    }
    if (a.startsWith('--')) {
      const body = a.slice(2);
      const eq = body.indexOf('=');
      const name = eq < 0 ? body : body.slice(0, eq);
      let found = longopts.find((o) => o.name === name);
      if (!found) {
        const cands = longopts.filter((o) => o.name.startsWith(name));
        if (cands.length > 1) {
          fail(`option '--${body}' is ambiguous; possibilities:${cands.map((o) => ` '--${o.name}'`).join('')}`);
        }
        found = cands[0];
      }
      if (!found) fail(`unrecognized option '--${body}'`);
      const o = found as LongOpt;
      i++;
      if (eq >= 0) {
        if (o.arg === 'none') fail(`option '--${o.name}' doesn't allow an argument`);
        if (onOpt(o.val, body.slice(eq + 1), 1)) return args;
      } else if (o.arg === 'required') {
        if (i >= argv.length) fail(`option '--${o.name}' requires an argument`);
        i++;
        if (onOpt(o.val, argv[i - 1], 2)) return args;
      } else if (onOpt(o.val, undefined, 1)) return args;
      continue;
    }
    // A cluster of short options: -rf, -o1024, -o 1024.
    i++;
    for (let k = 1; k < a.length; k++) {
      const c = a[k];
      const pos = c === ':' || c === ';' ? -1 : shortopts.indexOf(c);
      if (pos < 0) fail(`invalid option -- '${c}'`);
      const code = c.charCodeAt(0);
      if (shortopts[pos + 1] === ':') {
        let optarg: string;
        if (k + 1 < a.length) optarg = a.slice(k + 1);
        else if (i < argv.length) optarg = argv[i++];
        else return fail(`option requires an argument -- '${c}'`);
        if (onOpt(code, optarg, 0)) return args;
        break;
      }
      if (onOpt(code, undefined, 0)) return args;
    }
  }
  return args;
}
