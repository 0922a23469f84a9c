// Copy progress per table: rows (estimated from bytes until blue's COPY reports the exact count),
// bytes, rate and ETA, emitted at most every couple of seconds so plain CI logs stay readable.

import type { TableEstimate } from '../db/catalog.ts';

const MiB = 1048576;

interface TableState {
  bytes: number;
  rows: number;
  started: number;
  openUnits: number;
}

/** Formats a count as 1.2M / 34.5k / 999. */
function count(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(Math.round(n));
}

/** Tracks the data units in flight and reports per-table rows, bytes, rate and ETA. */
export class CopyProgress {
  private readonly tables = new Map<string, TableState>();
  private lastEmit = 0;

  /**
   * `unitsLeft`: per table, how many of its data units this attempt runs; the table is reported as
   * copied when the last of them finishes, in whatever order its ranges end.
   */
  constructor(
    private readonly emit: (line: string) => void,
    private readonly estimates: ReadonlyMap<string, TableEstimate>,
    private readonly unitsLeft: Map<string, number>,
    private readonly everyMs = 2000,
  ) {}

  /** A data unit of `table` started. */
  start(table: string): void {
    const s = this.tables.get(table) ?? { bytes: 0, rows: 0, started: Date.now(), openUnits: 0 };
    s.openUnits++;
    this.tables.set(table, s);
  }

  /** `n` more stream bytes of `table` went through. */
  add(table: string, n: number): void {
    const s = this.tables.get(table);
    if (s) s.bytes += n;
    if (Date.now() - this.lastEmit >= this.everyMs) {
      this.lastEmit = Date.now();
      for (const [key, st] of this.tables) if (st.openUnits > 0) this.emit(this.line(key, st));
    }
  }

  /** A data unit of `table` finished with exact `rows`; reports the table when the last of its units ends. */
  finish(table: string, rows: number): void {
    const s = this.tables.get(table);
    if (!s) return;
    s.openUnits--;
    s.rows += rows;
    const left = (this.unitsLeft.get(table) ?? 1) - 1;
    this.unitsLeft.set(table, left);
    if (left <= 0) this.emit(`copied ${table}: ${count(s.rows)} rows, ${(s.bytes / MiB).toFixed(1)} MiB in ${((Date.now() - s.started) / 1000).toFixed(1)} s (${this.rate(s).toFixed(1)} MiB/s)`);
  }

  private rate(s: TableState): number {
    return s.bytes / MiB / Math.max(0.001, (Date.now() - s.started) / 1000);
  }

  private line(key: string, s: TableState): string {
    const est = this.estimates.get(key);
    const perRow = est && est.rows > 0 ? est.heapBytes / est.rows : 0;
    const rows = s.rows + (perRow > 0 ? s.bytes / perRow : 0);
    const rate = this.rate(s);
    const eta = est && rate > 0 ? Math.max(0, (est.heapBytes - s.bytes) / MiB / rate) : NaN;
    const of = est && est.rows > 0 ? ` of ~${count(est.rows)}` : '';
    return `copying ${key}: ~${count(rows)}${of} rows, ${(s.bytes / MiB).toFixed(1)} MiB, ${rate.toFixed(1)} MiB/s, ETA ${Number.isFinite(eta) ? `${eta.toFixed(0)} s` : 'unknown'}`;
  }
}
