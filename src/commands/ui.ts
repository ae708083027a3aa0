import type Kleur from 'kleur';
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

/**
 * Colours for text bound for one stream. kleur has a single global switch,
 * so each call sets it for that stream and puts it back.
 */
export function paint(stream: NodeJS.WriteStream): Record<Colour, (s: string) => string> {
  const on = colourWanted(stream);
  // Loaded here, not at start: kleur looks at process.stdout as it loads, and making that stream costs a command that prints nothing in colour.
  const mod = require('kleur') as typeof Kleur & { default?: typeof Kleur };
  const kleur = mod.default ?? mod;
  const wrap = (c: Colour) => (s: string): string => {
    const before = kleur.enabled;
    kleur.enabled = on;
    try {
      return kleur[c](s);
    } finally {
      kleur.enabled = before;
    }
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
