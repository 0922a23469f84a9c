// Work queues for the copy: N workers, each owning its own connections. The first failure stops new
// work and is rethrown after in-flight items settle, so no connection is left mid-statement.

/** Runs `work` over `items` in order with at most `jobs` at once: a dependency-free {@link runGraph}. */
export async function runPool<T, W>(
  items: readonly T[],
  jobs: number,
  openWorker: () => Promise<W>,
  work: (worker: W, item: T) => Promise<void>,
  closeWorker: (worker: W) => Promise<void>,
): Promise<void> {
  const tasks = items.map((item, i) => ({ id: String(i), after: [] as string[], priority: -i, item }));
  await runGraph(tasks, jobs, openWorker, (worker, task) => work(worker, task.item), closeWorker);
}

/** A unit of work that may start once every id in `after` is finished. */
export interface GraphTask {
  /** Unique id (the journal unit). */
  id: string;
  /** Ids that must finish first; ids not in the graph count as finished. */
  after: readonly string[];
  /** Higher starts first among ready tasks (e.g. table bytes: largest first). */
  priority: number;
}

/**
 * Runs a dependency graph on `jobs` workers: each free worker takes the ready task with the highest
 * priority, so a table's indexes start the moment its data is in while other tables still copy.
 * The first failure stops new work; in-flight tasks settle before it is rethrown.
 */
export async function runGraph<T extends GraphTask, W>(
  tasks: readonly T[],
  jobs: number,
  openWorker: () => Promise<W>,
  work: (worker: W, task: T) => Promise<void>,
  closeWorker: (worker: W) => Promise<void>,
): Promise<void> {
  const ids = new Set(tasks.map((t) => t.id));
  const finished = new Set<string>();
  const pending = [...tasks].sort((a, b) => b.priority - a.priority);
  let running = 0;
  let failure: unknown = null;
  let wake: (() => void)[] = [];
  const notify = (): void => {
    const w = wake;
    wake = [];
    for (const f of w) f();
  };
  const ready = (t: T): boolean => t.after.every((d) => finished.has(d) || !ids.has(d));
  const take = (): T | null => {
    const i = pending.findIndex(ready);
    return i < 0 ? null : (pending.splice(i, 1)[0] as T);
  };
  const lanes = Math.max(1, Math.min(jobs, tasks.length));
  await Promise.all(
    Array.from({ length: lanes }, async () => {
      let worker: W;
      try {
        worker = await openWorker();
      } catch (err) {
        if (failure === null) failure = err;
        notify();
        return;
      }
      try {
        while (failure === null && pending.length) {
          const task = take();
          if (!task) {
            if (running === 0) {
              failure = new Error(`task graph cannot progress: ${pending.map((t) => t.id).join(', ')} wait on each other`);
              notify();
              break;
            }
            await new Promise<void>((resolve) => wake.push(resolve));
            continue;
          }
          running++;
          try {
            await work(worker, task);
            finished.add(task.id);
          } catch (err) {
            if (failure === null) failure = err;
          } finally {
            running--;
            notify();
          }
        }
      } finally {
        await closeWorker(worker);
      }
    }),
  );
  if (failure !== null) throw failure;
}
