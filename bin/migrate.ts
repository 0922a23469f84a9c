// The `migrate` CLI: parses arguments and hands off to one command function each. Prints exactly
// one report (text, or one JSON document with --json) and exits with the documented code.

import { Command, InvalidArgumentError, Option } from 'commander';
import { applyCommand } from '../src/commands/apply.ts';
import { demoCommand } from '../src/commands/demo.ts';
import { doctorCommand } from '../src/commands/doctor.ts';
import { planCommand } from '../src/commands/plan.ts';
import { quarantineListCommand, quarantineRestoreCommand } from '../src/commands/quarantine.ts';
import { errorResult, type CommandResult } from '../src/commands/result.ts';
import { statusCommand } from '../src/commands/status.ts';
import { validateCommand } from '../src/commands/validate.ts';
import { configJsonSchema } from '../src/config/schema.ts';
import { redact } from '../src/db/redact.ts';
import { ExitCode } from '../src/errors.ts';
import { asOperatorError } from '../src/runner.ts';

const EXIT_CODES_HELP = `
Exit codes:
  0 ok            1 usage          2 config         3 state (lock, journal, preflight)
  4 Postgres      5 findings / validation failed    6 source (blue, pg_dump, migrations)
  7 target (green)                 8 cutover rolled back
Runbooks: runbooks/exit-codes.md`;

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a whole number >= 1');
  return n;
}

function anyInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError('expected a whole number');
  return n;
}

let jsonMode = false;

function print(result: CommandResult): never {
  // A failed command's report goes to stderr, so scripts reading stdout never mistake it for output.
  if (jsonMode) process.stdout.write(`${JSON.stringify(result.json)}\n`);
  else (result.exitCode === 0 ? process.stdout : process.stderr).write(`${redact(result.text)}\n`);
  process.exit(result.exitCode);
}

async function run(json: boolean | undefined, fn: () => Promise<CommandResult>): Promise<never> {
  jsonMode = !!json;
  try {
    return print(await fn());
  } catch (err) {
    const e = asOperatorError(err);
    if (!jsonMode) process.stderr.write(`${redact(errorResult(e).text)}\n`);
    else process.stdout.write(`${JSON.stringify(errorResult(e).json)}\n`);
    process.exit(e.exitCode);
  }
}

const configOption = (): Option => new Option('-c, --config <file>', 'config file (JSON; see README "Config")').default('migrate.config.json');
const jsonOption = (): Option => new Option('--json', 'print one JSON document on stdout (progress goes to stderr)');

const program = new Command('migrate')
  .description('Blue-green major upgrades of a live Postgres-backed OAuth engine (Hydra-shaped), without losing a revocation.')
  .showHelpAfterError('(run with --help for usage)')
  .addHelpText('after', `
Typical session:
  migrate doctor --config prod.json      is this machine ready?
  migrate plan --config prod.json        every action apply will run, and the dirty rows it will quarantine
  migrate apply --config prod.json       capture, snapshot, cleanup, migrate, validate (resumable)
  migrate status --config prod.json      where the run is
${EXIT_CODES_HELP}`);
program.configureOutput({ writeErr: (s) => process.stderr.write(s) });
program.exitOverride((err) => {
  if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') process.exit(ExitCode.ok);
  process.exit(ExitCode.usage);
});

program
  .command('doctor')
  .description('check binaries (pg_dump), Node, and with --config both databases and every preflight check')
  .addOption(new Option('-c, --config <file>', 'config file; without it only the machine is checked'))
  .addOption(jsonOption())
  .action((o) => run(o.json, () => doctorCommand(o)));

program
  .command('plan')
  .description('print every action `apply` will run (same code, read-only), with dirty rows per cleanup rule')
  .addOption(configOption())
  .addOption(jsonOption())
  .action((o) => run(o.json, () => planCommand(o)));

program
  .command('apply')
  .description('run the upgrade: preflight, capture, snapshot, cleanup, migrate, validate; resumable after a crash')
  .addOption(configOption())
  .addOption(jsonOption())
  .option('--resume', 'continue the unfinished run where it stopped')
  .option('--restart', 'abandon the unfinished run and start over (green is wiped, only if migrate created it)')
  .option('--accept-new-snapshot', 'with --resume: copy the remaining tables from a new snapshot when the old one is gone')
  .option('--dry-run', 'CI rehearsal against a copied database: everything except cutover')
  .option('-j, --jobs <n>', 'parallel copy and index workers (default: config snapshot.jobs, else CPU cores)', positiveInt)
  .addHelpText('after', `
After a crash or a failed step, fix the cause and run \`migrate apply --resume\`: finished tables,
indexes and migrations are skipped. If the copy was interrupted, the old snapshot is gone; resume
then asks for --accept-new-snapshot (or use --restart for a fully consistent copy).${EXIT_CODES_HELP}`)
  .action((o) => run(o.json, () => applyCommand(o)));

program
  .command('status')
  .description('show the newest run, its journal and what green holds')
  .addOption(configOption())
  .addOption(jsonOption())
  .action((o) => run(o.json, () => statusCommand(o)));

program
  .command('validate')
  .description('compare blue and green: row counts net of quarantine, checksums of unchanged columns (exit 5 on difference)')
  .addOption(configOption())
  .addOption(jsonOption())
  .action((o) => run(o.json, () => validateCommand(o)));

const quarantine = program.command('quarantine').description('rows cleanup moved aside (never deleted)');
quarantine
  .command('list')
  .description('count quarantined rows by table, rule and reason')
  .addOption(configOption())
  .addOption(jsonOption())
  .action((o) => run(o.json, () => quarantineListCommand(o)));
quarantine
  .command('restore')
  .description('put quarantined rows back exactly (all, or one rule with --rule)')
  .addOption(configOption())
  .addOption(jsonOption())
  .option('--rule <name>', 'restore only the rows of this rule')
  .action((o) => run(o.json, () => quarantineRestoreCommand(o)));

program
  .command('demo')
  .description('run the whole blue-green flow on two throwaway embedded PostgreSQL clusters')
  .addOption(jsonOption())
  .option('--rows <n>', 'access-token rows to seed on blue', positiveInt, 20000)
  .option('--seed <n>', 'seed of the deterministic data generator', anyInt, 42)
  .option('--no-dirty', 'seed no dirty rows (by default every dirty-row class is seeded)')
  .action((o) => run(o.json, () => demoCommand(o)));

program
  .command('config-schema')
  .description('print the JSON Schema of the config file (for editors: "$schema")')
  .action(() => run(false, async () => ({ exitCode: 0, json: {}, text: JSON.stringify(configJsonSchema(), null, 2) })));

await program.parseAsync(process.argv);
