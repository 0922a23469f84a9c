// The per-table statements of the Hydra stream mapping: the batch's latest change per key, checks
// that mark what v2 would refuse (with the cleanup rule that refuses it), upserts, deletes, the
// ledger records (with the v2 row to hold in quarantine), detached challenges and sequences.

import { ident, literal } from '../../../db/sql.ts';
import type { MappingStatement } from '../../types.ts';
import {
  CLIENT, CONSENT, CONSENT_HANDLED, FLOW, JWK, keyText, list, LOGIN, NETWORK, RELATIONS, rel, REWRITES, RUN_ID, source, STAGE,
  tempTable, type Target, type V1Table,
} from './tables.ts';

/**
 * The batch's last change per table and key, with the merged row: per column the newest value any
 * non-delete change of the key sent. Most keys have one change, whose row is the merged row as it
 * is; only keys with several are merged column by column, in one pass (DISTINCT ON per key and
 * column), not with a rescan of the batch per change (that was quadratic in the batch size).
 */
const LATEST_QUERY = `WITH c AS (
  SELECT b.lsn, b.seq, b.relation, b.op, b.row, coalesce(b.row, b.key) AS src, ${keyText('coalesce(b.row, b.key)')} AS k
    FROM pg_temp.bluegreen_batch b
   WHERE b.op IN ('I', 'U', 'D') AND b.relation IN (${RELATIONS})
), n AS (
  SELECT c.*, count(*) FILTER (WHERE c.op <> 'D') OVER (PARTITION BY c.relation, c.k) AS puts,
         row_number() OVER (PARTITION BY c.relation, c.k ORDER BY c.lsn DESC, c.seq DESC) AS rn
    FROM c
), merged AS (
  SELECT x.relation, x.k, jsonb_object_agg(x.col, x.val) AS row
    FROM (SELECT DISTINCT ON (n.relation, n.k, e.key) n.relation, n.k, e.key AS col, e.value AS val
            FROM n CROSS JOIN LATERAL jsonb_each(n.row) e
           WHERE n.op <> 'D' AND n.puts > 1
           ORDER BY n.relation, n.k, e.key, n.lsn DESC, n.seq DESC) x
   GROUP BY x.relation, x.k
)
SELECT l.relation, l.k, l.op, l.lsn, l.seq, l.src,
       CASE WHEN l.op = 'D' THEN NULL WHEN l.puts > 1 THEN m.row ELSE nullif(l.row, '{}') END AS row,
       NULL::text AS skip, NULL::text AS rule, NULL::text AS detach
  FROM n l LEFT JOIN merged m ON l.puts > 1 AND m.relation = l.relation AND m.k = l.k
 WHERE l.rn = 1`;
/** The latest changes into the session's pg_temp.bluegreen_latest. */
export const LATEST: MappingStatement = { id: 'latest changes', sql: `INSERT INTO pg_temp.bluegreen_latest\n${LATEST_QUERY}` };
/**
 * The session's table of the latest changes (the mapping's setup), indexed on the key the checks
 * join it to itself on: a nested loop over it then stays linear whatever the planner estimates.
 */
export const LATEST_TABLE = `${tempTable('bluegreen_latest', LATEST_QUERY)}\nCREATE INDEX IF NOT EXISTS bluegreen_latest_key ON pg_temp.bluegreen_latest (relation, k);`;

/**
 * Statistics for a temporary table a statement just filled: the planner knows nothing of a table
 * autovacuum never sees, takes a few rows for thousands (or thousands for five) and picks full scans
 * of green's token tables or nested loops over the batch. Only the `columns` the statements join or
 * filter on: statistics of the jsonb rows cost more than the rest of a big batch's checks.
 */
export const analyze = (table: string, columns: readonly string[], reads?: readonly string[]): MappingStatement => ({
  id: `analyze ${table}`,
  sql: `ANALYZE pg_temp.${ident(table)} (${list(columns)})`,
  ...(reads ? { reads } : {}),
});

