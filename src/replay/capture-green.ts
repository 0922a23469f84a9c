// Capture on green after cutover: the same outbox function and triggers the capture step installs
// on blue, installed on green's new-shape tables (the engine declares which), so that a rollback to
// blue can replay every revocation green accepted in the meantime (`migrate drain --into blue`).

import fs from 'node:fs';
import type { CaptureTable } from '../config/schema.ts';
import { query, withTransaction, type Db } from '../db/connect.ts';
import { captureDdl } from '../steps/capture.ts';

const STATE_SQL = new URL('../../sql/state/bluegreen.sql', import.meta.url);
const CAPTURE_SQL = new URL('../../sql/state/capture.sql', import.meta.url);

/** Installs the outbox and capture triggers on green (idempotent, one transaction) for the engine's green tables; returns how many. */
export async function installGreenCapture(green: Db, tables: readonly CaptureTable[]): Promise<number> {
  await withTransaction(green, async () => {
    await query(green, fs.readFileSync(STATE_SQL, 'utf8'));
    await query(green, fs.readFileSync(CAPTURE_SQL, 'utf8'));
    await query(green, 'INSERT INTO bluegreen.capture DEFAULT VALUES ON CONFLICT (capture_id) DO NOTHING');
    for (const t of tables) for (const ddl of captureDdl(t)) await query(green, ddl, [], { side: 'green', sql: ddl });
  });
  return tables.length;
}
