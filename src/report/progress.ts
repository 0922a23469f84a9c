// Progress: listr2 on an interactive terminal, plain timestamped lines on stderr everywhere else
// (CI logs, --json runs), so stdout carries only the final report.

import { Listr } from 'listr2';
import type { ProgressSink } from '../runner.ts';
import type { StepName } from '../steps/step.ts';

/** Plain lines on stderr: `12:00:01 snapshot: copied public.x ...`. */
export function plainSink(stream: NodeJS.WritableStream = process.stderr): ProgressSink {
  const line = (text: string): void => {
    stream.write(`${new Date().toISOString().slice(11, 19)} ${text}\n`);
  };
  return {
    async step<T>(name: StepName, title: string, fn: (update: (text: string) => void) => Promise<T>): Promise<T> {
      line(`${name}: start (${title})`);
      const started = Date.now();
      try {
        const out = await fn((text) => line(`${name}: ${text}`));
        line(`${name}: done in ${Date.now() - started} ms`);
        return out;
      } catch (err) {
        line(`${name}: FAILED after ${Date.now() - started} ms`);
        throw err;
      }
    },
  };
}

/** listr2 task list, one task per step, with the step's latest progress line under it. */
export function listrSink(): ProgressSink {
  return {
    async step<T>(name: StepName, title: string, fn: (update: (text: string) => void) => Promise<T>): Promise<T> {
      let result: T | undefined;
      const list = new Listr(
        [
          {
            title: `${name}: ${title}`,
            task: async (_ctx, task) => {
              result = await fn((text) => {
                task.output = text;
              });
            },
            rendererOptions: { persistentOutput: false },
          },
        ],
        { exitOnError: true, rendererOptions: { collapseErrors: false } },
      );
      await list.run();
      return result as T;
    },
  };
}

/** The right sink for this process: listr2 only on a TTY without --json. */
export function progressSink(json: boolean): ProgressSink {
  return process.stdout.isTTY && !json && !process.env.CI ? listrSink() : plainSink();
}
