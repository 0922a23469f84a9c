// Runs one catch-up as the stream step does (src/steps/stream.ts), in its own process, so
// test/stream-chaos.test.ts can SIGKILL it at any moment: the stream reader (src/stream/reader.ts)
// stages blue's changes up to a position (given, or blue's insert position read at start), then, with
// STREAM_MAP_BATCH set, the staged changes are mapped into green's v2 tables by the Hydra mapping
// (src/stream/apply-changes.ts), exactly as the step's `:map` action calls it.
// stderr: the reader's progress lines (the first one follows the first committed batch), then
// `stream-child: mapping` when the mapping starts (its batches show in bluegreen_green.mapped_mark).
// stdout: the final figures as one JSON line ({ ...reader stats, mapped, mapMs }). An error is printed
// and sets the exit code.
// Usage: node --import tsx support/stream-child.ts <slot> <publication> <batchChanges> [uptoLsn]
// with STREAM_BLUE_DSN and STREAM_GREEN_DSN in the environment (DSNs carry passwords: not in argv),
// and optionally STREAM_MAP_BATCH (changes per mapped batch) and STREAM_READ_UPTO=1 (read uptoLsn
// from blue at start when none is given, as the stream step does).

import { connect, query } from '../src/db/connect.ts';
import { HYDRA_V1_TO_V2 } from '../src/engines/hydra/index.ts';
import { asOperatorError } from '../src/errors.ts';
import { applyStagedChanges } from '../src/stream/apply-changes.ts';
import { streamToGreen } from '../src/stream/reader.ts';

const [slot, publication, batch, givenUpto] = process.argv.slice(2);
const blueDsn = process.env.STREAM_BLUE_DSN;
const greenDsn = process.env.STREAM_GREEN_DSN;
const mapBatch = process.env.STREAM_MAP_BATCH ? Number(process.env.STREAM_MAP_BATCH) : null;
if (!slot || !publication || !batch || !blueDsn || !greenDsn) {
  process.stderr.write('usage: STREAM_BLUE_DSN=... STREAM_GREEN_DSN=... [STREAM_MAP_BATCH=n] [STREAM_READ_UPTO=1] node --import tsx support/stream-child.ts <slot> <publication> <batchChanges> [uptoLsn]\n');
  process.exit(1);
}

/** Blue's insert position now (what the stream step catches up to). */
async function insertPosition(dsn: string): Promise<string> {
  const blue = await connect('blue', dsn, 'stream-child');
  try {
    return (await query<{ lsn: string }>(blue, 'SELECT pg_current_wal_insert_lsn()::text AS lsn', [], { side: 'blue' })).rows[0]!.lsn;
  } finally {
    await blue.end().catch(() => {});
  }
}

let exitCode = 0;
try {
  const green = await connect('green', greenDsn, 'stream-child');
  try {
    process.stderr.write('stream-child: started\n');
    const uptoLsn = givenUpto ?? (process.env.STREAM_READ_UPTO ? await insertPosition(blueDsn) : undefined);
    const stats = await streamToGreen({
      blueDsn,
      green,
      slot,
      publication,
      batchChanges: Number(batch),
      ...(uptoLsn ? { uptoLsn } : {}),
      progress: (line) => process.stderr.write(`${line}\n`),
    });
    const mapping = HYDRA_V1_TO_V2.streamMapping;
    let mapped = 0;
    let mapMs = 0;
    if (mapBatch !== null && mapping) {
      process.stderr.write('stream-child: mapping\n');
      const m = await applyStagedChanges(green, { mapping, batch: mapBatch, slot });
      mapped = m.changes;
      mapMs = m.ms;
    }
    process.stdout.write(`${JSON.stringify({ ...stats, mapped, mapMs })}\n`);
  } finally {
    await green.end().catch(() => {});
  }
} catch (err) {
  const e = asOperatorError(err);
  exitCode = e.exitCode;
  process.stderr.write(`stream-child: ${e.message}\n${JSON.stringify(e.toJSON())}\n`);
}
process.exit(exitCode);
