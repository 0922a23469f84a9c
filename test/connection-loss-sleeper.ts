// Child process for test/connection-loss.test.ts: opens a green session through src/db/connect.ts
// (so it gets the session guards every migrate session gets), says so on stdout, and runs a
// 60-second statement. The test SIGKILLs this process and checks the server stops the statement.
import { connect } from '../src/db/connect.ts';

const [dsn, applicationName] = process.argv.slice(2);
if (!dsn || !applicationName) throw new Error('usage: connection-loss-sleeper.ts <dsn> <application_name>');
const db = await connect('green', dsn, applicationName);
process.stdout.write('sleeping\n');
await db.query('SELECT pg_sleep(60)');
