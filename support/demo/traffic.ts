// The demo's window traffic: real OAuth requests (token revokes, refresh rotations, consent
// revokes) sent through the edge router to the engine on blue while `apply` runs, so the demo can
// count what was captured, replayed, lost and resurrected.

import { createHash } from 'node:crypto';
import type pg from 'pg';
import { rawTokenFor } from '../standin/server.ts';

/** One access-removing request. */
export type TrafficOp = { kind: 'revoke'; token: string; signature: string } | { kind: 'rotate'; token: string; signature: string } | { kind: 'consent'; subject: string; client: string };

/** The planned requests and what each one must leave inactive. */
export interface TrafficPlan {
  /** Requests in send order. */
  ops: TrafficOp[];
  /** Signatures that must be inactive (or gone) on the live side afterwards. */
  mustBeInactive: string[];
}

/** Picks distinct grants on blue and plans `count` operations (half revokes, a third rotations, the rest consent revokes). */
export async function planTraffic(blue: pg.Client, count: number): Promise<TrafficPlan> {
  const { rows } = await blue.query<{ access: string; refresh: string; subject: string; client_id: string }>(
    `SELECT a.signature AS access, r.signature AS refresh, a.subject, a.client_id
       FROM hydra_oauth2_access a JOIN hydra_oauth2_refresh r USING (request_id)
      WHERE a.active AND r.active AND a.challenge_id IS NOT NULL ORDER BY md5(a.signature) LIMIT $1`,
    [count * 3],
  );
  const consentCount = Math.floor(count / 6);
  const bySubjectClient = new Map<string, typeof rows>();
  for (const g of rows) bySubjectClient.set(`${g.subject}\u0000${g.client_id}`, [...(bySubjectClient.get(`${g.subject}\u0000${g.client_id}`) ?? []), g]);
  const consentKeys = [...bySubjectClient.keys()].slice(0, consentCount);
  const taken = new Set(consentKeys);
  const free = rows.filter((g) => !taken.has(`${g.subject}\u0000${g.client_id}`));
  const revokes = free.slice(0, Math.floor(count / 2));
  const rotations = free.slice(revokes.length, revokes.length + (count - revokes.length - consentKeys.length));
  const ops: TrafficOp[] = [];
  const mustBeInactive: string[] = [];
  for (const g of revokes) {
    ops.push({ kind: 'revoke', token: rawTokenFor(g.refresh), signature: g.refresh });
    mustBeInactive.push(g.access, g.refresh);
  }
  for (const g of rotations) {
    ops.push({ kind: 'rotate', token: rawTokenFor(g.refresh), signature: g.refresh });
    mustBeInactive.push(g.refresh);
  }
  for (const key of consentKeys) {
    const [subject, client] = key.split('\u0000') as [string, string];
    ops.push({ kind: 'consent', subject, client });
    for (const g of bySubjectClient.get(key) ?? []) mustBeInactive.push(g.access, g.refresh);
  }
  return { ops: interleave(ops), mustBeInactive };
}

/** Shuffles ops deterministically (by a hash of each op), so the kinds mix as real traffic does. */
export function interleave<T extends TrafficOp>(ops: readonly T[]): T[] {
  const key = (op: T): string => createHash('sha256').update(JSON.stringify(op)).digest('hex');
  return ops.map((op) => ({ op, k: key(op) })).sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0)).map((x) => x.op);
}

function request(base: string, op: TrafficOp): Promise<Response> {
  if (op.kind === 'consent') {
    return fetch(`${base}/oauth2/auth/sessions/consent?subject=${encodeURIComponent(op.subject)}&client=${encodeURIComponent(op.client)}`, { method: 'DELETE' });
  }
  const form: Record<string, string> = op.kind === 'revoke' ? { token: op.token } : { grant_type: 'refresh_token', refresh_token: op.token };
  return fetch(`${base}/oauth2/${op.kind === 'revoke' ? 'revoke' : 'token'}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(form) });
}

/** Cursor over a plan, shared by the phases of a window. */
export interface TrafficCursor {
  /** Next op to send. */
  next: number;
  /** Ops that succeeded. */
  ok: number;
}

/** How {@link driveTraffic} paces a phase of traffic. */
export interface DriveOptions {
  /** Ends the phase early when it returns true (checked before each op). */
  stop?: () => boolean;
  /** Clients sending at once (default 8). */
  concurrency?: number;
  /** Send ops only up to this index (default: every op). */
  limit?: number;
}

/** Sends ops through the router until `limit` ops were sent or `stop()` says so; a 503 (message not recorded) or a dropped connection is retried, as a client would. */
export async function driveTraffic(base: string, plan: Pick<TrafficPlan, 'ops'>, cursor: TrafficCursor, opts: DriveOptions = {}): Promise<void> {
  const stop = opts.stop ?? (() => false);
  const end = Math.min(opts.limit ?? plan.ops.length, plan.ops.length);
  const sendOne = async (op: TrafficOp): Promise<boolean> => {
    for (let attempt = 0; attempt < 5; attempt++) {
      const res = await request(base, op).catch(() => null);
      if (!res) continue;
      await res.arrayBuffer();
      if (res.status !== 503) return res.ok;
    }
    return false;
  };
  await Promise.all(
    Array.from({ length: opts.concurrency ?? 8 }, async () => {
      while (cursor.next < end && !stop()) if (await sendOne(plan.ops[cursor.next++]!)) cursor.ok++;
    }),
  );
}
