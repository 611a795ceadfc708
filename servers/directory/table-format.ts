/**
 * The file table on disk: plain CSV that a person can read, and fix with a text editor while the
 * directory is stopped. This module reads and writes single lines; the rules that join rows
 * into files, and what is set aside when they cannot, are in table-load.ts.
 *
 * `file_table.csv` (the snapshot), one row per copy of a file:
 *
 *     name,server_id,server_url,role,epoch,placement_epoch
 *     notes/today.txt,fs1,ws://127.0.0.1:12001,primary,41,2
 *     notes/today.txt,fs2,ws://127.0.0.1:12002,replica,41,2
 *
 * `epoch` names one incarnation of a name (a new one at each create); `placement_epoch` counts
 * the changes of that incarnation's primary and replicas (1 at the create, +1 at each change),
 * so that replaying old rows of a file cannot bring back a placement it has left.
 *
 * Columns may come in any order (the header names them), spaces around values are ignored, blank
 * lines are skipped. The header may name the five columns of the previous version (no
 * placement_epoch): its rows are at placement epoch 1. A row has as many values as its header
 * has columns. A header that names neither is read as a data row in the standard column order
 * (so a table that lost its header still loads), with an error in the log; each line then has 5
 * values (the previous version's order) or 6. An epoch left blank takes the epoch of the file's
 * other rows, or a fresh one if none has one (so a person can add a file by hand); a blank
 * placement_epoch is 1.
 *
 * `file_table.journal.csv`, the changes since the snapshot, appended and fsynced before each
 * change is acknowledged:
 *
 *     op,name,server_id,server_url,role,epoch,placement_epoch
 *     add,notes/today.txt,fs2,ws://127.0.0.1:12002,replica,41,1
 *     add,notes/today.txt,fs1,ws://127.0.0.1:12001,primary,41,1
 *     add,notes/today.txt,fs3,ws://127.0.0.1:12003,replica,41,2
 *     add,notes/today.txt,fs2,ws://127.0.0.1:12002,primary,41,2
 *     remove,notes/today.txt,,,,41,
 *
 * A create and a placement change both write one `add` row per copy, replicas first and the
 * primary last, at the file's (new) placement epoch (what replay makes of them: table-load.ts).
 * Lines of 6 values, the previous version's, are read at placement epoch 1; a remove's
 * placement_epoch is not used.
 *
 * `file_table.epoch`: the highest epoch ever issued, as of the last compaction.
 *
 * `file_table.rejected.csv`: rows the directory could not load, appended (and fsynced) before a
 * compaction could drop them, each verbatim with where it was, why, and when:
 *
 *     rejected_at,file,line,problem,row
 *     2025-01-02T03:04:05.678Z,file_table.csv,3,"x has rows with epochs 1 and 2; ...","x,fs1,ws://h:1,primary,1"
 *
 * Both tables are read line by line: no valid row spans lines (names and URLs hold no line
 * breaks), so one damaged line, an unbalanced quote say, cannot swallow the lines after it.
 */
import { isUtf8 } from 'node:buffer';
import { parse } from 'csv-parse/sync';
import { stringify } from 'csv-stringify/sync';
import { DfsError } from '../../shared/errors.js';
import { nameProblem } from '../../shared/names.js';
import { serverId as serverIdSchema, wsUrl as wsUrlSchema, type CopyRole } from '../../shared/protocol.js';

export const SNAPSHOT_FILE = 'file_table.csv';
export const JOURNAL_FILE = 'file_table.journal.csv';
export const EPOCH_FILE = 'file_table.epoch';
export const REJECTED_FILE = 'file_table.rejected.csv';

export const SNAPSHOT_COLUMNS = ['name', 'server_id', 'server_url', 'role', 'epoch', 'placement_epoch'] as const;
export const JOURNAL_COLUMNS = ['op', ...SNAPSHOT_COLUMNS] as const;
export const REJECTED_COLUMNS = ['rejected_at', 'file', 'line', 'problem', 'row'] as const;
export const SNAPSHOT_HEADER = SNAPSHOT_COLUMNS.join(',') + '\n';
export const JOURNAL_HEADER = JOURNAL_COLUMNS.join(',') + '\n';
export const REJECTED_HEADER = REJECTED_COLUMNS.join(',') + '\n';
/** The previous version wrote the same columns but the last (placement_epoch): its tables load at placement epoch 1. */
const OLD_SNAPSHOT_WIDTH = SNAPSHOT_COLUMNS.length - 1;
const OLD_JOURNAL_HEADER = JOURNAL_COLUMNS.slice(0, -1).join(',');

export interface CopyRow {
  name: string;
  serverId: string;
  serverUrl: string;
  role: CopyRole;
  epoch: number;
  /** The placement this copy belongs to: 1 at the create, one more at each change of placement. */
  placementEpoch: number;
}

