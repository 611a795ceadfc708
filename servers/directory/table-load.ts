/**
 * Loading the file table: joins the rows of the snapshot and the journal (table-format.ts) into
 * files. Pure: lines in, files and the rows set aside out; FileTable does the reading, the
 * logging and the writing.
 *
 * The directory never refuses to start over a row of its own table. It loads what it can and
 * sets the rest aside, whole rows, verbatim, to be written to the rejected file:
 *
 * - a line that is not valid CSV or UTF-8, has the wrong number of values, or has a bad name,
 *   server id, URL, role, epoch or placement epoch;
 * - a row of an older epoch than the file's newest: the newest rows are kept (the previous
 *   version stored different names with lone surrogates alike, as U+FFFD, and so left one name
 *   with rows of two epochs); likewise, among those, a snapshot row of an older placement epoch
 *   than the file's newest (a snapshot holds one placement per file);
 * - a second row of a file on the same server, and a second primary row; the first is kept;
 * - every row of a file left without a primary row;
 * - every row of a file the journal creates again, at a newer epoch, without removing it first
 *   (the same collapse of two names, with one of them still in the journal).
 *
 * Journal rows a crash can leave (the last line, without its newline; a garbled line; the replica
 * rows of a create, or of a placement change, whose primary row never landed) are marked
 * unacknowledged: they are set aside as well, but they are expected after kill -9 and were never
 * promised to anyone.
 *
 * Placement epochs (pe) make replay safe once a file's placement can change: an `add` row at the
 * file's current pe means what it always did (a create's rows, a URL rewrite); rows at a higher
 * pe gather into a pending placement that replaces the file's when its primary row (written
 * last) arrives, so the copies left out are no longer the file's; rows at a lower pe are history
 * the table has moved past, ignored. Without the pe, replaying a create's rows after a change
 * would bring its old primary back.
 *
 * Epochs: the highest epoch issued counts every epoch that can be read in any row, loaded or set
 * aside, removals included, and the epoch mark; so no epoch is issued twice.
 */
import { JOURNAL_FILE, SNAPSHOT_FILE, parseJournal, parseSnapshot, type JournalEntry, type RejectedRow, type SnapshotRow, type TableLine, type TableNote } from './table-format.js';

export interface LoadedEntry {
  epoch: number;
  placementEpoch: number;
  primary: string;
  replicas: string[];
}

export interface TableFiles {
  snapshot: readonly TableLine[];
  journal: readonly TableLine[];
  /** The value of file_table.epoch; 0 when there is none. */
  epochMark: number;
}

export interface LoadedTable {
  files: Map<string, LoadedEntry>;
  /** The URL the loaded rows give for each server id (the last one wins). */
  urls: Map<string, string>;
  lastEpoch: number;
  /** In the order of the files on disk: the snapshot's lines, then the journal's. */
  rejected: RejectedRow[];
  notes: TableNote[];
  journalRecords: number;
}

interface Draft {
  epoch: number | null;
  placementEpoch: number;
  primary: string | null;
  replicas: string[];
  /** Made from snapshot rows (a file that was acknowledged), not only from journal rows. */
  fromSnapshot: boolean;
  /** A placement change replayed so far without its primary row. */
  pending: Pending | null;
}

interface Pending {
  placementEpoch: number;
  replicas: string[];
  records: JournalEntry[];
}

/** What replay reports: a file set aside whole, and the rows of a placement change cut short. */
interface ReplayOutcomes {
  setAsideFile(name: string, draft: Draft, problem: string, unacknowledged: boolean): void;
  cutShort(name: string, draft: Draft, pending: Pending): void;
}

/** A file whose rows are all set aside, found during the load and gathered at its end. */
interface SetAsideFile {
  name: string;
  epoch: number | null;
  fromSnapshot: boolean;
  problem: string;
  unacknowledged: boolean;
}

