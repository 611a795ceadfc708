/**
 * The owner and mode of every file (shared/permissions.ts), kept by the directory beside its
 * file table, in `file_attributes.csv` in its data folder. The file table stays a table of
 * copies; this file says who may read and write them.
 *
 * One CSV row per change: `set,NAME,EPOCH,OWNER,MODE` (MODE as `rw-r-----`) or
 * `drop,NAME,EPOCH,,`. Rows are keyed by (name, epoch): the epoch is the name's incarnation (a new
 * one at each create), so the attributes of a file deleted and then created again never leak to
 * the new file, whatever rows a crash leaves behind. A set is appended and fsynced (group commit,
 * append-log.ts) before `set` resolves. Drops are appended without waiting: a lost drop only leaves
 * a row for an incarnation that no longer exists, which the next open removes.
 *
 * Crash argument: the directory writes a file's attribute row (fsynced) BEFORE the file-table row
 * that creates the file, so no file exists, even for an instant after a crash, without its
 * attributes: a private file is never briefly world-readable. A crash between the two leaves an
 * orphan row, for a (name, epoch) that the table does not have; `open` drops it, since it is given
 * the table's entries. A create that fails after its set (EXISTS) should drop its own epoch.
 *
 * Migration: tables written by the previous version have no owners. A file with no row belongs
 * to the admin, mode rw-r--r-- (`attributesOf` with the caller's fallback owner): nothing is
 * rewritten for them, no row simply means the default.
 *
 * Memory: per name one { epoch, owner, mode } (an array only while two creates of one name race),
 * owner strings interned, and name strings shared with the file table's after each open; 100,000
 * files cost a few MB.
 *
 * A set is seen by `get` only once it is durable: a chmod that opens a file up is never obeyed on
 * the strength of a row that a crash could forget. The file is rewritten with only the rows in
 * force at each open and whenever it holds more than max(10,000, 4 × entries) rows; rewrites go
 * to a temp file renamed over the old one (shared/durable.ts), so a crash during one loses
 * nothing. The rewrites while running keep every entry (a row whose table row is still being
 * written is not an orphan); only open, when no create is in flight, drops orphans.
 *
 * A torn last line is a set whose call was never answered: it is ignored. A line that cannot be
 * read elsewhere is logged and skipped (the file is the directory's own and is written whole lines
 * at a time, so only damage to the disk can cause it).
 */
