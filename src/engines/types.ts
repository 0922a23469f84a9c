// What an engine profile declares, for one version pair (old -> new): capture tables, cleanup rules
// with their tie-breaks, the dangling references the migrations rewrite, which rows carry access,
// replay semantics of each side, invariants, conversions to compare, and where the fixture lives.
// Types only (no imports at run time), so the consumer Worker can share the replay part.

import type { CaptureTable, CleanupRule } from '../config/schema.ts';
import type { InvariantSpec } from '../cutover/schema.ts';

/**
 * One criterion of a tie-break: an SQL expression over a candidate row (alias passed in); a bigger
 * value wins (true beats false, later beats earlier).
 */
export interface TieCriterion {
  /** What a winning value means, for sentences ("handled"). */
  name: string;
  /** What a losing value means ("not handled"). */
  unlike: string;
  /** The expression over alias `r` of the candidate row. */
  sql: (r: string) => string;
  /** True when the expression is boolean: its name is listed as a property of the kept row. */
  boolean: boolean;
}

/**
 * A fix applied on green after the migrations, where a migration misreads a value its own version
 * wrote (Hydra's flow merge reads the `{}` that 1.11 stores for "no error" as an error). It follows
 * the migration's intent: the rows it selects get the value the migration would have given had it
 * read the old value as the old version did. Each repaired value is recorded in
 * `bluegreen_quarantine._rewrites` (rule `repair:<name>`), so `quarantine restore` can put it back.
 */
export interface PostMigrationRepair {
  /** Name; the journal unit is `repair:<name>`. */
  name: string;
  /** Why, for plan and the `_rewrites` row. */
  reason: string;
  /** Table, `schema.table` (as the migrations leave it). */
  table: string;
  /** Columns it reads or writes: when any is missing (another release's shape), the repair is skipped and says so. */
  requires: readonly string[];
  /** The column set. */
  column: string;
  /** Predicate over alias `t`: the rows the migration got wrong (and only those). */
  where: string;
  /** The value it should have written, an expression over alias `t`. */
  set: string;
}

/** How duplicates of one group are resolved: the row ranking highest stays, the others are quarantined. */
export interface TieBreak {
  /** What one row is, for sentences ("consent"). */
  noun: string;
  /** Column that groups duplicates (rows sharing a non-NULL value are duplicates). */
  groupColumn: string;
  /** What the group is, for sentences ("login"). */
  groupNoun: string;
  /** Unique key column of a row; the last tie-break. */
  keyColumn: string;
  /** Criteria, most important first. */
  order: readonly TieCriterion[];
}

/** One column a value rewrite changes: which rows, and the new value (SQL over alias `t`). */
export interface ColumnRewrite {
  /** The column rewritten. */
  column: string;
  /** Predicate over alias `t`: this row's value needs the rewrite. */
  where: string;
  /** The new value, an expression over alias `t` (it must mean what the old value meant to the migration). */
  set: string;
}

/**
 * Rows a rule keeps with values rewritten instead of moving them to quarantine: the old value is
 * recorded (`bluegreen_quarantine._rewrites`) and `quarantine restore` puts it back. Columns the
 * database does not have are left out (one declaration serves every release of the old version).
 */
export interface ValueRewrite {
  /** The columns, each with its own predicate and new value. */
  columns: readonly ColumnRewrite[];
  /** What happens to the value, for `plan` ("escaped so that the migration's JSON pasting yields the original elements"). */
  says: string;
}

/** A cleanup rule an engine brings: a configured rule, plus the tie-break that produced its `where`. */
export interface EngineCleanupRule extends CleanupRule {
  /** Set when the rule resolves duplicates: which row it keeps (written down once, stated by `plan`). */
  tieBreak?: TieBreak;
  /** Set when the rule keeps its rows and rewrites values instead (its `where` is the OR of the columns'). */
  rewrite?: ValueRewrite;
  /** Tables whose rows referencing the quarantined ones stay, the reference set to NULL (recorded) as the engine's migration leaves them. */
  detach?: string[];
}

/**
 * A reference the new version's own migrations set to NULL when it points nowhere (Hydra 2.x:
 * `challenge_id` of tokens whose flow is missing). Cleanup follows it (records the old value and
 * sets NULL) instead of quarantining the row, which would take access the migration keeps.
 */
export interface NullRewrite {
  /** Table holding the reference, `schema.table`. */
  table: string;
  /** The nullable referencing column. */
  column: string;
  /** Why it is rewritten rather than quarantined (what the real migration does). */
  reason: string;
}

/** A kind of row that grants access: quarantining it takes something away from users. */
export interface AccessCarrier {
  /** The class named in "access changes" ("active access token"). */
  kind: string;
  /** Table, `schema.table`. */
  table: string;
  /** Predicate over alias `t`: the row grants access. */
  where: string;
}

/** How a retyped column's old values correspond to its new ones. */
export type ConversionKind = 'pipe-list-to-json-array' | 'text-to-json';

/** One column the migrations retype through a conversion; validation compares it through the conversion. */
export interface Conversion {
  /** How values convert. */
  kind: ConversionKind;
  /** The old column and the column that identifies its row (unique). */
  blue: { table: string; column: string; key: string };
  /** The new column and the column holding the same key. */
  green: { table: string; column: string; key: string };
}

/**
 * A change the migrations make to whole rows: `dropped` lists blue keys with no green row (net of
 * quarantine), `rewritten` lists keys on both sides whose value differs. Each query returns (key, value).
 */
