// Changes mapped into the new schema (issue G, item 2): after `apply` with the stream enabled, writes
// on blue (v1) are staged in green's change log and applied to green's v2 tables by the Hydra mapping:
// clients with their lists as jsonb arrays, tokens with nid, a login + consent flow merged into one
// hydra_oauth2_flow row, deletions gone; applying again changes nothing. Code, OIDC, PKCE, logout and
// pairwise rows map the same way; what v2 refuses lands in the quarantine under cleanup's rule for it
// (and restores); green's serial sequences move past the pks blue handed out.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HYDRA_STREAM_MAPPING } from '../src/engines/hydra/stream-map/index.ts';
import { applyStagedChanges, type ApplyChangesStats } from '../src/stream/apply-changes.ts';
import { streamToGreen } from '../src/stream/reader.ts';
import { createDbPair, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

const NETWORK = '9a1e6b2c-5d1f-4e3a-8c7b-0f2d4e6a8b10';
const MAPPED_TABLES = [
  'hydra_client', 'hydra_client_settings', 'hydra_jwk', 'hydra_oauth2_authentication_session', 'hydra_oauth2_flow', 'hydra_oauth2_access', 'hydra_oauth2_refresh',
  'hydra_oauth2_code', 'hydra_oauth2_oidc', 'hydra_oauth2_pkce', 'hydra_oauth2_logout_request', 'hydra_oauth2_obfuscated_authentication_session',
];
/** The columns every token table shares (v1), for inserts on blue. */
const TOKEN_INSERT = '(signature, request_id, client_id, scope, granted_scope, form_data, session_data, subject, challenge_id)';

/** md5 over every row of the tables the mapping writes. */
async function checksum(green: pg.Client): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const t of MAPPED_TABLES) {
    out[t] = (await green.query<{ h: string }>(`SELECT md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) AS h FROM public.${t} x`)).rows[0]!.h;
  }
  return out;
}

