/**
 * The directory's table of files: for each name, its epoch, its placement epoch, its primary
 * server and its replica servers. Kept in memory for answers, and on disk as CSV (format:
 * table-format.ts) so that it survives restarts and crashes:
 *
 * - Every change is appended to the journal and fsynced before it is acknowledged. Appends share
 *   fsyncs (group commit), so many concurrent creates cost about one fsync.
 * - A change costs O(1) whatever the table size. When the journal outgrows max(10,000 rows, the
 *   table's rows), the table is compacted: a new snapshot is written to a temp file, fsynced,
 *   renamed over the old one (then the folder is fsynced), and the journal is emptied. That O(n)
 *   work happens once per n changes, so it is O(1) per change amortized. While it runs, answers go
 *   on; only acknowledgements of changes wait.
 * - kill -9 at any instant leaves a loadable table: the snapshot is always a whole old or a whole
 *   new one; a journal line cut short is set aside; and replaying journal rows the snapshot
 *   already holds changes nothing.
 * - Loading (rules: table-load.ts) uses every row it can; the others are logged and appended,
 *   fsynced, to file_table.rejected.csv before anything else happens. Then it compacts once, so
 *   that the snapshot on disk is clean and the journal empty. A crash between the two only means
 *   the same rows are set aside again, and appear twice in the rejected file. A clean stop
 *   compacts too, so a person can edit file_table.csv while the directory is stopped.
 *
 * Placement epochs: a file's is 1 at its create and one more at each change of its placement
 * (`replace`, for failover and re-replication). A change names the placement epoch it was
 * decided on and is skipped if the file has moved on since, so two racing decisions cannot both
 * apply; on disk the number lets replay tell a file's current rows from rows it has left
 * (table-load.ts). It is per file and per incarnation, so unlike epochs it needs no mark file.
 *
 * Epochs: every create gets `++lastEpoch`. On load, lastEpoch is the highest epoch in the
 * snapshot, the journal (removals included, rows set aside included) and file_table.epoch, which
 * each compaction updates before it drops rows; so an epoch is never issued twice, across
 * deletes and restarts.
 */
import { mkdir, open as openFile, readdir, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DfsError } from '../../shared/errors.js';
import { fsyncDir, readIfExists, writeFileDurably } from '../../shared/durable.js';
import { silentLogger, type Logger } from '../../shared/log.js';
import type { CopyRole, ServerRef } from '../../shared/protocol.js';
import { AppendLog } from './append-log.js';
import type { ServerLoad } from './cluster.js';
import { SortedNames, type RangeOptions } from './sorted-names.js';
import {
  EPOCH_FILE,
  JOURNAL_FILE,
  JOURNAL_HEADER,
  REJECTED_FILE,
  REJECTED_HEADER,
  SNAPSHOT_FILE,
  SNAPSHOT_HEADER,
  formatCopyRows,
  formatJournal,
  formatRejected,
  parseEpochMark,
  tableLines,
  type CopyRow,
  type JournalRecord,
  type RejectedRow,
} from './table-format.js';
import { loadTable } from './table-load.js';

export const DEFAULT_COMPACT_AFTER_ROWS = 10_000;
/** Files per piece when writing a snapshot: the event loop gets a turn between pieces. */
const SNAPSHOT_PIECE_FILES = 4096;
/** Rows set aside that get a log line each; the rejected file has them all. */
const LOGGED_REJECTED_ROWS = 100;

export interface FileEntry {
  readonly epoch: number;
  /** 1 at the create, one more at each change of primary or replicas. */
  readonly placementEpoch: number;
  readonly primary: string;
  readonly replicas: readonly string[];
}

interface Entry {
  epoch: number;
  placementEpoch: number;
  primary: string;
  replicas: string[];
}

/** A new placement for a file, decided on the file as it was at `epoch` and `placementEpoch`. */
export interface PlacementChange {
  name: string;
  epoch: number;
  placementEpoch: number;
  primary: ServerRef;
  replicas: readonly ServerRef[];
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
  private rejectedRows = 0;
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

  /** Rows of the table on disk that the last load could not use, now in the rejected file. */
  get rejectedAtLoad(): number {
    return this.rejectedRows;
  }

