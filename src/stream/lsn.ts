// WAL positions (LSNs) as numbers: the replication protocol and pg_lsn print them as `HI/LO` in hex,
// with or without zero padding, so they are compared as bigints and printed the way pg_lsn does; and
// amounts of WAL and durations as the stream's progress lines and `migrate status` print them.

/** Parses `HI/LO` (hex, any padding) into a number of bytes. */
export function parseLsn(text: string): bigint {
  const m = /^([0-9a-fA-F]{1,8})\/([0-9a-fA-F]{1,8})$/.exec(text.trim());
  if (!m) throw new Error(`not an LSN: ${text}`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/** Prints a position as pg_lsn does (`16/B374D848`). */
export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** WAL page size (XLOG_BLCKSZ; 8 kB unless Postgres was built otherwise). */
const WAL_PAGE = 8192n;
/** The longest WAL page header (the first page of a segment); no record starts inside it. */
const WAL_PAGE_HEADER_MAX = 40n;

/**
 * True when a WAL sender that has decoded up to `position` has read every record that starts before
 * `target`. A position on a page boundary covers the page header after it: pg_current_wal_insert_lsn()
 * on an idle server may point just past a header that the sender's position never steps over.
 */
export function covers(position: bigint, target: bigint): boolean {
  return position >= target || (position % WAL_PAGE === 0n && target - position <= WAL_PAGE_HEADER_MAX);
}

/** Bytes for humans, as pg_size_pretty would say them (1024-based). */
export function humanBytes(bytes: number): string {
  const units = ['bytes', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${Math.round(bytes)} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

/** A duration for humans: `4.2 s`, `3 min 20 s`, `2 h 5 min`. */
export function humanSeconds(seconds: number): string {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const s = Math.round(seconds);
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
