/**
 * Who holds which lock, as the lock service keeps it on disk: the sessions (id, label, hash of
 * the secret) and, per name, the holder's session, token and grant time. Pure: records in, state
 * out; holder-store.ts does the disk.
 *
 * The journal is a list of records, each an absolute fact rather than a delta, so that replaying
 * records whose effect a snapshot already holds changes nothing (a crash between writing a new
 * snapshot and emptying the journal replays the old journal over the new snapshot):
 * - `session`: the session exists with this label and secret hash (again: the label changed).
 * - `grant`: `name` is held by `session` under `token`. Tokens only grow, so a grant whose token
 *   is not above the current holder's is older than what is known, and ignored.
 * - `release`: `name` is free, if it is still held under `token`.
 * - `end`: the session is over; every lock it held is free.
 */
import { z } from 'zod';
import { DfsError } from '../../shared/errors.js';
import { counter, fileName, lockSessionId } from '../../shared/protocol.js';

export interface SessionEntry {
  id: string;
  label: string;
  /** sha256 of the session's secret, hex; null for a session that never said hello. */
  secretHash: string | null;
}

export interface HolderEntry {
  name: string;
  session: string;
  token: number;
  since: number;
}

const sessionEntry = z.object({ id: lockSessionId, label: z.string().max(64), secretHash: z.string().regex(/^[0-9a-f]{64}$/).nullable() }).strict();
const holderEntry = z.object({ name: fileName, session: lockSessionId, token: counter, since: counter }).strict();

export const journalRecord = z.discriminatedUnion('t', [
  sessionEntry.extend({ t: z.literal('session') }),
  holderEntry.extend({ t: z.literal('grant') }),
  z.object({ t: z.literal('release'), name: fileName, token: counter }).strict(),
  z.object({ t: z.literal('end'), session: lockSessionId }).strict(),
]);
export type JournalRecord = z.infer<typeof journalRecord>;

export const SNAPSHOT_FORMAT = 1;
const snapshotSchema = z.object({ format: z.literal(SNAPSHOT_FORMAT), sessions: z.array(sessionEntry), holders: z.array(holderEntry) }).strict();
export type Snapshot = z.infer<typeof snapshotSchema>;

export class HolderState {
  readonly sessions = new Map<string, SessionEntry>();
  readonly holders = new Map<string, HolderEntry>();
  private readonly heldBy = new Map<string, Set<string>>();

  static fromSnapshot(snapshot: Snapshot): HolderState {
    const state = new HolderState();
    for (const session of snapshot.sessions) state.apply({ t: 'session', ...session });
    for (const holder of snapshot.holders) state.apply({ t: 'grant', ...holder });
    return state;
  }

  apply(record: JournalRecord): void {
    switch (record.t) {
      case 'session':
        this.sessions.set(record.id, { id: record.id, label: record.label, secretHash: record.secretHash });
        return;
      case 'grant': {
        const current = this.holders.get(record.name);
        if (current && current.token >= record.token) return;
        if (current) this.heldBy.get(current.session)?.delete(record.name);
        // A grant to a session the state does not know (its record was lost with a torn write):
        // kept, but with no secret nobody can reclaim it, so it lasts only the grace period.
        if (!this.sessions.has(record.session)) this.sessions.set(record.session, { id: record.session, label: '', secretHash: null });
        this.holders.set(record.name, { name: record.name, session: record.session, token: record.token, since: record.since });
        let names = this.heldBy.get(record.session);
        if (!names) this.heldBy.set(record.session, (names = new Set()));
        names.add(record.name);
        return;
      }
      case 'release': {
        const current = this.holders.get(record.name);
        if (!current || current.token !== record.token) return;
        this.holders.delete(record.name);
        this.heldBy.get(current.session)?.delete(record.name);
        return;
      }
      case 'end': {
        for (const name of this.heldBy.get(record.session) ?? []) this.holders.delete(name);
        this.heldBy.delete(record.session);
        this.sessions.delete(record.session);
        return;
      }
    }
  }

  /** The names a session holds. */
  heldNames(session: string): ReadonlySet<string> {
    return this.heldBy.get(session) ?? new Set();
  }

  /** Sessions that hold at least one lock: the ones a restart has anything to keep for. */
  sessionsHolding(): SessionEntry[] {
    return [...this.sessions.values()].filter((s) => (this.heldBy.get(s.id)?.size ?? 0) > 0);
  }

  /** Every live session (also those holding nothing: a later grant in the journal may name it). */
  snapshot(): Snapshot {
    return { format: SNAPSHOT_FORMAT, sessions: [...this.sessions.values()], holders: [...this.holders.values()] };
  }

  /** How many records a snapshot of this state holds: the yardstick for compaction. */
  get size(): number {
    return this.sessions.size + this.holders.size;
  }
}

/** One JSON line per record. */
export function formatRecord(record: JournalRecord): string {
  return JSON.stringify(record) + '\n';
}

export interface ParsedJournal {
  records: JournalRecord[];
  /** 1-based line numbers of lines that are not a valid record (a torn last write leaves one). */
  damaged: number[];
}

export function parseJournal(text: string): ParsedJournal {
  const records: JournalRecord[] = [];
  const damaged: number[] = [];
  const lines = text.split('\n');
  lines.forEach((line, index) => {
    if (line.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      damaged.push(index + 1);
      return;
    }
    const parsed = journalRecord.safeParse(value);
    if (parsed.success) records.push(parsed.data);
    else damaged.push(index + 1);
  });
  return { records, damaged };
}

/**
 * A snapshot is replaced whole (temp file, fsync, rename), so a bad one is damage, not a crash:
 * refuse to start rather than hand out locks that may be held.
 */
export function parseSnapshot(text: string, path: string): Snapshot {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new DfsError('INTERNAL', `${path} is not valid JSON; refusing to start, since locks it records may still be held. Restore it, or delete it to start with no locks held`);
  }
  const parsed = snapshotSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new DfsError('INTERNAL', `${path} is not a lock snapshot (${issue ? `${issue.path.join('.') || 'top level'}: ${issue.message}` : 'bad shape'}); refusing to start`);
  }
  return parsed.data;
}
