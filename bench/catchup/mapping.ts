// The mapping the catch-up bench drives: the Hydra 1.x -> 2.x stream mapping, as the engine's version
// pair declares it (the same object the stream step uses).

import { HYDRA_V1_TO_V2 } from '../../src/engines/hydra/index.ts';
import type { StreamMapping } from '../../src/engines/types.ts';

/** The Hydra v1 -> v2 stream mapping. */
export function hydraMapping(): StreamMapping {
  const mapping = HYDRA_V1_TO_V2.streamMapping;
  if (!mapping) throw new Error('the Hydra version pair declares no stream mapping');
  return mapping;
}