/** Changes no statement applies: truncates, key changes, tables without a mapping (recorded under rules of their own). */
export const UNMAPPABLE: MappingStatement = {
  id: 'unmappable changes',
  sql: `INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row, rule)
SELECT b.lsn, b.seq, b.relation, coalesce(b.key, b.row, '{}'::jsonb)::text,
       CASE WHEN b.op = 'T' THEN 'TRUNCATE on blue: not applied to green (would empty the v2 table and its children)'
            WHEN b.relation NOT IN (${RELATIONS}) THEN 'no mapping for this table'
            ELSE 'primary key changed: the row under the old key stays on green' END,
       coalesce(b.row, b.key),
       CASE WHEN b.op = 'T' THEN 'stream-truncate' WHEN b.relation NOT IN (${RELATIONS}) THEN 'stream-no-mapping' ELSE 'stream-key-change' END
  FROM pg_temp.bluegreen_batch b
 WHERE b.op = 'T' OR b.relation NOT IN (${RELATIONS})
    OR (b.op = 'U' AND b.key IS NOT NULL AND ${keyText('b.key')} <> ${keyText('b.row')})
ON CONFLICT DO NOTHING`,
};

/** `a` and `b` are the same row of `t` on green (nid too when green keys it per network). */
function keyJoin(t: Target, a: string, b: string): string {
  const cols = t.v1.key.map((k) => `${a}.${ident(k)} = ${b}.${ident(k)}`);
  if (t.perNetwork) cols.push(`${a}.nid = ${NETWORK}`);
  return cols.join(' AND ');
}
/** The latest non-delete changes of `t` with `p` (the row as green's row type) and `t0` (green's row). */
const latestRows = (t: Target, extra = ''): string => `pg_temp.bluegreen_latest l
  CROSS JOIN LATERAL jsonb_populate_record(NULL::${t.table}, l.row) p
  LEFT JOIN ${t.table} t0 ON ${keyJoin(t, 't0', 'p')}
 WHERE l.relation = ${rel(t.v1)} AND l.op <> 'D'${extra}`;

/** One reason the v2 constraints refuse a row: when (SQL over l, p, t0), under which rule, why. */
interface Refusal {
  /** Condition over `l`, `p` and `t0`. */
  when: string;
  /** The rule's name (SQL text expression). */
  rule: string;
  /** The reason (SQL text expression). */
  reason: string;
}

/** Marks the latest changes of `t` that must not be applied; the first refusal that holds wins. */
function skipStatement(t: Target, refusals: readonly Refusal[]): MappingStatement {
  const pick = (f: 'rule' | 'reason'): string => `CASE ${refusals.map((r) => `WHEN ${r.when} THEN ${r[f]}`).join(' ')} END`;
  return {
    id: `check ${t.v1.name}`,
    reads: [source(t.v1)],
    sql: `UPDATE pg_temp.bluegreen_latest l SET skip = x.reason, rule = x.rule
  FROM (SELECT l.relation, l.k, ${pick('reason')} AS reason, ${pick('rule')} AS rule
          FROM ${latestRows(t, ' AND l.skip IS NULL')}) x
 WHERE l.relation = x.relation AND l.k = x.k AND x.reason IS NOT NULL`,
  };
}

/** A row that cannot be inserted for want of TOASTed values green does not have. */
function toastRefusal(t: Target): Refusal {
  const all = Object.keys(t.v1.columns).map(literal).join(', ');
  return {
    when: `t0 IS NULL AND NOT (l.row ?& ARRAY[${all}])`,
    rule: `'stream-toast-missing'`,
    reason: `'columns not sent (TOAST unchanged) and no row on green to keep them from'`,
  };
}

/** v1 column -> v2 value: `CASE` keeps green's value for a column the batch did not send. */
function valueOf(column: string, expr: string, from: readonly string[]): string {
  const sent = from.map((c) => `l.row ? ${literal(c)}`).join(' OR ');
  return `CASE WHEN ${sent} THEN ${expr} ELSE t0.${ident(column)} END`;
}

/** The v2 row's columns and their values (over l, p, t0); a detached column is NULL. */
function rowValues(t: Target): [string, string][] {
  const copied = t.copied.map((c): [string, string] => {
    const v = valueOf(c, `p.${ident(c)}`, [c]);
    return [c, t.detachColumn === c ? `CASE WHEN l.detach IS NOT NULL THEN NULL ELSE ${v} END` : v];
  });
  return [...copied, ...t.computed.map((c): [string, string] => [c.column, c.from.length ? valueOf(c.column, c.expr, c.from) : c.expr])];
}

