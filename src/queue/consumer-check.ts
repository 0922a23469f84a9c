// Doctor's queue check. Cloudflare's pull-consumer docs: "If you have an existing push-based consumer,
// you will need to remove that first" before `wrangler queues consumer http add`, so `migrate drain`
// can only pull a queue whose consumer is an HTTP pull consumer; a paused queue answers every pull
// with 409 `queue_delivery_paused`; and a pull consumer without a dead-letter queue deletes what runs
// out of retries, which is the evidence of a forged message. This reads the consumers API and says
// which of these holds, with the wrangler commands that fix it.

import type { ResolvedConfig } from '../config/load.ts';
import { OperatorError } from '../errors.ts';
import type { CheckResult } from '../steps/preflight.ts';
import { queueFromConfig } from './from-config.ts';
import { describeConsumer, switchToPullHint, type PullConsumerSetup, type RevocationQueue } from './queue.ts';

async function checkOne(id: string, label: string, client: RevocationQueue, fallbackName: string, setup: (name: string) => PullConsumerSetup): Promise<CheckResult> {
  try {
    const [info, consumers] = await Promise.all([client.describe(), client.listConsumers()]);
    const name = info.name ?? fallbackName;
    const workers = consumers.filter((c) => c.type === 'worker');
    const pull = consumers.find((c) => c.type === 'http_pull');
    const listed = consumers.length ? consumers.map(describeConsumer).join(', ') : 'no consumer';
    if (workers.length || !pull) {
      return {
        id,
        ok: false,
        detail: `${label} ${name}: ${listed}; \`migrate drain\` needs an HTTP pull consumer and no Worker consumer`,
        hint: switchToPullHint(name, workers.map((w) => w.scriptName ?? '<script>'), setup(name)),
      };
    }
    if (!pull.deadLetterQueue) {
      const s = setup(name);
      return {
        id,
        ok: false,
        detail: `${label} ${name}: the HTTP pull consumer has no dead-letter queue, so what runs out of retries is deleted`,
        hint: `\`npx wrangler queues consumer http remove ${name}\`, then \`npx wrangler queues consumer http add ${name} --message-retries ${s.retries} --dead-letter-queue ${s.deadLetterQueue}\``,
      };
    }
    if (info.deliveryPaused) {
      return { id, ok: false, detail: `${label} ${name}: delivery is paused, so every pull answers 409 queue_delivery_paused`, hint: `\`npx wrangler queues resume-delivery ${name}\` (the pull consumer alone keeps messages waiting; runbooks/revocation-queue.md)` };
    }
    return { id, ok: true, detail: `${label} ${name}: HTTP pull consumer, dead letters to ${pull.deadLetterQueue}${pull.maxRetries === undefined ? '' : `, ${pull.maxRetries} retries`}` };
  } catch (err) {
    if (!(err instanceof OperatorError)) throw err;
    return { id, ok: false, detail: err.message, hint: err.hint };
  }
}

/** Where the check gets its secrets, or ready-made clients. */
export interface QueueCheckOptions {
  /** Environment the `env:` secrets are read from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Clients to use instead of the HTTP clients built from config. */
  clients?: { queue: RevocationQueue; deadLetters?: RevocationQueue | undefined };
}

/**
 * Checks the configured queue (`queue-consumer`) and, when `queue.deadLetterQueueId` is set, its
 * dead-letter queue (`dlq-consumer`); none when no queue is configured.
 */
export async function checkQueueConsumer(config: ResolvedConfig, opts: QueueCheckOptions = {}): Promise<CheckResult[]> {
  const q = config.raw.queue;
  if (q.kind === 'none') return [];
  let resolved = opts.clients;
  if (!resolved) {
    try {
      resolved = queueFromConfig(config, opts.env) ?? undefined;
    } catch (err) {
      if (!(err instanceof OperatorError)) throw err;
      return [{ id: 'queue-consumer', ok: false, detail: err.message, hint: err.hint }];
    }
  }
  if (!resolved) return [];
  const checks = [checkOne('queue-consumer', 'queue', resolved.queue, q.queueId, (name) => ({ retries: 10, deadLetterQueue: `${name}-dlq` }))];
  // The DLQ's own consumer must keep what drain cannot replay: many retries and a queue of its own.
  if (resolved.deadLetters) checks.push(checkOne('dlq-consumer', 'dead-letter queue', resolved.deadLetters, q.deadLetterQueueId ?? '', (name) => ({ retries: 100, deadLetterQueue: `${name}-kept` })));
  return Promise.all(checks);
}
