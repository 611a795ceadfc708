/**
 * The table loader's rules (table-load.ts, table-format.ts), as pure functions on lines: what
 * loads, what is set aside and why, which epochs count, and how placement epochs replay.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { parse } from 'csv-parse/sync';
import {
  JOURNAL_FILE,
  REJECTED_HEADER,
  SNAPSHOT_FILE,
  SNAPSHOT_HEADER as CURRENT_SNAPSHOT_HEADER,
  formatCopyRows,
  formatRejected,
  linesOf,
  tableLines,
  type CopyRow,
  type RejectedRow,
} from '../servers/directory/table-format.js';
import { loadTable, type LoadedTable } from '../servers/directory/table-load.js';

const test = suite('table-load');

// The previous version's headers, which most tests here use: they still load, at placement epoch 1.
const SNAPSHOT_HEADER = 'name,server_id,server_url,role,epoch';
const JOURNAL_HEADER = 'op,name,server_id,server_url,role,epoch';
const SNAPSHOT_HEADER_PE = 'name,server_id,server_url,role,epoch,placement_epoch';
const JOURNAL_HEADER_PE = 'op,name,server_id,server_url,role,epoch,placement_epoch';

function load(snapshot: string[], journal: string[] = [], epochMark = 0): LoadedTable {
  const text = (lines: string[]) => (lines.length === 0 ? '' : lines.join('\n') + '\n');
  return loadTable({ snapshot: linesOf(text(snapshot)), journal: linesOf(text(journal)), epochMark });
}

function files(table: LoadedTable): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, e] of [...table.files].sort(([a], [b]) => (a < b ? -1 : 1))) {
    // `epoch:primary>replicas`, with `@placement epoch` after the epoch when it is not 1.
    out[name] = `${e.epoch}${e.placementEpoch === 1 ? '' : `@${e.placementEpoch}`}:${e.primary}>${e.replicas.join(',')}`;
  }
  return out;
}

/** The snapshot a compaction would write of a loaded table, as lines. */
function snapshotOf(table: LoadedTable): string[] {
  const rows: CopyRow[] = [];
  for (const [name, e] of table.files) {
    const row = (serverId: string, role: CopyRow['role']): CopyRow => ({ name, serverId, serverUrl: table.urls.get(serverId)!, role, epoch: e.epoch, placementEpoch: e.placementEpoch });
    rows.push(row(e.primary, 'primary'), ...e.replicas.map((id) => row(id, 'replica')));
  }
  return linesOf(CURRENT_SNAPSHOT_HEADER + formatCopyRows(rows)).filter((line) => line !== '') as string[];
}

/** Where each row set aside was: `file:line`, and whether a crash explains it. */
function setAside(table: LoadedTable): string[] {
  return table.rejected.map((r) => `${r.file === SNAPSHOT_FILE ? 'snapshot' : 'journal'}:${r.line}${r.unacknowledged ? ' (crash)' : ''}`);
}

test('two names stored alike as U+FFFD: the newest epoch is kept, the older rows are set aside', () => {
  const table = load([
    SNAPSHOT_HEADER,
    'keep.txt,fs3,ws://h:3,primary,3',
    'x\ufffd,fs1,ws://h:1,primary,1',
    'x\ufffd,fs2,ws://h:2,replica,1',
    'x\ufffd,fs2,ws://h:2,primary,2',
    'x\ufffd,fs1,ws://h:1,replica,2',
  ]);
  assert.equal(files(table), { 'keep.txt': '3:fs3>', 'x\ufffd': '2:fs2>fs1' });
  assert.equal(setAside(table), ['snapshot:3', 'snapshot:4']);
  assert.match(table.rejected[0]!.problem, /x\ufffd has rows with epochs 1 and 2; the rows of epoch 2, the newest, are kept/);
  assert.is(table.rejected[0]!.row, 'x\ufffd,fs1,ws://h:1,primary,1');
  assert.is(table.lastEpoch, 3);
});

