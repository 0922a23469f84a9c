// The static import graph, read from the source text. Two uses: which of our files `bin/migrate.ts`
// loads at start and which packages they need (a production install, `npm ci --omit=dev`, has only
// `dependencies`, so everything reached must be one of those or a Node built-in; demo and test support
// are loaded with `import()` only when `migrate demo` runs), and the import cycles under src/ (there
// must be none). Both are checked by test/cli-contract.test.ts.

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

/**
 * Every runtime import edge between our files under `dir`. Type-only imports are left out: they vanish
 * when the code runs, and a contract type shared both ways (the Step context names the config, the
 * config names the engine) is not a knot in the load order.
 */
export function importEdges(root: string, dir: string): Map<string, string[]> {
  const edges = new Map<string, string[]>();
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const child = path.join(rel, entry.name);
      if (entry.isDirectory()) walk(child);
      else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) {
        const text = fs.readFileSync(path.join(root, child), 'utf8');
        const targets = [...text.matchAll(STATIC_IMPORT)]
          .filter((m) => !TYPE_ONLY.test(m[0]))
          .map((m) => m[1]!)
          .filter((s) => s.startsWith('.'))
          .map((s) => path.relative(root, path.resolve(root, rel, s)));
        edges.set(child, targets);
      }
    }
  };
  walk(dir);
  return edges;
}

/** The import cycles among `edges`, each as the list of files around it (Tarjan's strongly connected components). */
export function importCycles(edges: Map<string, string[]>): string[][] {
  let index = 0;
  const indexOf = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  const connect = (v: string): void => {
    indexOf.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of edges.get(v) ?? []) {
      if (!edges.has(w)) continue;
      if (!indexOf.has(w)) {
        connect(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, indexOf.get(w)!));
    }
    if (low.get(v) !== indexOf.get(v)) return;
    const component: string[] = [];
    for (let w = stack.pop()!; ; w = stack.pop()!) {
      onStack.delete(w);
      component.push(w);
      if (w === v) break;
    }
    if (component.length > 1 || (edges.get(v) ?? []).includes(v)) cycles.push(component.sort());
  };
  for (const v of edges.keys()) if (!indexOf.has(v)) connect(v);
  return cycles;
}
