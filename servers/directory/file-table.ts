/**
 * The directory's table of files: for each name, its epoch, its primary server and its replica
 * servers. Kept in memory for answers, and on disk as CSV (format: table-format.ts) so that it
 * survives restarts and crashes:
 *
 * - Every change is appended to the journal and fsynced before it is acknowledged. Appends share
 *   fsyncs (group commit), so many concurrent creates cost about one fsync.
 * - A change costs O(1) whatever the table size. When the journal outgrows max(10,000 rows, the
 *   table's rows), the table is compacted: a new snapshot is written to a temp file, fsynced,
 *   renamed over the old one (then the folder is fsynced), and the journal is emptied. That O(n)
 *   work happens once per n changes, so it is O(1) per change amortized. While it runs, answers go
 *   on; only acknowledgements of changes wait.
 * - kill -9 at any instant leaves a loadable table: the snapshot is always a whole old or a whole
 *   new one; a journal line cut short is skipped; and replaying journal rows the snapshot already
 *   holds changes nothing.
 * - Loading compacts once, so that the snapshot on disk is clean and the journal empty; a clean
 *   stop compacts too, so a person can edit file_table.csv while the directory is stopped.
 *
 * Epochs: every create gets `++lastEpoch`. On load, lastEpoch is the highest epoch in the
 * snapshot, the journal (removals included) and file_table.epoch, which each compaction updates
 * before it drops rows; so an epoch is never issued twice, across deletes and restarts.
 */
