/**
 * The file table on disk: plain CSV that a person can read, and fix with a text editor while the
 * directory is stopped.
 *
 * `file_table.csv` (the snapshot), one row per copy of a file:
 *
 *     name,server_id,server_url,role,epoch
 *     notes/today.txt,fs1,ws://127.0.0.1:12001,primary,41
 *     notes/today.txt,fs2,ws://127.0.0.1:12002,replica,41
 *
 * Columns may come in any order (the header names them), spaces around values are ignored, blank
 * lines are skipped. Each file needs exactly one primary row; all its rows share one epoch. An
 * epoch left blank takes the epoch of the file's other rows, or a fresh one if none has one (so a
 * person can add a file by hand). A mistake stops the directory from starting, with the line and
 * what is wrong.
 *
 * `file_table.journal.csv`, the changes since the snapshot, appended and fsynced before each
 * change is acknowledged:
 *
 *     op,name,server_id,server_url,role,epoch
 *     add,notes/today.txt,fs2,ws://127.0.0.1:12002,replica,41
 *     add,notes/today.txt,fs1,ws://127.0.0.1:12001,primary,41
 *     remove,notes/today.txt,,,,41
 *
 * `add` puts one copy: a row with a newer epoch than the file's replaces the file (a re-created
 * name), an older one is ignored, an equal one sets that copy's role and URL (a primary row
 * replaces the previous primary). `remove` deletes the file if its epoch is at most the row's.
 * Replaying any suffix of the journal again therefore changes nothing, which is what makes a
 * crash between writing a new snapshot and emptying the journal harmless. A create writes its
 * replica rows before its primary row, and a file left without a primary by a write cut short
 * is dropped on load (it was never acknowledged). Damaged journal lines, which only a crash in
 * the middle of an unacknowledged write can leave, are skipped with a warning.
 *
 * `file_table.epoch`: the highest epoch ever issued, as of the last compaction. Epochs are also
 * derived from every row of the snapshot and journal (removals included), so this file only
 * has to remember epochs of files deleted before a compaction dropped their rows.
 */
import { parse } from 'csv-parse/sync';
import { stringify } from 'csv-stringify/sync';
import { DfsError } from '../../shared/errors.js';
import { nameProblem } from '../../shared/names.js';
import { serverId as serverIdSchema, wsUrl as wsUrlSchema, type CopyRole } from '../../shared/protocol.js';

export const SNAPSHOT_FILE = 'file_table.csv';
export const JOURNAL_FILE = 'file_table.journal.csv';
export const EPOCH_FILE = 'file_table.epoch';

export const SNAPSHOT_COLUMNS = ['name', 'server_id', 'server_url', 'role', 'epoch'] as const;
export const JOURNAL_COLUMNS = ['op', ...SNAPSHOT_COLUMNS] as const;
export const SNAPSHOT_HEADER = SNAPSHOT_COLUMNS.join(',') + '\n';
export const JOURNAL_HEADER = JOURNAL_COLUMNS.join(',') + '\n';

export interface CopyRow {
  name: string;
  serverId: string;
  serverUrl: string;
  role: CopyRole;
  epoch: number;
}

export type JournalRecord = ({ op: 'add' } & CopyRow) | { op: 'remove'; name: string; epoch: number };

/** A snapshot row; `epoch` is null where a person left it blank. */
export interface SnapshotRow extends Omit<CopyRow, 'epoch'> {
  epoch: number | null;
  /** Index among the data records, to find its line for an error message. */
  record: number;
}

// ------------------------------------------------------------------ writing

export function formatCopyRows(rows: readonly CopyRow[]): string {
  return stringify(rows.map((r) => [r.name, r.serverId, r.serverUrl, r.role, String(r.epoch)]));
}

export function formatJournal(records: readonly JournalRecord[]): string {
  return stringify(
    records.map((r) => (r.op === 'add' ? ['add', r.name, r.serverId, r.serverUrl, r.role, String(r.epoch)] : ['remove', r.name, '', '', '', String(r.epoch)])),
  );
}

// ------------------------------------------------------------------ checking values

function epochProblem(text: string): string | null {
  if (!/^\d+$/.test(text)) return `epoch must be a whole number, not ${JSON.stringify(text)}`;
  const value = Number(text);
  if (value < 1 || !Number.isSafeInteger(value)) return `epoch must be from 1 to ${Number.MAX_SAFE_INTEGER}, not ${text}`;
  return null;
}

/**
 * Checks one copy's values. Loading a big table checks hundreds of thousands of rows that repeat
 * a few servers, and each file's rows are usually adjacent, so what passed is remembered.
 */
class CopyChecker {
  private lastGoodName = '';
  private readonly goodServers = new Set<string>();

  problem(name: string, serverId: string, serverUrl: string, role: string): string | null {
    if (name !== this.lastGoodName) {
      const problem = nameProblem(name);
      if (problem !== null) return `bad file name ${JSON.stringify(name)}: ${problem}`;
      this.lastGoodName = name;
    }
    const server = `${serverId} ${serverUrl}`;
    if (!this.goodServers.has(server)) {
      if (!serverIdSchema.safeParse(serverId).success) return `bad server_id ${JSON.stringify(serverId)}: 1-32 letters, digits, "_", "." or "-"`;
      if (!wsUrlSchema.safeParse(serverUrl).success) return `bad server_url ${JSON.stringify(serverUrl)}: expected ws://host:port`;
      this.goodServers.add(server);
    }
    if (role !== 'primary' && role !== 'replica') return `role must be "primary" or "replica", not ${JSON.stringify(role)}`;
    return null;
  }
}

// ------------------------------------------------------------------ reading the snapshot

