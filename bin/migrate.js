#!/usr/bin/env node
// Thin launcher for the TypeScript CLI (bin/migrate.ts and src/).
//
// Loading it through tsx's module hooks costs about a second per start: every one of several hundred
// imports crosses to the hooks' thread. So the launcher bundles bin/migrate.ts and src/ once with
// esbuild (the transpiler tsx itself uses) into node_modules/.cache/pg-bluegreen/<hash>.mjs, keyed by
// the content of every source file, and imports that; packages stay external and load natively.
// `import.meta.url` is replaced per file by the file's own URL, so sql/ and package.json are found
// exactly as from the sources. Error stacks point at the .ts files (inline source map).
// tsx is used instead when the cache cannot be written, for `migrate demo` (it loads the support/
// TypeScript at run time), and when BLUEGREEN_NO_BUNDLE=1.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BUNDLED = [path.join(ROOT, 'src'), path.join(ROOT, 'bin')];

function sourceFiles(dir) {
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => path.join(e.parentPath ?? e.path, e.name))
    .sort();
}

function sourceHash() {
  const hash = crypto.createHash('sha256');
  for (const file of [fileURLToPath(import.meta.url), path.join(ROOT, 'package.json'), ...BUNDLED.flatMap(sourceFiles)]) {
    hash.update(file).update('\0').update(fs.readFileSync(file)).update('\0');
  }
  return hash.digest('hex').slice(0, 16);
}

const inBundle = (file) => BUNDLED.some((dir) => file.startsWith(dir + path.sep));

/** esbuild plugin: each file's import.meta.url is its own URL; imports outside src/ and bin/ stay external, by absolute URL. */
const sourceLocations = {
  name: 'source-locations',
  setup(build) {
    build.onResolve({ filter: /^\.\.?\// }, (args) => {
      const target = path.resolve(args.resolveDir, args.path);
      return inBundle(target) ? undefined : { path: pathToFileURL(target).href, external: true };
    });
    build.onLoad({ filter: /\.ts$/ }, (args) => ({
      contents: fs.readFileSync(args.path, 'utf8').replaceAll('import.meta.url', JSON.stringify(pathToFileURL(args.path).href)),
      loader: 'ts',
    }));
  },
};

async function bundled() {
  const dir = path.join(ROOT, 'node_modules', '.cache', 'pg-bluegreen');
  const file = path.join(dir, `migrate-${sourceHash()}.mjs`);
  if (!fs.existsSync(file)) {
    const { build } = await import('esbuild');
    fs.mkdirSync(dir, { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    await build({
      entryPoints: [path.join(ROOT, 'bin', 'migrate.ts')],
      outfile: tmp,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      packages: 'external',
      sourcemap: 'inline',
      logLevel: 'silent',
      plugins: [sourceLocations],
    });
    fs.renameSync(tmp, file); // atomic: a concurrent start may write the same file
    // Bundles of earlier sources go once nobody can be starting from them any more.
    const hourAgo = Date.now() - 3600_000;
    for (const old of fs.readdirSync(dir)) {
      const oldFile = path.join(dir, old);
      if (oldFile !== file && fs.statSync(oldFile).mtimeMs < hourAgo) fs.rmSync(oldFile, { force: true });
    }
  }
  return file;
}

async function viaTsx() {
  const { register } = await import('tsx/esm/api');
  register();
  await import('./migrate.ts');
}

if (process.env.BLUEGREEN_NO_BUNDLE === '1' || process.argv[2] === 'demo') {
  await viaTsx();
} else {
  let file;
  try {
    file = await bundled();
  } catch {
    file = undefined; // read-only install or no esbuild: tsx runs the same sources
  }
  if (file) {
    process.setSourceMapsEnabled(true);
    await import(pathToFileURL(file).href);
  } else {
    await viaTsx();
  }
}
