// The consumer Worker: takes batches from the revocations queue, sends forged or malformed messages
// to the dead-letter queue with the reason (and acks them, so they are never retried forever),
// applies the rest to green in ONE set-based transaction through Hyperdrive, and acks each message
// only after that transaction committed. A failed write retries the batch; replay is idempotent
// (deduplicated on event id), so at-least-once delivery is harmless.

import { Client } from 'pg';
import { verifyRevocation, type RevocationBody } from './message.ts';
import { PAUSE_KEY, type DeadLetter } from './control.ts';
import { applyReplayBatch, type ReplayProfile } from '../replay/semantics.ts';

/** Bindings of the consumer (wrangler.consumer.jsonc). */
export interface ConsumerEnv {
  /** Hyperdrive in front of green. */
  GREEN: Hyperdrive;
  /** Producer for the dead-letter queue. */
  DLQ: Queue;
  /** Secret shared with the router. */
  REVOCATION_HMAC_KEY: string;
  /** Replay semantics of green's schema: `hydra-v1` or `hydra-v2`. */
  REPLAY_PROFILE: string;
  /** Local only (no `wrangler queues pause-delivery` in miniflare): KV holding the pause flag. */
  CONTROL?: KVNamespace;
  /** Local only: producer for the revocations queue itself, to park messages while paused. */
  REVOCATIONS?: Queue;
}

/** Seconds a parked message waits before it is offered again. */
const PARK_DELAY_SECONDS = 5;
const PROFILES: readonly ReplayProfile[] = ['hydra-v1', 'hydra-v2'];

function profileOf(env: ConsumerEnv): ReplayProfile {
  const p = PROFILES.find((x) => x === env.REPLAY_PROFILE);
  if (!p) throw new Error(`REPLAY_PROFILE must be one of ${PROFILES.join(', ')}, got ${JSON.stringify(env.REPLAY_PROFILE)}`);
  return p;
}

/** Writes the events to green in one transaction (applyReplayBatch) over a fresh Hyperdrive connection. */
async function applyToGreen(env: ConsumerEnv, profile: ReplayProfile, events: RevocationBody[]): Promise<{ applied: number; duplicates: number }> {
  const client = new Client({ connectionString: env.GREEN.connectionString });
  let closing = false;
  // Closing a workerd socket reports "Stream was cancelled"; only errors before that matter.
  client.on('error', (err: Error) => closing || console.error(`green connection error: ${err.message}`));
  await client.connect();
  try {
    return await applyReplayBatch(client, profile, events);
  } finally {
    closing = true;
    await client.end().catch(() => undefined);
  }
}

/** Local pause: re-queue the batch with a delay and ack it, so waiting never spends retry attempts. */
async function parkIfPaused(batch: MessageBatch, env: ConsumerEnv): Promise<boolean> {
  if (!env.CONTROL || !env.REVOCATIONS || (await env.CONTROL.get(PAUSE_KEY)) !== '1') return false;
  try {
    await env.REVOCATIONS.sendBatch(batch.messages.map((m) => ({ body: m.body, contentType: 'json' as const, delaySeconds: PARK_DELAY_SECONDS })));
    batch.ackAll();
  } catch (err) {
    console.error(`could not park a paused batch: ${String(err)}`);
    batch.retryAll({ delaySeconds: PARK_DELAY_SECONDS });
  }
  return true;
}

/** Handles one batch: dead-letter the rejects, apply the rest, ack only what is safely stored. */
export async function handleBatch(batch: MessageBatch, env: ConsumerEnv): Promise<void> {
  if (await parkIfPaused(batch, env)) return;
  const profile = profileOf(env);
  const good: { message: Message; body: RevocationBody }[] = [];
  const rejected: { message: Message; letter: DeadLetter }[] = [];
  for (const message of batch.messages) {
    const verdict = await verifyRevocation(message.body, env.REVOCATION_HMAC_KEY);
    if (verdict.ok) good.push({ message, body: verdict.body });
    else rejected.push({ message, letter: { reason: verdict.reason, detail: verdict.detail, original: message.body } });
  }
  if (rejected.length > 0) {
    try {
      await env.DLQ.sendBatch(rejected.map((r) => ({ body: r.letter, contentType: 'json' as const })));
      for (const r of rejected) r.message.ack();
    } catch (err) {
      console.error(`dead-letter queue refused ${rejected.length} message(s); they will be retried: ${String(err)}`);
      for (const r of rejected) r.message.retry();
    }
  }
  if (good.length === 0) return;
  try {
    const result = await applyToGreen(env, profile, good.map((g) => g.body));
    for (const g of good) g.message.ack();
    console.log(`applied ${result.applied} revocation(s) to green, ${result.duplicates} duplicate(s)`);
  } catch (err) {
    console.error(`green write failed; retrying ${good.length} message(s): ${String(err)}`);
    for (const g of good) g.message.retry();
  }
}

/** The consumer's queue handler. */
export default {
  async queue(batch, env): Promise<void> {
    await handleBatch(batch, env);
  },
} satisfies ExportedHandler<ConsumerEnv>;
