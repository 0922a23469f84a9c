// Is blue ready for the lossless window, and how is our slot doing? The stream (stream.enabled) keeps
// a logical replication slot on blue for hours: everything it needs is checked before the slot is
// made (wal_level, a free slot and WAL sender, the REPLICATION privilege, a publication we may
// create, a replica identity on every published table), and a slot nobody reads is the one thing
// that can hurt blue itself (it keeps WAL until the disk is full), so its retained WAL is reported
// by `doctor` and `status`; `status` also shows green's lag behind blue (bytes and seconds), the recent
// rate and an ETA. Everything here is read-only: SHOW-like settings, the catalogs and green's marks.

import { query, type Db } from '../db/connect.ts';
import { ident, literal, qualified } from '../db/sql.ts';
import { latestRun } from '../state/journal.ts';
import { readProgress, unmappedChanges } from './changelog.ts';
import { formatLsn, humanBytes, humanSeconds, parseLsn } from './lsn.ts';
import { STREAM_PREFIX, streamObjects } from './names.ts';

/** One readiness finding, in preflight's CheckResult shape. */
export interface StreamCheck {
  /** Check id (`stream-...`). */
  id: string;
  /** False fails the preflight when stream.enabled; a warning is always ok. */
  ok: boolean;
  /** What was found. */
  detail: string;
  /** What to do about it (failures and warnings). */
  hint?: string;
  /** A finding that never fails a check but must be read (ok stays true). */
  warn?: boolean;
}

/**
 * Roles whose members may create replication slots without the REPLICATION attribute: Amazon RDS and
 * Aurora grant `rds_replication` (rds_superuser is a member). Cloud SQL and Azure Flexible Server give
 * the REPLICATION attribute itself (`ALTER ROLE ... WITH REPLICATION`), which rolreplication shows.
 */
const REPLICATION_ROLES = ['rds_replication'] as const;

/** What to suggest for max_slot_wal_keep_size when it is unlimited. */
const SUGGESTED_KEEP_SIZE = '50GB';

/** `schema.table` (unquoted; no dot means `public`) as its two parts. */
function splitTable(key: string): { schema: string; name: string } {
  const dot = key.indexOf('.');
  return dot < 0 ? { schema: 'public', name: key } : { schema: key.slice(0, dot), name: key.slice(dot + 1) };
}

interface Settings {
  wal_level: string;
  wal_level_pending: boolean;
  max_slots: number;
  used_slots: number;
  inactive_slots: number;
  max_senders: number;
  active_senders: number;
  keep_size: string | null;
  superuser: boolean;
  replication: boolean;
  can_create: boolean;
  via: string[];
  user: string;
  database: string;
}

async function settings(blue: Db): Promise<Settings> {
  const { rows } = await query<Settings>(
    blue,
    `SELECT current_setting('wal_level') AS wal_level,
            coalesce((SELECT pending_restart FROM pg_settings WHERE name = 'wal_level'), false) AS wal_level_pending,
            current_setting('max_replication_slots')::int AS max_slots,
            (SELECT count(*) FROM pg_replication_slots)::int AS used_slots,
            (SELECT count(*) FROM pg_replication_slots WHERE NOT active)::int AS inactive_slots,
            current_setting('max_wal_senders')::int AS max_senders,
            (SELECT count(*) FROM pg_stat_replication)::int AS active_senders,
            current_setting('max_slot_wal_keep_size', true) AS keep_size,
            r.rolsuper AS superuser, r.rolreplication AS replication,
            has_database_privilege(current_database(), 'CREATE') AS can_create,
            coalesce((SELECT array_agg(g.rolname::text ORDER BY g.rolname) FROM pg_roles g
                       WHERE g.rolname = ANY ($1::text[]) AND pg_has_role(current_user, g.oid, 'MEMBER')), '{}') AS via,
            current_user AS user, current_database() AS database
       FROM pg_roles r WHERE r.rolname = current_user`,
    [[...REPLICATION_ROLES]],
    { side: 'blue' },
  );
  return rows[0]!;
}

interface TableState {
  key: string;
  found: boolean;
  identity: string | null;
  has_pk: boolean;
  has_identity_index: boolean;
  owner: string | null;
  owned: boolean;
}