describe('staged changes mapped into the v2 schema', () => {
  let pair: DbPair;
  let cfg: ReturnType<typeof writeConfig>;
  let green: pg.Client;
  let slot: string;
  let first: ApplyChangesStats;
  /** What the writes on blue picked. */
  const picked = { updatedClient: '', deletedAccess: '', revokedRefresh: '', revokedConsent: '', revokedLogin: '', revokedTokens: 0 };

  beforeAll(async () => {
    pair = await createDbPair('smap');
    await seedBlue(pair, { rows: 400, seed: 23, dirty: [] });
    // A client without tokens or flows, copied to green and deleted during the window.
    await withClient(pair.blueDsn, (c) => c.query(`INSERT INTO hydra_client (id, client_name, redirect_uris) VALUES ('sm-doomed', 'doomed', 'https://doomed')`));
    cfg = writeConfig(pair, { stream: { enabled: true, batchChanges: 100 } });
    const r = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    green = new pg.Client({ connectionString: pair.greenDsn });
    await green.connect();
    // A granted consent green has as a flow (copied), revoked on blue during the window.
    const granted = (await green.query<{ c: string; l: string }>(`SELECT f.consent_challenge_id AS c, f.login_challenge AS l FROM hydra_oauth2_flow f
        WHERE f.state IN (5, 6) AND EXISTS (SELECT 1 FROM hydra_oauth2_access a WHERE a.challenge_id = f.consent_challenge_id) ORDER BY 1 LIMIT 1`)).rows[0]!;
    picked.revokedConsent = granted.c;
    picked.revokedLogin = granted.l;

    await withClient(pair.blueDsn, async (c) => {
      picked.updatedClient = (await c.query<{ id: string }>(`SELECT id FROM hydra_client WHERE id <> 'sm-doomed' ORDER BY id LIMIT 1`)).rows[0]!.id;
      picked.deletedAccess = (await c.query<{ s: string }>(`SELECT signature AS s FROM hydra_oauth2_access WHERE challenge_id IS DISTINCT FROM $1 ORDER BY signature LIMIT 1`, [granted.c])).rows[0]!.s;
      picked.revokedRefresh = (await c.query<{ s: string }>(`SELECT signature AS s FROM hydra_oauth2_refresh WHERE active AND challenge_id IS DISTINCT FROM $1 ORDER BY signature LIMIT 1`, [granted.c])).rows[0]!.s;
      await c.query(
        `INSERT INTO hydra_client (id, client_name, redirect_uris, grant_types, response_types, audience, contacts, metadata)
         VALUES ('sm-new', 'new', 'https://a.test/cb|https://b.test/cb', 'authorization_code|refresh_token', 'code', '', 'ops@x.test|sec@x.test', '{"tier": 2}')`,
      );
      await c.query(`UPDATE hydra_client SET redirect_uris = 'https://u1.test|https://u2.test|https://u3.test', client_name = 'renamed' WHERE id = $1`, [picked.updatedClient]);
      await c.query(`DELETE FROM hydra_client WHERE id = 'sm-doomed'`);
      // A complete login + consent flow in one transaction (what a user signing in does).
      await c.query(
        `WITH ar AS (INSERT INTO hydra_oauth2_authentication_request (challenge, requested_scope, verifier, csrf, subject, request_url, skip, client_id, requested_at_audience)
                     VALUES ('sm-l-1', 'openid|offline', 'sm-lv-1', 'csrf', 'sm-subject', 'https://live.test', false, 'sm-new', 'api') RETURNING challenge, client_id),
              lh AS (INSERT INTO hydra_oauth2_authentication_request_handled (challenge, subject, remember, remember_for, error, acr, was_used)
                     SELECT challenge, 'sm-subject', true, 3600, '{}', 'acr1', true FROM ar RETURNING challenge),
              cr AS (INSERT INTO hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope, csrf, login_challenge)
                     SELECT 'sm-c-1', 'sm-cv-1', ar.client_id, 'sm-subject', 'https://live.test', false, 'openid|offline', 'csrf', lh.challenge FROM ar, lh RETURNING challenge)
         INSERT INTO hydra_oauth2_consent_request_handled (challenge, granted_scope, remember, remember_for, error, was_used, granted_at_audience, session_id_token)
         SELECT challenge, 'openid|offline', true, 0, '{}', false, 'api', '{"sid": "s1"}' FROM cr`,
      );
      // New tokens: one without a consent, a pair on the new flow.
      await c.query(
        `INSERT INTO hydra_oauth2_access (signature, request_id, client_id, scope, granted_scope, form_data, session_data, subject, challenge_id) VALUES
           ('sm-at-1', 'sm-req-1', 'sm-new', 'openid', 'openid', '', '{}', 'sm-subject', NULL),
           ('sm-at-2', 'sm-req-2', 'sm-new', 'openid|offline', 'openid|offline', '', '{}', 'sm-subject', 'sm-c-1')`,
      );
      await c.query(
        `INSERT INTO hydra_oauth2_refresh (signature, request_id, client_id, scope, granted_scope, form_data, session_data, subject, challenge_id)
         VALUES ('sm-rt-2', 'sm-req-2', 'sm-new', 'openid|offline', 'openid|offline', '', '{}', 'sm-subject', 'sm-c-1')`,
      );
      await c.query(`UPDATE hydra_oauth2_refresh SET active = false WHERE signature = $1`, [picked.revokedRefresh]);
      await c.query(`DELETE FROM hydra_oauth2_access WHERE signature = $1`, [picked.deletedAccess]);
      // A consent revoked: its tokens go with it on blue (ON DELETE CASCADE).
      await c.query(`DELETE FROM hydra_oauth2_consent_request_handled WHERE challenge = $1`, [granted.c]);
    });

    slot = await withClient(pair.blueDsn, async (c) => (await c.query(`SELECT detail->>'slot' AS s FROM bluegreen.journal WHERE step = 'snapshot' AND unit = 'slot'`)).rows[0].s as string);
    await streamToGreen({ blueDsn: pair.blueDsn, green, slot, publication: slot.replace(/^bluegreen_/, 'bluegreen_pub_'), batchChanges: 100 });
    picked.revokedTokens = Number((await green.query(`SELECT (SELECT count(*) FROM hydra_oauth2_access WHERE challenge_id = $1) + (SELECT count(*) FROM hydra_oauth2_refresh WHERE challenge_id = $1) AS n`, [granted.c])).rows[0].n);
    first = await applyStagedChanges(green, { mapping: HYDRA_STREAM_MAPPING, batch: 7, slot });
  }, 240_000);

  afterAll(async () => {
    await green?.end();
    if (cfg) await runCli(['finish', '--config', cfg.file, '--abandon', '--yes'], cfg.env).catch(() => {});
    await pair?.drop();
  });

  it('applies every staged change, in several batches, and maps all of them', async () => {
    const staged = Number((await green.query(`SELECT count(*) AS n FROM bluegreen_green.change_log`)).rows[0].n);
    expect(staged).toBeGreaterThan(10);
    expect(first.changes).toBe(staged);
    expect(first.batches).toBeGreaterThan(1);
    const unmapped = (await green.query(`SELECT relation, key, reason FROM bluegreen_green.unmapped`)).rows;
    expect(unmapped).toEqual([]);
    const mark = (await green.query(`SELECT applied_lsn::text AS lsn, applied_seq AS seq FROM bluegreen_green.mapped_mark WHERE slot = $1`, [slot])).rows[0];
    expect(mark).toEqual(first.applied);
    // The revoked consent's flow was copied, not streamed: its v1 rows were rebuilt from it first.
    expect(first.statements['seed staging from flows']).toBeGreaterThanOrEqual(4);
    expect(first.statements['upsert flows']).toBeGreaterThanOrEqual(2);
    expect(first.statements['delete hydra_client']).toBe(1);
  });

  it('inserts a new client in its v2 form: lists as jsonb arrays, nid, settings, v2 defaults', async () => {
    const row = (await green.query(`SELECT * FROM hydra_client WHERE id = 'sm-new'`)).rows[0];
    expect(row).toMatchObject({
      client_name: 'new',
      redirect_uris: ['https://a.test/cb', 'https://b.test/cb'],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      audience: [],
      contacts: 'ops@x.test|sec@x.test',
      contacts_json: ['ops@x.test', 'sec@x.test'],
      nid: NETWORK,
      registration_access_token_signature: '',
    });
    const settings = (await green.query(`SELECT settings, nid FROM hydra_client_settings WHERE client_pk = $1`, [row.pk])).rows[0];
    expect(settings).toEqual({ settings: { tier: 2 }, nid: NETWORK });
  });

  it('updates a client (pipe list change) and deletes the one without tokens', async () => {
    const blueRow = await withClient(pair.blueDsn, async (c) => (await c.query(`SELECT * FROM hydra_client WHERE id = $1`, [picked.updatedClient])).rows[0]);
    const row = (await green.query(`SELECT * FROM hydra_client WHERE id = $1`, [picked.updatedClient])).rows[0];
    expect(row.redirect_uris).toEqual(['https://u1.test', 'https://u2.test', 'https://u3.test']);
    expect(row.client_name).toBe('renamed');
    expect(row.grant_types).toEqual(blueRow.grant_types === '' ? [] : blueRow.grant_types.split('|'));
    expect(row.pk).toBe(blueRow.pk);
    expect((await green.query(`SELECT count(*)::int AS n FROM hydra_client WHERE id = 'sm-doomed'`)).rows[0].n).toBe(0);
  });

  it('maps tokens with nid: new ones, a revoked refresh, a deleted access token', async () => {
    const tokens = (await green.query(`SELECT 'a' AS t, signature, client_id, challenge_id, active, nid, scope FROM hydra_oauth2_access WHERE signature LIKE 'sm-%'
                                       UNION ALL SELECT 'r', signature, client_id, challenge_id, active, nid, scope FROM hydra_oauth2_refresh WHERE signature LIKE 'sm-%' ORDER BY 1, 2`)).rows;
    expect(tokens).toEqual([
      { t: 'a', signature: 'sm-at-1', client_id: 'sm-new', challenge_id: null, active: true, nid: NETWORK, scope: 'openid' },
      { t: 'a', signature: 'sm-at-2', client_id: 'sm-new', challenge_id: 'sm-c-1', active: true, nid: NETWORK, scope: 'openid|offline' },
      { t: 'r', signature: 'sm-rt-2', client_id: 'sm-new', challenge_id: 'sm-c-1', active: true, nid: NETWORK, scope: 'openid|offline' },
    ]);
    expect((await green.query(`SELECT active FROM hydra_oauth2_refresh WHERE signature = $1`, [picked.revokedRefresh])).rows).toEqual([{ active: false }]);
    expect((await green.query(`SELECT count(*)::int AS n FROM hydra_oauth2_access WHERE signature = $1`, [picked.deletedAccess])).rows[0].n).toBe(0);
  });

  it('merges the new login + consent into one flow row with the granted state', async () => {
    const flow = (await green.query(`SELECT * FROM hydra_oauth2_flow WHERE login_challenge = 'sm-l-1'`)).rows[0];
    expect(flow).toMatchObject({
      nid: NETWORK,
      requested_scope: 'openid|offline',
      login_verifier: 'sm-lv-1',
      subject: 'sm-subject',
      client_id: 'sm-new',
      requested_at_audience: 'api',
      state: 5,
      login_remember: true,
      login_remember_for: 3600,
      login_error: '{}',
      acr: 'acr1',
      login_was_used: true,
      consent_challenge_id: 'sm-c-1',
      consent_verifier: 'sm-cv-1',
      granted_scope: 'openid|offline',
      granted_at_audience: 'api',
      consent_remember: true,
      consent_remember_for: 0,
      consent_was_used: false,
      consent_error: {},
      session_id_token: { sid: 's1' },
      session_access_token: {},
    });
  });

  it('revokes the consent: the flow goes back to "consent requested" and its tokens are gone', async () => {
    const flow = (await green.query(`SELECT state, consent_challenge_id, granted_scope, consent_error, consent_remember, consent_handled_at FROM hydra_oauth2_flow WHERE login_challenge = $1`, [picked.revokedLogin])).rows[0];
    expect(flow).toEqual({ state: 4, consent_challenge_id: picked.revokedConsent, granted_scope: null, consent_error: null, consent_remember: false, consent_handled_at: null });
    expect(picked.revokedTokens, 'green had tokens of the revoked consent before the mapping').toBeGreaterThan(0);
    for (const t of ['hydra_oauth2_access', 'hydra_oauth2_refresh']) {
      expect((await green.query(`SELECT count(*)::int AS n FROM ${t} WHERE challenge_id = $1`, [picked.revokedConsent])).rows[0].n).toBe(0);
    }
  });

  it('is idempotent: a second run applies nothing, and mapping everything again from the start changes nothing', async () => {
    const before = await checksum(green);
    const again = await applyStagedChanges(green, { mapping: HYDRA_STREAM_MAPPING, batch: 7, slot });
    expect(again.changes).toBe(0);
    expect(await checksum(green)).toEqual(before);
    await green.query(`DELETE FROM bluegreen_green.mapped_mark WHERE slot = $1`, [slot]);
    const replay = await applyStagedChanges(green, { mapping: HYDRA_STREAM_MAPPING, batch: 7, slot });
    expect(replay.changes).toBe(first.changes);
    expect(await checksum(green)).toEqual(before);
    expect(replay.unmapped).toBe(0);
  });

  /** Streams what blue wrote since the last call into green's change log and maps it. */
  const streamAndApply = async (): Promise<ApplyChangesStats> => {
    await streamToGreen({ blueDsn: pair.blueDsn, green, slot, publication: slot.replace(/^bluegreen_/, 'bluegreen_pub_'), batchChanges: 100 });
    return applyStagedChanges(green, { mapping: HYDRA_STREAM_MAPPING, batch: 50, slot });
  };
  const one = async (sql: string, params: unknown[] = []): Promise<Record<string, unknown> | undefined> => (await green.query(sql, params)).rows[0];

  it('maps inserts, updates and deletes of code, OIDC, PKCE, logout and pairwise rows into their v2 form', async () => {
    const seeded = await withClient(pair.blueDsn, async (c) => {
      const code = (await c.query<{ s: string }>(`SELECT signature AS s FROM hydra_oauth2_code WHERE active ORDER BY signature LIMIT 1`)).rows[0]?.s
        ?? (await c.query<{ s: string }>(`SELECT signature AS s FROM hydra_oauth2_code ORDER BY signature LIMIT 1`)).rows[0]!.s;
      const logout = (await c.query<{ c: string }>(`SELECT challenge AS c FROM hydra_oauth2_logout_request ORDER BY challenge LIMIT 1`)).rows[0]!.c;
      const pairwise = (await c.query<{ subject: string; client_id: string }>(`SELECT subject, client_id FROM hydra_oauth2_obfuscated_authentication_session ORDER BY 1, 2 LIMIT 1`)).rows[0]!;
      // An authorization code issued on the live flow, with its OIDC and PKCE rows; a second one revoked at once.
      for (const t of ['hydra_oauth2_code', 'hydra_oauth2_oidc', 'hydra_oauth2_pkce']) {
        await c.query(`INSERT INTO ${t} ${TOKEN_INSERT} VALUES ('sm-code-1', 'sm-req-c1', 'sm-new', 'openid', 'openid', 'code_challenge=x', '{}', 'sm-subject', 'sm-c-1')`);
      }
      await c.query(`INSERT INTO hydra_oauth2_code ${TOKEN_INSERT} VALUES ('sm-code-2', 'sm-req-c2', 'sm-new', 'openid', 'openid', '', '{}', 'sm-subject', 'sm-c-1')`);
      // The code is exchanged: deactivated, its PKCE row removed; the second one is deleted.
      await c.query(`UPDATE hydra_oauth2_code SET active = false WHERE signature = 'sm-code-1'`);
      await c.query(`DELETE FROM hydra_oauth2_pkce WHERE signature = 'sm-code-1'`);
      await c.query(`DELETE FROM hydra_oauth2_code WHERE signature = 'sm-code-2'`);
      await c.query(`UPDATE hydra_oauth2_code SET active = false, granted_scope = 'openid|copied' WHERE signature = $1`, [code]);
      // Logout: one started by the relying party and accepted, one by the provider (no client) and dropped; a copied one removed.
      await c.query(`INSERT INTO hydra_oauth2_logout_request (challenge, verifier, subject, sid, client_id, request_url, redir_url, rp_initiated) VALUES
        ('sm-logout-1', 'sm-lov-1', 'sm-subject', 'sid-1', 'sm-new', 'https://live.test/logout', 'https://live.test/bye', true),
        ('sm-logout-2', 'sm-lov-2', 'sm-subject', 'sid-2', NULL, 'https://live.test/logout', 'https://live.test/bye', false)`);
      await c.query(`UPDATE hydra_oauth2_logout_request SET accepted = true, was_used = true WHERE challenge = 'sm-logout-1'`);
      await c.query(`DELETE FROM hydra_oauth2_logout_request WHERE challenge IN ('sm-logout-2', $1)`, [logout]);
      // Pairwise subjects: two new, one renamed, one dropped; a copied one dropped.
      await c.query(`INSERT INTO hydra_oauth2_obfuscated_authentication_session (subject, client_id, subject_obfuscated) VALUES
        ('sm-subject', 'sm-new', 'sm-obf-1'), ('sm-subject-2', 'sm-new', 'sm-obf-2')`);
      await c.query(`UPDATE hydra_oauth2_obfuscated_authentication_session SET subject_obfuscated = 'sm-obf-1b' WHERE subject = 'sm-subject' AND client_id = 'sm-new'`);
      await c.query(`DELETE FROM hydra_oauth2_obfuscated_authentication_session WHERE (subject, client_id) IN (('sm-subject-2', 'sm-new'), ($1, $2))`, [pairwise.subject, pairwise.client_id]);
      return { code, logout, pairwise };
    });
    const stats = await streamAndApply();
    expect(stats.changes).toBeGreaterThan(10);
    expect(stats.unmapped).toBe(0);

    const tokens = (await green.query(`SELECT 'code' AS t, signature, active, nid, challenge_id, client_id FROM hydra_oauth2_code WHERE signature LIKE 'sm-%'
        UNION ALL SELECT 'oidc', signature, active, nid, challenge_id, client_id FROM hydra_oauth2_oidc WHERE signature LIKE 'sm-%'
        UNION ALL SELECT 'pkce', signature, active, nid, challenge_id, client_id FROM hydra_oauth2_pkce WHERE signature LIKE 'sm-%' ORDER BY 1, 2`)).rows;
    expect(tokens).toEqual([
      { t: 'code', signature: 'sm-code-1', active: false, nid: NETWORK, challenge_id: 'sm-c-1', client_id: 'sm-new' },
      { t: 'oidc', signature: 'sm-code-1', active: true, nid: NETWORK, challenge_id: 'sm-c-1', client_id: 'sm-new' },
    ]);
    expect(await one(`SELECT active, granted_scope, nid FROM hydra_oauth2_code WHERE signature = $1`, [seeded.code])).toEqual({ active: false, granted_scope: 'openid|copied', nid: NETWORK });

    const logouts = (await green.query(`SELECT challenge, client_id, accepted, was_used, rp_initiated, nid FROM hydra_oauth2_logout_request WHERE challenge LIKE 'sm-%' OR challenge = $1 ORDER BY 1`, [seeded.logout])).rows;
    expect(logouts).toEqual([{ challenge: 'sm-logout-1', client_id: 'sm-new', accepted: true, was_used: true, rp_initiated: true, nid: NETWORK }]);

    const pairwise = (await green.query(`SELECT subject, client_id, subject_obfuscated, nid FROM hydra_oauth2_obfuscated_authentication_session
        WHERE client_id = 'sm-new' OR (subject, client_id) = ($1, $2) ORDER BY 1`, [seeded.pairwise.subject, seeded.pairwise.client_id])).rows;
    expect(pairwise).toEqual([{ subject: 'sm-subject', client_id: 'sm-new', subject_obfuscated: 'sm-obf-1b', nid: NETWORK }]);
  }, 30_000);

  it('holds what v2 refuses under the cleanup rule: an orphan code in quarantine, a code whose flow is missing detached; both restore', async () => {
    await withClient(pair.blueDsn, async (c) => {
      // What v1's own foreign keys would have refused, written with the triggers off (a restore, a manual repair).
      await c.query('BEGIN');
      await c.query('SET LOCAL session_replication_role = replica');
      await c.query(`INSERT INTO hydra_oauth2_code ${TOKEN_INSERT} VALUES
        ('sm-code-noflow', 'sm-req-c3', 'sm-new', 'openid', 'openid', '', '{}', 'sm-subject', 'sm-nowhere'),
        ('sm-code-orphan', 'sm-req-c4', 'sm-nobody', 'openid', 'openid', '', '{}', 'sm-subject', NULL)`);
      await c.query('COMMIT');
    });
    const stats = await streamAndApply();
    expect(stats.quarantined).toBe(1);

    // The code whose consent has no flow is kept, challenge_id NULL, the old value held: cleanup's null-dangling rewrite.
    expect(await one(`SELECT challenge_id, nid FROM hydra_oauth2_code WHERE signature = 'sm-code-noflow'`)).toEqual({ challenge_id: null, nid: NETWORK });
    // The orphan is held in its v2 form, under cleanup's catalog rule for the client foreign key.
    expect(await one(`SELECT count(*)::int AS n FROM hydra_oauth2_code WHERE signature = 'sm-code-orphan'`)).toEqual({ n: 0 });
    const held = await one(`SELECT rule, source_table, run_id, row FROM bluegreen_quarantine.hydra_oauth2_code`);
    expect(held).toMatchObject({ rule: 'fk-orphans:hydra_oauth2_code_client_id_fk', source_table: 'public.hydra_oauth2_code', run_id: `stream:${slot}` });
    expect(held!.row).toMatchObject({ signature: 'sm-code-orphan', client_id: 'sm-nobody', nid: NETWORK, active: true });

    const listed = await runCli(['quarantine', 'list', '--config', cfg.file, '--json'], cfg.env);
    expect(listed.code, listed.stderr).toBe(0);
    const json = JSON.parse(listed.stdout) as { entries: { table: string; rule: string; rows: number }[]; rewrites: { table: string; column: string; rule: string; rows: number }[] };
    expect(json.entries).toContainEqual(expect.objectContaining({ table: 'public.hydra_oauth2_code', rule: 'fk-orphans:hydra_oauth2_code_client_id_fk', rows: 1 }));
    expect(json.rewrites).toContainEqual(expect.objectContaining({ table: 'public.hydra_oauth2_code', column: 'challenge_id', rule: 'null-dangling:hydra_oauth2_code_challenge_id_fk', rows: 1 }));

    for (const rule of ['fk-orphans:hydra_oauth2_code_client_id_fk', 'null-dangling:hydra_oauth2_code_challenge_id_fk']) {
      const r = await runCli(['quarantine', 'restore', '--rule', rule, '--config', cfg.file, '--json'], cfg.env);
      expect(r.code, r.stderr).toBe(0);
    }
    const back = (await green.query(`SELECT signature, client_id, challenge_id, nid FROM hydra_oauth2_code WHERE signature IN ('sm-code-noflow', 'sm-code-orphan') ORDER BY 1`)).rows;
    expect(back).toEqual([
      { signature: 'sm-code-noflow', client_id: 'sm-new', challenge_id: 'sm-nowhere', nid: NETWORK },
      { signature: 'sm-code-orphan', client_id: 'sm-nobody', challenge_id: null, nid: NETWORK },
    ]);
    // The ledger keeps the refused change; the next batch (any write on blue) sees the row on green and releases it.
    await withClient(pair.blueDsn, (c) => c.query(`UPDATE hydra_oauth2_logout_request SET was_used = false WHERE challenge = 'sm-logout-1'`));
    await streamAndApply();
    expect(await one(`SELECT rule, release_reason FROM bluegreen_green.unmapped WHERE key = '["sm-code-orphan"]'`)).toEqual({ rule: 'fk-orphans:hydra_oauth2_code_client_id_fk', release_reason: 'the row reached green' });
  }, 30_000);

  it('holds a second consent of one login under duplicate-consent (cleanup\'s tie-break) with its code, and lets both go when blue deletes them', async () => {
    await withClient(pair.blueDsn, async (c) => {
      // sm-c-1 is granted and remembered; this one is granted, not remembered: cleanup keeps sm-c-1.
      await c.query(`INSERT INTO hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope, csrf, login_challenge)
                     VALUES ('sm-c-2', 'sm-cv-2', 'sm-new', 'sm-subject', 'https://live.test', false, 'openid', 'csrf', 'sm-l-1')`);
      await c.query(`INSERT INTO hydra_oauth2_consent_request_handled (challenge, granted_scope, remember, remember_for, error, was_used) VALUES ('sm-c-2', 'openid', false, 0, '{}', false)`);
      await c.query(`INSERT INTO hydra_oauth2_code ${TOKEN_INSERT} VALUES ('sm-code-dup', 'sm-req-c5', 'sm-new', 'openid', 'openid', '', '{}', 'sm-subject', 'sm-c-2')`);
    });
    const stats = await streamAndApply();
    expect(stats.quarantined).toBe(2);
    expect(await one(`SELECT consent_challenge_id, state FROM hydra_oauth2_flow WHERE login_challenge = 'sm-l-1'`)).toEqual({ consent_challenge_id: 'sm-c-1', state: 5 });
    expect(await one(`SELECT rule, row ->> 'challenge' AS challenge FROM bluegreen_quarantine.hydra_oauth2_consent_request WHERE run_id = $1`, [`stream:${slot}`]))
      .toEqual({ rule: 'duplicate-consent', challenge: 'sm-c-2' });
    expect(await one(`SELECT rule, row ->> 'challenge_id' AS c, row ->> 'nid' AS nid FROM bluegreen_quarantine.hydra_oauth2_code WHERE row ->> 'signature' = 'sm-code-dup'`))
      .toEqual({ rule: 'duplicate-consent', c: 'sm-c-2', nid: NETWORK });
    expect(await one(`SELECT count(*)::int AS n FROM hydra_oauth2_code WHERE signature = 'sm-code-dup'`)).toEqual({ n: 0 });

    // Blue drops the losing consent (its handled row and code cascade): a restore must not bring them back.
    await withClient(pair.blueDsn, (c) => c.query(`DELETE FROM hydra_oauth2_consent_request WHERE challenge = 'sm-c-2'`));
    const after = await streamAndApply();
    expect(after.released).toBe(2);
    expect(await one(`SELECT count(*)::int AS n FROM bluegreen_quarantine.hydra_oauth2_consent_request WHERE run_id = $1`, [`stream:${slot}`])).toEqual({ n: 0 });
    expect(await one(`SELECT count(*)::int AS n FROM bluegreen_quarantine.hydra_oauth2_code WHERE row ->> 'signature' = 'sm-code-dup'`)).toEqual({ n: 0 });
    expect(await one(`SELECT release_reason FROM bluegreen_green.unmapped WHERE key = '["sm-code-dup"]'`)).toEqual({ release_reason: 'deleted on blue' });
  }, 30_000);

  it('a login deleted on blue: its flow goes, its consent is held as consent-without-login, its tokens stay detached (restorable)', async () => {
    // v1: the handled login cascades, the consent's login_challenge is set NULL (the janitor's flush).
    await withClient(pair.blueDsn, (c) => c.query(`DELETE FROM hydra_oauth2_authentication_request WHERE challenge = 'sm-l-1'`));
    await streamAndApply();
    expect(await one(`SELECT count(*)::int AS n FROM hydra_oauth2_flow WHERE login_challenge = 'sm-l-1'`)).toEqual({ n: 0 });
    const tokens = (await green.query(`SELECT signature, challenge_id FROM hydra_oauth2_access WHERE signature = 'sm-at-2'
        UNION ALL SELECT signature, challenge_id FROM hydra_oauth2_code WHERE signature = 'sm-code-1' ORDER BY 1`)).rows;
    expect(tokens).toEqual([{ signature: 'sm-at-2', challenge_id: null }, { signature: 'sm-code-1', challenge_id: null }]);
    expect(await one(`SELECT rule, row ->> 'challenge' AS c, row ->> 'login_challenge' AS l FROM bluegreen_quarantine.hydra_oauth2_consent_request WHERE run_id = $1`, [`stream:${slot}`]))
      .toEqual({ rule: 'consent-without-login', c: 'sm-c-1', l: null });
    const detached = (await green.query(`SELECT source_table, row ->> 'signature' AS s, row ->> 'challenge_id' AS c FROM bluegreen_quarantine._rewrites
        WHERE rule = 'consent-without-login' ORDER BY 1, 2`)).rows;
    expect(detached).toEqual(expect.arrayContaining([
      { source_table: 'public.hydra_oauth2_access', s: 'sm-at-2', c: 'sm-c-1' },
      { source_table: 'public.hydra_oauth2_code', s: 'sm-code-1', c: 'sm-c-1' },
      { source_table: 'public.hydra_oauth2_refresh', s: 'sm-rt-2', c: 'sm-c-1' },
    ]));
  }, 30_000);

  it('moves green\'s client and key sequences past what blue handed out, so green\'s next insert takes a fresh pk', async () => {
    const blue = await withClient(pair.blueDsn, async (c) => {
      const a = (await c.query<{ pk: number }>(`INSERT INTO hydra_client (id, client_name) VALUES ('sm-seq-1', 'seq') RETURNING pk`)).rows[0]!.pk;
      const b = (await c.query<{ pk: number }>(`INSERT INTO hydra_client (id, client_name) VALUES ('sm-seq-2', 'seq') RETURNING pk`)).rows[0]!.pk;
      await c.query(`DELETE FROM hydra_client WHERE id = 'sm-seq-2'`);
      const k = (await c.query<{ pk: number }>(`INSERT INTO hydra_jwk (sid, kid, keydata) VALUES ('sm-set', 'sm-kid', 'k') RETURNING pk`)).rows[0]!.pk;
      return { a, b, k };
    });
    await streamAndApply();
    expect(await one(`SELECT pk FROM hydra_client WHERE id = 'sm-seq-1'`)).toEqual({ pk: blue.a });
    const next = await one(`INSERT INTO hydra_client (id, nid) VALUES ('green-next', $1) RETURNING pk`, [NETWORK]);
    expect(next!.pk as number).toBeGreaterThan(blue.b);
    const key = await one(`INSERT INTO hydra_jwk (sid, kid, keydata, nid) VALUES ('green-set', 'green-kid', 'k', $1) RETURNING pk`, [NETWORK]);
    expect(key!.pk as number).toBeGreaterThan(blue.k);
    // Never lowered: a later blue insert with a pk below green's sequence leaves the sequence where it is.
    await green.query(`DELETE FROM hydra_client WHERE id = 'green-next'`);
    await green.query(`DELETE FROM hydra_jwk WHERE sid = 'green-set'`);
    const before = Number((await one(`SELECT last_value FROM hydra_client_pk_seq`))!.last_value);
    const later = await withClient(pair.blueDsn, async (c) => (await c.query<{ pk: number }>(`INSERT INTO hydra_client (id, client_name) VALUES ('sm-seq-3', 'seq') RETURNING pk`)).rows[0]!.pk);
    await streamAndApply();
    expect(later).toBeLessThanOrEqual(before);
    expect(Number((await one(`SELECT last_value FROM hydra_client_pk_seq`))!.last_value)).toBe(before);
  }, 30_000);

  it('keeps a TOAST-unchanged column from green, and records what v2 would refuse instead of dropping it', async () => {
    const blueRow = await withClient(pair.blueDsn, async (c) => (await c.query(`SELECT jsonb_set(to_jsonb(c) - 'jwks', '{client_name}', '"toasted"') AS r FROM hydra_client c WHERE id = $1`, [picked.updatedClient])).rows[0].r);
    await green.query(`UPDATE hydra_client SET jwks = 'green-jwks' WHERE id = $1`, [picked.updatedClient]);
    // Synthetic changes after everything staged: an update whose jwks was not sent, a token of a client
    // green does not have, and a truncate.
    await green.query(
      `INSERT INTO bluegreen_green.change_log (lsn, seq, relation, op, key, row, toast_unchanged) VALUES
         ('FFFFFFFF/10', 1, 'public.hydra_client', 'U', jsonb_build_object('pk', $1::jsonb -> 'pk'), $1::jsonb, ARRAY['jwks']),
         ('FFFFFFFF/10', 2, 'public.hydra_oauth2_access', 'I', NULL,
          '{"signature": "sm-orphan", "request_id": "r", "requested_at": "2026-01-01 00:00:00", "client_id": "nobody", "scope": "", "granted_scope": "", "form_data": "", "session_data": "{}", "subject": "s", "active": "t", "requested_audience": "", "granted_audience": "", "challenge_id": null}', NULL),
         ('FFFFFFFF/20', 1, 'public.hydra_jwk', 'T', NULL, NULL, NULL)`,
      [JSON.stringify(blueRow)],
    );
    const stats = await applyStagedChanges(green, { mapping: HYDRA_STREAM_MAPPING, batch: 7, slot });
    expect(stats.changes).toBe(3);
    expect((await green.query(`SELECT client_name, jwks FROM hydra_client WHERE id = $1`, [picked.updatedClient])).rows[0]).toEqual({ client_name: 'toasted', jwks: 'green-jwks' });
    expect((await green.query(`SELECT count(*)::int AS n FROM hydra_oauth2_access WHERE signature = 'sm-orphan'`)).rows[0].n).toBe(0);
    expect(Number((await green.query(`SELECT count(*) AS n FROM hydra_jwk`)).rows[0].n)).toBeGreaterThan(0);
    const unmapped = (await green.query(`SELECT relation, reason, rule, target FROM bluegreen_green.unmapped WHERE lsn >= 'FFFFFFFF/0' ORDER BY lsn, seq`)).rows;
    expect(unmapped).toEqual([
      { relation: 'public.hydra_oauth2_access', reason: expect.stringMatching(/client is not on green/), rule: 'fk-orphans:hydra_oauth2_access_client_id_fk', target: 'public.hydra_oauth2_access' },
      { relation: 'public.hydra_jwk', reason: expect.stringMatching(/^TRUNCATE/), rule: 'stream-truncate', target: null },
    ]);
    expect(stats.quarantined).toBe(1);
    expect(stats.unmapped).toBe(2);
  });
});