export interface MigrationChange {
  /** Name in reports. */
  name: string;
  /** One sentence: what changes and why. */
  description: string;
  /** What is reported. */
  report: 'dropped' | 'rewritten';
  /** Blue query, as of the snapshot ($1). */
  blue: string;
  /** Green query. */
  green: string;
  /** Quarantine tables whose rows (jsonb `row`) give blue keys that cleanup moved (not the migration's doing). */
  quarantine: { table: string; key: string }[];
  /** Tables that must exist for the change to apply to this version pair. */
  requires: { blue: string[]; green: string[] };
}

/** How a token table loses access: the row goes away, or its active flag turns off. */
export type RemoveAction = 'delete' | 'deactivate';

/** A token table (access or refresh) and how removing access looks in it. */
export interface TokenTableSemantics {
  /** Table name in schema `public`. */
  table: string;
  /** What "no longer grants access" means for this table. */
  remove: RemoveAction;
}

/** Which token rows a kind reaches: every row of the token's grant (request), or just that token. */
export interface TokenKindSemantics {
  /** `request`: all rows sharing the request id (resolved from the signature when needed); `token`: the signature's row. */
  scope: 'request' | 'token';
  /** Token tables the kind touches. */
  tables: readonly ('access' | 'refresh')[];
}

/** The declared replay semantics of one schema shape (one side of a version pair). */
export interface ProfileSemantics {
  /** Access and refresh token tables. */
  tokens: { access: TokenTableSemantics; refresh: TokenTableSemantics };
  /** Token-level kinds and what they reach. */
  kinds: { 'token-revoke': TokenKindSemantics; 'refresh-rotate': TokenKindSemantics; 'access-remove': TokenKindSemantics };
  /**
   * Consent revocation deletes these rows; the schema's foreign keys cascade to their tokens. A
   * revocation by subject reaches only consents requested at or before its time (`requestedAtColumn`,
   * a UTC `timestamp` as Hydra writes it), so a late replay never deletes a consent granted anew.
   */
  consent: { table: string; challengeColumn: string; subjectColumn: string; clientColumn: string; requestedAtColumn: string };
}

/** Replay semantics names: `<engine>-<version>`, one per schema shape an engine knows. */
export type ReplayProfile = 'hydra-v1' | 'hydra-v2';

/** Everything one engine knows about upgrading from one version to the next. */
export interface VersionPair {
  /** Old version, e.g. "v1" (blue before the migrations). */
  from: string;
  /** New version, e.g. "v2" (green after them). */
  to: string;
  /** Tables whose access-removing writes are captured: on blue (old shape) and on green after cutover (new shape). */
  capture: { blue: readonly CaptureTable[]; green: readonly CaptureTable[] };
  /** Old-shape tables the engine writes in normal operation (schema-qualified): the stream's publication, where they exist. */
  writes: readonly string[];
  /** How staged changes of the old shape become rows of the new one (src/stream/apply-changes.ts); null: staged only. */
  streamMapping: StreamMapping | null;
  /** Cleanup: rules (run first, in order), rewrites followed instead of quarantine, rows that carry access. */
  cleanup: { rules: readonly EngineCleanupRule[]; rewrites: readonly NullRewrite[]; accessCarriers: readonly AccessCarrier[] };
  /** Replay semantics of each side. */
  replay: { blue: ReplayProfile; green: ReplayProfile };
  /** Semantic invariants (blue old shape vs green new shape). */
  invariants: readonly InvariantSpec[];
  /** Columns compared through a conversion. */
  conversions: readonly Conversion[];
  /** Whole-row changes the migrations make on purpose (rows a merge drops, states it rewrites). */
  changes: readonly MigrationChange[];
  /** Fixes run on green after the last migration, in order, where a migration misreads old values. */
  repairs: readonly PostMigrationRepair[];
  /** The self-written fixture for this pair, as paths relative to the repository (dev and tests only; never imported). */
  fixture: { blueSchema: string; migrations: string; seeder: string } | null;
}

/** An engine: its name in config and its version pairs (the first is the default). */
export interface Engine {
  /** Name written as `profile` in the config. */
  name: string;
  /** One sentence for humans. */
  description: string;
  /** Known upgrades, the default first. */
  pairs: readonly VersionPair[];
}

/** One statement of a mapping: reads `pg_temp.bluegreen_batch` (and temp tables earlier statements made). */
export interface MappingStatement {
  /** Name in the stats (e.g. `upsert public.hydra_client`). */
  id: string;
  /** The SQL: one statement, no bind parameters. Its row count is reported under `id`. */
  sql: string;
  /**
   * The change log relations (`schema.table`) the statement has work for: it is skipped in a batch
   * holding none of them. Without it the statement runs in every batch.
   */
  reads?: readonly string[];
}

/**
 * How one engine's old schema maps into its new one, for the change log. Candidate for
 * src/engines/types.ts (as `VersionPair.streamMapping`), defined here until that file's owner moves it.
 */
export interface StreamMapping {
  /** Which mapping (for messages). */
  name: string;
  /**
   * Idempotent DDL run once per call before the first batch, pg_temp.bluegreen_batch already made:
   * staging tables the mapping keeps, and the session's temporary tables its statements fill (made
   * once, ON COMMIT DELETE ROWS, rather than per batch).
   */
  setup: string;
  /** The statements of one batch, in order. */
  statements: readonly MappingStatement[];
}
