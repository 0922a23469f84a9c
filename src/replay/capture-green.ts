// Capture on green after cutover: the same outbox function and triggers the capture step installs
// on blue, installed on green's v2-shaped tables, so that a rollback to blue can replay every
// revocation green accepted in the meantime (`migrate drain --into blue`).

import fs from 'node:fs';
import type { CaptureTable } from '../config/schema.ts';
import { query, type Db } from '../db/connect.ts';
import { captureDdl } from '../steps/capture.ts';

const STATE_SQL = new URL('../../sql/state/bluegreen.sql', import.meta.url);
const CAPTURE_SQL = new URL('../../sql/state/capture.sql', import.meta.url);

const token = (table: string, kind: 'access' | 'refresh'): CaptureTable => ({ table, kind, key: ['signature'], activeColumn: 'active', extraColumns: ['request_id', 'subject', 'client_id'] });

/** Green's access-removing tables in the v2 shape: tokens as on blue, consent in the flow table. */
export const GREEN_V2_CAPTURE_TABLES: readonly CaptureTable[] = [
  token('public.hydra_oauth2_access', 'access'),
  token('public.hydra_oauth2_refresh', 'refresh'),
  { table: 'public.hydra_oauth2_flow', kind: 'consent', key: ['consent_challenge_id'], extraColumns: ['subject', 'client_id'] },
];

/** Installs the outbox and capture triggers on green (idempotent, one transaction); returns the tables captured. */
export async function installGreenCapture(green: Db, tables: readonly CaptureTable[] = GREEN_V2_CAPTURE_TABLES): Promise<number> {
  await query(green, 'BEGIN');
  try {
    await query(green, fs.readFileSync(STATE_SQL, 'utf8'));
    await query(green, fs.readFileSync(CAPTURE_SQL, 'utf8'));
    await query(green, 'INSERT INTO bluegreen.capture DEFAULT VALUES ON CONFLICT (capture_id) DO NOTHING');
    for (const t of tables) for (const ddl of captureDdl(t)) await query(green, ddl, [], { side: 'green', sql: ddl });
    await query(green, 'COMMIT');
  } catch (err) {
    await green.query('ROLLBACK').catch(() => {});
    throw err;
  }
  return tables.length;
}