/** `c = EXCLUDED.c, ...` and the test that any of them changes. */
export const setExcluded = (columns: readonly string[]): string =>
  `${columns.map((c) => `${ident(c)} = EXCLUDED.${ident(c)}`).join(', ')}\n WHERE (${list(columns, 't.')}) IS DISTINCT FROM (${list(columns, 'EXCLUDED.')})`;

/** UPSERT of the latest non-delete changes of `t` that were not skipped. */
export function upsertStatement(t: Target): MappingStatement {
  const values = rowValues(t);
  const conflict = t.perNetwork ? [...t.v1.key, 'nid'] : [...t.v1.key];
  const settable = values.map(([c]) => c).filter((c) => !conflict.includes(c));
  return {
    id: `upsert ${t.v1.name}`,
    reads: [source(t.v1)],
    sql: `INSERT INTO ${t.table} AS t (${list(values.map(([c]) => c))})
SELECT ${values.map(([, v]) => v).join(',\n       ')}
  FROM ${latestRows(t, ' AND l.skip IS NULL')}
ON CONFLICT (${list(conflict)}) DO UPDATE SET ${setExcluded(settable)}`,
  };
}

/** DELETE of the rows whose latest change is a delete. */
export function deleteStatement(t: Target): MappingStatement {
  return {
    id: `delete ${t.v1.name}`,
    reads: [source(t.v1)],
    sql: `DELETE FROM ${t.table} t
 USING pg_temp.bluegreen_latest l CROSS JOIN LATERAL jsonb_populate_record(NULL::${t.table}, l.src) p
 WHERE l.relation = ${rel(t.v1)} AND l.op = 'D' AND ${keyJoin(t, 't', 'p')}`,
  };
}

/**
 * The skipped changes of `t`, recorded in the ledger with their rule. Where `t` holds (and the rule
 * is a cleanup rule, not one of the stream's own for a row that is not whole), the row in its v2
 * form goes with it: apply-changes moves it into the quarantine, restorable into `t.table`.
 */
export function recordSkipped(t: Target): MappingStatement {
  const held = `jsonb_build_object(${rowValues(t).map(([c, v]) => `${literal(c)}, ${v}`).join(', ')})`;
  const holds = t.holds ? `l.rule NOT LIKE 'stream-%'` : 'false';
  return {
    id: `record unmapped ${t.v1.name}`,
    reads: [source(t.v1)],
    sql: `INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row, rule, target, held)
SELECT l.lsn, l.seq, l.relation, l.k, l.skip, l.row, l.rule,
       CASE WHEN ${holds} THEN ${literal(`public.${t.v1.name}`)} END, CASE WHEN ${holds} THEN ${held} END
  FROM ${latestRows(t, ' AND l.skip IS NOT NULL')}
ON CONFLICT DO NOTHING`,
  };
}

/** Held rows of keys blue deleted leave the quarantine (kept in the ledger): a restore must not bring back what blue removed. */
export const RELEASE_DELETED: MappingStatement = {
  id: 'release deleted',
  sql: `UPDATE ${STAGE}.unmapped u SET released_at = clock_timestamp(), release_reason = 'deleted on blue'
  FROM pg_temp.bluegreen_latest l
 WHERE l.op = 'D' AND u.relation = l.relation AND u.key = l.k AND u.held IS NOT NULL AND u.released_at IS NULL`,
};

const CLIENT_EXISTS = (client: string): string => `EXISTS (SELECT 1 FROM public.hydra_client c WHERE c.id = ${client} AND c.nid = coalesce(t0.nid, ${NETWORK}))`;

/** A row whose client is missing: cleanup's catalog rule `fk-orphans:<table>_client_id_fk`. */
function clientRefusal(t: V1Table, nullable: boolean): Refusal {
  const fk = `${t.name}_client_id_fk`;
  return {
    when: `${nullable ? 'p.client_id IS NOT NULL AND ' : ''}NOT ${CLIENT_EXISTS('p.client_id')}`,
    rule: literal(`fk-orphans:${fk}`),
    reason: literal(`public.${t.name}(client_id) points to no public.hydra_client row (foreign key ${fk}): the row's client is not on green (v2 foreign key (client_id, nid))`),
  };
}

/** The flow of a token's consent is missing on green. */
const FLOW_MISSING = `p.challenge_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ${FLOW} f WHERE f.consent_challenge_id = p.challenge_id)`;

/**
 * The rule under which the mapping holds the consent `challenge` (or its login), if it does: the
 * ledger row of the flow merge that refused it and is still held.
 */