  get(name: string): FileEntry | undefined {
    return this.entries.get(name);
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** Every file, in no particular order. */
  files(): IterableIterator<[string, FileEntry]> {
    return this.entries.entries();
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
    assertDistinctServers(name, primary, replicas);
    const entry: Entry = { epoch: ++this.lastEpoch, placementEpoch: 1, primary: primary.id, replicas: replicas.map((r) => r.id) };
    this.insert(name, entry);
    for (const ref of [primary, ...replicas]) this.urls.set(ref.id, ref.url);
    await this.persist(placementRecords(name, entry, primary, replicas));
    return entry;
  }

  /**
   * Gives files new primaries and replicas, each at the next placement epoch, in one journal
   * append (one fsync) for the whole call, and in memory only once that is durable. A change applies only if its file
   * still exists at that `epoch` and `placementEpoch` (changes are applied in order, so a second
   * change of one file in a call must name the placement epoch the first gives); the others get
   * null and write nothing. Resolves, in the order given, once the changes are durable. Throws
   * (before changing anything) if a change names a server twice.
   */
  async replace(changes: ReadonlyArray<PlacementChange>): Promise<Array<FileEntry | null>> {
    this.assertWritable();
    for (const change of changes) assertDistinctServers(change.name, change.primary, change.replicas);
    const records: JournalRecord[] = [];
    const decided = new Map<string, { from: Entry; to: Entry }>();
    const planned = changes.map(({ name, epoch, placementEpoch, primary, replicas }): Entry | null => {
      const old = decided.get(name)?.to ?? this.entries.get(name);
      if (!old || old.epoch !== epoch || old.placementEpoch !== placementEpoch) return null;
      const entry: Entry = { epoch, placementEpoch: placementEpoch + 1, primary: primary.id, replicas: replicas.map((r) => r.id) };
      decided.set(name, { from: decided.get(name)?.from ?? this.entries.get(name)!, to: entry });
      for (const ref of [primary, ...replicas]) this.urls.set(ref.id, ref.url);
      records.push(...placementRecords(name, entry, primary, replicas));
      return entry;
    });
    if (records.length === 0) return planned.map(() => null);
    await this.persist(records);
    // Only now, durable, does anyone see the new placements (no write goes to a new primary
    // before its table row is on disk). A file deleted meanwhile stays deleted: its remove was
    // journaled after these rows, and replays after them too.
    const applied = new Set<string>();
    for (const [name, { from, to }] of decided) {
      if (this.entries.get(name) !== from) continue;
      this.countCopies(from, -1);
      this.entries.set(name, to);
      this.countCopies(to, 1);
      applied.add(name);
    }
    return planned.map((entry, i) => (entry && applied.has(changes[i]!.name) ? entry : null));
  }

  /** Removes a file; resolves with what it was once the change is durable. NOT_FOUND if unknown. */
  async remove(name: string): Promise<FileEntry> {
    this.assertWritable();
    const entry = this.entries.get(name);
    if (!entry) throw new DfsError('NOT_FOUND', `no file named ${name}`);
    this.entries.delete(name);
    this.names.noteRemoved();
    this.countCopies(entry, -1);
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
      if (role) records.push({ op: 'add', name, serverId: id, serverUrl: url, role, epoch: entry.epoch, placementEpoch: entry.placementEpoch });
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
    this.countCopies(entry, 1);
  }

  /** Adds (sign 1) or takes away (-1) an entry's copies from the row count and the servers' loads. */
  private countCopies(entry: Entry, sign: 1 | -1): void {
    this.rowCount += sign * (1 + entry.replicas.length);
    this.adjustLoad(entry.primary, sign, sign);
    for (const id of entry.replicas) this.adjustLoad(id, sign, 0);
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
          const { epoch, placementEpoch } = entry;
          rows.push({ name, serverId: entry.primary, serverUrl: urls.get(entry.primary)!, role: 'primary', epoch, placementEpoch });
          for (const id of entry.replicas) rows.push({ name, serverId: id, serverUrl: urls.get(id)!, role: 'replica', epoch, placementEpoch });
        }
        yield formatCopyRows(rows);
      }
    }
    await writeSnapshotFile(this.dir, pieces());
  }

  // ------------------------------------------------------------------ loading

  private async load(): Promise<void> {
    const epochText = await readIfExists(join(this.dir, EPOCH_FILE));
    this.persistedEpoch = epochText === null ? 0 : parseEpochMark(epochText.toString('utf8'));
    const loaded = loadTable({
      snapshot: tableLines((await readIfExists(join(this.dir, SNAPSHOT_FILE))) ?? Buffer.alloc(0)),
      journal: tableLines((await readIfExists(join(this.dir, JOURNAL_FILE))) ?? Buffer.alloc(0)),
      epochMark: this.persistedEpoch,
    });
    for (const note of loaded.notes) this.log[note.level](note.message, note.fields);
    for (const [id, url] of loaded.urls) this.urls.set(id, url);
    for (const [name, entry] of loaded.files) this.insert(name, entry);
    this.lastEpoch = loaded.lastEpoch;
    // Before open() compacts, which drops from the snapshot every row not loaded.
    await this.setAside(loaded.rejected);
    this.log.info('table loaded', {
      files: this.entries.size,
      rows: this.rowCount,
      journalRows: loaded.journalRecords,
      lastEpoch: this.lastEpoch,
      rejectedRows: this.rejectedRows || undefined,
    });
  }

  /** Logs the rows the load could not use and appends them, durably, to the rejected file. */
  private async setAside(rows: readonly RejectedRow[]): Promise<void> {
    this.rejectedRows = rows.length;
    if (rows.length === 0) return;
    for (const row of rows.slice(0, LOGGED_REJECTED_ROWS)) {
      const fields = { file: row.file, line: row.line, problem: row.problem };
      if (row.unacknowledged) this.log.warn('set aside a table row of a write cut short by a crash (never acknowledged)', fields);
      else this.log.error('set aside a table row that cannot be loaded', fields);
    }
    const path = join(this.dir, REJECTED_FILE);
    await appendDurably(path, REJECTED_HEADER, formatRejected(rows, new Date()));
    const unlogged = rows.length - LOGGED_REJECTED_ROWS;
    const mistakes = rows.some((row) => !row.unacknowledged);
    this.log[mistakes ? 'error' : 'warn']('table rows set aside; the rest of the table is loaded and served', {
      rows: rows.length,
      notLogged: unlogged > 0 ? unlogged : undefined,
      to: path,
    });
  }

  // ------------------------------------------------------------------ benchmarks

  /**
   * Writes a table of `files` synthetic files into `dir` (replacing any table there), placed
   * round-robin over `servers`, for benchmarks that need a big table without creating it file by
   * file. Epochs are 1..files, placement epochs 1.
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
            rows.push({ name: nameOf(i), serverId: server.id, serverUrl: server.url, role: k === 0 ? 'primary' : 'replica', epoch: i + 1, placementEpoch: 1 });
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

function assertDistinctServers(name: string, primary: ServerRef, replicas: readonly ServerRef[]): void {
  const ids = new Set([primary.id, ...replicas.map((r) => r.id)]);
  if (ids.size !== replicas.length + 1) throw new Error(`placement of ${name} names a server twice`);
}

/**
 * The journal rows of a placement (a create's, or a change's): replica rows first, the primary
 * row last, so that one cut short lacks its primary row and replay sets it aside.
 */
function placementRecords(name: string, entry: Entry, primary: ServerRef, replicas: readonly ServerRef[]): JournalRecord[] {
  const { epoch, placementEpoch } = entry;
  const records: JournalRecord[] = replicas.map((r) => ({ op: 'add', name, serverId: r.id, serverUrl: r.url, role: 'replica', epoch, placementEpoch }));
  records.push({ op: 'add', name, serverId: primary.id, serverUrl: primary.url, role: 'primary', epoch, placementEpoch });
  return records;
}

/** Appends `bytes` to `path` (after `header` if the file is new or empty), fsyncs it and its folder. */
async function appendDurably(path: string, header: string, bytes: Buffer): Promise<void> {
  const handle = await openFile(path, 'a');
  try {
    if ((await handle.stat()).size === 0) await handle.writeFile(header);
    await handle.writeFile(bytes);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fsyncDir(dirname(path));
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