export type JournalRecord = ({ op: 'add' } & CopyRow) | { op: 'remove'; name: string; epoch: number };

/** Where a row was read: its line, from 1. */
interface Located {
  line: number;
}

/** A snapshot row; `epoch` is null where a person left it blank. */
export interface SnapshotRow extends Omit<CopyRow, 'epoch'>, Located {
  epoch: number | null;
}

export type JournalEntry = JournalRecord & Located;

/** One line of a table file, without its line ending: its text, or its bytes when they are not UTF-8. */
export type TableLine = string | Uint8Array;

/** A line that was not loaded. It is kept, verbatim, in the rejected file. */
export interface RejectedRow extends Located {
  file: typeof SNAPSHOT_FILE | typeof JOURNAL_FILE;
  row: TableLine;
  problem: string;
  /** The row's epoch where it can be read: it still counts toward the highest epoch issued. */
  epoch: number | null;
  /** Left by a crash in the middle of a write that was never acknowledged, not by a mistake. */
  unacknowledged: boolean;
}

/** Something a loader reports in the log that is not about one rejected row. */
export interface TableNote {
  level: 'error' | 'warn' | 'info';
  message: string;
  fields: Record<string, unknown>;
}

// ------------------------------------------------------------------ writing

export function formatCopyRows(rows: readonly CopyRow[]): string {
  return stringify(rows.map((r) => [r.name, r.serverId, r.serverUrl, r.role, String(r.epoch), String(r.placementEpoch)]));
}

export function formatJournal(records: readonly JournalRecord[]): string {
  return stringify(
    records.map((r) =>
      r.op === 'add' ? ['add', r.name, r.serverId, r.serverUrl, r.role, String(r.epoch), String(r.placementEpoch)] : ['remove', r.name, '', '', '', String(r.epoch), ''],
    ),
  );
}

/**
 * Rejected rows as lines of the rejected file. The `row` column holds the line's bytes exactly,
 * quoted as CSV, even when they are not UTF-8: nothing of what was set aside is changed.
 */
export function formatRejected(rows: readonly RejectedRow[], at: Date): Buffer {
  const when = at.toISOString();
  return Buffer.concat(
    rows.flatMap((r) => {
      const fields = stringify([[when, r.file, String(r.line), r.problem]]).slice(0, -1);
      // latin1 maps bytes to code units one to one, so quoting there leaves every other byte alone.
      const bytes = typeof r.row === 'string' ? Buffer.from(r.row, 'utf8') : Buffer.from(r.row);
      const quoted = Buffer.from(`"${bytes.toString('latin1').replaceAll('"', '""')}"\n`, 'latin1');
      return [Buffer.from(`${fields},`, 'utf8'), quoted];
    }),
  );
}

// ------------------------------------------------------------------ lines and values

/**
 * Splits a table file into lines, line endings removed; the last element is whatever follows
 * the last newline ("" when the file ends with one). Lines whose bytes are not UTF-8 are given as
 * bytes, so that they are refused instead of loaded with U+FFFD in place of what they said.
 */
export function tableLines(bytes: Uint8Array): TableLine[] {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (isUtf8(buffer)) return buffer.toString('utf8').split('\n').map(withoutCr);
  const lines: TableLine[] = [];
  for (let start = 0; ; ) {
    const end = buffer.indexOf(0x0a, start);
    let line = buffer.subarray(start, end === -1 ? buffer.length : end);
    if (line.at(-1) === 0x0d) line = line.subarray(0, -1);
    lines.push(isUtf8(line) ? line.toString('utf8') : line);
    if (end === -1) return lines;
    start = end + 1;
  }
}

/** The lines of a text, as tableLines gives them: for tests and for text already decoded. */
export function linesOf(text: string): TableLine[] {
  return text.split('\n').map(withoutCr);
}

function withoutCr(line: string): string {
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}

const NOT_UTF8 = 'not valid UTF-8 (was the file saved in another encoding?)';

/** The values of one CSV line, or what is wrong with it. */
function csvFields(line: string, trim: boolean): string[] | string {
  if (!line.includes('"')) {
    const fields = line.split(',');
    return trim ? fields.map((f) => f.trim()) : fields;
  }
  try {
    const parsed = parse(line, { relax_column_count: true, trim }) as string[][];
    if (parsed.length !== 1) return 'not one CSV row';
    return parsed[0]!;
  } catch (err) {
    return `not valid CSV (${(err as Error).message})`;
  }
}

/** What is wrong with `text` as a value of `column`, a whole number from 1 (an epoch or a placement epoch). */
function counterProblem(text: string, column = 'epoch'): string | null {
  if (!/^\d+$/.test(text)) return `${column} must be a whole number, not ${JSON.stringify(text)}`;
  const value = Number(text);
  if (value < 1 || !Number.isSafeInteger(value)) return `${column} must be from 1 to ${Number.MAX_SAFE_INTEGER}, not ${text}`;
  return null;
}