async function tableStates(blue: Db, tables: readonly string[]): Promise<TableState[]> {
  const parts = tables.map(splitTable);
  const { rows } = await query<TableState>(
    blue,
    `SELECT t.schema || '.' || t.name AS key, c.oid IS NOT NULL AS found, c.relreplident::text AS identity,
            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_pk,
            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) AS has_identity_index,
            pg_get_userbyid(c.relowner)::text AS owner,
            coalesce(pg_has_role(current_user, c.relowner, 'USAGE'), false) AS owned
       FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(schema, name, ord)
       LEFT JOIN pg_namespace n ON n.nspname = t.schema
       LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.name AND c.relkind IN ('r', 'p')
      ORDER BY t.ord`,
    [parts.map((p) => p.schema), parts.map((p) => p.name)],
    { side: 'blue' },
  );
  return rows;
}

/** True when UPDATE and DELETE on the table can be published: a primary key, FULL, or a live USING INDEX. */
function hasReplicaIdentity(t: TableState): boolean {
  if (t.identity === 'f') return true;
  if (t.identity === 'i') return t.has_identity_index;
  if (t.identity === 'd') return t.has_pk;
  return false;
}

function identityFix(key: string): string {
  const { schema, name } = splitTable(key);
  return `ALTER TABLE ${qualified(schema, name)} REPLICA IDENTITY FULL;`;
}

function walLevelCheck(s: Settings): StreamCheck {
  const pending = s.wal_level_pending ? ' (a changed wal_level waits for a restart)' : '';
  return {
    id: 'stream-wal-level',
    ok: s.wal_level === 'logical',
    detail: `blue wal_level=${s.wal_level}${pending}; logical decoding needs logical`,
    hint:
      'self-hosted: ALTER SYSTEM SET wal_level = logical; then restart blue. Amazon RDS / Aurora: set rds.logical_replication = 1 in the parameter group and reboot. ' +
      'Cloud SQL: set the cloudsql.logical_decoding flag to on (restarts the instance). Azure Flexible Server: set the server parameter wal_level = logical and restart',
  };
}

function slotsCheck(s: Settings): StreamCheck {
  const free = s.max_slots - s.used_slots;
  return {
    id: 'stream-slots',
    ok: free > 0,
    detail: `replication slots on blue: ${s.used_slots} of max_replication_slots=${s.max_slots} used (${s.inactive_slots} inactive), ${Math.max(free, 0)} free`,
    hint: 'the run needs one slot: drop a slot nobody uses (SELECT slot_name, active FROM pg_replication_slots; then SELECT pg_drop_replication_slot(\'name\')), or raise max_replication_slots (restart)',
  };
}

function sendersCheck(s: Settings): StreamCheck {
  const free = s.max_senders - s.active_senders;
  return {
    id: 'stream-wal-senders',
    ok: free > 0,
    detail: `WAL senders on blue: ${s.active_senders} of max_wal_senders=${s.max_senders} active, ${Math.max(free, 0)} free`,
    hint: 'the stream holds one replication connection: raise max_wal_senders (restart), or stop a replication client that is no longer needed',
  };
}

function replicationPrivilegeCheck(s: Settings): StreamCheck {
  const how = s.superuser ? 'superuser' : s.replication ? 'REPLICATION attribute' : s.via.length ? `member of ${s.via.join(', ')}` : null;
  return {
    id: 'stream-replication-privilege',
    ok: how !== null,
    detail: how ? `${s.user} may create replication slots (${how})` : `${s.user} has neither REPLICATION nor superuser nor membership in ${REPLICATION_ROLES.join(', ')}`,
    hint: `self-hosted, Cloud SQL (as a cloudsqlsuperuser member) and Azure Flexible Server (as an azure_pg_admin member): ALTER ROLE ${ident(s.user)} WITH REPLICATION; Amazon RDS / Aurora: GRANT rds_replication TO ${ident(s.user)}`,
  };
}

function publicationCheck(s: Settings, tables: readonly TableState[]): StreamCheck {
  const notOwned = tables.filter((t) => t.found && !t.owned);
  const problems = [
    ...(s.can_create ? [] : [`no CREATE on database ${s.database}`]),
    ...(notOwned.length ? [`not the owner of ${notOwned.map((t) => `${t.key} (owner ${t.owner})`).join(', ')}`] : []),
  ];
  const fixes = [
    ...(s.can_create ? [] : [`GRANT CREATE ON DATABASE ${ident(s.database)} TO ${ident(s.user)}`]),
    ...(notOwned.length ? [`connect as the tables' owner, or make ${s.user} a member of it (GRANT <owner> TO ${ident(s.user)})`] : []),
  ];
  return {
    id: 'stream-publication-privilege',
    ok: problems.length === 0,
    detail: problems.length
      ? `${s.user} cannot create the publication: ${problems.join('; ')}`
      : `${s.user} may create a publication for the ${tables.length} table(s) (${s.superuser ? 'superuser' : 'CREATE on the database, owns every table'})`,
    hint: `CREATE PUBLICATION ... FOR TABLE needs CREATE on the database and ownership of every table: ${fixes.join('; ')}`,
  };
}

