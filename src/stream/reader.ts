// The stream reader (issue G): drains blue's logical replication slot (pgoutput) into green's change
// log, in commit order, whole transactions per batch, idempotent and resumable.
//
// One green statement stages a batch and moves the slot's mark to its last commit LSN; only then is
// that LSN confirmed to blue, so the slot releases WAL only for what green holds. A crash between the
// two makes blue send those transactions again: they are at or below the mark and are skipped (and
// (lsn, seq) is the change log's key, a second guard). Messages are handled one at a time (the
// library's flow control pauses the socket while a batch is written), and timers go through the same
// queue, so nothing here runs concurrently.
//
// When to stop: with `uptoLsn`, once every transaction committed before it is staged (a keepalive or a
// later commit shows the server decoded past it); without, once the server has decoded past the WAL
// insert position read at start and nothing arrived for a second (at most CATCH_UP_MAX_MS after that, so a
// blue that never stops writing does not keep the reader for ever: the next run takes the rest). Once
// stopped there, the mark records the target as caught up (with when blue stood at it): `migrate
// status` measures green's lag in seconds from it. Progress lines add the rate since the previous line
// and an ETA at that rate.

import { LogicalReplicationService, type Pgoutput } from 'pg-logical-replication';
import { connect, type Db } from '../db/connect.ts';
import { ConnectionLostError, OperatorError, StateError, UsageError } from '../errors.ts';
import { installChangeLog, markCaughtUp, readMark, stageBatch, type StagedTransaction, type StreamMark } from './changelog.ts';
import { changesOf, commitTimeText, TextPgoutputPlugin, type Change } from './decode.ts';
import { covers, formatLsn, humanBytes, humanSeconds, parseLsn } from './lsn.ts';
import { checkNames, checkSlot, lagBytes, replicationError, type SlotStart } from './upstream.ts';

/** What to drain and where to. */
export interface StreamOptions {
  /** Blue's DSN (a normal and a replication connection are opened to it). */
  blueDsn: string;
  /** Green, where the change log lives. */
  green: Db;
  /** The slot of blue's database (slotName(database) in src/stream/names.ts). */
  slot: string;
  /** The publication of blue's database (publicationName(database)). */
  publication: string;
  /**
   * Stop once every transaction whose commit record starts before this LSN is staged; without it, stop
   * when caught up. Read it with pg_current_wal_insert_lsn(): pg_current_wal_lsn() is the write
   * position, and under synchronous_commit = off a transaction already committed may lie beyond it.
   */
  uptoLsn?: string;
  /** About this many changes per green transaction (whole blue transactions: a bigger one is one batch). */
  batchChanges: number;
  /** Progress lines (at most one a second). */
  progress?: (text: string) => void;
  /** Stops the reader at once: the batch being gathered is dropped (blue sends it again next time). */
  signal?: AbortSignal;
}

/** Why the reader stopped. */
export type StreamStop = 'caught-up' | 'upto';

/** Figures of one run of the reader. */
export interface StreamStats {
  /** Transactions staged by this run. */
  transactions: number;
  /** Changes staged by this run. */
  changes: number;
  /** Green transactions written. */
  batches: number;
  /** Transactions blue sent again that green already held (skipped). */
  redelivered: number;
  /** Commit LSN of the last staged transaction (this run or an earlier one); null before the first. */
  appliedLsn: string | null;
  /** Bytes of WAL blue has written past the last staged commit, at the end. */
  lagBytes: number;
  /** Seconds since the last staged transaction committed on blue, at the end; null before the first. */
  lagSeconds: number | null;
  /** Why it stopped. */
  stopped: StreamStop;
  /** Wall time. */
  ms: number;
}

const TICK_MS = 100;
/** A partial batch is written once nothing arrived for this long ... */
const FLUSH_IDLE_MS = 200;
/** ... or once it is this old, so a trickle of writes does not wait for a full batch. */
const FLUSH_MAX_AGE_MS = 1000;
/** Until the start position is reached, the server is asked this often for where it stands. */
const PING_MS = 500;
/** Caught up: nothing arrived for this long after the start position was reached. */
const IDLE_STOP_MS = 1000;
/** Caught up at the latest this long after the start position was reached. */
const CATCH_UP_MAX_MS = 10_000;
const PROGRESS_MS = 1000;
/** How long closing the replication connection may take before it is left to the socket. */
const CLOSE_WAIT_MS = 5000;
/** The session settings PostgreSQL's own subscriber asks its WAL sender for: values print the same everywhere. */
const OUTPUT_OPTIONS = '-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3';