import { mkdir, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'csv-stringify/sync';
import { readIfExists, writeFileDurably } from '../../shared/durable.js';
import { DfsError } from '../../shared/errors.js';
import { silentLogger, type Logger } from '../../shared/log.js';
import { nameProblem } from '../../shared/names.js';
import { DEFAULT_MODE, formatMode, modeProblem, ownerProblem, parseMode, type Mode } from '../../shared/permissions.js';
import { AppendLog, journalRows } from './append-log.js';

export const ATTRIBUTES_FILE = 'file_attributes.csv';
const HEADER = 'op,name,epoch,owner,mode\n';
const COMPACT_AFTER_ROWS = 10_000;
const MODE_TEXT = /^[r-][w-]-[r-][w-]-[r-][w-]-$/;

export interface FileAttributes {
  readonly owner: string;
  readonly mode: Mode;
}

/** One row in force: the attributes of `name` in its incarnation `epoch`. */
export interface AttributeRow extends FileAttributes {
  name: string;
  epoch: number;
}

interface Incarnation extends FileAttributes {
  readonly epoch: number;
}

/** Incarnations by name: one each, but for the moment two creates of a name race. */
class Incarnations {
  private readonly byName = new Map<string, Incarnation | Incarnation[]>();
  size = 0;

  find(name: string, epoch: number): Incarnation | undefined {
    const held = this.byName.get(name);
    if (held === undefined || !Array.isArray(held)) return held?.epoch === epoch ? held : undefined;
    return held.find((i) => i.epoch === epoch);
  }

  put(name: string, incarnation: Incarnation): void {
    const held = this.byName.get(name);
    if (held === undefined) {
      this.byName.set(name, incarnation);
      this.size++;
    } else if (!Array.isArray(held)) {
      if (held.epoch === incarnation.epoch) this.byName.set(name, incarnation);
      else {
        this.byName.set(name, [held, incarnation]);
        this.size++;
      }
    } else {
      const at = held.findIndex((i) => i.epoch === incarnation.epoch);
      if (at >= 0) held[at] = incarnation;
      else {
        held.push(incarnation);
        this.size++;
      }
    }
  }

  /** Removes `name` at `epoch`, or in every incarnation; returns what went. */
  remove(name: string, epoch?: number): Incarnation[] {
    const held = this.byName.get(name);
    if (held === undefined) return [];
    const all = Array.isArray(held) ? held : [held];
    const gone = epoch === undefined ? all : all.filter((i) => i.epoch === epoch);
    if (gone.length === 0) return [];
    const kept = all.filter((i) => !gone.includes(i));
    if (kept.length === 0) this.byName.delete(name);
    else this.byName.set(name, kept.length === 1 ? kept[0]! : kept);
    this.size -= gone.length;
    return gone;
  }

  *[Symbol.iterator](): IterableIterator<[string, Incarnation]> {
    for (const [name, held] of this.byName) {
      if (Array.isArray(held)) for (const i of held) yield [name, i];
      else yield [name, held];
    }
  }
}

function parseEpoch(text: string): number | null {
  if (!/^[1-9][0-9]{0,15}$/.test(text)) return null;
  const epoch = Number(text);
  return Number.isSafeInteger(epoch) ? epoch : null;
}

function replayInto(text: string, intern: (owner: string) => string): { table: Incarnations; badLines: number[] } {
  const table = new Incarnations();
  const badLines: number[] = [];
  for (const { line, fields } of journalRows(text)) {
    if (fields === null) {
      badLines.push(line);
      continue;
    }
    const [op, name, epochText, owner, modeText] = fields as [string, string, string, string, string];
    const epoch = fields.length === 5 ? parseEpoch(epochText) : null;
    if (epoch === null || nameProblem(name) !== null) {
      badLines.push(line);
    } else if (op === 'set' && ownerProblem(owner) === null && MODE_TEXT.test(modeText)) {
      table.put(name, { epoch, owner: intern(owner), mode: parseMode(modeText, DEFAULT_MODE) });
    } else if (op === 'drop' && owner === '' && modeText === '') {
      table.remove(name, epoch);
    } else {
      badLines.push(line);
    }
  }
  return { table, badLines };
}

/** The rows in force after replaying the file's lines, and the numbers of lines that cannot be read. */
export function replayAttributes(text: string): { rows: AttributeRow[]; badLines: number[] } {
  const { table, badLines } = replayInto(text, (owner) => owner);
  return { rows: [...table].map(([name, { epoch, owner, mode }]) => ({ name, epoch, owner, mode })), badLines };
}

interface Buffered {
  text: string;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class AttributeStore {
  private rows = 0;
  private sequence = 0;
  /**
   * Sets not yet durable, by `name\0epoch`: what `get` answers meanwhile, and the latest set's
   * number (only once that one is durable does the new value show).
   */
  private readonly unseen = new Map<string, { before: Incarnation | undefined; sequence: number }>();
  /** While a rewrite swaps files, rows wait here for the new log. */
  private buffered: Buffered[] | null = null;
  private compacting: Promise<void> | null = null;
  private failure: Error | null = null;
  private closed = false;

  private constructor(
    private readonly path: string,
    private log: AppendLog,
    private readonly table: Incarnations,
    private readonly owners: Map<string, string>,
    private readonly logger: Logger,
    private readonly onLogFailure: (err: Error) => void,
  ) {
    this.rows = table.size;
  }

  /**
   * Loads the attributes in `dir` and rewrites the file with the rows in force for the files that
   * `live()` lists (the file table's entries); rows for others are orphans and dropped. When
   * `live()` gives undefined (the caller cannot say), every row is kept.
   */
  static async open(
    dir: string,
    options: { log?: Logger; live: () => Iterable<readonly [string, number]> | undefined; onFailure?: (err: Error) => void },
  ): Promise<AttributeStore> {
    const logger = options.log ?? silentLogger;
    await mkdir(dir, { recursive: true });
    await removeTempFiles(dir);
    const path = join(dir, ATTRIBUTES_FILE);
    const owners = new Map<string, string>();
    const intern = (owner: string): string => {
      const known = owners.get(owner);
      if (known !== undefined) return known;
      owners.set(owner, owner);
      return owner;
    };
    const text = (await readIfExists(path))?.toString('utf8') ?? '';
    const { table: replayed, badLines } = replayInto(text, intern);
    if (badLines.length > 0) logger.error('file attributes: lines that cannot be read were skipped', { file: path, lines: badLines.slice(0, 20).join(','), count: badLines.length });

    let table = replayed;
    const live = options.live();
    if (live !== undefined) {
      table = new Incarnations();
      // Keyed by the table's own name strings, so that the two share them.
      for (const [name, epoch] of live) {
        const found = replayed.find(name, epoch);
        if (found) table.put(name, found);
      }
      const orphans = replayed.size - table.size;
      if (orphans > 0) logger.warn('file attributes: rows for files not in the table were dropped', { count: orphans });
    }
    await writeFileDurably(path, HEADER + formatSets([...table]));

    let store: AttributeStore | null = null;
    const onLogFailure = (err: Error): void => {
      if (store?.failure) return;
      if (store) store.failure = err;
      logger.error('cannot write the file attributes; refusing changes until restarted', { error: err.message });
      options.onFailure?.(err);
    };
    const log = await AppendLog.open(path, onLogFailure);
    store = new AttributeStore(path, log, table, owners, logger, onLogFailure);
    if (table.size > 0) logger.info('file attributes loaded', { files: table.size });
    return store;
  }

  /** How many files have a row. */
  get size(): number {
    return this.table.size;
  }

  /** The attributes of `name` in its incarnation `epoch`, or undefined if it has no row. */
  get(name: string, epoch: number): FileAttributes | undefined {
    if (this.unseen.size > 0) {
      const pending = this.unseen.get(key(name, epoch));
      if (pending) return pending.before;
    }
    return this.table.find(name, epoch);
  }

  /**
   * The attributes of `name` at `epoch`; a file with no row (from before owners existed) belongs
   * to `fallbackOwner` (the directory passes 'admin') with DEFAULT_MODE, rw-r--r--.
   */
  attributesOf(name: string, epoch: number, fallbackOwner: string): FileAttributes {
    return this.get(name, epoch) ?? { owner: fallbackOwner, mode: DEFAULT_MODE };
  }

  /** Records the owner and mode of `name` at `epoch`; resolves once durable (and only then seen). */
  async set(name: string, epoch: number, owner: string, mode: Mode): Promise<void> {
    const problem = nameProblem(name) ?? (Number.isSafeInteger(epoch) && epoch > 0 ? null : 'an epoch is a positive integer') ?? ownerProblem(owner) ?? modeProblem(mode);
    if (problem !== null) throw new DfsError('BAD_REQUEST', `cannot set the attributes of ${JSON.stringify(name)}: ${problem}`);
    if (this.failure) throw this.failure;
    const k = key(name, epoch);
    const sequence = ++this.sequence;
    const pending = this.unseen.get(k);
    if (pending) pending.sequence = sequence;
    else this.unseen.set(k, { before: this.table.find(name, epoch), sequence });
    // The table is what the file says once every row written is replayed; rewrites copy it.
    this.table.put(name, { epoch, owner: this.intern(owner), mode });
    this.rows++;
    const durable = this.write(formatSets([[name, { epoch, owner, mode }]]));
    this.maybeCompact();
    await durable;
    if (this.unseen.get(k)?.sequence === sequence) this.unseen.delete(k);
  }

  /**
   * Forgets `name` at `epoch`, or in every incarnation, at once and without waiting for the disk
   * (after a delete, or after a create that failed once its attributes were set).
   */
  drop(name: string, epoch?: number): void {
    const gone = this.table.remove(name, epoch);
    if (gone.length === 0) return;
    for (const { epoch: e } of gone) this.unseen.delete(key(name, e));
    if (this.failure) return;
    this.rows += gone.length;
    this.write(stringify(gone.map((i) => ['drop', name, i.epoch, '', '']))).catch(() => {}); // a failure is reported by onFailure
    this.maybeCompact();
  }

  /** Waits for a rewrite under way, writes what is queued, then closes the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.compacting;
    await this.log.close();
  }

  private intern(owner: string): string {
    const known = this.owners.get(owner);
    if (known !== undefined) return known;
    this.owners.set(owner, owner);
    return owner;
  }

  private write(text: string): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    const buffered = this.buffered;
    if (buffered) return new Promise<void>((resolve, reject) => buffered.push({ text, resolve, reject }));
    return this.log.append(text);
  }

  private maybeCompact(): void {
    if (this.compacting || this.closed || this.failure || this.rows <= Math.max(COMPACT_AFTER_ROWS, 4 * this.table.size)) return;
    this.compacting = this.compact()
      .catch((err: Error) => this.logger.error('could not rewrite the file attributes', { error: err.message }))
      .finally(() => (this.compacting = null));
  }

  /**
   * Writes the rows in force to a new file renamed over the old, then appends to that. Rows made
   * meanwhile wait and go to the new file; some are in the rewrite already, and written again
   * they change nothing (the last row of a (name, epoch) decides).
   */
  private async compact(): Promise<void> {
    const buffered: Buffered[] = (this.buffered = []);
    try {
      const old = this.log;
      await old.close();
      if (old.failed) return; // onFailure has fired; the buffered rows are rejected below
      try {
        await writeFileDurably(this.path, HEADER + formatSets([...this.table]));
        this.rows = this.table.size;
      } catch (err) {
        this.logger.error('could not rewrite the file attributes; the file keeps every change', { error: (err as Error).message });
      }
      try {
        this.log = await AppendLog.open(this.path, this.onLogFailure);
      } catch (err) {
        this.onLogFailure(err as Error);
      }
    } finally {
      this.buffered = null;
      const text = buffered.map((b) => b.text).join('');
      const durable = buffered.length === 0 ? Promise.resolve() : this.failure ? Promise.reject(this.failure) : this.log.append(text);
      durable.then(
        () => buffered.forEach((b) => b.resolve()),
        (err: Error) => buffered.forEach((b) => b.reject(err)),
      );
    }
  }
}

function key(name: string, epoch: number): string {
  return `${name}\u0000${epoch}`;
}

function formatSets(entries: ReadonlyArray<readonly [string, Incarnation]>): string {
  return entries.length === 0 ? '' : stringify(entries.map(([name, i]) => ['set', name, i.epoch, i.owner, formatMode(i.mode)]));
}

/** Temp files of rewrites that a crash interrupted (shared/durable.ts names them). */
async function removeTempFiles(dir: string): Promise<void> {
  const prefix = `.${ATTRIBUTES_FILE}.`;
  for (const entry of await readdir(dir)) {
    if (entry.startsWith(prefix) && entry.endsWith('.tmp')) await unlink(join(dir, entry)).catch(() => {});
  }
}
