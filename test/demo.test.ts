// `migrate demo` is the whole mission on throwaway parts; these runs are the end-to-end proof of
// the window (traffic that writes like an engine, through the router, streamed into green), cutover,
// drain, watch, metrics, and both injected faults.
import { describe, expect, it } from 'vitest';
import { runCli } from './harness.ts';

interface DemoDoc {
  ok: boolean;
  exitCode: number;
  quarantine: { rows: number };
  validation: { passed: boolean; failures: string[] } | null;
  revocations?: {
    requests: number;
    captured: number;
    replayed: number;
    lost: number;
    resurrected: number;
    bothPaths: { requests: number; afterSnapshot: number; viaReplay: number; viaStream: number; agree: boolean; disagreements: unknown[] };
  };
  writes?: { made: number; afterSnapshot: number; present: number; lost: number; byKind: Record<string, { made: number; present: number; lost: number }>; missing: unknown[] };
  cutover: { targets: { name: string; status: string }[]; rolledBack: boolean; rollbackOrder: string[]; blackoutMs: number; failedRequests: number; heldRequests: number; latency: Record<'before' | 'during' | 'after', { requests: number }> } | null;
  servingSide?: string;
  lever?: { raised: boolean; restored: boolean } | null;
  metrics?: { green: { rowsInserted: number; commits: number }; steps: { name: string; ms: number }[] };
  steps: { name: string; status: string; ms: number }[];
  planCheck?: { actions: number; sqlMatched: number; differences: { unit: string; problem: string }[] };
}

async function demo(args: string[]): Promise<{ code: number | null; doc: DemoDoc; stderr: string }> {
  const r = await runCli(['demo', '--rows', '5000', '--seed', '5', '--json', ...args]);
  return { code: r.code, doc: JSON.parse(r.stdout) as DemoDoc, stderr: r.stderr };
}

describe('migrate demo', () => {
  it('cuts over three targets after the window with no revocation lost or resurrected', { timeout: 300_000 }, async () => {
    const { code, doc, stderr } = await demo([]);
    expect(code, stderr.slice(-3000)).toBe(0);
    expect(doc.ok).toBe(true);
    expect(doc.quarantine.rows).toBeGreaterThan(0);
    expect(doc.validation).toMatchObject({ passed: true, failures: [] });
    expect(doc.revocations!.requests).toBeGreaterThanOrEqual(1000);
    expect(doc.revocations!.captured).toBeGreaterThanOrEqual(doc.revocations!.requests);
    expect(doc.revocations).toMatchObject({ lost: 0, resurrected: 0 });
    // Every row the window wrote on blue is on green in its new form after cutover (row by row, through the mapping).
    expect(doc.writes!.missing).toEqual([]);
    expect(doc.writes!.made).toBeGreaterThanOrEqual(1000);
    expect(doc.writes!.afterSnapshot).toBeGreaterThanOrEqual(1000);
    expect(doc.writes).toMatchObject({ lost: 0, present: doc.writes!.made });
    for (const kind of ['client-created', 'client-updated', 'client-credentials', 'login-requested', 'login-accepted', 'consent-granted', 'code-exchanged', 'refresh-rotated', 'token-revoked', 'consent-revoked']) {
      expect(doc.writes!.byKind[kind], kind).toMatchObject({ lost: 0 });
      expect(doc.writes!.byKind[kind]!.made, kind).toBeGreaterThan(0);
    }
    // Every revocation after the snapshot reached green by both paths, the outbox replay and the stream.
    const both = doc.revocations!.bothPaths;
    expect(both.disagreements).toEqual([]);
    expect(both.agree).toBe(true);
    expect(both.afterSnapshot).toBeGreaterThan(doc.revocations!.requests / 2);
    expect(both.viaStream).toBeGreaterThanOrEqual(both.afterSnapshot);
    expect(both.viaReplay).toBeGreaterThanOrEqual(both.afterSnapshot);
    expect(doc.cutover).toMatchObject({ rolledBack: false, targets: [{ name: 'standin-db', status: 'committed' }, { name: 'router', status: 'committed' }, { name: 'internal-config', status: 'committed' }] });
    // The fenced flip, seen from the clients that kept calling through it: held, never failed, and
    // released within the hold budget (5 s; the 1 s target is the demo's figure on an idle machine).
    expect(doc.cutover).toMatchObject({ failedRequests: 0 });
    expect(doc.cutover!.heldRequests).toBeGreaterThan(0);
    expect(doc.cutover!.blackoutMs).toBeGreaterThan(0);
    expect(doc.cutover!.blackoutMs).toBeLessThanOrEqual(5000);
    for (const part of ['before', 'during', 'after'] as const) expect(doc.cutover!.latency[part].requests, part).toBeGreaterThan(0);
    expect(doc.servingSide).toBe('green');
    expect(doc.lever).toMatchObject({ raised: true, restored: true });
    expect(doc.metrics!.green.rowsInserted).toBeGreaterThan(0);
    expect(doc.metrics!.steps.map((s) => s.name)).toContain('cutover');
    // Every step that ran, apply's and cutover's, each with its status and time.
    expect(doc.steps.map((s) => `${s.name}:${s.status}`)).toEqual(['preflight', 'capture', 'snapshot', 'cleanup', 'migrate', 'validate', 'stream', 'lever', 'cutover', 'drain', 'recheck', 'watch', 'restore-ttl'].map((n) => `${n}:done`));
    for (const s of doc.steps) expect(typeof s.ms, s.name).toBe('number');
    // `plan --through cutover`, taken before apply, is what apply and cutover journalled: same actions, same SQL.
    expect(doc.planCheck!.differences).toEqual([]);
    expect(doc.planCheck!.actions).toBeGreaterThan(50);
    expect(doc.planCheck!.sqlMatched).toBeGreaterThan(20);
    expect(stderr).toContain('removing temp files');
  });

  it('rolls every target back and keeps blue serving when one target fails (exit 8)', { timeout: 300_000 }, async () => {
    const { code, doc } = await demo(['--fault', 'target-fails']);
    expect(code).toBe(8);
    expect(doc.ok).toBe(false);
    expect(doc.cutover!.rolledBack).toBe(true);
    expect(doc.cutover!.targets.every((t) => t.status === 'rolled-back')).toBe(true);
    // Commit order puts the router's fence last: the failing target is undone, then standin-db, then the fence is lowered on blue.
    expect(doc.cutover!.rollbackOrder).toEqual(['internal-config', 'standin-db', 'router']);
    expect(doc.servingSide).toBe('blue');
    expect(doc.revocations).toMatchObject({ lost: 0, resurrected: 0 });
    expect(doc.writes).toMatchObject({ lost: 0 });
    expect(doc.cutover).toMatchObject({ failedRequests: 0 });
    expect(doc.lever).toMatchObject({ restored: true });
  });

  it('catches a corrupting migration by invariant and cuts nothing over (exit 5)', { timeout: 300_000 }, async () => {
    const { code, doc } = await demo(['--fault', 'corrupt-migration']);
    expect(code).toBe(5);
    expect(doc.cutover).toBeNull();
    expect(doc.validation!.passed).toBe(false);
    expect(doc.validation!.failures.join('\n')).toContain('remembered-consents-stay-remembered');
  });
});