const heldConsentRule = (challenge: string): string =>
  `(SELECT u.rule FROM ${STAGE}.unmapped u
     WHERE u.relation IN (${rel(LOGIN)}, ${rel(CONSENT)}, ${rel(CONSENT_HANDLED)}) AND u.held IS NOT NULL AND u.released_at IS NULL
       AND coalesce(u.row ->> 'consent_challenge_id', u.row ->> 'challenge') = ${challenge}
     ORDER BY u.lsn DESC, u.seq DESC LIMIT 1)`;
/** Cleanup's rule for a consent whose login is gone: its tokens stay, detached (challenge_id NULL). */
export const CONSENT_WITHOUT_LOGIN = 'consent-without-login';

/**
 * Tokens, in cleanup's order: a token of a consent the flow merge holds moves with it (as cleanup
 * moves dependents, under that consent's rule); a token whose client is missing is cleanup's
 * `fk-orphans:<table>_client_id_fk`.
 */
export function tokenCheck(t: Target): MappingStatement {
  const rule = heldConsentRule('p.challenge_id');
  return skipStatement(t, [
    toastRefusal(t),
    {
      when: `${FLOW_MISSING} AND ${rule} <> ${literal(CONSENT_WITHOUT_LOGIN)}`,
      rule,
      reason: literal(`depends on a quarantined consent (foreign key ${t.v1.name}_challenge_id_fk): its flow is held in quarantine`),
    },
    clientRefusal(t.v1, false),
  ]);
}

/** Rows with a client foreign key only (logout requests: client_id may be NULL; pairwise subjects). */
export function clientCheck(t: Target, nullable: boolean): MappingStatement {
  return skipStatement(t, [toastRefusal(t), clientRefusal(t.v1, nullable)]);
}

/** Rows with no foreign key to check: only whole rows are needed. */
export const plainCheck = (t: Target): MappingStatement => skipStatement(t, [toastRefusal(t)]);

/**
 * A token whose consent has no flow on green (and is not held) keeps its row with challenge_id NULL,
 * as cleanup's `null-dangling:<table>_challenge_id_fk` rewrite and Hydra's own 2.x migration do; a
 * consent held as `consent-without-login` detaches its tokens the same way, under that rule.
 */
export function tokenDetach(t: Target): MappingStatement {
  const held = heldConsentRule('p.challenge_id');
  return {
    id: `detach dangling ${t.v1.name}`,
    reads: [source(t.v1)],
    sql: `UPDATE pg_temp.bluegreen_latest l SET detach = x.rule
  FROM (SELECT l.relation, l.k,
               CASE WHEN ${held} = ${literal(CONSENT_WITHOUT_LOGIN)} THEN ${literal(CONSENT_WITHOUT_LOGIN)}
                    ELSE ${literal(`null-dangling:${t.v1.name}_challenge_id_fk`)} END AS rule
          FROM ${latestRows(t, ` AND l.skip IS NULL AND ${FLOW_MISSING}`)}) x
 WHERE l.relation = x.relation AND l.k = x.k`,
  };
}

/** The reason a detached token's old challenge_id is recorded under. */
const DETACH_REASON = (t: V1Table): string =>
  `public.${t.name}(challenge_id) points to no public.hydra_oauth2_flow row on green (foreign key ${t.name}_challenge_id_fk); ` +
  "Hydra's flow merge (2.x) sets a token's challenge_id to NULL when its consent has no flow row and keeps the token; the stream does the same and records the old value";

/** The type of `column` of `table` on green, as `_rewrites` records it (restore refuses once a migration retypes it). */
export const columnType = (table: string, column: string): string =>
  `(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = ${literal(table)}::regclass AND a.attname = ${literal(column)})`;