const epochProblem = (text: string) => counterProblem(text);
const placementEpochProblem = (text: string) => counterProblem(text, 'placement_epoch');

/** The epoch in `text` if it is a valid one, else null. */
function readableEpoch(text: string | undefined): number | null {
  return text !== undefined && epochProblem(text) === null ? Number(text) : null;
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

export interface ParsedSnapshot {
  rows: SnapshotRow[];
  rejected: RejectedRow[];
  notes: TableNote[];
}

type Column = (typeof SNAPSHOT_COLUMNS)[number];

/**
 * How to read the snapshot's lines: where each column is, and how many values a line has.
 * placement_epoch has no position in a table of the previous version.
 */
interface Layout {
  order: Record<Exclude<Column, 'placement_epoch'>, number> & { placement_epoch?: number };
  widths: readonly number[];
}

/** Without a header: the standard order, of which the previous version's is the first five columns. */
const STANDARD_LAYOUT: Layout = {
  order: Object.fromEntries(SNAPSHOT_COLUMNS.map((column, i) => [column, i])) as Layout['order'],
  widths: [OLD_SNAPSHOT_WIDTH, SNAPSHOT_COLUMNS.length],
};

/** The layout a header line gives, or why it is not a header. */
function headerLayout(line: TableLine): Layout | string {
  if (typeof line !== 'string') return NOT_UTF8;
  const fields = csvFields(line, true);
  if (typeof fields === 'string') return fields;
  const order: Partial<Record<Column, number>> = {};
  for (const [i, field] of fields.entries()) {
    const column = field.toLowerCase() as Column;
    if (!SNAPSHOT_COLUMNS.includes(column)) return `unknown column ${JSON.stringify(field)}`;
    if (order[column] !== undefined) return `column ${column} appears twice`;
    order[column] = i;
  }
  const missing = SNAPSHOT_COLUMNS.find((column) => column !== 'placement_epoch' && order[column] === undefined);
  return missing === undefined ? { order: order as Layout['order'], widths: [fields.length] } : `no ${missing} column`;
}

/**
 * Parses and checks the snapshot's lines one by one; file-level rules are table-load.ts's. A
 * line that fails is rejected, and the others still load.
 */
export function parseSnapshot(lines: readonly TableLine[]): ParsedSnapshot {
  const rows: SnapshotRow[] = [];
  const rejected: RejectedRow[] = [];
  const notes: TableNote[] = [];
  const isBlank = (line: TableLine) => typeof line === 'string' && line.trim() === '';
  const first = lines.findIndex((line) => !isBlank(line));
  if (first === -1) return { rows, rejected, notes };

  const firstLine = lines[first]!;
  const header = typeof firstLine === 'string' ? firstLine.replace(/^\ufeff/, '') : firstLine;
  let layout = headerLayout(header);
  let headerProblem: string | null = null;
  if (typeof layout === 'string') {
    headerProblem = layout;
    layout = STANDARD_LAYOUT;
    notes.push({
      level: 'error',
      message: `the header does not name the columns ${SNAPSHOT_COLUMNS.join(',')}; reading the rows in that order (or, with 5 values, the previous version's, without placement_epoch), the first line included`,
      fields: { file: SNAPSHOT_FILE, line: first + 1, problem: headerProblem },
    });
  }
  const checker = new CopyChecker();
  const readLine = (line: TableLine, index: number) => {
    const parsed = parseSnapshotLine(line, index + 1, layout as Layout, checker);
    if ('problem' in parsed) {
      if (index === first) parsed.problem = `not a header (${headerProblem}), nor a valid row (${parsed.problem})`;
      rejected.push(parsed);
    } else {
      rows.push(parsed);
    }
  };
  if (headerProblem !== null) readLine(header, first);
  for (let i = first + 1; i < lines.length; i++) if (!isBlank(lines[i]!)) readLine(lines[i]!, i);
  return { rows, rejected, notes };
}

function parseSnapshotLine(line: TableLine, lineNumber: number, { order, widths }: Layout, checker: CopyChecker): SnapshotRow | RejectedRow {
  const reject = (problem: string, epoch: number | null = null): RejectedRow => ({ file: SNAPSHOT_FILE, line: lineNumber, row: line, problem, epoch, unacknowledged: false });
  if (typeof line !== 'string') return reject(NOT_UTF8);
  const fields = csvFields(line, true);
  if (typeof fields === 'string') return reject(fields);
  if (!widths.includes(fields.length)) return reject(`expected ${widths.join(' or ')} values, found ${fields.length}`);
  const name = fields[order.name]!;
  const serverId = fields[order.server_id]!;
  const serverUrl = fields[order.server_url]!;
  const role = fields[order.role]!.toLowerCase();
  const epochText = fields[order.epoch]!;
  // Absent (a 5-value line, or a header without the column) or blank: the file's first placement.
  const placementText = order.placement_epoch === undefined ? '' : (fields[order.placement_epoch] ?? '');
  const epoch = readableEpoch(epochText);
  const problem =
    checker.problem(name, serverId, serverUrl, role) ??
    (epochText === '' ? null : epochProblem(epochText)) ??
    (placementText === '' ? null : placementEpochProblem(placementText));
  if (problem !== null) return reject(problem, epoch);
  const placementEpoch = placementText === '' ? 1 : Number(placementText);
  return { name, serverId, serverUrl, role: role as CopyRole, epoch, placementEpoch, line: lineNumber };
}

// ------------------------------------------------------------------ reading the journal

export interface ParsedJournal {
  records: JournalEntry[];
  /** Lines not loaded. Lines a crash can leave (cut short, garbled) are marked unacknowledged. */
  rejected: RejectedRow[];
}

/** Parses the journal line by line; the last line, without its newline, is a write cut short. */
export function parseJournal(lines: readonly TableLine[]): ParsedJournal {
  const records: JournalEntry[] = [];
  const rejected: RejectedRow[] = [];
  const checker = new CopyChecker();
  const headers = [JOURNAL_HEADER.trimEnd(), OLD_JOURNAL_HEADER];
  const last = lines.length - 1;
  lines.forEach((line, i) => {
    if (line === '' || (typeof line === 'string' && headers.includes(line))) return;
    const parsed = parseJournalLine(line, i + 1, checker);
    if (i === last) {
      // Without its newline the write was cut short, whatever the line looks like: never acknowledged.
      rejected.push({ file: JOURNAL_FILE, line: i + 1, row: line, problem: 'incomplete last line (a write cut short)', epoch: parsed.epoch, unacknowledged: true });
    } else if ('problem' in parsed) {
      rejected.push(parsed);
    } else {
      records.push(parsed);
    }
  });
  return { records, rejected };
}

function parseJournalLine(line: TableLine, lineNumber: number, checker: CopyChecker): JournalEntry | RejectedRow {
  // Damage to a line's shape is what a crash mid-write leaves; a well-shaped row with a wrong
  // value is not.
  const reject = (problem: string, epoch: number | null, unacknowledged: boolean): RejectedRow => ({ file: JOURNAL_FILE, line: lineNumber, row: line, problem, epoch, unacknowledged });
  if (typeof line !== 'string') return reject(NOT_UTF8, null, true);
  const fields = csvFields(line, false);
  if (typeof fields === 'string') return reject(fields, null, true);
  if (fields.length !== JOURNAL_COLUMNS.length && fields.length !== JOURNAL_COLUMNS.length - 1) {
    return reject(`expected ${JOURNAL_COLUMNS.length} values (${JOURNAL_COLUMNS.length - 1} in the previous version's lines), found ${fields.length}`, null, true);
  }
  const [op, name, serverId, serverUrl, role, epochText, placementText] = fields as [string, string, string, string, string, string, string | undefined];
  const epoch = readableEpoch(epochText);
  if (epoch === null) return reject(epochProblem(epochText)!, null, false);
  if (op === 'remove') {
    const problem = nameProblem(name);
    return problem === null ? { op, name, epoch, line: lineNumber } : reject(`bad file name: ${problem}`, epoch, false);
  }
  if (op !== 'add') return reject(`unknown op ${JSON.stringify(op)}`, epoch, false);
  // A line of the previous version has no placement_epoch: its placements were all the first.
  const problem = checker.problem(name, serverId, serverUrl, role) ?? (placementText === undefined ? null : placementEpochProblem(placementText));
  if (problem !== null) return reject(problem, epoch, false);
  const placementEpoch = placementText === undefined ? 1 : Number(placementText);
  return { op, name, serverId, serverUrl, role: role as CopyRole, epoch, placementEpoch, line: lineNumber };
}

// ------------------------------------------------------------------ the epoch mark

export class TableFileError extends DfsError {
  constructor(file: string, where: string, problem: string) {
    super('BAD_REQUEST', `${file}${where ? ` ${where}` : ''}: ${problem}; fix it (or restore a backup) and start again`);
  }
}

/**
 * The only table file whose damage stops the directory: without the mark, an epoch of a file
 * deleted before the last compaction could be issued again. It is replaced whole by rename, so
 * only a hand edit can damage it.
 */
export function parseEpochMark(text: string): number {
  const value = text.trim();
  const problem = epochProblem(value);
  if (value !== '0' && problem !== null) throw new TableFileError(EPOCH_FILE, '', `expected the highest epoch issued, a whole number, not ${JSON.stringify(value.slice(0, 40))}`);
  return Number(value);
}