function replicaIdentityCheck(tables: readonly TableState[]): StreamCheck {
  const missing = tables.filter((t) => !t.found);
  const without = tables.filter((t) => t.found && !hasReplicaIdentity(t));
  const problems = [
    ...(without.length ? [`no replica identity on ${without.map((t) => t.key).join(', ')}`] : []),
    ...(missing.length ? [`not on blue: ${missing.map((t) => t.key).join(', ')}`] : []),
  ];
  return {
    id: 'stream-replica-identity',
    ok: problems.length === 0,
    detail: problems.length
      ? `${problems.join('; ')} (once in the publication, UPDATE and DELETE on a table without one fail on blue)`
      : `${tables.length} table(s) to publish, each with a primary key or a replica identity`,
    hint: [
      ...(without.length ? [`give each a primary key, or run on blue: ${without.map((t) => identityFix(t.key)).join(' ')} (or REPLICA IDENTITY USING INDEX on a unique index over NOT NULL columns)`] : []),
      ...(missing.length ? ['the tables to publish must exist on blue: check the engine (profile) and snapshot.excludeSchemas'] : []),
    ].join('; ') || undefined,
  };
}

function walKeepCheck(s: Settings): StreamCheck {
  const fix = `set it to a size blue's disk can hold on top of its normal use, e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '${SUGGESTED_KEEP_SIZE}'; SELECT pg_reload_conf(); (no restart; on managed services set the parameter). With a limit, a slot that falls behind is invalidated (wal_status lost) instead of filling the disk; the stream must then start over (runbooks/stream.md)`;
  if (s.keep_size === null) {
    return {
      id: 'stream-wal-keep',
      ok: true,
      warn: true,
      detail: 'WARNING: this PostgreSQL has no max_slot_wal_keep_size (before 13): a stalled slot keeps WAL on blue until its disk is full',
      hint: 'watch the slot\'s retained WAL with `migrate status` while the stream runs, and drop a stalled slot (runbooks/stream.md)',
    };
  }
  if (s.keep_size === '-1') {
    return {
      id: 'stream-wal-keep',
      ok: true,
      warn: true,
      detail: "WARNING: max_slot_wal_keep_size = -1 (unlimited): a stalled slot keeps WAL on blue until its disk is full, and how much disk blue has free is unknown to migrate",
      hint: fix,
    };
  }
  return { id: 'stream-wal-keep', ok: true, detail: `max_slot_wal_keep_size = ${s.keep_size}: a slot that falls further behind is invalidated, blue's disk is safe` };
}

/** Every readiness check of the stream on blue (read-only); `tables` are schema-qualified and will be published. */
export async function streamReadiness(blue: Db, opts: { tables: readonly string[] }): Promise<StreamCheck[]> {
  const s = await settings(blue);
  const tables = await tableStates(blue, opts.tables);
  return [walLevelCheck(s), slotsCheck(s), sendersCheck(s), replicationPrivilegeCheck(s), publicationCheck(s, tables), replicaIdentityCheck(tables), walKeepCheck(s)];
}

/** One replication slot of ours on blue (current database). */
export interface SlotState {
  /** Slot name. */
  name: string;
  /** A client is streaming from it now. */
  active: boolean;
  /** Position up to which the reader confirmed it holds the changes. */
  confirmedFlushLsn: string | null;
  /** WAL blue keeps for the slot (current position minus restart_lsn), null once the slot lost its WAL. */
  retainedBytes: number | null;
  /** WAL not yet confirmed by the reader (current position minus confirmed_flush_lsn). */
  lagBytes: number | null;
  /** pg_replication_slots.wal_status (13+): reserved, extended, unreserved or lost; null before 13. */
  walStatus: string | null;
}