import { mkdir, readFile, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { DfsError } from '../../shared/errors.js';
import { fsyncDir, writeFileDurably } from '../../shared/durable.js';
import { silentLogger, type Logger } from '../../shared/log.js';
import type { CopyRole, ServerRef } from '../../shared/protocol.js';
import { AppendLog } from './append-log.js';
import type { ServerLoad } from './cluster.js';
import { SortedNames, type RangeOptions } from './sorted-names.js';
import {
  EPOCH_FILE,
  JOURNAL_FILE,
  JOURNAL_HEADER,
  SNAPSHOT_FILE,
  SNAPSHOT_HEADER,
  TableFileError,
  formatCopyRows,
  formatJournal,
  lineOfRecord,
  parseEpochMark,
  parseJournal,
  parseSnapshot,
  type CopyRow,
  type JournalRecord,
  type SnapshotRow,
} from './table-format.js';

export const DEFAULT_COMPACT_AFTER_ROWS = 10_000;
/** Files per piece when writing a snapshot: the event loop gets a turn between pieces. */
const SNAPSHOT_PIECE_FILES = 4096;

export interface FileEntry {
  readonly epoch: number;
  readonly primary: string;
  readonly replicas: readonly string[];
}

interface Entry {
  epoch: number;
  primary: string;
  replicas: string[];
}

export interface Holding {
  name: string;
  entry: FileEntry;
  role: CopyRole;
}

export interface FileTableOptions {
  log?: Logger;
  /** The journal is compacted past max(this, the table's rows) rows. */
  compactAfterRows?: number;
  /** Called once if the journal cannot be written; the table then refuses every change. */
  onFailure?: (err: Error) => void;
}

export interface PrefillOptions {
  files: number;
  servers: readonly ServerRef[];
  replication?: number;
  /** The name of file number i (from 0); default `prefill/file-<i>`. */
  nameOf?: (index: number) => string;
}

export class FileTable {
  private readonly entries = new Map<string, Entry>();
  /** The URL the table's rows give for each server id. */
  private readonly urls = new Map<string, string>();
  private readonly loads = new Map<string, ServerLoad>();
  private readonly names = new SortedNames(
    (name) => this.entries.has(name),
    () => this.entries.keys(),
    () => this.entries.size,
  );
  private rowCount = 0;
  private lastEpoch = 0;
  private persistedEpoch = 0;
  private journalRows = 0;
  /** After a failed compaction, the next try waits for this many journal rows. */
  private retryCompactionAt = 0;
  private compacting: Promise<void> | null = null;
  private journal: AppendLog | null = null;
  /** Set once close() is called: changes are refused from then on. */
  private closed: Promise<void> | null = null;
  private readonly log: Logger;
  private readonly compactAfterRows: number;

  private constructor(
    readonly dir: string,
    options: FileTableOptions,
  ) {
    this.log = options.log ?? silentLogger;
    this.compactAfterRows = options.compactAfterRows ?? DEFAULT_COMPACT_AFTER_ROWS;
  }

  /** Loads the table in `dir` (an empty table if there is none) and compacts it once. */
  static async open(dir: string, options: FileTableOptions = {}): Promise<FileTable> {
    const table = new FileTable(dir, options);
    await mkdir(dir, { recursive: true });
    await removeStaleTempFiles(dir);
    await table.load();
    table.journal = await AppendLog.open(join(dir, JOURNAL_FILE), (err) => {
      table.log.error('cannot write the file table journal; refusing changes until restarted', { error: err.message });
      options.onFailure?.(err);
    });
    try {
      await fsyncDir(dir);
      await table.compact();
    } catch (err) {
      await table.journal.close().catch(() => {});
      throw err;
    }
    return table;
  }

  // ------------------------------------------------------------------ queries

  get size(): number {
    return this.entries.size;
  }

  /** Copies in the table: its rows in the snapshot. */
  get rows(): number {
    return this.rowCount;
  }

  get lastIssuedEpoch(): number {
    return this.lastEpoch;
  }

  get journalLength(): number {
    return this.journalRows;
  }

  get(name: string): FileEntry | undefined {
    return this.entries.get(name);
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** The URL the table's rows give for a server. */
  urlOf(id: string): string | undefined {
    return this.urls.get(id);
  }

  loadOf(id: string): ServerLoad {
    return this.loads.get(id) ?? { files: 0, primaries: 0 };
  }

  /** Servers holding at least one copy. */
  serverIds(): IterableIterator<string> {
    return this.loads.keys();
  }

  list(options: Omit<RangeOptions, 'accept'>): { names: string[]; more: boolean } {
    return this.names.range(options);
  }

  /** The copies a server holds, in name order, after `after`. */
  holdings(id: string, options: Omit<RangeOptions, 'accept' | 'prefix'>): { copies: Holding[]; more: boolean } {
    if (!this.loads.has(id)) return { copies: [], more: false };
    const holds = (name: string) => {
      const entry = this.entries.get(name)!;
      return entry.primary === id || entry.replicas.includes(id);
    };
    const { names, more } = this.names.range({ ...options, accept: holds });
    const copies = names.map((name) => {
      const entry = this.entries.get(name)!;
      return { name, entry, role: (entry.primary === id ? 'primary' : 'replica') as CopyRole };
    });
    return { copies, more };
  }

  // ------------------------------------------------------------------ changes

  /** Adds a file with a fresh epoch; resolves once the change is durable. EXISTS if taken. */
  async create(name: string, primary: ServerRef, replicas: readonly ServerRef[]): Promise<FileEntry> {
    this.assertWritable();
    if (this.entries.has(name)) throw new DfsError('EXISTS', `${name} already exists`);
    const ids = new Set([primary.id, ...replicas.map((r) => r.id)]);
    if (ids.size !== replicas.length + 1) throw new Error(`placement of ${name} names a server twice`);
    const entry: Entry = { epoch: ++this.lastEpoch, primary: primary.id, replicas: replicas.map((r) => r.id) };
    this.insert(name, entry);
    for (const ref of [primary, ...replicas]) this.urls.set(ref.id, ref.url);
    // Replica rows first: a create cut short then lacks its primary row and is dropped on load.
    const records: JournalRecord[] = replicas.map((r) => ({ op: 'add', name, serverId: r.id, serverUrl: r.url, role: 'replica', epoch: entry.epoch }));
    records.push({ op: 'add', name, serverId: primary.id, serverUrl: primary.url, role: 'primary', epoch: entry.epoch });
    await this.persist(records);
    return entry;
  }

  /** Removes a file; resolves with what it was once the change is durable. NOT_FOUND if unknown. */
  async remove(name: string): Promise<FileEntry> {
    this.assertWritable();
    const entry = this.entries.get(name);
    if (!entry) throw new DfsError('NOT_FOUND', `no file named ${name}`);
    this.entries.delete(name);
    this.names.noteRemoved();
    this.rowCount -= 1 + entry.replicas.length;
    this.adjustLoad(entry.primary, -1, -1);
    for (const id of entry.replicas) this.adjustLoad(id, -1, 0);
    await this.persist([{ op: 'remove', name, epoch: entry.epoch }]);
    return entry;
  }

  /**
   * Records a server's new URL in every row of its copies (O(its copies); servers rarely move).
   * Resolves with the number of rows rewritten, once durable.
   */
  async setServerUrl(id: string, url: string): Promise<number> {
    this.assertWritable();
    if (this.urls.get(id) === url) return 0;
    this.urls.set(id, url);
    if (!this.loads.has(id)) return 0;
    const records: JournalRecord[] = [];
    for (const [name, entry] of this.entries) {
      const role: CopyRole | null = entry.primary === id ? 'primary' : entry.replicas.includes(id) ? 'replica' : null;
      if (role) records.push({ op: 'add', name, serverId: id, serverUrl: url, role, epoch: entry.epoch });
    }
    await this.persist(records);
    return records.length;
  }

  /** Resolves when every change made so far is durable. */
  async flush(): Promise<void> {
    await this.journal?.flush();
  }

  /** Rewrites the snapshot from memory and empties the journal. */
  compact(): Promise<void> {
    this.compacting ??= this.runCompaction().finally(() => (this.compacting = null));
    return this.compacting;
  }

  /** Refuses further changes, compacts (so the journal is left empty) and closes the files. */
  close(): Promise<void> {
    this.closed ??= this.shutDown();
    return this.closed;
  }

  private async shutDown(): Promise<void> {
    const journal = this.journal;
    if (!journal) return;
    await this.compacting?.catch(() => {});
    const changed = this.journalRows > 0 || this.lastEpoch > this.persistedEpoch;
    if (changed && !journal.failed) {
      await this.compact().catch((err: Error) => this.log.warn('could not compact on close; the journal still holds every change', { error: err.message }));
    }
    await journal.close();
  }

  private assertWritable(): void {
    if (this.closed) throw new DfsError('UNAVAILABLE', 'the directory is shutting down');
    const failure = this.journal?.failed;
    if (failure) throw new DfsError('INTERNAL', `the file table cannot be saved (${failure.message}); restart the directory service`);
  }

  private insert(name: string, entry: Entry): void {
    this.entries.set(name, entry);
    this.names.noteAdded(name);
    this.rowCount += 1 + entry.replicas.length;
    this.adjustLoad(entry.primary, 1, 1);
    for (const id of entry.replicas) this.adjustLoad(id, 1, 0);
  }

  private adjustLoad(id: string, files: number, primaries: number): void {
    const load = this.loads.get(id) ?? { files: 0, primaries: 0 };
    load.files += files;
    load.primaries += primaries;
    if (load.files <= 0) this.loads.delete(id);
    else this.loads.set(id, load);
  }

  private async persist(records: JournalRecord[]): Promise<void> {
    const journal = this.journal;
    if (!journal) throw new Error('the file table is not open');
    this.journalRows += records.length;
    const durable = journal.append(formatJournal(records));
    this.maybeCompact();
    try {
      await durable;
    } catch (err) {
      throw new DfsError('INTERNAL', `the file table could not be saved (${(err as Error).message}); restart the directory service`);
    }
  }

  private maybeCompact(): void {
    if (this.compacting || this.journalRows <= Math.max(this.compactAfterRows, this.rowCount, this.retryCompactionAt)) return;
    this.compact().catch((err: Error) => {
      this.retryCompactionAt = this.journalRows + Math.max(this.compactAfterRows, this.rowCount);
      this.log.error('file table compaction failed; the journal keeps every change and it will be tried again later', { error: err.message });
    });
  }

  private async runCompaction(): Promise<void> {
    const journal = this.journal;
    if (!journal) throw new Error('the file table is not open');
    const started = performance.now();
    let journalRowsDropped = 0;
    await journal.hold(async () => {
      const rowsAtStart = this.journalRows;
      // First the epoch mark, so that no epoch known only from rows about to go is forgotten.
      if (this.lastEpoch > this.persistedEpoch) {
        const mark = this.lastEpoch;
        await writeFileDurably(join(this.dir, EPOCH_FILE), `${mark}\n`);
        this.persistedEpoch = mark;
      }
      await this.writeSnapshot();
      // Appends queued meanwhile are written after this, so none is lost if the snapshot missed it.
      await journal.rewrite(JOURNAL_HEADER);
      this.journalRows -= rowsAtStart;
      journalRowsDropped = rowsAtStart;
    });
    this.retryCompactionAt = 0;
    this.log.info('table compacted', { files: this.entries.size, rows: this.rowCount, journalRows: journalRowsDropped, ms: Math.round(performance.now() - started) });
  }

  private async writeSnapshot(): Promise<void> {
    const names = this.names.view();
    const entries = this.entries;
    const urls = this.urls;
    async function* pieces(): AsyncGenerator<string> {
      yield SNAPSHOT_HEADER;
      for (let start = 0; start < names.length; start += SNAPSHOT_PIECE_FILES) {
        const rows: CopyRow[] = [];
        for (let i = start; i < Math.min(names.length, start + SNAPSHOT_PIECE_FILES); i++) {
          const name = names[i]!;
          // Read at the moment of writing: a file changed meanwhile is written as it now is,
          // and the journal written after this snapshot replays the change harmlessly.
          const entry = entries.get(name);
          if (!entry) continue;
          rows.push({ name, serverId: entry.primary, serverUrl: urls.get(entry.primary)!, role: 'primary', epoch: entry.epoch });
          for (const id of entry.replicas) rows.push({ name, serverId: id, serverUrl: urls.get(id)!, role: 'replica', epoch: entry.epoch });
        }
        yield formatCopyRows(rows);
      }
    }
    await writeSnapshotFile(this.dir, pieces());
  }

  // ------------------------------------------------------------------ loading

  private async load(): Promise<void> {
    const epochText = await readIfExists(join(this.dir, EPOCH_FILE));
    this.persistedEpoch = epochText === null ? 0 : parseEpochMark(epochText);
    let highest = this.persistedEpoch;

    const snapshotText = (await readIfExists(join(this.dir, SNAPSHOT_FILE))) ?? '';
    const rows = parseSnapshot(snapshotText);
    const drafts = draftsFromSnapshot(rows, snapshotText, this.urls, this.log);
    for (const row of rows) if (row.epoch !== null && row.epoch > highest) highest = row.epoch;

    const journalText = (await readIfExists(join(this.dir, JOURNAL_FILE))) ?? '';
    const { records, skipped } = parseJournal(journalText);
    for (const { line, problem } of skipped) {
      this.log.warn('skipped a damaged journal line (a write cut short by a crash; it was never acknowledged)', { file: JOURNAL_FILE, line, problem });
    }
    for (const record of records) {
      if (record.epoch > highest) highest = record.epoch;
      replay(drafts, this.urls, record);
    }
    this.lastEpoch = highest;

    const withoutEpoch: string[] = [];
    for (const [name, draft] of drafts) {
      if (draft.primary === null) {
        this.log.warn('dropped a file whose create was cut short (no primary row; it was never acknowledged)', { name });
      } else if (draft.epoch === null) {
        withoutEpoch.push(name);
      } else {
        this.insert(name, { epoch: draft.epoch, primary: draft.primary, replicas: draft.replicas });
      }
    }
    for (const name of withoutEpoch.sort()) {
      const draft = drafts.get(name)!;
      const epoch = ++this.lastEpoch;
      this.insert(name, { epoch, primary: draft.primary!, replicas: draft.replicas });
      this.log.info('gave a hand-added file a fresh epoch', { name, epoch });
    }
    this.log.info('table loaded', { files: this.entries.size, rows: this.rowCount, journalRows: records.length, lastEpoch: this.lastEpoch });
  }

  // ------------------------------------------------------------------ benchmarks

  /**
   * Writes a table of `files` synthetic files into `dir` (replacing any table there), placed
   * round-robin over `servers`, for benchmarks that need a big table without creating it file by
   * file. Epochs are 1..files.
   */
  static async prefill(dir: string, options: PrefillOptions): Promise<void> {
    const { files, servers } = options;
    const replication = Math.min(options.replication ?? 3, servers.length);
    const nameOf = options.nameOf ?? ((i: number) => `prefill/file-${i}`);
    if (servers.length === 0) throw new RangeError('prefill needs at least one server');
    await mkdir(dir, { recursive: true });
    async function* pieces(): AsyncGenerator<string> {
      yield SNAPSHOT_HEADER;
      for (let start = 0; start < files; start += SNAPSHOT_PIECE_FILES) {
        const rows: CopyRow[] = [];
        for (let i = start; i < Math.min(files, start + SNAPSHOT_PIECE_FILES); i++) {
          for (let k = 0; k < replication; k++) {
            const server = servers[(i + k) % servers.length]!;
            rows.push({ name: nameOf(i), serverId: server.id, serverUrl: server.url, role: k === 0 ? 'primary' : 'replica', epoch: i + 1 });
          }
        }
        yield formatCopyRows(rows);
      }
    }
    await writeFileDurably(join(dir, EPOCH_FILE), `${files}\n`);
    await writeSnapshotFile(dir, pieces());
    await unlink(join(dir, JOURNAL_FILE)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
}

// -------------------------------------------------------------------- helpers

interface Draft {
  epoch: number | null;
  primary: string | null;
  replicas: string[];
}

/** Builds files from snapshot rows, refusing what a person could not have meant. */
function draftsFromSnapshot(rows: readonly SnapshotRow[], text: string, urls: Map<string, string>, log: Logger): Map<string, Draft> {
  const drafts = new Map<string, Draft>();
  const firstRecord = new Map<string, number>();
  const fail = (record: number, problem: string): never => {
    throw new TableFileError(SNAPSHOT_FILE, `line ${lineOfRecord(text, record)}`, problem);
  };
  const urlConflicts = new Set<string>();
  for (const row of rows) {
    let draft = drafts.get(row.name);
    if (!draft) {
      drafts.set(row.name, (draft = { epoch: null, primary: null, replicas: [] }));
      firstRecord.set(row.name, row.record);
    }
    if (row.epoch !== null) {
      if (draft.epoch !== null && draft.epoch !== row.epoch) {
        fail(row.record, `${row.name} has rows with epochs ${draft.epoch} and ${row.epoch}; all rows of a file share one epoch`);
      }
      draft.epoch = row.epoch;
    }
    if (draft.primary === row.serverId || draft.replicas.includes(row.serverId)) fail(row.record, `${row.name} is listed twice on server ${row.serverId}`);
    if (row.role === 'primary') {
      if (draft.primary !== null) fail(row.record, `${row.name} has two primary rows (${draft.primary} and ${row.serverId}); a file has one primary`);
      draft.primary = row.serverId;
    } else {
      draft.replicas.push(row.serverId);
    }
    const known = urls.get(row.serverId);
    if (known !== undefined && known !== row.serverUrl && !urlConflicts.has(row.serverId)) {
      urlConflicts.add(row.serverId);
      log.warn('server has rows with different URLs; using the last one', { file: SNAPSHOT_FILE, server: row.serverId, urls: [known, row.serverUrl] });
    }
    urls.set(row.serverId, row.serverUrl);
  }
  for (const [name, draft] of drafts) {
    if (draft.primary === null) fail(firstRecord.get(name)!, `${name} has no primary row; mark one of its copies primary`);
  }
  return drafts;
}

/** Applies one journal record; applying any suffix of the journal twice changes nothing. */
function replay(drafts: Map<string, Draft>, urls: Map<string, string>, record: JournalRecord): void {
  const draft = drafts.get(record.name);
  const epoch = draft?.epoch ?? 0;
  if (record.op === 'remove') {
    if (draft && epoch <= record.epoch) drafts.delete(record.name);
    return;
  }
  urls.set(record.serverId, record.serverUrl);
  if (epoch > record.epoch) return;
  let target = draft;
  if (!target || epoch < record.epoch) drafts.set(record.name, (target = { epoch: record.epoch, primary: null, replicas: [] }));
  const id = record.serverId;
  if (record.role === 'primary') {
    if (target.primary !== id) {
      target.replicas = target.replicas.filter((r) => r !== id);
      target.primary = id;
    }
  } else {
    if (target.primary === id) target.primary = null;
    if (!target.replicas.includes(id)) target.replicas.push(id);
  }
}

async function readIfExists(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** Writes the snapshot piece by piece to a temp file, fsyncs it, renames it into place, fsyncs the folder. */
function writeSnapshotFile(dir: string, pieces: AsyncIterable<string>): Promise<void> {
  return writeFileDurably(join(dir, SNAPSHOT_FILE), pieces);
}

/** Temp files a crash left behind in the middle of replacing a table file. */
async function removeStaleTempFiles(dir: string): Promise<void> {
  const ours = [SNAPSHOT_FILE, EPOCH_FILE].map((file) => `.${file}.`);
  for (const entry of await readdir(dir)) {
    if (entry.endsWith('.tmp') && ours.some((prefix) => entry.startsWith(prefix))) await unlink(join(dir, entry)).catch(() => {});
  }
}