/** Drains the slot into green's change log until caught up (or up to `uptoLsn`); see the file's header. */
export async function streamToGreen(opts: StreamOptions): Promise<StreamStats> {
  checkNames(opts.slot, opts.publication);
  if (!Number.isInteger(opts.batchChanges) || opts.batchChanges < 1) {
    throw new UsageError(`batchChanges must be a positive integer, not ${opts.batchChanges}`, 'set stream.batchChanges in the config');
  }
  const upto = opts.uptoLsn === undefined ? null : uptoPosition(opts.uptoLsn);
  const started = Date.now();
  await installChangeLog(opts.green);
  const mark = await readMark(opts.green, opts.slot);
  if (opts.signal?.aborted) throw stoppedEarly(opts.signal, opts.slot, mark.applied);
  const blue = await connect('blue', opts.blueDsn, 'migrate-stream');
  try {
    // When blue stood at the target: `uptoLsn` was read just before this call; the start position is read now.
    const targetAt = upto === null ? new Date() : new Date(started);
    const slot = await checkSlot(blue, opts.slot, opts.publication);
    return await new SlotReader(opts, blue, slot, mark, upto, started, targetAt).run();
  } finally {
    await blue.end().catch(() => {});
  }
}

function uptoPosition(text: string): bigint {
  try {
    return parseLsn(text);
  } catch {
    throw new UsageError(`uptoLsn ${JSON.stringify(text)} is not an LSN`, 'pass a position as pg_current_wal_lsn() prints it, e.g. 0/16B3748');
  }
}

function stoppedEarly(signal: AbortSignal, slot: string, applied: bigint | null): OperatorError {
  if (signal.reason instanceof OperatorError) return signal.reason;
  return new StateError(
    `the stream reader on slot ${slot} was stopped before it caught up${applied === null ? '' : ` (green holds every change up to ${formatLsn(applied)})`}`,
    'run it again: it resumes after the last staged transaction, and nothing is staged twice',
    { slot, appliedLsn: applied === null ? null : formatLsn(applied) },
  );
}

function lsnOf(text: string | null): bigint {
  if (text === null) throw new Error('pgoutput sent a transaction without a commit LSN');
  return parseLsn(text);
}

/** A transaction between its begin and its commit message. */
interface OpenTransaction extends StagedTransaction {
  /** Green already holds it (at or below the mark): its changes are not kept. */
  redelivered: boolean;
}

/** A keepalive's position, valid once the data messages received before it are handled. */
interface Keepalive {
  lsn: bigint;
  after: number;
}

/** One run over one slot: the replication connection, the open transaction, the batch being gathered. */
class SlotReader {
  private readonly service: LogicalReplicationService;
  private readonly plugin: TextPgoutputPlugin;
  /** Where "caught up" (or "up to") is measured from. */
  private readonly target: bigint;
  private applied: bigint | null;
  private appliedAt: Date | null;
  private open: OpenTransaction | null = null;
  private batch: StagedTransaction[] = [];
  private batchSize = 0;
  private batchSince = 0;
  /** Data messages handled (in order); keepalives are ordered against it. */
  private handled = 0;
  private readonly keepalives: Keepalive[] = [];
  private reachedAt: number | null = null;
  private lastDataAt = Date.now();
  private lastPingAt = 0;
  private lastProgressAt = 0;
  /** Where the previous progress line stood: the line's rate is over the interval since. */
  private lastProgress: { at: number; changes: number; position: bigint } | null = null;
  private chain: Promise<void> = Promise.resolve();
  private ticking = false;
  private settled = false;
  private settle: { resolve: (stop: StreamStop) => void; reject: (err: OperatorError) => void } = { resolve: () => {}, reject: () => {} };
  private readonly stats = { transactions: 0, changes: 0, batches: 0, redelivered: 0 };

  constructor(
    private readonly opts: StreamOptions,
    private readonly blue: Db,
    private readonly slot: SlotStart,
    mark: StreamMark,
    private readonly upto: bigint | null,
    private readonly started: number,
    private readonly targetAt: Date,
  ) {
    this.applied = mark.applied;
    this.appliedAt = mark.committedAt;
    this.target = upto ?? slot.walAtStart;
    this.plugin = new TextPgoutputPlugin(opts.publication, (err) => this.fail(err));
    this.service = new LogicalReplicationService(
      { connectionString: opts.blueDsn, application_name: 'migrate-stream-reader', connectionTimeoutMillis: 10_000, options: OUTPUT_OPTIONS },
      // Nothing is confirmed but what green holds: no automatic or timed acknowledgement.
      { acknowledge: { auto: false, timeoutSeconds: 0 }, flowControl: { enabled: true } },
    );
  }

