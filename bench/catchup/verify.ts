// Checks for the catch-up bench (bench/catchup.ts): after each consumer applied the change set, its
// target must hold what blue holds. Rows are compared by key and an md5 of their text, so a
// difference names the rows, not only the table.
//   * A same-schema copy (native logical replication, pgcopydb): every published table, every column.
//   * Ours (green, v2): the columns v1 and v2 share with the same type (tokens, clients, keys,
//     sessions), the client lists through the pipe -> jsonb array conversion, metadata as
//     hydra_client_settings, and every login as its v2 flow row (challenges, subject, client, session,
//     used flags, and the state the v1 rows stand for).

import pg from 'pg';
import { ident, literal, qualified } from '../../src/db/sql.ts';
import { STABLE_OUTPUT } from '../../src/snapshot/check.ts';

/** Key -> md5 of the row's compared columns. */
type RowHashes = Map<string, string>;

async function open(dsn: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: dsn });
  await c.connect();
  for (const s of STABLE_OUTPUT) await c.query(s);
  return c;
}

async function hashes(c: pg.Client, sql: string): Promise<RowHashes> {
  const { rows } = await c.query<{ k: string; h: string }>(sql);
  return new Map(rows.map((r) => [r.k, r.h]));
}

/** One sentence per difference (at most three keys named), empty when equal. */
function differences(label: string, blue: RowHashes, target: RowHashes): string[] {
  const missing = [...blue.keys()].filter((k) => !target.has(k));
  const extra = [...target.keys()].filter((k) => !blue.has(k));
  const changed = [...blue.keys()].filter((k) => target.has(k) && target.get(k) !== blue.get(k));
  const out: string[] = [];
  const some = (keys: string[]): string => keys.slice(0, 3).join(', ') + (keys.length > 3 ? ', ...' : '');
  if (missing.length) out.push(`${label}: ${missing.length} row(s) of blue missing (${some(missing)})`);
  if (extra.length) out.push(`${label}: ${extra.length} row(s) not on blue (${some(extra)})`);
  if (changed.length) out.push(`${label}: ${changed.length} row(s) differ (${some(changed)})`);
  return out;
}

async function primaryKey(c: pg.Client, table: string): Promise<string[]> {
  const { rows } = await c.query<{ a: string }>(
    `SELECT a.attname AS a FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
      WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)`,
    [qualified('public', table)],
  );
  return rows.map((r) => r.a);
}

const rowOf = (columns: readonly string[], alias = 'x'): string => `row(${columns.map((c) => `${alias}.${ident(c)}`).join(', ')})::text`;

/** Differences between blue and a same-schema copy over `tables` (every column, keyed by the primary key). */
export async function verifyCopy(blueDsn: string, copyDsn: string, tables: readonly string[]): Promise<string[]> {
  const [blue, copy] = await Promise.all([open(blueDsn), open(copyDsn)]);
  try {
    const out: string[] = [];
    for (const t of tables) {
      const key = await primaryKey(blue, t);
      const sql = `SELECT ${rowOf(key)} AS k, md5(x::text) AS h FROM ${qualified('public', t)} x`;
      const [a, b] = await Promise.all([hashes(blue, sql), hashes(copy, sql)]);
      out.push(...differences(t, a, b));
    }
    return out;
  } finally {
    await Promise.all([blue.end(), copy.end()]);
  }
}

async function columnTypes(c: pg.Client, table: string): Promise<Map<string, string>> {
  const { rows } = await c.query<{ c: string; t: string }>(
    `SELECT column_name AS c, udt_name AS t FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1`,
    [table],
  );
  return new Map(rows.map((r) => [r.c, r.t]));
}

/** Exactly the pipe-split elements as a jsonb array, '' and NULL as [] (what the v2 migration gives clean values). */
const pipeList = (col: string): string => `(CASE WHEN ${col} IS NULL OR ${col} = '' THEN '[]'::jsonb ELSE to_jsonb(string_to_array(${col}, '|')) END)`;
const NO_ERROR = (col: string): string => `coalesce(btrim(${col}), '') IN ('', '{}', 'null')`;

