// Workers KV behind one small interface: in production `wrangler kv key get/put/delete --remote`
// (argv, no shell), in tests and the local demo a KVNamespace from Miniflare (or the Node launcher's
// binding). The router reads its upstream from KV, so the cutover flips it through this.

import { runArgv } from './process.ts';

/** The three KV operations a cutover needs. */
export interface KvStore {
  /** The value, or null when the key is absent. */
  get(key: string): Promise<string | null>;
  /** Writes a value. */
  put(key: string, value: string): Promise<void>;
  /** Removes the key. */
  delete(key: string): Promise<void>;
}

/** Resolves a namespace id to a store (production: wrangler; tests: Miniflare). */
export type KvResolver = (namespaceId: string) => KvStore;

/** The subset of Cloudflare's KVNamespace we use (Miniflare's `getKVNamespace` returns one). */
export interface KvNamespaceLike {
  get(key: string, type: 'text'): Promise<string | null>;
  put(key: string, value: string): Promise<void>;
  delete(key: string): Promise<void>;
}

/** Adapts a KVNamespace (Miniflare, workerd binding) to a KvStore. */
export function kvNamespaceStore(ns: KvNamespaceLike): KvStore {
  return { get: (key) => ns.get(key, 'text'), put: (key, value) => ns.put(key, value), delete: (key) => ns.delete(key) };
}

/** `wrangler` as argv: the project's pinned binary when present, else the one on PATH. */
export function wranglerArgv(): string[] {
  return [process.env.WRANGLER_BIN ?? 'wrangler'];
}

/** Production KV through `wrangler kv key ... --namespace-id ID --remote` (credentials from wrangler's own env). */
export function wranglerKv(namespaceId: string, timeoutMs = 30_000): KvStore {
  const run = async (args: string[]): Promise<string> => {
    const [bin, ...pre] = wranglerArgv();
    const out = await runArgv([bin!, ...pre, 'kv', 'key', ...args, '--namespace-id', namespaceId, '--remote'], { timeoutMs });
    if (out.code !== 0) throw new Error(`wrangler kv key ${args[0]} exited ${out.code}: ${out.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    return out.stdout;
  };
  return {
    // wrangler prints "Value not found" for a missing key and still exits 0.
    get: async (key) => {
      const text = await run(['get', key, '--text']);
      return /^Value not found\s*$/.test(text) ? null : text.replace(/\n$/, '');
    },
    put: async (key, value) => void (await run(['put', key, value])),
    delete: async (key) => void (await run(['delete', key])),
  };
}
