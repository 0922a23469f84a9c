// The `migrate` CLI: parses arguments and hands off to one command function each. Prints exactly
// one report (text, or one JSON document with --json) and exits with the documented code.

import fs from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { applyCommand } from '../src/commands/apply.ts';
import { DEMO_FAULTS, launchDemo } from '../src/commands/demo-launcher.ts';
import { doctorCommand } from '../src/commands/doctor.ts';
import { lintCommand } from '../src/commands/lint.ts';
import { planCommand } from '../src/commands/plan.ts';
import { quarantineListCommand, quarantineRestoreCommand } from '../src/commands/quarantine.ts';
import { errorResult, type CommandResult } from '../src/commands/result.ts';
import { statusCommand } from '../src/commands/status.ts';
import { cutoverCommand } from '../src/commands/cutover.ts';
import { rollbackCommand } from '../src/commands/rollback.ts';
import { validateCommand } from '../src/commands/validate.ts';
import { drainCommand } from '../src/commands/drain.ts';
import { finishCommand } from '../src/commands/finish.ts';
import { followCommand } from '../src/commands/follow.ts';
import { configJsonSchema } from '../src/config/schema.ts';
import { redact } from '../src/db/redact.ts';
import { asOperatorError, ExitCode } from '../src/errors.ts';

const EXIT_CODES_HELP = `
Exit codes:
  0 ok            1 usage          2 config         3 state (lock, journal, preflight)
  4 Postgres      5 findings / validation failed    6 source (blue, pg_dump, migrations)
  7 target (green)                 8 cutover rolled back
  70 internal: a bug in migrate (report it)
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

/**
 * Writes the report and exits once both streams have handed everything to the OS. `process.exit()`
 * right after `write()` drops what a pipe has not taken yet (output was cut at 64 KiB through `| jq`).
 */
function finish(stream: NodeJS.WriteStream, text: string, exitCode: number): Promise<never> {
  // A reader that went away (`| head`) is not a failure of the command: EPIPE ends the wait, the code stays.
  const drained = (s: NodeJS.WriteStream, chunk: string): Promise<void> =>
    new Promise((resolve) => {
      s.once('error', () => resolve());
      s.write(chunk, () => resolve());
    });
  const other = stream === process.stdout ? process.stderr : process.stdout;
  return Promise.all([drained(stream, text), drained(other, '')]).then(() => process.exit(exitCode));
}

function print(result: CommandResult): Promise<never> {
  // A failed command's report goes to stderr, so scripts reading stdout never mistake it for output.
  if (jsonMode) return finish(process.stdout, `${redact(JSON.stringify(result.json))}\n`, result.exitCode);
  return finish(result.exitCode === 0 ? process.stdout : process.stderr, `${redact(result.text)}\n`, result.exitCode);
}

async function run(json: boolean | undefined, fn: () => Promise<CommandResult>): Promise<never> {
  jsonMode = !!json;
  let result: CommandResult;
  try {
    result = await fn();
  } catch (err) {
    const e = asOperatorError(err);
    result = errorResult(e);
  }
  return print(result);
}

const configOption = (): Option => new Option('-c, --config <file>', 'config file (JSON; see README "Config")').default('migrate.config.json');
const jsonOption = (): Option => new Option('--json', 'print one JSON document on stdout (progress goes to stderr)');

const { version } = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

const program = new Command('migrate')
  .version(version, '-V, --version', 'print the version of migrate')
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
  .option('--in-place', 'plan an in-place run on blue: the lock-safe rewrites and the constraint pre-flight')
  .option('--no-rewrite', 'with --in-place: show the statements as written')
  .option('--queries <file>', "the application's queries, checked for SELECT * on tables the migrations change")
  .option('--allow-no-migrations', 'accept a migrations folder with nothing pending (a pure copy); without it that is exit 6')
  .option('--lint-details', 'list every lock finding on green (by default one line counts them: green serves no traffic while it migrates)')
  .addOption(new Option('--through <phase>', 'apply: the steps `migrate apply` runs; cutover: also the steps `migrate cutover` runs after it (lever, cutover, drain, recheck, watch, restore-ttl)').choices(['apply', 'cutover']).default('apply'))
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
  .option('--allow-no-migrations', 'copy blue to green even when no migration is pending; without it that is refused (exit 6) before anything is written')
  .option('--report-md <file>', 'also write the report (steps, validation, metrics) as Markdown, e.g. $GITHUB_STEP_SUMMARY')
  .option('--in-place', 'run the pending migrations on blue itself, lock-safe (no green, no copy)')
  .option('--no-rewrite', 'with --in-place: run the statements as written (still under lock_timeout with retries)')
  .option('-j, --jobs <n>', 'parallel copy and index workers (default: config snapshot.jobs, else CPU cores)', positiveInt)
  .addOption(new Option('--verify <mode>', 'copy check: sample (checksums of very large tables sampled) or full (every row)').choices(['sample', 'full']))
  .addOption(new Option('--drill-pause <point>', 'crash drills only: stop at before|after:<step>:<unit> and wait to be killed').hideHelp())
  .addHelpText('after', `