/** Slots of ours (prefix `bluegreen`) in blue's current database, by name. */
async function listOurSlots(blue: Db): Promise<SlotState[]> {
  const { rows } = await query<{ name: string; active: boolean; confirmed: string | null; retained: string | null; lag: string | null; wal_status: string | null }>(
    blue,
    `SELECT s.slot_name::text AS name, s.active, s.confirmed_flush_lsn::text AS confirmed,
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::text AS retained,
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::text AS lag,
            to_jsonb(s) ->> 'wal_status' AS wal_status
       FROM pg_replication_slots s
      WHERE s.slot_name LIKE $1 AND s.database = current_database()
      ORDER BY s.slot_name`,
    [`${STREAM_PREFIX}%`],
    { side: 'blue' },
  );
  const num = (v: string | null): number | null => (v === null ? null : Number(v));
  return rows.map((r) => ({ name: r.name, active: r.active, confirmedFlushLsn: r.confirmed, retainedBytes: num(r.retained), lagBytes: num(r.lag), walStatus: r.wal_status }));
}

/** How to remove a slot of ours that no run reads any more. */
export function dropSlotHint(name: string): string {
  return `\`migrate finish --abandon --yes\` (removes everything of migrate on blue and green), or on blue only: SELECT pg_drop_replication_slot(${literal(name)}) (stop its reader first if it is active)`;
}

/** Retained WAL of a slot for humans. */
export function retainedText(slot: SlotState): string {
  return slot.retainedBytes === null ? 'none (its WAL is gone: the slot is lost)' : humanBytes(slot.retainedBytes);
}

/** A slot of ours no live run reads, and why. */
export type LeftBehindSlot = SlotState & {
  /** Why no run reads it. */
  why: string;
};

/** The stream as `status` and `doctor` report it: the slot the runs read, and every other slot of ours (left behind). */
export interface StreamStatus {
  /** stream.enabled in the config. */
  enabled: boolean;
  /** The slot of blue's database (slotName), while a run that may read it is live. */
  slot: SlotState | null;
  /** Slots of ours no live run reads: they keep WAL on blue for nobody. */
  leftBehind: LeftBehindSlot[];
  /** How far green is behind and how fast it catches up: filled by `migrate status` (it reads green), null without a slot. */
  catchUp?: StreamLag | null;
}

/**
 * Reads our slots on blue and sorts them. The slot is per database (names.ts), shared by real runs and
 * rehearsals; it is read while the newest run of either kind is not abandoned. Any other slot of ours
 * in this database, or this database's slot with no live run, is left behind.
 */
export async function streamStatus(blue: Db, opts: { enabled: boolean }): Promise<StreamStatus> {
  const slots = await listOurSlots(blue);
  const { slot: own } = await streamObjects(blue);
  const runs = [await latestRun(blue, { kind: 'real' }), await latestRun(blue, { kind: 'rehearsal' })];
  const live = runs.some((r) => r !== null && r.status !== 'abandoned');
  const slot = live ? (slots.find((s) => s.name === own) ?? null) : null;
  return {
    enabled: opts.enabled,
    slot,
    leftBehind: slots
      .filter((s) => s !== slot)
      .map((s) => ({ ...s, why: s.name === own ? 'no live run: every run on blue is abandoned, or there is none' : `not this database's slot (${own})` })),
  };
}

function slotLine(slot: SlotState): string {
  const lag = slot.lagBytes === null ? '-' : humanBytes(slot.lagBytes);
  return `slot ${slot.name} ${slot.active ? 'active' : 'INACTIVE'}, confirmed up to ${slot.confirmedFlushLsn ?? '-'}, retained WAL ${retainedText(slot)}, lag ${lag}${slot.walStatus ? ` (wal_status ${slot.walStatus})` : ''}`;
}

/**
 * WAL blue may have written past the position up to which green holds everything and still count as
 * caught up: an idle blue writes a little (checkpoints, other tables), as the stream-caught-up guardrail allows.
 */
const CAUGHT_UP_BYTES = 1024 * 1024;

/** How far green is behind blue and how fast it is catching up (`migrate status`; raw numbers, see the runbook). */
export interface StreamLag {
  /** Bytes of WAL blue wrote past the point up to which green holds every change (mapped, when the engine maps). */
  lagBytes: number;
  /**
   * Now minus the commit time of the oldest blue transaction green lacks (staged, not mapped: exact;
   * not staged: at most the time since green was last caught up or its last staged commit); 0 when
   * caught up; null before anything is staged.
   */
  lagSeconds: number | null;
  /** Changes staged on green and not yet mapped into the new schema (0 without a mapping). */
  unmappedChanges: number;
  /** Changes the reader staged per second over its most recent rate window; null with no rate yet. */
  ratePerSecond: number | null;
  /** WAL bytes per second the reader got through over the same window. */
  bytesPerSecond: number | null;
  /** The rate window's length (10 to 20 s while batches come). */
  rateWindowSeconds: number | null;
  /** `caught-up`, `estimated` (etaSeconds = lagBytes / bytesPerSecond) or `unknown` (no rate yet). */
  eta: 'caught-up' | 'estimated' | 'unknown';
  /** Seconds until caught up at the recent rate; 0 when caught up, null when unknown. */
  etaSeconds: number | null;
  /** The last staged commit LSN; null before the first. */
  stagedLsn: string | null;
}

