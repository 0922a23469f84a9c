// Turns a migration file into statements the lint, the rewriter and the constraint pre-flight can
// reason about: the real Postgres parse tree, the statement's own text, its line in the file, and
// whether it runs inside a transaction. libpg-query reports BYTE offsets, so every slice is taken
// from the UTF-8 bytes and only then turned back into a string.

import { parse, scanSync, loadModule } from 'libpg-query';
import type { Node, RangeVar } from '@pgsql/types';
import type { Migration } from '../sources/types.ts';
import type { TableRef } from '../db/sql.ts';

type KeysOf<U> = U extends unknown ? keyof U : never;
type BodyOf<U, K extends PropertyKey> = U extends { [P in K]: infer B } ? B : never;

/** Every node type libpg-query wraps a node in (`{ SelectStmt: {...} }` has tag `SelectStmt`). */
export type NodeTag = KeysOf<Node>;

/** The body of a node of type `K` (what `{ [K]: body }` wraps), per @pgsql/types. */
export type NodeBody<K extends NodeTag> = BodyOf<Node, K>;

/** A node unwrapped into its tag and body; narrowing `kind` narrows `body`. */
export type NodeEntry<K extends NodeTag = NodeTag> = K extends NodeTag ? { kind: K; body: NodeBody<K> } : never;

/** The keys of any part of a parse tree and what they hold (an array's keys are its indexes; a scalar has none). */
export function fields(node: unknown): [string, unknown][] {
  return node !== null && typeof node === 'object' ? Object.entries(node) : [];
}

/** `value` as the body of a `kind` node when `key`, the key holding it in the tree, is that tag. */
export function bodyAt<K extends NodeTag>(key: string, value: unknown, kind: K): NodeBody<K> | undefined {
  // In a libpg-query tree a key spelled like a node tag only ever holds that node's body (@pgsql/types).
  return key === kind ? (value as NodeBody<K>) : undefined;
}

/** The tag and body of a node (a wrapper has exactly one key, its tag), or undefined for no node. */
export function unwrap(node: Node | undefined): NodeEntry | undefined {
  const [kind, body] = fields(node)[0] ?? [];
  // The wrapper's only key is its tag and what it holds that tag's body: the shape @pgsql/types describes.
  return kind === undefined ? undefined : ({ kind, body } as NodeEntry);
}

/** The body of `node` when it is a `kind` node, else undefined. */
export function nodeBody<K extends NodeTag>(node: Node | undefined, kind: K): NodeBody<K> | undefined {
  const entry = fields(node).find(([key]) => key === kind);
  return entry && bodyAt(entry[0], entry[1], kind);
}

/** The bodies of the `kind` nodes of a list (a list of one node type, e.g. ALTER TABLE's commands). */
export function bodies<K extends NodeTag>(list: readonly Node[] | undefined, kind: K): NodeBody<K>[] {
  return (list ?? []).flatMap((n) => {
    const b = nodeBody(n, kind);
    return b === undefined ? [] : [b];
  });
}

interface StatementCommon {
  /** 0-based position in the file. */
  index: number;
  /** The statement text without the separating semicolon (leading comments trimmed). */
  text: string;
  /** Byte offset in the file where `bytes` starts; node locations minus this index into `bytes`. */
  baseByte: number;
  /** The statement's UTF-8 bytes (as sliced by the parser, leading comments included). */
  bytes: Buffer;
  /** Byte offset (relative to `bytes`) just after the last token: trailing comments and `;` excluded. */
  endByte: number;
  /** 1-based line of the statement's first token in the file. */
  line: number;
  /** True when the statement runs inside a transaction block (file-level or explicit BEGIN). */
  inTransaction: boolean;
}

/**
 * One statement of a migration file: `kind` is the node type (e.g. `IndexStmt`) and `body` the node
 * body (`stmt[kind]`); narrowing `kind` narrows `body`. `K` restricts the statement to some kinds.
 */
export type ParsedStatement<K extends NodeTag = NodeTag> = StatementCommon & NodeEntry<K>;

/** A parsed migration file. */
export interface ParsedFile {
  /** File path (or the migration id for inline SQL). */
  file: string;
  /** The migration it came from. */
  migration: Migration;
  /** Statements in order. */
  statements: ParsedStatement[];
}

/** One lexical token of a statement (byte offsets relative to the statement). */
export interface Token {
  /** Start byte. */
  start: number;
  /** End byte (exclusive). */
  end: number;
  /** Token text, upper-cased for keywords. */
  text: string;
  /** Keyword class from the scanner (`NO_KEYWORD` for identifiers, literals, punctuation). */
  keyword: string;
}

let loaded = false;