export function loadTable(files: TableFiles): LoadedTable {
  const snapshot = parseSnapshot(files.snapshot);
  const journal = parseJournal(files.journal);
  const notes = [...snapshot.notes];
  const rejected = [...snapshot.rejected, ...journal.rejected];
  const urls = new Map<string, string>();
  const setAside = new Map<string, SetAsideFile>();
  /** Journal lines already set aside as part of a placement change cut short. */
  const cutShortLines = new Set<number>();
  const outcomes: ReplayOutcomes = {
    setAsideFile(name, draft, problem, unacknowledged) {
      setAside.set(fileKey(name, draft.epoch), { name, epoch: draft.epoch, fromSnapshot: draft.fromSnapshot, problem, unacknowledged });
    },
    cutShort(name, draft, pending) {
      const problem = `${name}: a change of placement (to placement epoch ${pending.placementEpoch}) without its primary row, cut short by a crash (never acknowledged); the placement before it (placement epoch ${draft.placementEpoch}) stands`;
      for (const record of pending.records) {
        cutShortLines.add(record.line);
        rejected.push({ file: JOURNAL_FILE, line: record.line, row: files.journal[record.line - 1]!, problem, epoch: record.epoch, unacknowledged: true });
      }
    },
  };

  const { drafts, accepted } = draftsFromSnapshot(snapshot.rows, files.snapshot, urls, rejected, notes);
  for (const record of journal.records) replay(drafts, urls, record, outcomes);
  for (const [name, draft] of drafts) {
    if (draft.pending) outcomes.cutShort(name, draft, draft.pending);
    draft.pending = null;
  }
  for (const [name, draft] of drafts) {
    if (draft.primary !== null) continue;
    drafts.delete(name);
    if (draft.fromSnapshot) outcomes.setAsideFile(name, draft, `${name} has no primary row; all its rows are set aside (mark one of its copies primary to restore it)`, false);
    else outcomes.setAsideFile(name, draft, `${name} has no primary row: a create cut short by a crash (never acknowledged)`, true);
  }
  if (setAside.size > 0) gatherRows(setAside, accepted, files.snapshot, journal.records, files.journal, cutShortLines, rejected);

  let highest = files.epochMark;
  const count = (epoch: number | null) => {
    if (epoch !== null && epoch > highest) highest = epoch;
  };
  for (const row of snapshot.rows) count(row.epoch);
  for (const record of journal.records) count(record.epoch);
  for (const row of rejected) count(row.epoch);

  const loaded = new Map<string, LoadedEntry>();
  const withoutEpoch: string[] = [];
  for (const [name, draft] of drafts) {
    if (draft.epoch === null) withoutEpoch.push(name);
    else loaded.set(name, { epoch: draft.epoch, placementEpoch: draft.placementEpoch, primary: draft.primary!, replicas: draft.replicas });
  }
  for (const name of withoutEpoch.sort()) {
    const draft = drafts.get(name)!;
    const epoch = ++highest;
    loaded.set(name, { epoch, placementEpoch: draft.placementEpoch, primary: draft.primary!, replicas: draft.replicas });
    notes.push({ level: 'info', message: 'gave a hand-added file a fresh epoch', fields: { name, epoch } });
  }
  rejected.sort((a, b) => (a.file === b.file ? a.line - b.line : a.file === SNAPSHOT_FILE ? -1 : 1));
  return { files: loaded, urls, lastEpoch: highest, rejected, notes, journalRecords: journal.records.length };
}

function fileKey(name: string, epoch: number | null): string {
  return `${epoch ?? ''}/${name}`;
}

/** Builds files from snapshot rows; `accepted` lists the rows that went into them. */
function draftsFromSnapshot(
  rows: readonly SnapshotRow[],
  lines: readonly TableLine[],
  urls: Map<string, string>,
  rejected: RejectedRow[],
  notes: TableNote[],
): { drafts: Map<string, Draft>; accepted: SnapshotRow[] } {
  const newest = new Map<string, number>();
  for (const row of rows) if (row.epoch !== null && row.epoch > (newest.get(row.name) ?? 0)) newest.set(row.name, row.epoch);
  // Among the rows of that epoch (blank ones join it), the newest placement.
  const newestPlacement = new Map<string, number>();
  for (const row of rows) {
    if (row.epoch !== null && row.epoch !== newest.get(row.name)) continue;
    if (row.placementEpoch > (newestPlacement.get(row.name) ?? 0)) newestPlacement.set(row.name, row.placementEpoch);
  }
  const drafts = new Map<string, Draft>();
  const accepted: SnapshotRow[] = [];
  const urlConflicts = new Set<string>();
  for (const row of rows) {
    const reject = (problem: string) => rejected.push({ file: SNAPSHOT_FILE, line: row.line, row: lines[row.line - 1]!, problem, epoch: row.epoch, unacknowledged: false });
    const epoch = newest.get(row.name) ?? null;
    if (row.epoch !== null && row.epoch !== epoch) {
      reject(`${row.name} has rows with epochs ${row.epoch} and ${epoch}; the rows of epoch ${epoch}, the newest, are kept`);
      continue;
    }
    const placementEpoch = newestPlacement.get(row.name)!;
    if (row.placementEpoch !== placementEpoch) {
      reject(`${row.name} has rows with placement epochs ${row.placementEpoch} and ${placementEpoch}; the rows of placement epoch ${placementEpoch}, the newest, are kept`);
      continue;
    }
    let draft = drafts.get(row.name);
    if (!draft) drafts.set(row.name, (draft = { epoch, placementEpoch, primary: null, replicas: [], fromSnapshot: true, pending: null }));
    if (draft.primary === row.serverId || draft.replicas.includes(row.serverId)) {
      reject(`${row.name} is listed twice on server ${row.serverId}; the first row is kept`);
      continue;
    }
    if (row.role === 'primary') {
      if (draft.primary !== null) {
        reject(`${row.name} has a second primary row (the first names ${draft.primary}); a file has one primary`);
        continue;
      }
      draft.primary = row.serverId;
    } else {
      draft.replicas.push(row.serverId);
    }
    accepted.push(row);
    const known = urls.get(row.serverId);
    if (known !== undefined && known !== row.serverUrl && !urlConflicts.has(row.serverId)) {
      urlConflicts.add(row.serverId);
      notes.push({ level: 'warn', message: 'server has rows with different URLs; using the last one', fields: { file: SNAPSHOT_FILE, server: row.serverId, urls: [known, row.serverUrl] } });
    }
    urls.set(row.serverId, row.serverUrl);
  }
  return { drafts, accepted };
}

