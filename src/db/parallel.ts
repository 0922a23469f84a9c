// A tiny work queue: N workers take items in order; the first failure stops new work and is
// rethrown after in-flight items settle, so no connection is left mid-statement.

/** Runs `work` over `items` with at most `jobs` at once, each worker owning its own resources. */
export async function runPool<T, W>(
  items: readonly T[],
  jobs: number,
  openWorker: () => Promise<W>,
  work: (worker: W, item: T) => Promise<void>,
  closeWorker: (worker: W) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failure: unknown = null;
  const lanes = Math.max(1, Math.min(jobs, items.length));
  await Promise.all(
    Array.from({ length: lanes }, async () => {
      let worker: W;
      try {
        worker = await openWorker();
      } catch (err) {
        if (failure === null) failure = err;
        return;
      }
      try {
        while (failure === null && next < items.length) {
          const item = items[next++] as T;
          try {
            await work(worker, item);
          } catch (err) {
            if (failure === null) failure = err;
          }
        }
      } finally {
        await closeWorker(worker);
      }
    }),
  );
  if (failure !== null) throw failure;
}