const CLIENT_LISTS = ['redirect_uris', 'grant_types', 'response_types', 'audience'];
const V1_FLOWS = `
SELECT ar.challenge AS k,
       md5(row(cr.challenge, ar.subject, ar.client_id, ar.login_session_id, coalesce(lh.was_used, false), coalesce(ch.was_used, false),
         CASE WHEN ch.challenge IS NOT NULL THEN CASE WHEN ${NO_ERROR('ch.error')} THEN CASE WHEN ch.was_used THEN 6 ELSE 5 END ELSE 129 END
              WHEN cr.challenge IS NOT NULL THEN 4
              WHEN lh.challenge IS NOT NULL THEN CASE WHEN ${NO_ERROR('lh.error')} THEN CASE WHEN lh.was_used THEN 3 ELSE 2 END ELSE 128 END
              ELSE 1 END)::text) AS h
  FROM public.hydra_oauth2_authentication_request ar
  LEFT JOIN public.hydra_oauth2_authentication_request_handled lh ON lh.challenge = ar.challenge
  LEFT JOIN public.hydra_oauth2_consent_request cr ON cr.login_challenge = ar.challenge
  LEFT JOIN public.hydra_oauth2_consent_request_handled ch ON ch.challenge = cr.challenge`;
const V2_FLOWS = `SELECT f.login_challenge AS k,
       md5(row(f.consent_challenge_id, f.subject, f.client_id, f.login_session_id, f.login_was_used, f.consent_was_used, f.state)::text) AS h
  FROM public.hydra_oauth2_flow f`;

/** Differences between blue (v1) and green (v2) through the conversions (see the file's header). */
export async function verifyMapped(blueDsn: string, greenDsn: string): Promise<string[]> {
  const [blue, green] = await Promise.all([open(blueDsn), open(greenDsn)]);
  try {
    const out: string[] = [];
    const compare = async (label: string, blueSql: string, greenSql: string): Promise<void> => {
      const [a, b] = await Promise.all([hashes(blue, blueSql), hashes(green, greenSql)]);
      out.push(...differences(label, a, b));
    };
    for (const t of ['hydra_client', 'hydra_jwk', 'hydra_oauth2_authentication_session', 'hydra_oauth2_access', 'hydra_oauth2_refresh']) {
      const [bt, gt] = await Promise.all([columnTypes(blue, t), columnTypes(green, t)]);
      const shared = [...bt.keys()].filter((c) => gt.get(c) === bt.get(c)).sort();
      const key = await primaryKey(blue, t);
      const sql = `SELECT ${rowOf(key)} AS k, md5(${rowOf(shared)}) AS h FROM ${qualified('public', t)} x`;
      await compare(`${t} (${shared.length} shared columns)`, sql, sql);
    }
    await compare(
      'hydra_client lists (pipe text -> jsonb)',
      `SELECT x.id AS k, md5(row(${[...CLIENT_LISTS, 'contacts'].map((c) => pipeList(`x.${ident(c)}`)).join(', ')})::text) AS h FROM public.hydra_client x`,
      `SELECT x.id AS k, md5(row(${[...CLIENT_LISTS, 'contacts_json'].map((c) => `x.${ident(c)}`).join(', ')})::text) AS h FROM public.hydra_client x`,
    );
    await compare(
      'hydra_client metadata -> hydra_client_settings',
      `SELECT x.pk::text AS k, md5(coalesce(nullif(x.metadata, ''), '{}')::jsonb::text) AS h FROM public.hydra_client x`,
      `SELECT s.client_pk::text AS k, md5(s.settings::text) AS h FROM public.hydra_client_settings s`,
    );
    await compare('logins -> hydra_oauth2_flow', V1_FLOWS, V2_FLOWS);
    const unmapped = await green.query<{ n: number }>(`SELECT count(*)::int AS n FROM bluegreen_green.unmapped`);
    if (unmapped.rows[0]!.n > 0) out.push(`${unmapped.rows[0]!.n} change(s) in bluegreen_green.unmapped`);
    return out;
  } finally {
    await Promise.all([blue.end(), green.end()]);
  }
}

/** The published tables of a publication, unqualified (all are in schema public here). */
export async function publishedTables(c: pg.Client, publication: string): Promise<string[]> {
  const { rows } = await c.query<{ t: string }>(`SELECT tablename AS t FROM pg_publication_tables WHERE pubname = ${literal(publication)} AND schemaname = 'public' ORDER BY 1`);
  return rows.map((r) => r.t);
}