/**
 * Applies one journal record; applying any suffix of the journal twice changes nothing. A file
 * is only ever created again after a remove, so an `add` of a newer epoch over a live file means
 * two files were stored under one name: the older one is set aside.
 */
function replay(drafts: Map<string, Draft>, urls: Map<string, string>, record: JournalEntry, outcomes: ReplayOutcomes): void {
  const draft = drafts.get(record.name);
  const epoch = draft?.epoch ?? 0;
  if (record.op === 'remove') {
    if (draft && epoch <= record.epoch) {
      if (draft.pending) outcomes.cutShort(record.name, draft, draft.pending);
      drafts.delete(record.name);
    }
    return;
  }
  urls.set(record.serverId, record.serverUrl);
  if (epoch > record.epoch) return;
  let target = draft;
  if (!target || epoch < record.epoch) {
    // The older file's rows are all set aside, those of its pending placement with them.
    if (target) outcomes.setAsideFile(record.name, target, `${record.name} was created again (epoch ${record.epoch}) without being removed (epoch ${target.epoch ?? 'blank'}): two files under one name; the newest is kept`, false);
    drafts.set(record.name, (target = { epoch: record.epoch, placementEpoch: record.placementEpoch, primary: null, replicas: [], fromSnapshot: false, pending: null }));
  }
  if (record.placementEpoch < target.placementEpoch) return;
  if (record.placementEpoch > target.placementEpoch) {
    replayPlacementChange(record.name, target, record, outcomes);
    return;
  }
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

/**
 * A row of a newer placement: gathered until the primary row, written last, completes the
 * placement, which then replaces the file's whole. A pending placement that rows of another
 * placement epoch interrupt never got its primary row: it was cut short.
 */
function replayPlacementChange(name: string, draft: Draft, record: JournalEntry & { op: 'add' }, outcomes: ReplayOutcomes): void {
  let pending = draft.pending;
  if (pending && pending.placementEpoch !== record.placementEpoch) {
    outcomes.cutShort(name, draft, pending);
    pending = null;
  }
  pending ??= { placementEpoch: record.placementEpoch, replicas: [], records: [] };
  draft.pending = pending;
  pending.records.push(record);
  const id = record.serverId;
  if (record.role === 'replica') {
    if (!pending.replicas.includes(id)) pending.replicas.push(id);
    return;
  }
  draft.primary = id;
  draft.replicas = pending.replicas.filter((r) => r !== id);
  draft.placementEpoch = pending.placementEpoch;
  draft.pending = null;
}

/** Adds every row of the files set aside to `rejected`: their snapshot rows and their journal `add` rows. */
function gatherRows(
  files: ReadonlyMap<string, SetAsideFile>,
  accepted: readonly SnapshotRow[],
  snapshotLines: readonly TableLine[],
  records: readonly JournalEntry[],
  journalLines: readonly TableLine[],
  alreadySetAside: ReadonlySet<number>,
  rejected: RejectedRow[],
): void {
  // A name has at most one draft made from the snapshot: all its accepted rows belong to it.
  const fromSnapshot = new Map<string, SetAsideFile>();
  for (const file of files.values()) if (file.fromSnapshot) fromSnapshot.set(file.name, file);
  for (const row of accepted) {
    const file = fromSnapshot.get(row.name);
    if (file) rejected.push({ file: SNAPSHOT_FILE, line: row.line, row: snapshotLines[row.line - 1]!, problem: file.problem, epoch: row.epoch, unacknowledged: file.unacknowledged });
  }
  for (const record of records) {
    const file = record.op === 'add' && !alreadySetAside.has(record.line) ? files.get(fileKey(record.name, record.epoch)) : undefined;
    if (file) rejected.push({ file: JOURNAL_FILE, line: record.line, row: journalLines[record.line - 1]!, problem: file.problem, epoch: record.epoch, unacknowledged: file.unacknowledged });
  }
}