/** Green's lag behind blue for `slot`, its recent rate and the ETA; `mapped` when the engine maps staged changes. Read-only. */
export async function streamLag(blue: Db, green: Db, slot: SlotState, opts: { mapped: boolean }): Promise<StreamLag> {
  const current = parseLsn((await query<{ lsn: string }>(blue, 'SELECT pg_current_wal_lsn()::text AS lsn', [], { side: 'blue' })).rows[0]!.lsn);
  const mark = await readProgress(green, slot.name);
  const pending = opts.mapped && mark ? await unmappedChanges(green, slot.name) : { changes: 0, oldestCommit: null, firstLsn: null };
  const now = Date.now();
  // Green holds every change before `held`: the first unmapped commit, else the furthest of the staged
  // commit, the last catch-up point and what the slot confirmed.
  const known = [mark?.applied, mark?.caughtUp?.lsn, slot.confirmedFlushLsn === null ? null : parseLsn(slot.confirmedFlushLsn)].filter((x): x is bigint => typeof x === 'bigint');
  const held = pending.firstLsn ?? (known.length ? known.reduce((a, b) => (b > a ? b : a)) : current);
  const lagBytes = Math.max(0, Number(current - held));
  const since = [mark?.caughtUp?.at, mark?.committedAt].filter((d): d is Date => d instanceof Date).map((d) => d.getTime());
  const lagSeconds = pending.oldestCommit
    ? Math.max(0, (now - pending.oldestCommit.getTime()) / 1000)
    : mark && lagBytes <= CAUGHT_UP_BYTES
      ? 0
      : since.length
        ? Math.max(0, (now - Math.max(...since)) / 1000)
        : null;
  const rate = mark?.rate ?? null;
  const eta: StreamLag['eta'] = lagSeconds === 0 ? 'caught-up' : rate && rate.bytesPerSecond > 0 ? 'estimated' : 'unknown';
  return {
    lagBytes,
    lagSeconds,
    unmappedChanges: pending.changes,
    ratePerSecond: rate ? rate.changesPerSecond : null,
    bytesPerSecond: rate ? rate.bytesPerSecond : null,
    rateWindowSeconds: rate ? rate.seconds : null,
    eta,
    etaSeconds: eta === 'caught-up' ? 0 : eta === 'estimated' ? lagBytes / rate!.bytesPerSecond : null,
    stagedLsn: mark ? formatLsn(mark.applied!) : null,
  };
}

/** The text line of {@link StreamLag}: human units. */
export function lagLine(l: StreamLag): string {
  const behind = l.lagSeconds === null ? 'unknown' : l.lagSeconds === 0 ? 'caught up' : `${humanSeconds(l.lagSeconds)} behind`;
  const unmapped = l.unmappedChanges ? `, ${l.unmappedChanges} staged change(s) not yet mapped` : '';
  const rate =
    l.ratePerSecond === null ? 'rate unknown (no recent batches)' : `rate ${Math.round(l.ratePerSecond)} changes/s (${humanBytes(l.bytesPerSecond ?? 0)}/s of WAL, last ${humanSeconds(l.rateWindowSeconds ?? 0)} of batches)`;
  const eta = l.eta === 'caught-up' ? 'caught up' : l.eta === 'unknown' ? 'unknown (no rate yet)' : humanSeconds(l.etaSeconds ?? 0);
  return `stream: lag ${humanBytes(l.lagBytes)} of WAL, ${behind}${unmapped}; ${rate}; ETA ${eta}`;
}

/** The text lines of {@link StreamStatus}. */
export function streamStatusLines(s: StreamStatus): string[] {
  return [
    s.slot ? `stream: ${slotLine(s.slot)}` : s.enabled ? 'stream: no slot yet' : 'stream: off',
    ...(s.catchUp ? [lagLine(s.catchUp)] : []),
    ...s.leftBehind.map((l) => `stream: slot ${l.name} is LEFT BEHIND (${l.why}; ${l.active ? 'active' : 'inactive'}), retaining ${retainedText(l)} of WAL on blue; remove it: ${dropSlotHint(l.name)}`),
  ];
}
