// Blue's side of the stream, on a normal connection: the slot and publication the reader needs, where
// the server's WAL stands (lag), and the errors of the replication connection as operator errors.

import { setTimeout as sleep } from 'node:timers/promises';
import { query, toPostgresError, type Db } from '../db/connect.ts';
import { OperatorError, StateError, UsageError } from '../errors.ts';
import { formatLsn, parseLsn } from './lsn.ts';

/** How long a slot still held by a reader that just went away may take to be released. */
const SLOT_RELEASE_WAIT_MS = 5000;
const SLOT_RELEASE_POLL_MS = 100;
/** Slot and publication names as src/stream/names.ts makes them; pgoutput's option list takes them unquoted. */
const NAME = /^[a-z0-9_]{1,63}$/;

/** The slot as the reader starts from it (where it may start, and where blue stood). */
export interface SlotStart {
  /** The slot's confirmed_flush_lsn: the server never starts before it, and the reader never confirms below it. */
  confirmed: bigint;
  /** pg_current_wal_insert_lsn() when the reader started: every transaction committed by then lies before it. */
  walAtStart: bigint;
}

const RESTART_HINT = 'the stream cannot go on without it: run `migrate apply --restart` to recreate the slot and publication (the copy starts again from the new slot\'s snapshot)';

/** The slot is gone (dropped, or never created). */
export function missingSlot(slot: string): StateError {
  return new StateError(`replication slot ${slot} does not exist on blue`, RESTART_HINT, { slot });
}

function missingPublication(publication: string): StateError {
  return new StateError(`publication ${publication} does not exist on blue`, RESTART_HINT, { publication });
}

function slotBusy(slot: string, pid: number | null): StateError {
  return new StateError(
    `replication slot ${slot} on blue is in use${pid ? ` by backend pid ${pid}` : ''}: another reader is draining it`,
    `wait for that reader to finish; if its process is gone, \`SELECT pg_terminate_backend(${pid ?? '<pid>'})\` on blue ends its session`,
    { slot, pid },
  );
}

/** Refuses slot and publication names that are not ours (they go unquoted into pgoutput's options). */
export function checkNames(slot: string, publication: string): void {
  for (const [what, name] of [['slot', slot], ['publication', publication]] as const) {
    if (!NAME.test(name)) throw new UsageError(`${what} name ${JSON.stringify(name)} is not a name migrate makes`, 'use slotName(database) and publicationName(database) from src/stream/names.ts');
  }
}

interface SlotRow {
  plugin: string | null;
  here: boolean | null;
  confirmed: string | null;
  active_pid: number | null;
  wal_status: string | null;
  has_pub: boolean;
  current: string;
}

async function readSlot(blue: Db, slot: string, publication: string): Promise<SlotRow> {
  const { rows } = await query<SlotRow>(
    blue,
    `SELECT s.plugin, s.database = current_database() AS here, s.confirmed_flush_lsn::text AS confirmed, s.active_pid, s.wal_status,
            EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2) AS has_pub, pg_current_wal_insert_lsn()::text AS current
       FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = $1`,
    [slot, publication],
    { side: 'blue' },
  );
  return rows[0]!;
}

/**
 * Checks that the slot exists here, decodes with pgoutput, still has its WAL and is free (waiting a
 * little for a reader that just went away to release it), and that the publication exists.
 */
export async function checkSlot(blue: Db, slot: string, publication: string): Promise<SlotStart> {
  const deadline = Date.now() + SLOT_RELEASE_WAIT_MS;
  for (;;) {
    const row = await readSlot(blue, slot, publication);
    if (row.plugin === null) throw missingSlot(slot);
    if (row.plugin !== 'pgoutput' || !row.here) {
      throw new StateError(`replication slot ${slot} on blue is not a pgoutput slot of this database`, RESTART_HINT, { slot, plugin: row.plugin });
    }
    if (row.wal_status === 'lost' || row.confirmed === null) {
      throw new StateError(`replication slot ${slot} on blue has lost the WAL it needs (wal_status ${row.wal_status})`, RESTART_HINT, { slot });
    }
    if (!row.has_pub) throw missingPublication(publication);
    if (row.active_pid === null) return { confirmed: parseLsn(row.confirmed), walAtStart: parseLsn(row.current) };
    if (Date.now() >= deadline) throw slotBusy(slot, row.active_pid);
    await sleep(SLOT_RELEASE_POLL_MS);
  }
}

/** Bytes of WAL blue has written past `position` (the last staged commit). */
export async function lagBytes(blue: Db, position: bigint): Promise<number> {
  const { rows } = await query<{ lag: number }>(blue, 'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8 AS lag', [formatLsn(position)], { side: 'blue' });
  return Math.max(0, rows[0]?.lag ?? 0);
}

/** An error of the replication connection as an operator error (the slot or publication gone, the slot taken, blue lost). */
export function replicationError(err: unknown, slot: string, publication: string): OperatorError {
  if (err instanceof OperatorError) return err;
  const e = err as { code?: unknown; message?: unknown } | null;
  const message = typeof e?.message === 'string' ? e.message : '';
  if (e?.code === '42704' && message.includes('replication slot')) return missingSlot(slot);
  if (e?.code === '42704' && message.includes('publication')) return missingPublication(publication);
  if (e?.code === '55006') return slotBusy(slot, Number(/PID (\d+)/i.exec(message)?.[1]) || null);
  return toPostgresError(err, { side: 'blue' });
}
