import { isatty } from 'node:tty';
import { setReporter } from '../core/progress';

/**
 * How output looks: colour only where a person reads it (a terminal), never
 * with NO_COLOR, always with FORCE_COLOR (not "0"); a spinner only on a
 * terminal and only once a wait has passed SPINNER_DELAY_MS.
 */

export const SPINNER_DELAY_MS = 250;

export function colourWanted(stream: NodeJS.WriteStream): boolean {
  const force = process.env.FORCE_COLOR;
  if (force !== undefined && force !== '0' && force !== 'false') return true;
  if (process.env.NO_COLOR !== undefined) return false;
  return !!stream.isTTY && process.env.TERM !== 'dumb';
}

type Colour = 'red' | 'green' | 'yellow' | 'cyan' | 'bold' | 'dim';

/** SGR codes that start and end each colour. */
const SGR: Record<Colour, [number, number]> = { red: [31, 39], green: [32, 39], yellow: [33, 39], cyan: [36, 39], bold: [1, 22], dim: [2, 22] };

/**
 * Colours for text bound for one stream (kleur's escapes, without loading
 * kleur, which looks at process.stdout as it loads: a stream every command
 * would pay for at start). A colour's end inside the text (nesting) starts
 * the colour again, as kleur does.
 */
export function paint(stream: NodeJS.WriteStream): Record<Colour, (s: string) => string> {
  const on = colourWanted(stream);
  const wrap = (c: Colour) => (s: string): string => {
    if (!on) return s;
    const [open, close] = SGR[c].map((n) => `\u001b[${n}m`) as [string, string];
    return `${open}${s.split(close).join(close + open)}${close}`;
  };
  return { red: wrap('red'), green: wrap('green'), yellow: wrap('yellow'), cyan: wrap('cyan'), bold: wrap('bold'), dim: wrap('dim') };
}

/** Installs the spinner as core's progress reporter, when stderr is a terminal. */
export function installSpinner(): void {
  // isatty(2), not process.stderr.isTTY: making the stream costs every command at start.
  if (!isatty(2) || process.env.TERM === 'dumb') return;
  setReporter((text) => {
    let spinner: { stop(): void } | undefined;
    let stopped = false;
    const timer = setTimeout(() => {
      void import('ora').then(({ default: ora }) => {
        if (!stopped) spinner = ora({ text, stream: process.stderr, color: 'cyan', isEnabled: true }).start();
      });
    }, SPINNER_DELAY_MS);
    return () => {
      stopped = true;
      clearTimeout(timer);
      spinner?.stop(); // clears its line: no debris
    };
  });
}