export class TableFileError extends DfsError {
  constructor(file: string, where: string, problem: string) {
    super('BAD_REQUEST', `${file}${where ? ` ${where}` : ''}: ${problem}; fix it (or restore a backup) and start again`);
  }
}

// bom: editors on some systems start a saved file with a byte-order mark.
const csvOptions = { bom: true, trim: true, skip_empty_lines: true, relax_column_count: true } as const;

/** The line a data record starts on, found by parsing again (only for error messages). */
export function lineOfRecord(text: string, record: number): number {
  try {
    const parsed = parse(text, { ...csvOptions, info: true }) as unknown as Array<{ info: { lines: number } }>;
    return parsed[record + 1]?.info.lines ?? 0;
  } catch {
    return 0;
  }
}

/** Parses and checks the snapshot's rows one by one; file-level rules are checked by the loader. */
export function parseSnapshot(text: string, file: string = SNAPSHOT_FILE): SnapshotRow[] {
  if (text.trim() === '') return [];
  let records: string[][];
  try {
    records = parse(text, csvOptions) as string[][];
  } catch (err) {
    const e = err as Error & { lines?: number };
    throw new TableFileError(file, e.lines ? `line ${e.lines}` : '', `not valid CSV (${e.message})`);
  }
  const header = records[0]!.map((column) => column.toLowerCase());
  const index = new Map<string, number>();
  header.forEach((column, i) => {
    if (!(SNAPSHOT_COLUMNS as readonly string[]).includes(column)) {
      throw new TableFileError(file, 'line 1', `unknown column ${JSON.stringify(column)}; the header must name the columns ${SNAPSHOT_COLUMNS.join(',')}`);
    }
    if (index.has(column)) throw new TableFileError(file, 'line 1', `column ${column} appears twice`);
    index.set(column, i);
  });
  for (const column of SNAPSHOT_COLUMNS) {
    if (!index.has(column)) throw new TableFileError(file, 'line 1', `the header has no ${column} column; it must name the columns ${SNAPSHOT_COLUMNS.join(',')}`);
  }
  const at = (record: string[], column: string) => record[index.get(column)!] ?? '';
  const checker = new CopyChecker();
  const rows: SnapshotRow[] = [];
  for (let i = 1; i < records.length; i++) {
    const record = records[i]!;
    const fail = (problem: string): never => {
      throw new TableFileError(file, `line ${lineOfRecord(text, i - 1)}`, problem);
    };
    if (record.length !== header.length) fail(`expected ${header.length} values, found ${record.length}`);
    const name = at(record, 'name');
    const serverId = at(record, 'server_id');
    const serverUrl = at(record, 'server_url');
    const role = at(record, 'role').toLowerCase();
    const epochText = at(record, 'epoch');
    const problem = checker.problem(name, serverId, serverUrl, role) ?? (epochText === '' ? null : epochProblem(epochText));
    if (problem !== null) fail(problem);
    rows.push({ name, serverId, serverUrl, role: role as CopyRole, epoch: epochText === '' ? null : Number(epochText), record: i - 1 });
  }
  return rows;
}

// ------------------------------------------------------------------ reading the journal

export interface ParsedJournal {
  records: JournalRecord[];
  /** Lines skipped, with why: damage a crash left in an unacknowledged write. */
  skipped: Array<{ line: number; problem: string }>;
}

/**
 * Parses the journal line by line (no valid row spans lines: names and URLs hold no line
 * breaks), so that one damaged line cannot swallow the ones after it.
 */
export function parseJournal(text: string): ParsedJournal {
  const records: JournalRecord[] = [];
  const skipped: ParsedJournal['skipped'] = [];
  const lines = text.split('\n');
  // Text after the last newline is a line whose write was cut short.
  const torn = lines.pop() ?? '';
  const checker = new CopyChecker();
  lines.forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line === '' || line === JOURNAL_HEADER.trimEnd()) return;
    const parsed = parseJournalLine(line, checker);
    if (typeof parsed === 'string') skipped.push({ line: i + 1, problem: parsed });
    else records.push(parsed);
  });
  if (torn !== '') skipped.push({ line: lines.length + 1, problem: 'incomplete last line' });
  return { records, skipped };
}

function parseJournalLine(line: string, checker: CopyChecker): JournalRecord | string {
  let fields: string[];
  if (!line.includes('"')) {
    fields = line.split(',');
  } else {
    try {
      const parsed = parse(line, { relax_column_count: true }) as string[][];
      if (parsed.length !== 1) return 'not one CSV row';
      fields = parsed[0]!;
    } catch (err) {
      return `not valid CSV (${(err as Error).message})`;
    }
  }
  if (fields.length !== JOURNAL_COLUMNS.length) return `expected ${JOURNAL_COLUMNS.length} values, found ${fields.length}`;
  const [op, name, serverId, serverUrl, role, epochText] = fields as [string, string, string, string, string, string];
  const epochIssue = epochProblem(epochText);
  if (epochIssue !== null) return epochIssue;
  const epoch = Number(epochText);
  if (op === 'remove') {
    const problem = nameProblem(name);
    return problem === null ? { op, name, epoch } : `bad file name: ${problem}`;
  }
  if (op !== 'add') return `unknown op ${JSON.stringify(op)}`;
  const problem = checker.problem(name, serverId, serverUrl, role);
  return problem ?? { op, name, serverId, serverUrl, role: role as CopyRole, epoch };
}

// ------------------------------------------------------------------ the epoch mark

export function parseEpochMark(text: string): number {
  const value = text.trim();
  const problem = epochProblem(value);
  if (value !== '0' && problem !== null) throw new TableFileError(EPOCH_FILE, '', `expected the highest epoch issued, a whole number, not ${JSON.stringify(value.slice(0, 40))}`);
  return Number(value);
}