After a crash or a failed step, fix the cause and run \`migrate apply --resume\`: finished tables,
indexes and migrations are skipped. If the copy was interrupted, the old snapshot is gone; resume
then asks for --accept-new-snapshot (or use --restart for a fully consistent copy).${EXIT_CODES_HELP}`)
  .action((o) => run(o.json, () => applyCommand(o)));

program
  .command('lint')
  .description('lint migrations for lock hazards (exit 5 on a finding, 0 when clean); without files, the configured migrations')
  .argument('[files...]', 'migration files (.sql)')
  .addOption(new Option('-c, --config <file>', 'config file: lint its migrations, and use its lint settings'))
  .addOption(jsonOption())
  .option('--queries <file>', "the application's queries (one per line or ;-separated), checked for SELECT * on changed tables")
  .action((files: string[], o) => run(o.json, () => lintCommand(files, o)));

program
  .command('cutover')
  .description('flip every configured target to green, all or nothing (guardrails, lever, validate, watch); exit 8 when rolled back')
  .addOption(configOption())
  .addOption(jsonOption())
  .option('--yes', 'do not ask for confirmation (CI)')
  .option('--report-md <file>', 'also write the metrics report as Markdown (e.g. $GITHUB_STEP_SUMMARY)')
  .action((o) => run(o.json, () => cutoverCommand(o)));

program
  .command('rollback')
  .description('show which targets are live on green (from the journal); with --yes roll them back newest first and restore the lever')
  .addOption(configOption())
  .addOption(jsonOption())
  .option('--yes', 'do it (without --yes only the plan is shown)')
  .action((o) => run(o.json, () => rollbackCommand(o)));

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

program
  .command('drain')
  .description('replay captured revocations (outbox, and the queue when configured) into the live side; resumable, idempotent')
  .addOption(configOption())
  .addOption(jsonOption())
  .addOption(new Option('--into <side>', 'side to replay into (blue after a rollback replays green\'s outbox)').choices(['green', 'blue']).default('green'))
  .addOption(new Option('--profile <profile>', 'replay semantics of the target (default: config replay.profile; hydra-v1 into blue)').choices(['hydra-v1', 'hydra-v2']))
  .option('--batch-size <n>', 'outbox events per batch', positiveInt)
  .option('--jobs <n>', 'connections to the live side each batch is split over, by grant (default: config replay.jobs, 2)', positiveInt)
  .action((o) => run(o.json, () => drainCommand(o)));

program
  .command('follow')
  .description('keep green caught up with blue between apply and cutover (stream.enabled): stage and map blue\'s changes round after round until stopped')
  .addOption(configOption())
  .addOption(jsonOption())
  .option('--interval-ms <n>', 'pause after a round that found nothing to stage or map, in ms', positiveInt, 1000)
  .option('--until-caught-up', 'stop by itself once green is within cutover\'s stream-caught-up allowance (stream.maxLagSeconds)')
  .addHelpText('after', `
Between \`migrate apply\` and \`migrate cutover\` nothing else reads the run's replication slot: blue
keeps all its WAL for the slot and green falls behind, so the cutover would first catch up a long
backlog. Run follow for the window: each round stages blue's changes up to its position then and
maps them into the new schema (the catch-up cutover itself runs), with one line on stderr per round
(lag in WAL bytes and seconds, rate, ETA; as \`migrate status\` shows them).

Stop it before \`migrate cutover\`: it holds the run lock, so cutover (and apply, drain) refuse
while it runs. Ctrl-C or SIGTERM finishes the current round, releases the slot and exits 0 with a
summary (a second signal stops at once, safely). With --until-caught-up it stops by itself, e.g.
  migrate follow --config prod.json --until-caught-up && migrate cutover --config prod.json
Refused (exit 3) without stream.enabled, before apply finished its stream step, or after the flip.
Runbook: runbooks/stream.md, "Keeping green caught up during the window".${EXIT_CODES_HELP}`)
  .action((o) => run(o.json, () => followCommand(o)));

program
  .command('finish')
  .description('remove everything migrate installed on blue and green (capture triggers, state, replication objects) after a cutover that passed its watch; the quarantine is kept')
  .addOption(configOption())
  .addOption(jsonOption())
  .option('--yes', 'do it (without --yes only the list is shown)')
  .option('--abandon', 'finish an upgrade that never went live (no target may be live on green)')
  .action((o) => run(o.json, () => finishCommand(o)));

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
  .option('--traffic <n>', 'revocation requests sent through the edge router during the window', positiveInt, 1200)
  .addOption(new Option('--fault <name>', 'inject a failure: target-fails (one cutover target fails: all roll back, exit 8) or corrupt-migration (validation catches it, exit 5)').choices([...DEMO_FAULTS]))
  .addHelpText('after', `
The demo starts two PostgreSQL clusters, the stand-in engine on each, and the edge router and
consumer Workers in workerd; seeds blue with dirty rows; runs apply while revocation traffic goes
through the router; then lever, cutover of three targets, drain, validation, watch and metrics.
It removes everything it started when it ends.`)
  .action((o) => run(o.json, () => launchDemo(o)));

program
  .command('config-schema')
  .description('print the JSON Schema of the config file (for editors: "$schema")')
  .action(() => run(false, async () => ({ exitCode: 0, json: {}, text: JSON.stringify(configJsonSchema(), null, 2) })));

await program.parseAsync(process.argv);
