// Which KV the CLI talks to: Cloudflare's (wrangler --remote) by default, or a local Miniflare
// persistence directory when BLUEGREEN_KV_PERSIST is set (the local demo and end-to-end tests,
// where the router Worker reads the same persisted namespace).

import { Miniflare } from 'miniflare';
import { kvNamespaceStore, wranglerKv, type KvResolver, type KvStore } from './kv.ts';

/** A KV store over a Miniflare instance persisted at `dir`; `dispose` closes it. */
export async function miniflareKv(dir: string, binding = 'ROUTES'): Promise<{ store: KvStore; dispose: () => Promise<void> }> {
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
