// Local only: a consumer for the dead-letter queue that keeps each dead letter in KV, so the demo,
// `local.ts` and the tests can list what was rejected. In production the DLQ is read with
// `wrangler queues` / the dashboard (runbooks/revocation-queue.md).

import { DEAD_LETTER_PREFIX } from './control.ts';

/** Bindings of the sink. */
export interface SinkEnv {
  /** KV that receives one entry per dead letter (`dlq:<message id>`). */
  DEAD_LETTERS: KVNamespace;
}

/** Stores every dead letter of a batch, then acks it. */
export async function sinkBatch(batch: MessageBatch, env: SinkEnv): Promise<void> {
  for (const message of batch.messages) {
    await env.DEAD_LETTERS.put(`${DEAD_LETTER_PREFIX}${message.id}`, JSON.stringify(message.body));
    message.ack();
  }
}

/** The sink's queue handler. */
export default {
  async queue(batch, env): Promise<void> {
    await sinkBatch(batch, env);
  },
} satisfies ExportedHandler<SinkEnv>;
