// Names of the replication objects migrate creates on blue. Slots are per cluster, so the name
// carries blue's database (sanitised, plus a short hash of the exact name); the prefix `bluegreen`
// lets `migrate finish`, `doctor` and `status` tell ours from any other.

import crypto from 'node:crypto';
import { query, type Db } from '../db/connect.ts';

/** Prefix of every slot and publication of ours. */
export const STREAM_PREFIX = 'bluegreen';

function databasePart(database: string): string {
  const readable = database.toLowerCase().replace(/[^a-z0-9]/g, '').slice(0, 32);
  return `${readable}_${crypto.createHash('sha256').update(database).digest('hex').slice(0, 8)}`;
}

/** The logical replication slot of blue's database `database` (at most 63 characters, [a-z0-9_]). */
export function slotName(database: string): string {
  return `${STREAM_PREFIX}_${databasePart(database)}`;
}

/** The publication of blue's database `database` (the tables the engine writes). */
export function publicationName(database: string): string {
  return `${STREAM_PREFIX}_pub_${databasePart(database)}`;
}

/** Blue's database and the names of its slot and publication, read once from the connection. */
export async function streamObjects(blue: Db): Promise<{ database: string; slot: string; publication: string }> {
  const database = (await query<{ db: string }>(blue, 'SELECT current_database() AS db', [], { side: 'blue' })).rows[0]!.db;
  return { database, slot: slotName(database), publication: publicationName(database) };
}