/** Parses one migration; throws the parser's error (callers run checkAll first for good messages). */
export async function parseMigration(m: Migration): Promise<ParsedFile> {
  if (!loaded) {
    await loadModule();
    loaded = true;
  }
  const file = m.file ?? m.id;
  if (m.sql.trim() === '') return { file, migration: m, statements: [] };
  const tree = await parse(m.sql);
  const fileBytes = Buffer.from(m.sql, 'utf8');
  let explicitTx = false;
  const statements: ParsedStatement[] = (tree.stmts ?? []).map((s, index) => {
    const start = s.stmt_location ?? 0;
    const end = s.stmt_len ? start + s.stmt_len : fileBytes.length;
    const bytes = fileBytes.subarray(start, end);
    const entry = unwrap(s.stmt);
    if (!entry) throw new Error('libpg-query returned a statement without a parse tree');
    const toks = tokens(bytes).filter((t) => t.text !== ';');
    const first = toks[0];
    const endByte = toks[toks.length - 1]?.end ?? bytes.length;
    const firstByte = start + (first?.start ?? 0);
    const line = fileBytes.subarray(0, firstByte).toString('utf8').split('\n').length;
    const text = bytes.subarray(first?.start ?? 0, endByte).toString('utf8');
    let inTransaction = m.transaction !== 'none' || explicitTx;
    if (entry.kind === 'TransactionStmt') {
      const tx = entry.body.kind;
      if (tx === 'TRANS_STMT_BEGIN' || tx === 'TRANS_STMT_START') explicitTx = true;
      if (tx === 'TRANS_STMT_COMMIT' || tx === 'TRANS_STMT_ROLLBACK') explicitTx = false;
      inTransaction = m.transaction !== 'none' || explicitTx;
    }
    return { index, ...entry, text, baseByte: start, bytes, endByte, line, inTransaction };
  });
  return { file, migration: m, statements };
}

/** Lexical tokens of a statement, comments left out (byte offsets relative to `bytes`). */
export function tokens(bytes: Buffer): Token[] {
  const text = bytes.toString('utf8');
  if (text.trim() === '') return [];
  return scanSync(text)
    .tokens.filter((t) => t.tokenName !== 'SQL_COMMENT' && t.tokenName !== 'C_COMMENT')
    .map((t) => ({ start: t.start, end: t.end, text: String(t.text), keyword: String(t.keywordName) }));
}

/** The text between two byte offsets of a statement. */
export function slice(stmt: ParsedStatement, start: number, end = stmt.endByte): string {
  return stmt.bytes.subarray(start, end).toString('utf8');
}

/** A node's location relative to its statement's bytes. */
export function relative(stmt: ParsedStatement, location: number): number {
  return location - stmt.baseByte;
}

/** The table a RangeVar names (unqualified names are taken as `public`, the default search_path). */
export function tableOf(rv: RangeVar | undefined): TableRef {
  return { schema: rv?.schemaname ?? 'public', name: String(rv?.relname ?? '') };
}

/** The `sval`s of a list of String nodes (column lists, qualified names). */
export function names(list: readonly Node[] | undefined): string[] {
  return bodies(list, 'String').map((n) => String(n.sval ?? '')).filter((s) => s !== '');
}

/** Every node of `kind` anywhere below `node` (depth first): `node` is any part of a parse tree. */
export function findNodes<K extends NodeTag>(node: unknown, kind: K, out: NodeBody<K>[] = []): NodeBody<K>[] {
  for (const [key, value] of fields(node)) {
    const body = bodyAt(key, value, kind);
    if (body !== undefined) out.push(body);
    findNodes(value, kind, out);
  }
  return out;
}

/**
 * Splits an ALTER TABLE statement into its prefix (`ALTER TABLE [ONLY] name`) and the text of each
 * command, at top-level commas. Returns null when the split does not match the parsed commands.
 */
export function alterCommands(stmt: ParsedStatement<'AlterTableStmt'>): { prefix: string; commands: string[] } | null {
  const toks = tokens(stmt.bytes);
  const relStart = relative(stmt, stmt.body.relation?.location ?? -1);
  let i = toks.findIndex((t) => t.start === relStart);
  if (i < 0) return null;
  while (toks[i + 1]?.text === '.' && toks[i + 2]) i += 2;
  const prefixEnd = toks[i]!.end;
  const cuts: number[] = [];
  let depth = 0;
  for (const t of toks.slice(i + 1).filter((k) => k.end <= stmt.endByte)) {
    if (t.text === '(') depth++;
    else if (t.text === ')') depth--;
    else if (t.text === ',' && depth === 0) cuts.push(t.start);
  }
  const bounds = [prefixEnd, ...cuts.map((c) => c + 1)];
  const ends = [...cuts, stmt.endByte];
  const commands = bounds.map((b, k) => slice(stmt, b, ends[k]).trim());
  if (commands.length !== (stmt.body.cmds ?? []).length) return null;
  return { prefix: slice(stmt, toks.find((t) => t.end > 0)!.start, prefixEnd).trim(), commands };
}

/** The statement's first line, shortened, for reports. */
export function snippet(stmt: ParsedStatement, max = 100): string {
  const one = stmt.text.replace(/\s+/g, ' ');
  return one.length > max ? `${one.slice(0, max - 1)}…` : one;
}
