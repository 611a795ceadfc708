/**
 * The lock holders on disk, so that a restart keeps the locks in use (see docs/PROTOCOL.md,
 * "Lock service"). In the data folder, beside `fencing.json`:
 * - `holders.json`: a snapshot of the state (sessions, holders), replaced whole and durably;
 * - `holders.journal`: one JSON record a line since that snapshot (holder-state.ts), with group
 *   commit: a grant resolves only once its record is fsynced, and the grants that arrive while
 *   one fsync runs share the next. Session, release and end records are appended without
 *   waiting; they reach the disk with the next fsync.
 *
 * Compaction (at start, at a clean stop, and when the journal holds more records than
 * max(10,000, twice the state)) writes a new snapshot and then empties the journal. A crash in
 * between replays the old journal over the new snapshot, which changes nothing (the records are
 * absolute facts and tokens only grow), so no step needs the other to be atomic with it.
 */
import { mkdir, open, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { AppendLog } from '../directory/append-log.js';
import { readIfExists, writeFileDurably } from '../../shared/durable.js';
import type { Logger } from '../../shared/log.js';
import { HolderState, formatRecord, parseJournal, parseSnapshot, type HolderEntry, type JournalRecord, type SessionEntry } from './holder-state.js';

export const SNAPSHOT_FILE = 'holders.json';
export const JOURNAL_FILE = 'holders.journal';
export const DEFAULT_COMPACT_AFTER = 10_000;

export interface HolderStoreOptions {
  log: Logger;
  /** Compact once the journal holds more than max(this, twice the state) records. */
  compactAfter?: number;
  /** A write or fsync of the journal failed: nothing more can be made durable. */
  onFailure?: (err: Error) => void;
}

export interface Restored {
  /** Sessions that held locks when the service last stopped or crashed. */
  sessions: SessionEntry[];
  holders: HolderEntry[];
}

export class HolderStore {
  private recordsSinceCompaction = 0;
  private compacting: Promise<void> | null = null;
  private readonly compactAfter: number;

  private constructor(
    private readonly dataDir: string,
    private readonly state: HolderState,
    private readonly journal: AppendLog,
    private readonly log: Logger,
    compactAfter: number,
  ) {
    this.compactAfter = compactAfter;
  }

  /** Loads the snapshot and the journal, compacts them, and opens the journal for appending. */
  static async open(dataDir: string, options: HolderStoreOptions): Promise<{ store: HolderStore; restored: Restored }> {
    await mkdir(dataDir, { recursive: true });
    await removeLeftoverTemps(dataDir);
    const snapshotPath = join(dataDir, SNAPSHOT_FILE);
    const journalPath = join(dataDir, JOURNAL_FILE);
    const snapshotText = (await readIfExists(snapshotPath))?.toString('utf8') ?? null;
    const loaded = snapshotText === null ? new HolderState() : HolderState.fromSnapshot(parseSnapshot(snapshotText, snapshotPath));
    const journalText = (await readIfExists(journalPath))?.toString('utf8') ?? '';
    const { records, damaged } = parseJournal(journalText);
    if (damaged.length > 0) options.log.warn('skipped damaged journal lines (a write cut short by a crash)', { path: journalPath, lines: damaged.slice(0, 10).join(',') });
    for (const record of records) loaded.apply(record);

    // Only sessions holding locks are worth keeping: the others have nothing to reclaim.
    const sessions = loaded.sessionsHolding();
    const kept = new Set(sessions.map((s) => s.id));
    const holders = [...loaded.holders.values()].filter((h) => kept.has(h.session));
    const state = HolderState.fromSnapshot({ format: 1, sessions, holders });

    await writeFileDurably(snapshotPath, JSON.stringify(state.snapshot()) + '\n');
    const truncate = await open(journalPath, 'w');
    await truncate.sync();
    await truncate.close();
    const journal = await AppendLog.open(journalPath, (err) => {
      options.log.error('cannot write the lock journal; no lock can be granted durably', { path: journalPath, error: err.message });
      options.onFailure?.(err);
    });
    const store = new HolderStore(dataDir, state, journal, options.log, options.compactAfter ?? DEFAULT_COMPACT_AFTER);
    return { store, restored: { sessions, holders } };
  }

  /** A session opened or changed its label. Not waited for. */
  session(entry: SessionEntry): void {
    this.appendLater({ t: 'session', ...entry });
  }

  /** Grants; resolves once they are durable (their client may be told only then). */
  grant(entries: readonly HolderEntry[]): Promise<void> {
    let text = '';
    for (const entry of entries) {
      const record: JournalRecord = { t: 'grant', ...entry };
      this.state.apply(record);
      text += formatRecord(record);
    }
    this.recordsSinceCompaction += entries.length;
    const durable = this.journal.append(text);
    this.compactIfDue();
    return durable;
  }

  /** Not waited for: a crash that loses it restores the lock to a holder that gives it back. */
  release(name: string, token: number): void {
    this.appendLater({ t: 'release', name, token });
  }

  end(session: string): void {
    this.appendLater({ t: 'end', session });
  }

  /** Compacts, so that the next start reads one snapshot, and closes the journal. */
  async close(): Promise<void> {
    try {
      await this.compact();
    } finally {
      await this.journal.close();
    }
  }

  private appendLater(record: JournalRecord): void {
    this.state.apply(record);
    this.recordsSinceCompaction++;
    // A failure is reported once, by the journal's onFailure.
    this.journal.append(formatRecord(record)).catch(() => {});
    this.compactIfDue();
  }

  private compactIfDue(): void {
    if (this.compacting || this.recordsSinceCompaction <= Math.max(this.compactAfter, 2 * this.state.size)) return;
    this.compact().catch((err: unknown) => this.log.error('lock journal compaction failed; will try again', { error: err instanceof Error ? err.message : String(err) }));
  }

  private compact(): Promise<void> {
    if (this.compacting) return this.compacting;
    this.compacting = this.journal
      .hold(async () => {
        // Everything appended so far is in the state, so in this snapshot; records appended
        // from here on wait, and go into the emptied journal after it.
        const snapshot = JSON.stringify(this.state.snapshot()) + '\n';
        const covered = this.recordsSinceCompaction;
        await writeFileDurably(join(this.dataDir, SNAPSHOT_FILE), snapshot);
        await this.journal.rewrite('');
        this.recordsSinceCompaction -= covered;
        this.log.debug('lock journal compacted', { holders: this.state.holders.size, sessions: this.state.sessions.size });
      })
      .finally(() => (this.compacting = null));
    return this.compacting;
  }
}

/** Temp files of a snapshot write a crash cut short (shared/durable.ts); the snapshot is intact. */
async function removeLeftoverTemps(dataDir: string): Promise<void> {
  const prefix = `.${SNAPSHOT_FILE}.`;
  const entries = await readdir(dataDir);
  await Promise.all(entries.filter((e) => e.startsWith(prefix) && e.endsWith('.tmp')).map((e) => unlink(join(dataDir, e)).catch(() => {})));
}