test('the same collapse with the second name still in the journal: the snapshot file is set aside', () => {
  const table = load(
    [SNAPSHOT_HEADER, 'x\ufffd,fs1,ws://h:1,primary,1', 'x\ufffd,fs2,ws://h:2,replica,1'],
    [JOURNAL_HEADER, 'add,x\ufffd,fs1,ws://h:1,replica,2', 'add,x\ufffd,fs2,ws://h:2,primary,2'],
  );
  assert.equal(files(table), { 'x\ufffd': '2:fs2>fs1' });
  assert.equal(setAside(table), ['snapshot:2', 'snapshot:3']);
  assert.match(table.rejected[0]!.problem, /created again \(epoch 2\) without being removed \(epoch 1\)/);
});

test('a journal that removes and re-creates a name sets nothing aside, replayed once or twice', () => {
  const journal = [
    JOURNAL_HEADER,
    'add,a,fs2,ws://h:2,replica,1',
    'add,a,fs1,ws://h:1,primary,1',
    'remove,a,,,,1',
    'add,a,fs1,ws://h:1,replica,2',
    'add,a,fs2,ws://h:2,primary,2',
  ];
  const once = load([SNAPSHOT_HEADER, 'a,fs1,ws://h:1,primary,1', 'a,fs2,ws://h:2,replica,1'], journal);
  assert.equal(files(once), { a: '2:fs2>fs1' });
  assert.equal(once.rejected, []);
  // The snapshot already holds the journal's changes, and the journal is there twice.
  const twice = load([SNAPSHOT_HEADER, 'a,fs2,ws://h:2,primary,2', 'a,fs1,ws://h:1,replica,2'], [...journal, ...journal.slice(1)]);
  assert.equal(files(twice), { a: '2:fs2>fs1' });
  assert.equal(twice.rejected, []);
});

test('a second copy on one server and a second primary are set aside; the first row is kept', () => {
  const table = load([
    SNAPSHOT_HEADER,
    'a,fs1,ws://h:1,primary,1',
    'a,fs1,ws://h:1,replica,1',
    'a,fs2,ws://h:2,primary,1',
    'a,fs3,ws://h:3,replica,1',
  ]);
  assert.equal(files(table), { a: '1:fs1>fs3' });
  assert.equal(setAside(table), ['snapshot:3', 'snapshot:4']);
  assert.match(table.rejected[0]!.problem, /a is listed twice on server fs1/);
  assert.match(table.rejected[1]!.problem, /a has a second primary row \(the first names fs1\)/);
});

test('a file without a primary is set aside whole, blank-epoch rows included', () => {
  const table = load([SNAPSHOT_HEADER, 'a,fs1,ws://h:1,replica,4', 'b,fs1,ws://h:1,primary,1', 'a,fs2,ws://h:2,replica,']);
  assert.equal(files(table), { b: '1:fs1>' });
  assert.equal(setAside(table), ['snapshot:2', 'snapshot:4']);
  assert.ok(table.rejected.every((r) => /a has no primary row; all its rows are set aside/.test(r.problem)));
  assert.is(table.lastEpoch, 4);
});

test('a journal row that leaves an acknowledged file without a primary sets aside all its rows, as a mistake', () => {
  const table = load([SNAPSHOT_HEADER, 'a,fs1,ws://h:1,primary,5', 'a,fs2,ws://h:2,replica,5'], [JOURNAL_HEADER, 'add,a,fs1,ws://h:1,replica,5']);
  assert.equal(files(table), {});
  assert.equal(setAside(table), ['snapshot:2', 'snapshot:3', 'journal:2']);
});

test('a create cut short by a crash is set aside as unacknowledged', () => {
  const table = load([SNAPSHOT_HEADER], [JOURNAL_HEADER, 'add,new,fs2,ws://h:2,replica,7', 'add,new,fs3,ws://h:3,replica,7']);
  assert.equal(files(table), {});
  assert.equal(setAside(table), ['journal:2 (crash)', 'journal:3 (crash)']);
  assert.is(table.lastEpoch, 7);
});