/** The old challenge_id of each detached token, in the quarantine's rewrite ledger (once) and in the unmapped ledger. */
export function recordDetached(t: Target): MappingStatement {
  const table = `public.${t.v1.name}`;
  return {
    id: `record detached ${t.v1.name}`,
    reads: [source(t.v1)],
    sql: `WITH d AS (
  SELECT l.lsn, l.seq, l.relation, l.k, l.row, l.detach AS rule, jsonb_build_object('signature', l.row -> 'signature', 'challenge_id', l.row -> 'challenge_id') AS old
    FROM pg_temp.bluegreen_latest l WHERE l.relation = ${rel(t.v1)} AND l.detach IS NOT NULL
), noted AS (
  INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row, rule)
  SELECT d.lsn, d.seq, d.relation, d.k, ${literal(DETACH_REASON(t.v1))}, d.row, d.rule FROM d
  ON CONFLICT DO NOTHING
)
INSERT INTO ${REWRITES} (run_id, rule, reason, source_table, column_name, key_columns, row, column_type)
SELECT ${RUN_ID}, d.rule, ${literal(DETACH_REASON(t.v1))}, ${literal(table)}, 'challenge_id', ARRAY['signature'], d.old, ${columnType(table, 'challenge_id')}
  FROM d
 WHERE NOT EXISTS (SELECT 1 FROM ${REWRITES} r WHERE r.source_table = ${literal(table)} AND r.column_name = 'challenge_id' AND r.rule = d.rule AND r.row = d.old)`,
  };
}

/** hydra_client_settings follows the client's metadata (20211011000014000000_client_settings_table). */
export const SETTINGS_UPSERT: MappingStatement = {
  id: 'upsert hydra_client_settings',
  reads: [source(CLIENT)],
  sql: `WITH src AS (
  SELECT c.pk, c.nid, c.metadata FROM pg_temp.bluegreen_latest l
    JOIN public.hydra_client c ON c.pk = (l.src ->> 'pk')::int
   WHERE l.relation = ${rel(CLIENT)} AND l.op <> 'D' AND l.skip IS NULL AND l.row ? 'metadata'
), bad AS (
  INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row, rule)
  SELECT l.lsn, l.seq, 'public.hydra_client_settings', l.k, 'metadata is not JSON: hydra_client_settings.settings is jsonb', l.row, 'stream-metadata-not-json'
    FROM pg_temp.bluegreen_latest l JOIN src ON src.pk = (l.src ->> 'pk')::int
   WHERE l.relation = ${rel(CLIENT)} AND NOT ${STAGE}.is_json(coalesce(nullif(src.metadata, ''), '{}'))
  ON CONFLICT DO NOTHING
)
INSERT INTO public.hydra_client_settings AS s (client_pk, nid, settings)
SELECT src.pk, src.nid, CAST(coalesce(nullif(src.metadata, ''), '{}') AS jsonb) FROM src
 WHERE ${STAGE}.is_json(coalesce(nullif(src.metadata, ''), '{}'))
ON CONFLICT (client_pk) DO UPDATE SET nid = EXCLUDED.nid, settings = EXCLUDED.settings
 WHERE (s.nid, s.settings) IS DISTINCT FROM (EXCLUDED.nid, EXCLUDED.settings)`,
};
/** The settings row of a deleted client goes with it. */
export const SETTINGS_DELETE: MappingStatement = {
  id: 'delete hydra_client_settings',
  reads: [source(CLIENT)],
  sql: `DELETE FROM public.hydra_client_settings s USING pg_temp.bluegreen_latest l
 WHERE l.relation = ${rel(CLIENT)} AND l.op = 'D' AND s.client_pk = (l.src ->> 'pk')::int`,
};

/**
 * Serial keys: green's sequence of `pk` (clients, keys) is moved up to the highest pk blue used in
 * the batch (inserted, updated or deleted since), never down, so green's next insert does not take a
 * pk blue already gave out. A column without a sequence on green (a uuid pk) is left alone.
 */
export const SEQUENCES: MappingStatement = {
  id: 'advance sequences',
  reads: [source(CLIENT), source(JWK)],
  sql: `SELECT setval(s.seq::regclass, s.top)
  FROM (SELECT pg_get_serial_sequence(t.tbl, 'pk') AS seq, max((coalesce(b.row, b.key) ->> 'pk')::bigint) AS top
          FROM pg_temp.bluegreen_batch b
          JOIN (VALUES (${rel(CLIENT)}, 'public.hydra_client'), (${rel(JWK)}, 'public.hydra_jwk')) t(relation, tbl) ON t.relation = b.relation
         WHERE b.op IN ('I', 'U', 'D')
         GROUP BY t.tbl) s
 WHERE s.seq IS NOT NULL AND s.top IS NOT NULL
   AND s.top > coalesce(pg_sequence_last_value(s.seq::regclass), (SELECT q.seqstart - 1 FROM pg_sequence q WHERE q.seqrelid = s.seq::regclass))`,
};
