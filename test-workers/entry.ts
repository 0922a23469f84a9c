// The Worker the workerd tests run in: the router's fetch handler, route fence and coalescer, plus
// one queue handler that feeds the revocations queue to the consumer and the dead-letter queue to the
// sink. In production these are separate Workers (wrangler.router.jsonc, wrangler.consumer.jsonc).

import router, { RefreshCoalescer, RouteFence, type RouterEnv } from '../src/queue-consumer/router.ts';
import { handleBatch, type ConsumerEnv } from '../src/queue-consumer/consumer.ts';
import { sinkBatch, type SinkEnv } from '../src/queue-consumer/dlq-sink.ts';

export { RefreshCoalescer, RouteFence };

/** Every binding the test Worker has. */
export type TestEnv = RouterEnv & ConsumerEnv & SinkEnv & { GREEN_EMPTY: Hyperdrive; TO_CONSUMER: Queue };

/** Name of the dead-letter queue in the test config. */
export const DLQ_NAME = 'bluegreen-revocations-dlq';

export default {
  fetch: router.fetch,
  async queue(batch, env): Promise<void> {
    if (batch.queue === DLQ_NAME) await sinkBatch(batch, env);
    else await handleBatch(batch, env);
  },
} satisfies ExportedHandler<TestEnv>;
