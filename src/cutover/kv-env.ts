// Which KV the CLI talks to: Cloudflare's (wrangler --remote) by default, or a local Miniflare
// persistence directory when BLUEGREEN_KV_PERSIST is set (the local demo and end-to-end tests,
// where the router Worker reads the same persisted namespace).

import { StateError } from '../errors.ts';
import { kvNamespaceStore, wranglerKv, type KvResolver, type KvStore } from './kv.ts';

/** A KV store over a Miniflare instance persisted at `dir`; `dispose` closes it. */
export async function miniflareKv(dir: string, binding = 'ROUTES'): Promise<{ store: KvStore; dispose: () => Promise<void> }> {
  // Miniflare is a dev dependency: loaded only for a local store, so a production install never needs it.
  const { Miniflare } = await import('miniflare').catch((err: unknown) => {
    throw new StateError(
      `BLUEGREEN_KV_PERSIST=${dir} asks for a local Miniflare KV store, but miniflare is not installed (${(err as Error).message.split('\n')[0]})`,
      'unset BLUEGREEN_KV_PERSIST to use Workers KV through wrangler (production), or install the dev dependencies with `npm ci`',
    );
  });
  const mf = new Miniflare({ modules: true, script: 'export default {fetch(){return new Response()}}', kvNamespaces: [binding], kvPersist: dir });
  const ns = await mf.getKVNamespace(binding);
  return { store: kvNamespaceStore(ns as unknown as Parameters<typeof kvNamespaceStore>[0]), dispose: () => mf.dispose() };
}

/** The resolver the CLI uses: wrangler for every namespace unless BLUEGREEN_KV_PERSIST names a local store; call `dispose` when done. */
export function kvFromEnv(env: NodeJS.ProcessEnv = process.env): { kv: KvResolver; dispose: () => Promise<void> } {
  const dir = env.BLUEGREEN_KV_PERSIST;
  if (!dir) return { kv: (id) => wranglerKv(id), dispose: async () => {} };
  let local: Promise<{ store: KvStore; dispose: () => Promise<void> }> | null = null;
  const lazy = (): Promise<KvStore> => (local ??= miniflareKv(dir)).then((l) => l.store);
  const store: KvStore = {
    get: async (key) => (await lazy()).get(key),
    put: async (key, value) => (await lazy()).put(key, value),
    delete: async (key) => (await lazy()).delete(key),
  };
  return { kv: () => store, dispose: async () => void (await local?.then((l) => l.dispose())) };
}
