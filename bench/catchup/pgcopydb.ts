// pgcopydb's follow mode as the third consumer of the catch-up bench (bench/catchup.ts).
//
// Debian's pgcopydb (0.10) decodes with wal2json only (test_decoding came in 0.12); embedded
// PostgreSQL ships no wal2json, so blue loads Debian's (postgresql-15-wal2json, same major version)
// through dynamic_library_path. `pgcopydb stream setup` creates its slot, its sentinel table on blue
// and its replication origin on the target before the burst; after it, `pgcopydb follow --endpos`
// streams the backlog into JSON files, transforms them to SQL and replays them, and exits at the end
// position. Its 0.10 follow replays every table the WAL carries (--filters is not applied there), and
// its exit status stays 0 when the replay fails: the run's log is searched for errors, and the bench
// verifies the target like the others.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** Where Debian installs PostgreSQL 15 extensions; blue's dynamic_library_path adds it after its own. */
export const PGCOPYDB_LIBRARY_PATH = '$libdir:/usr/lib/postgresql/15/lib';
const WAL2JSON = '/usr/lib/postgresql/15/lib/wal2json.so';
const SLOT = 'bench_pgcopydb';

/** Where pgcopydb reads and writes. */
export interface PgcopydbTarget {
  /** Blue (source) DSN, with its password. */
  blueDsn: string;
  /** The same-schema copy to replay into. */
  targetDsn: string;
  /** Work directory (pgcopydb's --dir goes below it). */
  dir: string;
  /** Progress lines. */
  log: (line: string) => void;
}

function runPgcopydb(argv: string[], env: Record<string, string>, logFile: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('pgcopydb', argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      fs.appendFileSync(logFile, out);
      const errors = out.split('\n').filter((l) => / ERROR /.test(l));
      if (code !== 0 || errors.length) reject(new Error(`pgcopydb ${argv.slice(0, 2).join(' ')} exited ${code}${errors.length ? `: ${errors.slice(0, 4).join(' | ')}` : ''} (log ${logFile})`));
      else resolve(out);
    });
  });
}

/** pgcopydb's follow mode over one slot, set up before the burst and run after it. */
export class PgcopydbFollow {
  private target: PgcopydbTarget | null = null;

  /** URIs without the password (pgcopydb prints them; the password goes through PGPASSWORD). */
  private uris(): { source: string; target: string; env: Record<string, string>; work: string; logFile: string } {
    const t = this.target;
    if (!t) throw new Error('pgcopydb: prepare() first');
    const source = new URL(t.blueDsn);
    const target = new URL(t.targetDsn);
    const password = decodeURIComponent(source.password);
    source.password = '';
    target.password = '';
    return { source: source.toString(), target: target.toString(), env: { PGPASSWORD: password }, work: path.join(t.dir, 'pgcopydb'), logFile: path.join(t.dir, 'pgcopydb.log') };
  }

  /** Creates the slot (wal2json), the sentinel on blue and the origin on the target, and lets follow apply. */
  async prepare(target: PgcopydbTarget): Promise<void> {
    this.target = target;
    const u = this.uris();
    const common = ['--source', u.source, '--target', u.target, '--dir', u.work, '--slot-name', SLOT, '--origin', SLOT];
    await runPgcopydb(['stream', 'setup', ...common, '--not-consistent'], u.env, u.logFile);
    await runPgcopydb(['stream', 'sentinel', 'set', 'apply', '--source', u.source], u.env, u.logFile);
    target.log(`pgcopydb: slot ${SLOT} (wal2json), sentinel and origin created`);
  }

  /** Streams, transforms and replays the backlog up to `endLsn`; resolves when pgcopydb exits there. */
  async follow(endLsn: string): Promise<void> {
    const u = this.uris();
    await runPgcopydb(
      ['follow', '--source', u.source, '--target', u.target, '--dir', u.work, '--slot-name', SLOT, '--origin', SLOT, '--endpos', endLsn, '--resume', '--not-consistent'],
      u.env,
      u.logFile,
    );
  }
}

/** A follower when pgcopydb and wal2json are installed; otherwise why not (the bench reports it). */
export async function pgcopydbAvailable(): Promise<PgcopydbFollow | string> {
  const installed = await new Promise<boolean>((resolve) => {
    const child = spawn('sh', ['-c', 'command -v pgcopydb'], { stdio: 'ignore' });
    child.on('error', () => resolve(false));
    child.on('close', (code) => resolve(code === 0));
  });
  if (!installed) return 'not installed (apt-get install pgcopydb)';
  if (!fs.existsSync(WAL2JSON)) return 'installed, but its follow mode (0.10) decodes with wal2json only, which is not installed (apt-get install postgresql-15-wal2json)';
  return new PgcopydbFollow();
}
