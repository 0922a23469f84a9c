// The stream's publication: the tables the engine writes in normal operation (those present on
// blue), or, without engine knowledge, every table the copy takes. Planned by the capture step, so
// it exists before the slot is created and the first streamed transaction already carries them.

import { listTables } from '../db/catalog.ts';
import { ident, qualified, tableKey } from '../db/sql.ts';
import type { Action, StepContext } from '../steps/step.ts';
import { streamObjects } from './names.ts';

/** The tables the stream publishes, schema-qualified, in a stable order. */
export async function publishedTables(ctx: StepContext): Promise<string[]> {
  const copied = (await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas)).map(tableKey);
  const writes = ctx.config.engine.writes;
  return (writes.length ? writes.filter((t) => copied.includes(t)) : copied).sort();
}

/** The action that (re)creates the publication on blue. */
export async function publicationAction(ctx: StepContext): Promise<Action> {
  const { publication: name } = await streamObjects(ctx.blue);
  const tables = await publishedTables(ctx);
  const list = tables.map((t) => {
    const [schema = 'public', table = ''] = t.split('.');
    return qualified(schema, table);
  });
  return {
    id: 'publication',
    sentence: `publish the ${tables.length} table(s) the engine writes for the change stream (publication ${name})`,
    side: 'blue',
    sql: `DROP PUBLICATION IF EXISTS ${ident(name)};\nCREATE PUBLICATION ${ident(name)} FOR TABLE ${list.join(', ')}`,
    facts: { publication: name, tables },
  };
}