test('journal damage: shape damage is a crash, a well-shaped row with a wrong value is a mistake', () => {
  const table = loadTable({
    snapshot: [],
    journal: linesOf(`${JOURNAL_HEADER}\n\0\0\0\nadd,a,fs1,ws://h:1,boss,8\nadd,"a,fs1\nadd,b,fs1,ws://h:1,primary,2\nadd,c,fs1,ws://h:1,primary,9`),
    epochMark: 0,
  });
  assert.equal(files(table), { b: '2:fs1>' });
  assert.equal(setAside(table), ['journal:2 (crash)', 'journal:3', 'journal:4 (crash)', 'journal:6 (crash)']);
  assert.match(table.rejected[3]!.problem, /incomplete last line/);
  // The epochs of a wrong row and of the torn last line still count.
  assert.is(table.lastEpoch, 9);
});

test('bad values are set aside line by line; an unbalanced quote does not swallow the lines after it', () => {
  const table = load([
    SNAPSHOT_HEADER,
    '"broken,fs1,ws://h:1,primary,5',
    'bad id,fs 1,ws://h:1,primary,1',
    'bad url,fs1,http://h:1,primary,1',
    'bad epoch,fs1,ws://h:1,primary,0',
    'bad role,fs1,ws://h:1,boss,50',
    'a\ud800b,fs1,ws://h:1,primary,1',
    'fine,fs1,ws://h:1,primary,2',
  ]);
  assert.equal(files(table), { fine: '2:fs1>' });
  assert.equal(setAside(table), [2, 3, 4, 5, 6, 7].map((line) => `snapshot:${line}`));
  assert.equal(
    table.rejected.map((r) => r.problem.split(/[:(]/)[0]!.trim()),
    ['not valid CSV', 'bad server_id "fs 1"', 'bad server_url "http', 'epoch must be from 1 to 9007199254740991, not 0', 'role must be "primary" or "replica", not "boss"', 'bad file name "a\\ud800b"'],
  );
  // Epoch 50 was only in a row set aside: it still counts, so it is never issued again.
  assert.is(table.lastEpoch, 50);
});

test('a header that does not name the columns: rows are read in the standard order, and it says so', () => {
  const headerless = load(['a,fs1,ws://h:1,primary,1', 'a,fs2,ws://h:2,replica,1']);
  assert.equal(files(headerless), { a: '1:fs1>fs2' });
  assert.equal(headerless.rejected, []);
  assert.is(headerless.notes[0]!.level, 'error');
  assert.match(headerless.notes[0]!.message, /the header does not name the columns name,server_id,server_url,role,epoch/);
  const misspelt = load(['name,server,server_url,role,epoch', 'a,fs1,ws://h:1,primary,1']);
  assert.equal(files(misspelt), { a: '1:fs1>' });
  assert.equal(setAside(misspelt), ['snapshot:1']);
  assert.match(misspelt.rejected[0]!.problem, /^not a header \(unknown column "server"\), nor a valid row/);
});

test('blank epochs join the file, or get fresh epochs above every epoch seen, in name order', () => {
  const table = load(
    [SNAPSHOT_HEADER, 'z,fs1,ws://h:1,primary,', 'a,fs1,ws://h:1,primary,', 'm,fs1,ws://h:1,primary,3', 'm,fs2,ws://h:2,replica,', 'bad,fs1,ws://h:1,boss,10'],
    [JOURNAL_HEADER, 'remove,gone,,,,12'],
    11,
  );
  assert.equal(files(table), { a: '13:fs1>', m: '3:fs1>fs2', z: '14:fs1>' });
  assert.is(table.lastEpoch, 14);
  assert.equal(table.notes.map((n) => n.fields.name), ['a', 'z']);
});

// ------------------------------------------------------------------ placement epochs

/**
 * Two files' history, one journal append (one change) a group: a created on fs1 (fs2, fs3), moved
 * twice, a server's URL rewritten; b created, moved, removed and created again.
 */
const CHANGES = [
  ['add,a,fs2,ws://h:2,replica,1,1', 'add,a,fs3,ws://h:3,replica,1,1', 'add,a,fs1,ws://h:1,primary,1,1'],
  ['add,b,fs1,ws://h:1,primary,2,1'],
  // Failover: fs2 takes over, fs4 replaces fs1.
  ['add,a,fs3,ws://h:3,replica,1,2', 'add,a,fs4,ws://h:4,replica,1,2', 'add,a,fs2,ws://h:2,primary,1,2'],
  ['add,a,fs4,ws://h:44,replica,1,2'],
  // Back to fs3 as primary, down to one replica; and b moves within the same append.
  ['add,a,fs2,ws://h:2,replica,1,3', 'add,a,fs3,ws://h:3,primary,1,3', 'add,b,fs3,ws://h:3,replica,2,2', 'add,b,fs1,ws://h:1,primary,2,2'],
  ['remove,b,,,,2,'],
  ['add,b,fs2,ws://h:2,primary,3,1'],
];
const HISTORY = [JOURNAL_HEADER_PE, ...CHANGES.flat()];
const FINAL = { a: '1@3:fs3>fs2', b: '3:fs2>' };

test('a change of placement replaces the file’s copies whole: those left out are no longer its, and nothing is set aside', () => {
  const table = load([SNAPSHOT_HEADER_PE], HISTORY);
  assert.equal(files(table), FINAL);
  assert.equal(table.rejected, []);
  assert.is(table.urls.get('fs4'), 'ws://h:44');
  assert.is(table.lastEpoch, 3);
});

test('replaying any suffix of the journal over any later snapshot, once or twice, changes nothing', () => {
  // A compaction keeps the journal from an append on, and writes a snapshot of the table as it is
  // then: with those changes or more (a change is in memory before its append is durable).
  for (let k = 0; k <= CHANGES.length; k++) {
    const snapshot = snapshotOf(load([SNAPSHOT_HEADER_PE], [JOURNAL_HEADER_PE, ...CHANGES.slice(0, k).flat()]));
    for (let j = 0; j <= k; j++) {
      const suffix = CHANGES.slice(j).flat();
      for (const journal of [[JOURNAL_HEADER_PE, ...suffix], [JOURNAL_HEADER_PE, ...suffix, ...suffix]]) {
        const table = load(snapshot, journal);
        const what = `snapshot after ${k} rows, journal from row ${j}, ${journal.length === suffix.length + 1 ? 'once' : 'twice'}`;
        assert.equal(files(table), FINAL, what);
        assert.equal(table.rejected, [], what);
      }
    }
  }
});

test('journal rows of a lower placement epoch than the snapshot’s are history: ignored', () => {
  const table = load(
    [SNAPSHOT_HEADER_PE, 'a,fs3,ws://h:3,primary,1,3', 'a,fs2,ws://h:2,replica,1,3'],
    [JOURNAL_HEADER_PE, 'add,a,fs1,ws://h:1,primary,1,1', 'add,a,fs2,ws://h:2,primary,1,2', 'add,a,fs4,ws://h:4,replica,1,2'],
  );
  assert.equal(files(table), { a: '1@3:fs3>fs2' });
  assert.equal(table.rejected, []);
});

test('a change of placement cut short by a crash (no primary row): the old placement stays, its rows are set aside as unacknowledged', () => {
  const snapshot = [SNAPSHOT_HEADER_PE, 'a,fs1,ws://h:1,primary,1,1', 'a,fs2,ws://h:2,replica,1,1'];
  const table = load(snapshot, [JOURNAL_HEADER_PE, 'add,a,fs2,ws://h:2,replica,1,2', 'add,a,fs3,ws://h:3,replica,1,2', 'add,b,fs1,ws://h:1,primary,2,1']);
  assert.equal(files(table), { a: '1:fs1>fs2', b: '2:fs1>' });
  assert.equal(setAside(table), ['journal:2 (crash)', 'journal:3 (crash)']);
  assert.match(table.rejected[0]!.problem, /^a: a change of placement \(to placement epoch 2\) without its primary row, cut short by a crash/);
  assert.is(table.rejected[1]!.row, 'add,a,fs3,ws://h:3,replica,1,2');
  // The same with the primary row torn: that line is the incomplete last one.
  const torn = loadTable({
    snapshot: linesOf(snapshot.join('\n') + '\n'),
    journal: linesOf(`${JOURNAL_HEADER_PE}\nadd,a,fs3,ws://h:3,replica,1,2\nadd,a,fs2,ws://h:2,pri`),
    epochMark: 0,
  });
  assert.equal(files(torn), { a: '1:fs1>fs2' });
  assert.equal(setAside(torn), ['journal:2 (crash)', 'journal:3 (crash)']);
  assert.match(torn.rejected[1]!.problem, /incomplete last line/);
});

test('a pending change of placement interrupted by another placement epoch was cut short; the later one applies', () => {
  const table = load(
    [SNAPSHOT_HEADER_PE, 'a,fs1,ws://h:1,primary,1,1'],
    [JOURNAL_HEADER_PE, 'add,a,fs2,ws://h:2,replica,1,2', 'add,a,fs3,ws://h:3,replica,1,3', 'add,a,fs2,ws://h:2,primary,1,3'],
  );
  assert.equal(files(table), { a: '1@3:fs2>fs3' });
  assert.equal(setAside(table), ['journal:2 (crash)']);
  // Interrupted by the file's removal: the same.
  const removed = load([SNAPSHOT_HEADER_PE, 'a,fs1,ws://h:1,primary,1,1'], [JOURNAL_HEADER_PE, 'add,a,fs2,ws://h:2,replica,1,2', 'remove,a,,,,1,']);
  assert.equal(files(removed), {});
  assert.equal(setAside(removed), ['journal:2 (crash)']);
});

test('snapshot rows of one file with different placement epochs: the highest is kept, the others set aside', () => {
  const table = load([
    SNAPSHOT_HEADER_PE,
    'a,fs1,ws://h:1,primary,4,1',
    'a,fs2,ws://h:2,replica,4,1',
    'a,fs2,ws://h:2,primary,4,2',
    'a,fs3,ws://h:3,replica,4,2',
    'a,fs4,ws://h:4,replica,4,',
    'a,fs1,ws://h:1,replica,3,9',
  ]);
  assert.equal(files(table), { a: '4@2:fs2>fs3' });
  assert.equal(setAside(table), ['snapshot:2', 'snapshot:3', 'snapshot:6', 'snapshot:7']);
  assert.match(table.rejected[0]!.problem, /a has rows with placement epochs 1 and 2; the rows of placement epoch 2, the newest, are kept/);
  assert.match(table.rejected[2]!.problem, /a has rows with placement epochs 1 and 2/, 'a blank placement epoch is 1');
  assert.match(table.rejected[3]!.problem, /a has rows with epochs 3 and 4/, 'the epoch is compared first');
});

test('snapshot headers: the previous version’s five columns (placement epoch 1), six in any order, or none (5 or 6 values a line)', () => {
  const old = load([SNAPSHOT_HEADER, 'a,fs1,ws://h:1,primary,1', 'a,fs2,ws://h:2,replica,1,2']);
  assert.equal(files(old), { a: '1:fs1>' });
  assert.match(old.rejected[0]!.problem, /^expected 5 values, found 6$/);
  const reordered = load(['placement_epoch,role,name,epoch,server_id,server_url', '3,primary,a,1,fs1,ws://h:1', ',replica,b,2,fs1,ws://h:1', 'primary,c,3,fs1,ws://h:1']);
  assert.equal(files(reordered), { a: '1@3:fs1>' });
  assert.equal(setAside(reordered), ['snapshot:3', 'snapshot:4']);
  assert.match(reordered.rejected[0]!.problem, /b has no primary row/);
  assert.match(reordered.rejected[1]!.problem, /^expected 6 values, found 5$/);
  const headerless = load(['a,fs1,ws://h:1,primary,1,2', 'a,fs2,ws://h:2,replica,1,2', 'b,fs1,ws://h:1,primary,2', 'c,fs1,ws://h:1,primary,3,1,x']);
  assert.equal(files(headerless), { a: '1@2:fs1>fs2', b: '2:fs1>' });
  assert.equal(setAside(headerless), ['snapshot:4']);
  assert.match(headerless.rejected[0]!.problem, /^expected 5 or 6 values, found 7$/);
  assert.match(headerless.notes[0]!.message, /does not name the columns name,server_id,server_url,role,epoch,placement_epoch/);
});

test('a bad placement epoch sets its row aside like a bad epoch; the row’s epoch still counts', () => {
  const table = load(
    [SNAPSHOT_HEADER_PE, 'a,fs1,ws://h:1,primary,1,0', 'b,fs1,ws://h:1,primary,2,x', 'c,fs1,ws://h:1,primary,3,1.5', 'd,fs1,ws://h:1,primary,4,2'],
    [JOURNAL_HEADER_PE, 'add,e,fs1,ws://h:1,primary,9,-1', 'add,f,fs1,ws://h:1,primary,6,', 'add,g,fs1,ws://h:1,primary,7,1'],
  );
  assert.equal(files(table), { d: '4@2:fs1>', g: '7:fs1>' });
  assert.equal(setAside(table), ['snapshot:2', 'snapshot:3', 'snapshot:4', 'journal:2', 'journal:3']);
  assert.equal(
    table.rejected.map((r) => r.problem),
    [
      'placement_epoch must be from 1 to 9007199254740991, not 0',
      'placement_epoch must be a whole number, not "x"',
      'placement_epoch must be a whole number, not "1.5"',
      'placement_epoch must be a whole number, not "-1"',
      'placement_epoch must be a whole number, not ""',
    ],
  );
  assert.is(table.lastEpoch, 9);
});

test('journal lines of the previous version (6 values) are read at placement epoch 1, beside new ones', () => {
  const table = load(
    [SNAPSHOT_HEADER],
    [
      JOURNAL_HEADER,
      'add,a,fs2,ws://h:2,replica,1',
      'add,a,fs1,ws://h:1,primary,1',
      'add,b,fs1,ws://h:1,primary,2',
      'remove,b,,,,2',
      JOURNAL_HEADER_PE,
      'add,a,fs3,ws://h:3,replica,1,2',
      'add,a,fs2,ws://h:2,primary,1,2',
      'add,a,fs1,ws://h:1,primary,1',
      'add,c,fs1,ws://h:1,primary,3,1',
      'remove,c,,,,3,',
      'add,d,fs1,ws://h:1,primary,4,1,extra',
    ],
  );
  assert.equal(files(table), { a: '1@2:fs2>fs3' });
  assert.equal(setAside(table), ['journal:12 (crash)']);
  assert.match(table.rejected[0]!.problem, /^expected 7 values \(6 in the previous version's lines\), found 8$/);
});

test('tableLines: text split into lines without CR; a line that is not UTF-8 is kept as bytes', () => {
  assert.equal(tableLines(Buffer.from('a\r\nb\nc')), ['a', 'b', 'c']);
  const latin1 = Buffer.from('caf\xe9,fs1', 'latin1');
  const lines = tableLines(Buffer.concat([Buffer.from('\u00e9t\u00e9\r\n'), latin1, Buffer.from('\r\nz\n')]));
  assert.is(lines.length, 4);
  assert.is(lines[0], '\u00e9t\u00e9');
  assert.ok(Buffer.from(lines[1] as Uint8Array).equals(latin1));
  assert.equal(lines.slice(2), ['z', '']);
  const table = loadTable({ snapshot: [SNAPSHOT_HEADER, lines[1]!, 'ok,fs1,ws://h:1,primary,1'], journal: [], epochMark: 0 });
  assert.equal(files(table), { ok: '1:fs1>' });
  assert.match(table.rejected[0]!.problem, /not valid UTF-8/);
});

test('formatRejected: CSV whose row column gives back each line exactly', () => {
  const rows: RejectedRow[] = [
    { file: SNAPSHOT_FILE, line: 3, row: '"report, final.txt",fs1,ws://h:1,boss,1', problem: 'role must be "primary" or "replica", not "boss"', epoch: 1, unacknowledged: false },
    { file: JOURNAL_FILE, line: 9, row: 'add,x\ufffd,fs1,ws://h:1,primary,2', problem: 'p', epoch: 2, unacknowledged: true },
  ];
  const text = REJECTED_HEADER + formatRejected(rows, new Date('2025-01-02T03:04:05.678Z')).toString('utf8');
  const parsed = parse(text, { columns: true }) as Array<Record<string, string>>;
  assert.equal(parsed, [
    { rejected_at: '2025-01-02T03:04:05.678Z', file: 'file_table.csv', line: '3', problem: rows[0]!.problem, row: rows[0]!.row as string },
    { rejected_at: '2025-01-02T03:04:05.678Z', file: 'file_table.journal.csv', line: '9', problem: 'p', row: rows[1]!.row as string },
  ]);
});

test.run();
