// The configured queue as clients: the revocations queue and, when `queue.deadLetterQueueId` is set,
// its dead-letter queue, both with their secrets resolved from the environment. Lives beside the
// clients so `migrate drain`, `migrate cutover` and doctor's consumer check build them one way.

import type { ResolvedConfig } from '../config/load.ts';
import { ConfigError } from '../errors.ts';
import { HttpQueue, type HttpQueueOptions } from './http.ts';
import type { RevocationQueue } from './queue.ts';

/** The queues `migrate drain` pulls and the key their messages are signed with. */
export interface ConfiguredQueue {
  /** The revocations queue (HTTP pull consumer). */
  queue: RevocationQueue;
  /** Its dead-letter queue, when configured: verified dead letters are replayed, the rest kept. */
  deadLetters?: RevocationQueue | undefined;
  /** The router's HMAC key. */
  hmacKey: string;
  /** Lease per pull. */
  visibilityTimeoutMs: number;
  /** Values never to print. */
  secrets: string[];
}

/** The queue from config, with its secrets resolved from the environment; null when none is configured. */
export function queueFromConfig(config: ResolvedConfig, env: NodeJS.ProcessEnv = process.env, client: Pick<HttpQueueOptions, 'retry' | 'sleep'> = {}): ConfiguredQueue | null {
  const q = config.raw.queue;
  if (q.kind === 'none') return null;
  const issues: { path: string; message: string }[] = [];
  const secret = (key: 'token' | 'hmacKey'): string => {
    const name = q[key].slice(4);
    const value = env[name];
    if (!value) issues.push({ path: `queue.${key}`, message: `environment variable ${name} is not set` });
    return value ?? '';
  };
  const token = secret('token');
  const hmacKey = secret('hmacKey');
  if (issues.length) throw new ConfigError(config.file, issues, 'export the named variables (the queue token and the router HMAC key) and run `migrate drain` again');
  const at = (queueId: string): HttpQueue => new HttpQueue({ accountId: q.accountId, queueId, token, ...(q.baseUrl ? { baseUrl: q.baseUrl } : {}), ...client });
  return {
    queue: at(q.queueId),
    deadLetters: q.deadLetterQueueId ? at(q.deadLetterQueueId) : undefined,
    hmacKey,
    visibilityTimeoutMs: q.visibilityTimeoutMs,
    secrets: [token, hmacKey],
  };
}
