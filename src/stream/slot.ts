// The stream's start: a logical replication slot created with an exported snapshot. The copy runs
// inside that snapshot, and the slot hands out exactly the transactions that committed after it, so
// no write falls between copy and stream and none arrives twice. The exporting session must stay
// idle until the copy is done (its snapshot dies with it), like any exporter of ours.

import { connect, query, toPostgresError, type Db } from '../db/connect.ts';
import { ident } from '../db/sql.ts';
import { StateError } from '../errors.ts';
import { streamObjects } from './names.ts';

/** A slot with its exported snapshot, held open until `release`. */
export interface SlotExport {
  /** The slot. */
  slot: string;
  /** The LSN from which the slot streams (every transaction committed after the snapshot). */
  consistentPoint: string;
  /** The exported snapshot the copy imports. */
  snapshotId: string;
  /** Ends the exporting session (idempotent): the snapshot is gone afterwards, the slot stays. */
  release(): Promise<void>;
}

/** The slot of blue's current database (see names.ts), and whether it exists and is in use. */
export async function slotOf(blue: Db): Promise<{ name: string; exists: boolean; active: boolean }> {
  const { slot: name } = await streamObjects(blue);
  const found = await query<{ active: boolean }>(blue, 'SELECT active FROM pg_replication_slots WHERE slot_name = $1', [name], { side: 'blue' });
  return { name, exists: found.rows.length > 0, active: found.rows[0]?.active === true };
}

/** Drops the slot of blue's database when it exists and nobody reads it; refuses (exit 3) while a reader holds it. */
export async function dropSlot(blue: Db): Promise<string | null> {
  const slot = await slotOf(blue);
  if (!slot.exists) return null;
  if (slot.active) throw new StateError(`replication slot ${slot.name} is in use by another session`, 'stop the other migrate command reading it (`migrate status` names the run), then run this again');
  await query(blue, 'SELECT pg_drop_replication_slot($1)', [slot.name], { side: 'blue' });
  return slot.name;
}

/** Creates the slot of blue's database (replacing an unused one left by an earlier attempt) with an exported snapshot. */
export async function createSlotExport(blue: Db, blueDsn: string): Promise<SlotExport> {
  await dropSlot(blue);
  const { name } = await slotOf(blue);
  const db = await connect('blue', blueDsn, 'migrate-stream-slot', { holdsSnapshot: true, replication: true });
  try {
    // The pre-15 spelling (EXPORT_SNAPSHOT) is still accepted by every later server.
    const { rows } = await db.query<{ consistent_point: string; snapshot_name: string }>(`CREATE_REPLICATION_SLOT ${ident(name)} LOGICAL pgoutput EXPORT_SNAPSHOT`);
    let open = true;
    return {
      slot: name,
      consistentPoint: rows[0]!.consistent_point,
      snapshotId: rows[0]!.snapshot_name,
      release: async () => {
        if (!open) return;
        open = false;
        await db.end().catch(() => {});
      },
    };
  } catch (err) {
    await db.end().catch(() => {});
    throw toPostgresError(err, { side: 'blue' });
  }
}
