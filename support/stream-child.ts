// Runs the stream reader (src/stream/reader.ts) in its own process, so test/stream-chaos.test.ts can
// SIGKILL it at any moment. Progress lines go to stderr (the first one follows the first committed
// batch); the final figures go to stdout as one JSON line; an error is printed and sets the exit code.
// Usage: node --import tsx support/stream-child.ts <slot> <publication> <batchChanges> [uptoLsn]
// with STREAM_BLUE_DSN and STREAM_GREEN_DSN in the environment (DSNs carry passwords: not in argv).

import { connect } from '../src/db/connect.ts';
import { asOperatorError } from '../src/errors.ts';
import { streamToGreen } from '../src/stream/reader.ts';

const [slot, publication, batch, uptoLsn] = process.argv.slice(2);
const blueDsn = process.env.STREAM_BLUE_DSN;
const greenDsn = process.env.STREAM_GREEN_DSN;
if (!slot || !publication || !batch || !blueDsn || !greenDsn) {
  process.stderr.write('usage: STREAM_BLUE_DSN=... STREAM_GREEN_DSN=... node --import tsx support/stream-child.ts <slot> <publication> <batchChanges> [uptoLsn]\n');
  process.exit(1);
}

let exitCode = 0;
try {
  const green = await connect('green', greenDsn, 'stream-child');
  try {
    process.stderr.write('stream-child: started\n');
    const stats = await streamToGreen({
      blueDsn,
      green,
      slot,
      publication,
      batchChanges: Number(batch),
      ...(uptoLsn ? { uptoLsn } : {}),
      progress: (line) => process.stderr.write(`${line}\n`),
    });
    process.stdout.write(`${JSON.stringify(stats)}\n`);
  } finally {
    await green.end().catch(() => {});
  }
} catch (err) {
  const e = asOperatorError(err);
  exitCode = e.exitCode;
  process.stderr.write(`stream-child: ${e.message}\n${JSON.stringify(e.toJSON())}\n`);
}
process.exit(exitCode);
