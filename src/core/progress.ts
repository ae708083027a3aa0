/**
 * Waits that can take a while (a daemon starting, an unmount waiting for the
 * daemon to finish) announce themselves here. core/ never prints: the CLI
 * installs a reporter (an ora spinner on a terminal); without one, nothing
 * is shown.
 */
export type Reporter = (text: string) => () => void;

let reporter: Reporter | undefined;

export function setReporter(r: Reporter | undefined): void {
  reporter = r;
}

export async function waiting<T>(text: string, work: () => Promise<T>): Promise<T> {
  const done = reporter?.(text);
  try {
    return await work();
  } finally {
    done?.();
  }
}
