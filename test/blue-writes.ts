// Writes on blue while a test's stream runs: new access tokens, one transaction each, cloned from
// random active grants whose client and consent exist (so the mapping has every parent).

import pg from 'pg';

/** Inserts access tokens `<prefix>-<n>` on blue until `stop()` (at most `max`), `pauseMs` apart; returns their signatures. */
export async function issueTokens(dsn: string, stop: () => boolean, prefix: string, opts: { max?: number; pauseMs?: number } = {}): Promise<string[]> {
  const c = new pg.Client({ connectionString: dsn });
  await c.connect();
  const issued: string[] = [];
  try {
    for (let n = 0; n < (opts.max ?? 5000) && !stop(); n++) {
      const { rows } = await c.query<{ signature: string }>(
        `INSERT INTO hydra_oauth2_access (signature, request_id, client_id, scope, granted_scope, form_data, session_data, subject, challenge_id)
         SELECT $2 || '-' || $1, $2 || '-req-' || $1, a.client_id, a.scope, a.granted_scope, '', '{}', a.subject, a.challenge_id
           FROM hydra_oauth2_access a
          WHERE a.active AND EXISTS (SELECT 1 FROM hydra_client cl WHERE cl.id = a.client_id)
            AND (a.challenge_id IS NULL OR EXISTS (SELECT 1 FROM hydra_oauth2_consent_request_handled h WHERE h.challenge = a.challenge_id))
          ORDER BY md5(a.signature || $1) LIMIT 1
         RETURNING signature`,
        [String(n), prefix],
      );
      issued.push(...rows.map((r) => r.signature));
      if (opts.pauseMs) await new Promise((resolve) => setTimeout(resolve, opts.pauseMs));
    }
  } finally {
    await c.end();
  }
  return issued;
}
