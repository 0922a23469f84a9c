// The static import graph of the CLI, read from the source text: which of our files `bin/migrate.ts`
// loads at start, and which packages they need. A production install (`npm ci --omit=dev`) has only
// `dependencies`, so everything reached here must be one of those or a Node built-in; demo and test
// support are loaded with `import()` only when `migrate demo` runs. Used by test/production-graph.test.ts.

import fs from 'node:fs';
import { builtinModules } from 'node:module';
import path from 'node:path';

/** What the static graph from one entry file reaches. */
export interface ImportGraph {
  /** Our files, relative to the repository root. */
  files: string[];
  /** Bare package names imported, each with one file that imports it. */
  packages: Map<string, string>;
}

// Static `import ... from 'x'`, `export ... from 'x'` and side-effect `import 'x'`; `import('x')` is not matched.
const STATIC_IMPORT = /^\s*(?:import|export)\s+(?:type\s+)?(?:[^;]*?\s+from\s+)?['"]([^'"]+)['"]/gm;
const TYPE_ONLY = /^\s*(?:import|export)\s+type\s/;

/** The package name of a bare specifier (`@scope/pkg/sub` -> `@scope/pkg`). */
function packageName(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
}

/** Walks the static, non-type-only imports from `entry` (a path relative to `root`). */
export function importGraph(root: string, entry: string): ImportGraph {
  const files = new Set<string>();
  const packages = new Map<string, string>();
  const visit = (rel: string): void => {
    if (files.has(rel)) return;
    files.add(rel);
    const text = fs.readFileSync(path.join(root, rel), 'utf8');
    for (const m of text.matchAll(STATIC_IMPORT)) {
      if (TYPE_ONLY.test(m[0])) continue;
      const spec = m[1]!;
      if (spec.startsWith('.')) visit(path.relative(root, path.resolve(root, path.dirname(rel), spec)));
      else if (!spec.startsWith('node:') && !builtinModules.includes(spec)) packages.set(packageName(spec), packages.get(packageName(spec)) ?? rel);
    }
  };
  visit(entry);
  return { files: [...files].sort(), packages };
}
