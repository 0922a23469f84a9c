// `npm run check:imports` (run by .ci/run): fails when src/ has an import cycle, when a product file
// under src/ statically imports demo or test support (support/, test/), or when the start-up graph of
// bin/migrate.ts reaches them. Prints each offence; exit 1 when there is any.

import { fileURLToPath } from 'node:url';
import { importCycles, importEdges, importGraph } from './import-graph.ts';

const root = fileURLToPath(new URL('../', import.meta.url));
const edges = importEdges(root, 'src');
const offences = [
  ...importCycles(edges).map((cycle) => `import cycle: ${cycle.join(' -> ')}`),
  ...[...edges].flatMap(([from, tos]) => tos.filter((to) => /^(support|test)\//.test(to)).map((to) => `src imports support code: ${from} -> ${to}`)),
  ...importGraph(root, 'bin/migrate.ts').files.filter((f) => /^(support|test)\//.test(f)).map((f) => `start-up graph reaches ${f}`),
];
for (const line of offences) console.error(line);
console.log(JSON.stringify({ files: edges.size, offences: offences.length }));
process.exitCode = offences.length ? 1 : 0;