  /** Streams until stopped; the replication connection is closed on every path. */
  async run(): Promise<StreamStats> {
    const outcome = new Promise<StreamStop>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    const signal = this.opts.signal;
    const onAbort = (): void => {
      if (signal) this.fail(stoppedEarly(signal, this.opts.slot, this.applied));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    const ticker = setInterval(() => this.enqueueTick(), TICK_MS);
    let stopped: StreamStop;
    try {
      this.service.on('data', (_lsn: string, msg: Pgoutput.Message) => this.enqueue(() => this.onMessage(msg)));
      this.service.on('heartbeat', (lsn: string, _time: number, shouldRespond: boolean) => this.onKeepalive(lsn, shouldRespond));
      this.service.on('error', (err: Error) => this.fail(err));
      // The server starts at the slot's confirmed position or at the mark, whichever is later.
      this.service.subscribe(this.plugin, this.opts.slot, formatLsn(this.applied ?? 0n)).then(
        () => this.fail(new ConnectionLostError('blue', 'the replication stream ended')),
        (err: unknown) => this.fail(err),
      );
      stopped = await outcome;
    } finally {
      clearInterval(ticker);
      signal?.removeEventListener('abort', onAbort);
      await this.close();
    }
    return this.finalStats(stopped);
  }

  private enqueue(task: () => Promise<void>): Promise<void> {
    const next = this.chain.then(() => (this.settled ? undefined : task())).catch((err: unknown) => this.fail(err));
    this.chain = next;
    return next;
  }

  private enqueueTick(): void {
    if (this.ticking || this.settled) return;
    this.ticking = true;
    void this.enqueue(() => this.tick()).finally(() => {
      this.ticking = false;
    });
  }

  private async onMessage(msg: Pgoutput.Message): Promise<void> {
    this.handled += 1;
    this.lastDataAt = Date.now();
    switch (msg.tag) {
      case 'begin':
        return this.onBegin(msg);
      case 'commit':
        return this.onCommit(msg);
      case 'insert':
      case 'update':
      case 'delete':
      case 'truncate': {
        const open = this.requireOpen(msg.tag);
        if (!open.redelivered) open.changes.push(...changesOf(msg));
        return;
      }
      default:
        return; // relation, type, origin: the parser keeps what later messages need
    }
  }

  private requireOpen(tag: string): OpenTransaction {
    if (!this.open) throw new Error(`pgoutput sent ${tag} outside a transaction`);
    return this.open;
  }

  private async onBegin(msg: Pgoutput.MessageBegin): Promise<void> {
    if (this.open) throw new Error('pgoutput sent begin inside a transaction');
    const commitLsn = lsnOf(msg.commitLsn);
    if (this.upto !== null && commitLsn > this.upto) {
      // Everything before uptoLsn has been sent; this one is for a later run.
      this.reach();
      return this.stopNow('upto');
    }
    const changes: Change[] = [];
    // xid is sent unsigned; the parser reads it signed.
    this.open = { commitLsn, xid: msg.xid >>> 0, committedAt: commitTimeText(msg.commitTime.valueOf()), changes, redelivered: this.applied !== null && commitLsn <= this.applied };
  }

  private async onCommit(msg: Pgoutput.MessageCommit): Promise<void> {
    const open = this.requireOpen('commit');
    this.open = null;
    if (open.redelivered) {
      this.stats.redelivered += 1;
      this.ack();
    } else {
      if (!this.batch.length) this.batchSince = Date.now();
      this.batch.push({ commitLsn: open.commitLsn, xid: open.xid, committedAt: open.committedAt, changes: open.changes });
      this.batchSize += open.changes.length;
    }
    if (msg.commitEndLsn !== null && covers(parseLsn(msg.commitEndLsn), this.target)) this.reach();
    if (this.batchSize >= this.opts.batchChanges) await this.flush();
    await this.maybeStop();
  }

  /** A keepalive arrives ahead of data messages still queued: it counts once those are handled. */
  private onKeepalive(lsn: string, shouldRespond: boolean): void {
    if (this.settled) return;
    try {
      this.keepalives.push({ lsn: parseLsn(lsn), after: this.plugin.received });
      if (shouldRespond) this.ack();
    } catch (err) {
      this.fail(err); // this runs inside the socket's data handler: nothing may be thrown from here
    }
  }

  private takeKeepalives(): void {
    for (let k = this.keepalives[0]; k && k.after <= this.handled; k = this.keepalives[0]) {
      this.keepalives.shift();
      if (covers(k.lsn, this.target)) this.reach();
    }
  }

  private reach(): void {
    this.reachedAt ??= Date.now();
  }

  private async tick(): Promise<void> {
    const now = Date.now();
    this.takeKeepalives();
    if (this.reachedAt === null && now - this.lastPingAt >= PING_MS) {
      this.lastPingAt = now;
      this.ack(true); // the server answers with a keepalive carrying its position
    }
    if (this.batch.length && (now - this.lastDataAt >= FLUSH_IDLE_MS || now - this.batchSince >= FLUSH_MAX_AGE_MS)) await this.flush();
    await this.maybeStop();
  }

  private async maybeStop(): Promise<void> {
    this.takeKeepalives();
    if (this.reachedAt === null || this.open || this.settled) return;
    const now = Date.now();
    if (this.upto === null && now - this.lastDataAt < IDLE_STOP_MS && now - this.reachedAt < CATCH_UP_MAX_MS) return;
    await this.stopNow(this.upto === null ? 'caught-up' : 'upto');
  }

  private async stopNow(stop: StreamStop): Promise<void> {
    await this.flush();
    if (this.settled) return;
    // Every transaction committed before the target is staged: `migrate status` measures lag from here.
    await markCaughtUp(this.opts.green, this.opts.slot, this.target, this.targetAt);
    if (this.settled) return;
    this.settled = true;
    this.settle.resolve(stop);
  }

  /** Stages the gathered transactions and the mark in one green statement, then confirms them to blue. */
  private async flush(): Promise<void> {
    if (!this.batch.length || this.settled) return;
    const txs = this.batch;
    this.batch = [];
    this.batchSize = 0;
    const staged = await stageBatch(this.opts.green, this.opts.slot, txs);
    const last = txs[txs.length - 1]!;
    this.applied = last.commitLsn;
    this.appliedAt = new Date(last.committedAt);
    this.stats.transactions += txs.length;
    this.stats.changes += staged;
    this.stats.batches += 1;
    this.ack();
    if (this.opts.progress && !this.settled && Date.now() - this.lastProgressAt >= PROGRESS_MS) {
      this.lastProgressAt = Date.now();
      this.opts.progress(this.progressLine(await lagBytes(this.blue, this.position()), false));
    }
  }

  /**
   * Confirms the last staged commit to blue (the library sends it + 1: that transaction is done, the
   * next one's commit record starts later). Never below the slot's confirmed position at start.
   */
  private ack(ping = false): void {
    const floor = this.slot.confirmed - 1n;
    const at = this.applied !== null && this.applied > floor ? this.applied : floor;
    this.service.acknowledge(formatLsn(at), ping).catch((err: unknown) => this.fail(err));
  }

  private position(): bigint {
    return this.applied ?? this.slot.confirmed;
  }

  /**
   * `stream <slot>: N change(s) in T transaction(s) staged (R changes/s); lag B bytes, S s since the last
   * staged commit; now R' changes/s, W/s of WAL; ETA E`: the overall rate since the start, then the rate
   * since the previous line and the time the lag takes at that rate (`caught up` once stopped there).
   */
  private progressLine(lag: number, done: boolean): string {
    const now = Date.now();
    const seconds = (now - this.started) / 1000;
    const rate = seconds > 0 ? Math.round(this.stats.changes / seconds) : 0;
    const behind = this.appliedAt ? `, ${((now - this.appliedAt.getTime()) / 1000).toFixed(1)} s since the last staged commit` : '';
    const last = this.lastProgress ?? { at: this.started, changes: 0, position: this.slot.confirmed };
    const interval = (now - last.at) / 1000;
    const recent = interval > 0 ? { changes: (this.stats.changes - last.changes) / interval, bytes: Math.max(0, Number(this.position() - last.position)) / interval } : null;
    this.lastProgress = { at: now, changes: this.stats.changes, position: this.position() };
    const eta = done ? 'caught up' : recent && recent.bytes > 0 ? humanSeconds(lag / recent.bytes) : 'unknown';
    const pace = recent ? `now ${Math.round(recent.changes)} changes/s, ${humanBytes(recent.bytes)}/s of WAL` : 'now -';
    return `stream ${this.opts.slot}: ${this.stats.changes} change(s) in ${this.stats.transactions} transaction(s) staged (${rate} changes/s); lag ${lag} bytes${behind}; ${pace}; ETA ${eta}`;
  }

  private fail(err: unknown): void {
    if (this.settled) return;
    this.settled = true;
    this.settle.reject(replicationError(err, this.opts.slot, this.opts.publication));
  }

  /** Ends the replication connection, then lets a batch already being written finish. */
  private async close(): Promise<void> {
    this.settled = true;
    const closed = this.service.destroy().then(
      () => undefined,
      () => undefined,
    );
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_WAIT_MS)))]);
    clearTimeout(timer);
    await this.chain;
  }

  private async finalStats(stopped: StreamStop): Promise<StreamStats> {
    const lag = await lagBytes(this.blue, this.position());
    this.opts.progress?.(this.progressLine(lag, true));
    return {
      ...this.stats,
      appliedLsn: this.applied === null ? null : formatLsn(this.applied),
      lagBytes: lag,
      lagSeconds: this.appliedAt ? (Date.now() - this.appliedAt.getTime()) / 1000 : null,
      stopped,
      ms: Date.now() - this.started,
    };
  }
}
