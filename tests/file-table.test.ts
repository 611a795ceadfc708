import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { copyFile, mkdir, readFile, readdir, writeFile, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'csv-parse/sync';
import { AppendLog } from '../servers/directory/append-log.js';
import { FileTable, type FileEntry, type PlacementChange } from '../servers/directory/file-table.js';
import { EPOCH_FILE, JOURNAL_FILE, JOURNAL_HEADER, REJECTED_FILE, SNAPSHOT_FILE, SNAPSHOT_HEADER } from '../servers/directory/table-format.js';
import { DfsError } from '../shared/errors.js';
import { createLogger, type Logger } from '../shared/log.js';
import { removeDir, tempDir } from './helpers/process.js';

const test = suite('file-table');

const fs1 = { id: 'fs1', url: 'ws://127.0.0.1:12001' };
const fs2 = { id: 'fs2', url: 'ws://127.0.0.1:12002' };
const fs3 = { id: 'fs3', url: 'ws://127.0.0.1:12003' };
const fs4 = { id: 'fs4', url: 'ws://127.0.0.1:12004' };

const dirs: string[] = [];
const open: FileTable[] = [];

async function freshDir(): Promise<string> {
  const dir = await tempDir('dfs-table-');
  dirs.push(dir);
  return dir;
}

function recordingLog(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return Object.assign(createLogger('table', 'debug', (line) => lines.push(line)), { lines });
}

async function openTable(dir: string, options: Parameters<typeof FileTable.open>[1] = {}): Promise<FileTable> {
  const table = await FileTable.open(dir, options);
  open.push(table);
  return table;
}

/** What a kill -9 would leave: the table's files as they are on disk right now, in another folder. */
async function crashImage(dir: string): Promise<string> {
  const image = await freshDir();
  for (const file of await readdir(dir)) await copyFile(join(dir, file), join(image, file));
  return image;
}

function contents(table: FileTable): Record<string, FileEntry> {
  const out: Record<string, FileEntry> = {};
  for (const name of table.list({ limit: 10_000 }).names) {
    const entry = table.get(name)!;
    out[name] = { epoch: entry.epoch, placementEpoch: entry.placementEpoch, primary: entry.primary, replicas: [...entry.replicas] };
  }
  return out;
}

/** The rows of the rejected file, by column. */
async function rejectedFile(dir: string): Promise<Array<Record<string, string>>> {
  return parse(await readFile(join(dir, REJECTED_FILE), 'utf8'), { columns: true }) as Array<Record<string, string>>;
}

const codeOf = (p: Promise<unknown>) => p.then(() => 'ok', (e: DfsError) => e.code);

/** A change of the file's placement as it is now. */
function change(table: FileTable, name: string, primary: typeof fs1, replicas: Array<typeof fs1>): PlacementChange {
  const entry = table.get(name)!;
  return { name, epoch: entry.epoch, placementEpoch: entry.placementEpoch, primary, replicas };
}

/** Counts the journal appends made while `fn` runs (each append is one write and fsync, shared by concurrent ones). */
async function countingAppends<T>(fn: () => Promise<T>): Promise<{ result: T; appends: number }> {
  const original = AppendLog.prototype.append;
  let appends = 0;
  AppendLog.prototype.append = function (this: AppendLog, text: string) {
    if (this.path.endsWith(JOURNAL_FILE)) appends++;
    return original.call(this, text);
  };
  try {
    return { result: await fn(), appends };
  } finally {
    AppendLog.prototype.append = original;
  }
}

function loads(table: FileTable): Record<string, string> {
  const out: Record<string, string> = {};
  for (const id of [...table.serverIds()].sort()) {
    const { files, primaries } = table.loadOf(id);
    out[id] = `${files} files, ${primaries} primaries`;
  }
  return out;
}

test.after(async () => {
  for (const table of open) await table.close().catch(() => {});
  for (const dir of dirs) await removeDir(dir);
});

test('add, look up, remove; EXISTS and NOT_FOUND; per-server counts', async () => {
  const table = await openTable(await freshDir());
  const entry = await table.create('notes/a.txt', fs1, [fs2, fs3]);
  assert.equal({ ...entry, replicas: [...entry.replicas] }, { epoch: 1, placementEpoch: 1, primary: 'fs1', replicas: ['fs2', 'fs3'] });
  await table.create('notes/b.txt', fs2, [fs1]);
  assert.is(table.size, 2);
  assert.is(table.rows, 5);
  assert.equal(table.loadOf('fs1'), { files: 2, primaries: 1 });
  assert.equal(table.loadOf('fs3'), { files: 1, primaries: 0 });
  assert.is(await codeOf(table.create('notes/a.txt', fs3, [])), 'EXISTS');
  assert.is(table.get('notes/a.txt')?.primary, 'fs1');
  const removed = await table.remove('notes/a.txt');
  assert.is(removed.epoch, 1);
  assert.is(table.get('notes/a.txt'), undefined);
  assert.is(await codeOf(table.remove('notes/a.txt')), 'NOT_FOUND');
  assert.equal(table.loadOf('fs3'), { files: 0, primaries: 0 });
  assert.equal([...table.serverIds()].sort(), ['fs1', 'fs2']);
});

test('list and holdings: sorted, paginated, prefix-filtered', async () => {
  const table = await openTable(await freshDir());
  for (const name of ['b/2', 'a/1', 'b/1', 'c', 'a/2', 'b/3']) await table.create(name, name.startsWith('b') ? fs2 : fs1, [fs3]);
  assert.equal(table.list({ limit: 100 }), { names: ['a/1', 'a/2', 'b/1', 'b/2', 'b/3', 'c'], more: false });
  assert.equal(table.list({ limit: 2 }), { names: ['a/1', 'a/2'], more: true });
  assert.equal(table.list({ limit: 2, after: 'a/2' }), { names: ['b/1', 'b/2'], more: true });
  assert.equal(table.list({ limit: 10, prefix: 'b/' }), { names: ['b/1', 'b/2', 'b/3'], more: false });
  assert.equal(table.list({ limit: 1, prefix: 'b/', after: 'b/1' }), { names: ['b/2'], more: true });
  assert.equal(table.list({ limit: 10, prefix: 'b/', after: 'a' }), { names: ['b/1', 'b/2', 'b/3'], more: false });
  assert.equal(table.list({ limit: 10, prefix: 'zzz' }), { names: [], more: false });
  await table.remove('b/2');
  await table.create('a/0', fs1, [fs2]);
  assert.equal(table.list({ limit: 100 }).names, ['a/0', 'a/1', 'a/2', 'b/1', 'b/3', 'c']);
  const page = table.holdings('fs2', { limit: 2 });
  assert.equal(page.copies.map((c) => [c.name, c.role]), [['a/0', 'replica'], ['b/1', 'primary']]);
  assert.is(page.more, true);
  assert.equal(table.holdings('fs2', { limit: 2, after: 'b/1' }).copies.map((c) => c.name), ['b/3']);
  assert.equal(table.holdings('nobody', { limit: 2 }), { copies: [], more: false });
});

test('survives a clean reopen, and a crash image with everything acknowledged', async () => {
  const dir = await freshDir();
  const table = await openTable(dir);
  await Promise.all(Array.from({ length: 50 }, (_, i) => table.create(`f${i}`, [fs1, fs2][i % 2]!, [fs3])));
  await table.remove('f7');
  const expected = contents(table);
  const crashed = await openTable(await crashImage(dir));
  assert.equal(contents(crashed), expected);
  await table.close();
  const reopened = await openTable(dir);
  assert.equal(contents(reopened), expected);
  assert.is(reopened.journalLength, 0);
  assert.equal(await readFile(join(dir, JOURNAL_FILE), 'utf8'), JOURNAL_HEADER);
});

test('many concurrent creates share fsyncs and all become durable', async () => {
  const dir = await freshDir();
  const table = await openTable(dir);
  const created = await Promise.all(Array.from({ length: 500 }, (_, i) => table.create(`burst/${i}`, fs1, [fs2, fs3])));
  assert.equal(new Set(created.map((e) => e.epoch)).size, 500);
  const journal = await readFile(join(dir, JOURNAL_FILE), 'utf8');
  assert.is(journal.split('\n').filter((line) => line.startsWith('add,burst/')).length, 1500);
});

test('a torn or damaged journal tail is set aside, and the table still loads', async () => {
  const dir = await freshDir();
  const table = await openTable(dir);
  await table.create('kept.txt', fs1, [fs2]);
  const image = await crashImage(dir);
  // A create cut short: one replica row landed, the primary row only half.
  const replicaRow = 'add,lost.txt,fs2,ws://127.0.0.1:12002,replica,2';
  const tornRow = 'add,lost.txt,fs1,ws://127.0.0.1:12';
  await appendFile(join(image, JOURNAL_FILE), `${replicaRow}\n${tornRow}`);
  const log = recordingLog();
  const loaded = await openTable(image, { log });
  assert.equal(loaded.list({ limit: 10 }).names, ['kept.txt']);
  assert.is(loaded.rejectedAtLoad, 2);
  const cutShort = log.lines.filter((l) => l.includes(' warn set aside a table row of a write cut short'));
  assert.is(cutShort.length, 2);
  assert.ok(cutShort.some((l) => l.includes('incomplete last line')));
  assert.ok(cutShort.some((l) => l.includes('lost.txt has no primary row: a create cut short')));
  assert.not.ok(log.lines.some((l) => l.includes(' error ')), 'crash leftovers are warnings, not errors');
  assert.equal((await rejectedFile(image)).map((r) => r.row), [replicaRow, tornRow]);
  // Garbage from a crash in the middle of a write (zeros, a stray quote) does not hide later lines.
  const image2 = await crashImage(dir);
  await appendFile(join(image2, JOURNAL_FILE), '\0\0\0\0\n"broken,\nadd,late.txt,fs2,ws://127.0.0.1:12002,primary,9\n');
  const loaded2 = await openTable(image2, { log: recordingLog() });
  assert.equal(loaded2.list({ limit: 10 }).names, ['kept.txt', 'late.txt']);
  assert.ok(loaded2.lastIssuedEpoch >= 9);
  assert.equal((await rejectedFile(image2)).map((r) => r.row), ['\0\0\0\0', '"broken,']);
});

test('replaying the journal over a snapshot that already holds it changes nothing', async () => {
  const dir = await freshDir();
  const table = await openTable(dir);
  await table.create('a', fs1, [fs2, fs3]);
  await table.create('b', fs2, [fs3, fs1]);
  await table.remove('a');
  await table.create('a', fs3, [fs1]); // re-created: a newer epoch
  await table.setServerUrl('fs1', 'ws://127.0.0.1:13001');
  await table.create('c', { id: 'fs1', url: 'ws://127.0.0.1:13001' }, [fs2]);
  await table.remove('c');
  const expected = contents(table);
  const image = await crashImage(dir);
  const oldJournal = await readFile(join(image, JOURNAL_FILE), 'utf8');
  // Loading compacts: new snapshot, empty journal. Then put the old journal back, as if the
  // crash came between renaming the new snapshot and emptying the journal.
  const first = await openTable(image);
  assert.equal(contents(first), expected);
  await first.close();
  await writeFile(join(image, JOURNAL_FILE), oldJournal);
  const second = await openTable(image);
  assert.equal(contents(second), expected);
  assert.is(second.urlOf('fs1'), 'ws://127.0.0.1:13001');
  // And twice over.
  await second.close();
  await writeFile(join(image, JOURNAL_FILE), oldJournal + oldJournal.split('\n').slice(1).join('\n'));
  const third = await openTable(image);
  assert.equal(contents(third), expected);
});

test('compaction keeps the journal short, the snapshot whole, and changes made meanwhile', async () => {
  const dir = await freshDir();
  const log = recordingLog();
  const table = await openTable(dir, { compactAfterRows: 30, log });
  await Promise.all(Array.from({ length: 10 }, (_, i) => table.create(`keep/${i}`, fs1, [fs2, fs3])));
  // Churn: the journal grows by 4 rows per create+delete while the table stays the same size.
  for (let round = 0; round < 20; round++) {
    await Promise.all(Array.from({ length: 5 }, (_, i) => table.create(`churn/${round}/${i}`, fs2, [fs1, fs3])));
    await Promise.all(Array.from({ length: 5 }, (_, i) => table.remove(`churn/${round}/${i}`)));
    assert.ok(table.journalLength <= Math.max(30, table.rows) + 20, `journal has ${table.journalLength} rows`);
  }
  await table.flush();
  assert.ok(log.lines.filter((l) => l.includes('table compacted')).length >= 5);
  const expected = contents(table);
  assert.is(Object.keys(expected).length, 10);
  const snapshot = parse(await readFile(join(dir, SNAPSHOT_FILE), 'utf8'), { columns: true }) as Array<Record<string, string>>;
  assert.ok(snapshot.length > 0 && snapshot.every((row) => Object.keys(row).join(',') === 'name,server_id,server_url,role,epoch,placement_epoch'));
  // Creates racing an explicit compaction are durable once acknowledged.
  const racing = Promise.all(Array.from({ length: 20 }, (_, i) => table.create(`race/${i}`, fs2, [fs1])));
  await Promise.all([table.compact(), racing]);
  const image = await crashImage(dir);
  assert.equal(contents(await openTable(image)), contents(table));
});

test('epochs only grow: across deletes, compactions and restarts', async () => {
  const dir = await freshDir();
  let table = await openTable(dir);
  const a = await table.create('a', fs1, []);
  const b = await table.create('b', fs1, []);
  await table.remove('b');
  await table.remove('a');
  await table.compact(); // the table is empty now: no row remembers epoch 2
  await table.close();
  table = await openTable(dir);
  const c = await table.create('c', fs1, []);
  assert.ok(c.epoch > b.epoch && b.epoch > a.epoch, `epochs ${a.epoch}, ${b.epoch}, ${c.epoch}`);
  await table.remove('c');
  // Crash without compaction: the epoch is known from the journal's remove row.
  table = await openTable(await crashImage(dir));
  const d = await table.create('c', fs1, []);
  assert.ok(d.epoch > c.epoch);
  assert.is(Number((await readFile(join(dir, EPOCH_FILE), 'utf8')).trim()) >= b.epoch, true);
});

test('a snapshot edited by hand loads: reordered columns, spaces, quotes, blank epochs, a role changed', async () => {
  const dir = await freshDir();
  await writeFile(
    join(dir, SNAPSHOT_FILE),
    [
      '\ufeffrole, name, epoch, server_id, server_url',
      'Primary, notes/today.txt, 7, fs2, ws://127.0.0.1:12002',
      'replica, notes/today.txt, , fs1, ws://127.0.0.1:12001',
      '',
      'primary,"report, final.txt",,fs3,ws://127.0.0.1:12003',
      'replica,"report, final.txt",,fs1,ws://127.0.0.1:12001',
      '',
    ].join('\r\n'),
  );
  const log = recordingLog();
  const table = await openTable(dir, { log });
  assert.equal(table.list({ limit: 10 }).names, ['notes/today.txt', 'report, final.txt']);
  assert.equal(table.get('notes/today.txt'), { epoch: 7, placementEpoch: 1, primary: 'fs2', replicas: ['fs1'] });
  assert.is(table.get('report, final.txt')?.epoch, 8);
  assert.ok(log.lines.some((l) => l.includes('gave a hand-added file a fresh epoch')));
  const created = await table.create('next.txt', fs1, []);
  assert.is(created.epoch, 9);
  await table.close();
  // The rewritten snapshot is clean, sorted, and in the standard column order.
  const text = await readFile(join(dir, SNAPSHOT_FILE), 'utf8');
  assert.is(
    text,
    [
      'name,server_id,server_url,role,epoch,placement_epoch',
      'next.txt,fs1,ws://127.0.0.1:12001,primary,9,1',
      'notes/today.txt,fs2,ws://127.0.0.1:12002,primary,7,1',
      'notes/today.txt,fs1,ws://127.0.0.1:12001,replica,7,1',
      '"report, final.txt",fs3,ws://127.0.0.1:12003,primary,8,1',
      '"report, final.txt",fs1,ws://127.0.0.1:12001,replica,8,1',
      '',
    ].join('\n'),
  );
});

test('a snapshot with a mistake still loads: the bad rows are logged and set aside, verbatim, with the line and what is wrong', async () => {
  const header = 'name,server_id,server_url,role,epoch';
  const good = 'b.txt,fs1,ws://h:1,primary,1';
  // [the snapshot's lines, the lines set aside, what is wrong, the files that load]
  const cases: Array<[string[], number[], RegExp, string[]]> = [
    [[header, 'a.txt,fs1,ws://h:1,primay,7', good], [2], /role must be "primary" or "replica"/, ['b.txt']],
    [[header, 'a.txt,fs1,ws://h:1,primary,1', '../x,fs1,ws://h:1,primary,4'], [3], /bad file name/, ['a.txt']],
    [[header, 'a.txt,fs1,ws://h:1,primary,1', 'a.txt,fs2,ws://h:2,primary,1'], [3], /a.txt has a second primary row/, ['a.txt']],
    [[header, 'a.txt,fs1,ws://h:1,replica,1', 'a.txt,fs2,ws://h:2,replica,1', good], [2, 3], /a.txt has no primary row/, ['b.txt']],
    [[header, 'a.txt,fs1,ws://h:1,primary,1', 'a.txt,fs2,ws://h:2,primary,2'], [2], /a.txt has rows with epochs 1 and 2/, ['a.txt']],
    [['name,server,server_url,role,epoch', good], [1], /not a header \(unknown column "server"\)/, ['b.txt']],
    [[header, 'a.txt,fs1,ws://h:1,primary,1,extra', good], [2], /expected 5 values/, ['b.txt']],
  ];
  for (const [lines, setAside, pattern, loads] of cases) {
    const dir = await freshDir();
    await writeFile(join(dir, SNAPSHOT_FILE), lines.join('\n') + '\n');
    const log = recordingLog();
    const table = await openTable(dir, { log });
    const what = JSON.stringify(lines);
    assert.equal(table.list({ limit: 10 }).names, loads, what);
    assert.is(table.rejectedAtLoad, setAside.length, what);
    const rejected = await rejectedFile(dir);
    assert.equal(rejected.map((r) => [Number(r.line), r.row]), setAside.map((line) => [line, lines[line - 1]]), what);
    for (const r of rejected) {
      assert.is(r.file, SNAPSHOT_FILE);
      assert.match(r.problem, pattern, what);
      assert.ok(log.lines.some((l) => l.includes(' error set aside a table row') && l.includes(`line=${r.line} `)), `${what}: a log line for line ${r.line}`);
    }
    assert.ok(log.lines.some((l) => l.includes('table rows set aside') && l.includes(join(dir, REJECTED_FILE))));
    // Every epoch seen counts, so the epoch of a row set aside is never issued again.
    const highest = Math.max(...lines.map((line) => Number(/,(\d+)$/.exec(line)?.[1] ?? 0)));
    assert.is((await table.create('next.txt', fs1, [])).epoch, highest + 1, what);
    await table.close();
    // The snapshot is clean now: the next start sets nothing aside, and adds nothing to the file.
    const again = await openTable(dir);
    assert.is(again.rejectedAtLoad, 0);
    assert.is((await rejectedFile(dir)).length, setAside.length);
  }
});

test('a line that is not UTF-8 is set aside with its bytes unchanged, not loaded with U+FFFD', async () => {
  const dir = await freshDir();
  const latin1 = Buffer.from('caf\xe9.txt,fs1,ws://h:1,primary,3', 'latin1');
  await writeFile(join(dir, SNAPSHOT_FILE), Buffer.concat([Buffer.from('name,server_id,server_url,role,epoch\n'), latin1, Buffer.from('\nb.txt,fs1,ws://h:1,primary,1\n')]));
  const table = await openTable(dir, { log: recordingLog() });
  assert.equal(table.list({ limit: 10 }).names, ['b.txt']);
  const bytes = await readFile(join(dir, REJECTED_FILE));
  assert.ok(bytes.includes(Buffer.concat([Buffer.from(',"'), latin1, Buffer.from('"\n')])), bytes.toString('latin1'));
  assert.match(bytes.toString('latin1'), /file_table\.csv,2,not valid UTF-8/);
});

test('rows are only dropped once they are safe in the rejected file: if it cannot be written, nothing changes', async () => {
  const dir = await freshDir();
  const text = 'name,server_id,server_url,role,epoch\na.txt,fs1,ws://h:1,primay,1\nb.txt,fs1,ws://h:1,primary,1\n';
  await writeFile(join(dir, SNAPSHOT_FILE), text);
  await mkdir(join(dir, REJECTED_FILE)); // a folder in its place: appending fails
  const err = await FileTable.open(dir, { log: recordingLog() }).then(
    (t) => (open.push(t), null),
    (e: Error) => e,
  );
  assert.ok(err, 'the table must not open without a place for its rejected rows');
  assert.is(await readFile(join(dir, SNAPSHOT_FILE), 'utf8'), text, 'the snapshot is not compacted');
});

test('a server URL change is written to its rows and survives a restart', async () => {
  const dir = await freshDir();
  const table = await openTable(dir);
  await table.create('x', fs1, [fs2]);
  await table.create('y', fs2, [fs3]);
  assert.is(await table.setServerUrl('fs2', 'ws://10.0.0.2:12002'), 2);
  assert.is(await table.setServerUrl('fs2', 'ws://10.0.0.2:12002'), 0);
  const reopened = await openTable(await crashImage(dir));
  assert.is(reopened.urlOf('fs2'), 'ws://10.0.0.2:12002');
  assert.is(reopened.urlOf('fs1'), fs1.url);
});

test('replace: new primaries and replicas at the next placement epoch, in one journal append; loads, rows and URLs follow', async () => {
  const dir = await freshDir();
  const table = await openTable(dir);
  await table.create('a', fs1, [fs2, fs3]);
  await table.create('b', fs2, [fs1]);
  await table.create('c', fs1, []);
  const before = table.get('a')!;
  const moved = { ...fs4, url: 'ws://127.0.0.1:14004' };
  const { result, appends } = await countingAppends(() => table.replace([change(table, 'a', fs2, [fs3, moved]), change(table, 'c', fs3, [fs1])]));
  assert.is(appends, 1);
  assert.equal(result, [
    { epoch: 1, placementEpoch: 2, primary: 'fs2', replicas: ['fs3', 'fs4'] },
    { epoch: 3, placementEpoch: 2, primary: 'fs3', replicas: ['fs1'] },
  ]);
  assert.equal(before, { epoch: 1, placementEpoch: 1, primary: 'fs1', replicas: ['fs2', 'fs3'] }, 'an entry handed out before keeps its placement');
  assert.equal(table.get('a'), result[0]);
  assert.is(table.rows, 7);
  assert.equal(loads(table), { fs1: '2 files, 0 primaries', fs2: '2 files, 2 primaries', fs3: '2 files, 1 primaries', fs4: '1 files, 0 primaries' });
  assert.is(table.urlOf('fs4'), moved.url);
  assert.equal(table.holdings('fs1', { limit: 10 }).copies.map((c) => [c.name, c.role]), [['b', 'replica'], ['c', 'replica']]);
  // A server left with no copies is no longer among the table's servers.
  await table.replace([change(table, 'a', fs2, [fs3]), change(table, 'b', fs2, [fs3]), change(table, 'c', fs3, [])]);
  assert.equal(loads(table), { fs2: '2 files, 2 primaries', fs3: '3 files, 1 primaries' });
  assert.is(table.get('c')!.placementEpoch, 3);
  // The rows: replicas first, the primary last, at the new placement epoch.
  const journal = (await readFile(join(dir, JOURNAL_FILE), 'utf8')).split('\n');
  assert.equal(journal.slice(-6), [
    'add,a,fs3,ws://127.0.0.1:12003,replica,1,3',
    'add,a,fs2,ws://127.0.0.1:12002,primary,1,3',
    'add,b,fs3,ws://127.0.0.1:12003,replica,2,2',
    'add,b,fs2,ws://127.0.0.1:12002,primary,2,2',
    'add,c,fs3,ws://127.0.0.1:12003,primary,3,3',
    '',
  ]);
  assert.equal(await table.replace([]), []);
});

test('replace survives a clean reopen and a crash image (no close), with its loads', async () => {
  const dir = await freshDir();
  const table = await openTable(dir);
  await Promise.all(Array.from({ length: 20 }, (_, i) => table.create(`f${i}`, [fs1, fs2][i % 2]!, [fs3])));
  // Failover of every file fs1 is primary of, racing creates and a remove.
  const failover = table.replace(table.holdings('fs1', { limit: 100 }).copies.filter((c) => c.role === 'primary').map((c) => change(table, c.name, fs3, [fs4])));
  await Promise.all([failover, table.create('late', fs1, [fs2]), table.remove('f2')]);
  // f2 was removed while the change was being made durable: it stays removed (null).
  const outcome = await failover;
  assert.ok(outcome.filter((entry) => entry !== null).length >= 9 && outcome.every((entry) => entry === null || entry.placementEpoch === 2));
  assert.is(table.get('f2'), undefined);
  const expected = contents(table);
  const expectedLoads = loads(table);
  const crashed = await openTable(await crashImage(dir));
  assert.equal(contents(crashed), expected);
  assert.equal(loads(crashed), expectedLoads);
  assert.is(crashed.rows, table.rows);
  assert.is(crashed.rejectedAtLoad, 0);
  await table.close();
  const reopened = await openTable(dir);
  assert.equal(contents(reopened), expected);
  assert.equal(loads(reopened), expectedLoads);
  assert.is(reopened.urlOf('fs4'), fs4.url);
  // And the next change goes on from the placement epoch on disk.
  const [next] = await reopened.replace([change(reopened, 'f0', fs1, [fs2])]);
  assert.is(next?.placementEpoch, 3);
});

test('replace: a change whose file is gone, was created again or has moved on gets null and writes nothing', async () => {
  const dir = await freshDir();
  const table = await openTable(dir);
  await table.create('gone', fs1, [fs2]);
  await table.create('again', fs1, [fs2]);
  await table.create('moved', fs1, [fs2]);
  const stale = ['gone', 'again', 'moved'].map((name) => change(table, name, fs3, [fs1]));
  await table.remove('gone');
  await table.remove('again');
  await table.create('again', fs1, [fs2]); // same placement epoch, another epoch
  const [first] = await table.replace([change(table, 'moved', fs2, [fs1])]);
  assert.is(first?.placementEpoch, 2);
  const expected = contents(table);
  const expectedLoads = loads(table);
  const journal = await readFile(join(dir, JOURNAL_FILE), 'utf8');
  const { result, appends } = await countingAppends(() => table.replace([...stale, { ...change(table, 'moved', fs3, []), name: 'never' }]));
  assert.equal(result, [null, null, null, null]);
  assert.is(appends, 0);
  assert.equal(contents(table), expected);
  assert.equal(loads(table), expectedLoads);
  assert.is(await readFile(join(dir, JOURNAL_FILE), 'utf8'), journal);
  // Changes apply in order: the second of one file, decided on the same placement, loses.
  const [won, lost] = await table.replace([change(table, 'again', fs3, [fs1]), change(table, 'again', fs2, [])]);
  assert.is(won?.primary, 'fs3');
  assert.is(lost, null);
  const lines = (await readFile(join(dir, JOURNAL_FILE), 'utf8')).slice(journal.length);
  assert.is(lines, 'add,again,fs1,ws://127.0.0.1:12001,replica,4,2\nadd,again,fs3,ws://127.0.0.1:12003,primary,4,2\n');
});

test('replace refuses a server named twice (changing nothing), and changes once the table is closed', async () => {
  const table = await openTable(await freshDir());
  await table.create('a', fs1, [fs2]);
  await table.create('b', fs1, [fs2]);
  const twice = await table.replace([change(table, 'a', fs3, []), change(table, 'b', fs2, [fs3, fs2])]).then(
    () => null,
    (e: Error) => e,
  );
  assert.ok(twice instanceof Error && !(twice instanceof DfsError));
  assert.match(twice.message, /placement of b names a server twice/);
  assert.is(table.get('a')!.placementEpoch, 1, 'the valid change of the call is not applied either');
  await table.replace([change(table, 'a', fs1, [fs1])]).then(
    () => assert.unreachable('the primary named as a replica too'),
    (e: Error) => assert.match(e.message, /placement of a names a server twice/),
  );
  assert.is(table.rows, 4);
  await table.close();
  assert.is(await codeOf(table.replace([change(table, 'a', fs3, [])])), 'UNAVAILABLE');
});

test('a change of placement cut short by a crash loads the placement before it; its rows are set aside as unacknowledged', async () => {
  const dir = await freshDir();
  const table = await openTable(dir);
  await table.create('a', fs1, [fs2]);
  await table.create('b', fs2, [fs1]);
  const image = await crashImage(dir);
  // The replica rows of a change to placement epoch 2 landed; its primary row did not.
  const cut = ['add,a,fs2,ws://127.0.0.1:12002,replica,1,2', 'add,a,fs3,ws://127.0.0.1:12003,replica,1,2'];
  await appendFile(join(image, JOURNAL_FILE), cut.map((row) => `${row}\n`).join(''));
  const log = recordingLog();
  const loaded = await openTable(image, { log });
  assert.equal(contents(loaded), contents(table));
  assert.equal(loads(loaded), { fs1: '2 files, 1 primaries', fs2: '2 files, 1 primaries' });
  assert.is(loaded.rejectedAtLoad, 2);
  const rejected = await rejectedFile(image);
  assert.equal(rejected.map((r) => [r.file, r.row]), cut.map((row) => [JOURNAL_FILE, row]));
  assert.ok(rejected.every((r) => /a change of placement \(to placement epoch 2\) without its primary row, cut short by a crash/.test(r.problem!)));
  assert.is(log.lines.filter((l) => l.includes(' warn set aside a table row of a write cut short')).length, 2);
  assert.not.ok(log.lines.some((l) => l.includes(' error ')), 'crash leftovers are warnings, not errors');
  // The next change of the file is to placement epoch 2 again, and wins.
  const [next] = await loaded.replace([change(loaded, 'a', fs3, [fs1])]);
  assert.is(next?.placementEpoch, 2);
});

test('a change of placement whose primary row is the torn last journal line', async () => {
  const dir = await freshDir();
  const table = await openTable(dir);
  await table.create('a', fs1, [fs2]);
  await table.replace([change(table, 'a', fs2, [fs1])]);
  const image = await crashImage(dir);
  const replicaRow = 'add,a,fs3,ws://127.0.0.1:12003,replica,1,3';
  const tornRow = 'add,a,fs1,ws://127.0.0.1:12001,prim';
  await appendFile(join(image, JOURNAL_FILE), `${replicaRow}\n${tornRow}`);
  const loaded = await openTable(image, { log: recordingLog() });
  assert.equal(contents(loaded), { a: { epoch: 1, placementEpoch: 2, primary: 'fs2', replicas: ['fs1'] } });
  const rejected = await rejectedFile(image);
  assert.equal(rejected.map((r) => r.row), [replicaRow, tornRow]);
  assert.match(rejected[1]!.problem!, /incomplete last line/);
});

test('replaying journal rows of placement changes that the snapshot already holds changes nothing', async () => {
  const dir = await freshDir();
  const table = await openTable(dir);
  await table.create('a', fs1, [fs2, fs3]);
  await table.create('b', fs2, [fs1]);
  await table.replace([change(table, 'a', fs2, [fs3, fs4])]);
  await table.setServerUrl('fs3', 'ws://127.0.0.1:13003');
  await table.replace([change(table, 'a', { ...fs3, url: 'ws://127.0.0.1:13003' }, [fs2]), change(table, 'b', fs1, [])]);
  await table.remove('b');
  await table.create('b', fs4, [fs1]);
  const expected = contents(table);
  const expectedLoads = loads(table);
  const image = await crashImage(dir);
  const oldJournal = await readFile(join(image, JOURNAL_FILE), 'utf8');
  const first = await openTable(image);
  assert.equal(contents(first), expected);
  await first.close();
  // As if the crash came between renaming the new snapshot and emptying the journal; then twice over.
  for (const journal of [oldJournal, oldJournal + oldJournal.split('\n').slice(1).join('\n')]) {
    await writeFile(join(image, JOURNAL_FILE), journal);
    const again = await openTable(image);
    assert.equal(contents(again), expected);
    assert.equal(loads(again), expectedLoads);
    assert.is(again.rejectedAtLoad, 0);
    assert.is(again.urlOf('fs3'), 'ws://127.0.0.1:13003');
    await again.close();
  }
});

test('snapshot rows of one file with mixed placement epochs: the highest is kept, the others set aside', async () => {
  const dir = await freshDir();
  const lines = [
    SNAPSHOT_HEADER.trimEnd(),
    'a,fs1,ws://127.0.0.1:12001,primary,3,1',
    'a,fs2,ws://127.0.0.1:12002,replica,3,1',
    'a,fs2,ws://127.0.0.1:12002,primary,3,2',
    'a,fs3,ws://127.0.0.1:12003,replica,3,2',
  ];
  await writeFile(join(dir, SNAPSHOT_FILE), lines.join('\n') + '\n');
  const table = await openTable(dir, { log: recordingLog() });
  assert.equal(contents(table), { a: { epoch: 3, placementEpoch: 2, primary: 'fs2', replicas: ['fs3'] } });
  assert.equal(loads(table), { fs2: '1 files, 1 primaries', fs3: '1 files, 0 primaries' });
  assert.equal((await rejectedFile(dir)).map((r) => [r.line, r.row]), [['2', lines[1]], ['3', lines[2]]]);
});

test('a data folder of the previous version (5-column snapshot, 6-column journal) loads at placement epoch 1 and is rewritten in the new format', async () => {
  const dir = await freshDir();
  await writeFile(join(dir, SNAPSHOT_FILE), ['name,server_id,server_url,role,epoch', 'a,fs1,ws://127.0.0.1:12001,primary,1', 'a,fs2,ws://127.0.0.1:12002,replica,1', ''].join('\n'));
  await writeFile(
    join(dir, JOURNAL_FILE),
    ['op,name,server_id,server_url,role,epoch', 'add,b,fs1,ws://127.0.0.1:12001,replica,2', 'add,b,fs2,ws://127.0.0.1:12002,primary,2', 'add,c,fs1,ws://127.0.0.1:12001,primary,3', 'remove,c,,,,3', ''].join('\n'),
  );
  await writeFile(join(dir, EPOCH_FILE), '3\n');
  const log = recordingLog();
  const table = await openTable(dir, { log });
  assert.equal(contents(table), {
    a: { epoch: 1, placementEpoch: 1, primary: 'fs1', replicas: ['fs2'] },
    b: { epoch: 2, placementEpoch: 1, primary: 'fs2', replicas: ['fs1'] },
  });
  assert.is(table.rejectedAtLoad, 0);
  assert.not.ok(log.lines.some((l) => l.includes(' error ') || l.includes(' warn ')), log.lines.join('\n'));
  // The load's compaction has rewritten it.
  assert.is(
    await readFile(join(dir, SNAPSHOT_FILE), 'utf8'),
    [SNAPSHOT_HEADER.trimEnd(), 'a,fs1,ws://127.0.0.1:12001,primary,1,1', 'a,fs2,ws://127.0.0.1:12002,replica,1,1', 'b,fs2,ws://127.0.0.1:12002,primary,2,1', 'b,fs1,ws://127.0.0.1:12001,replica,2,1', ''].join('\n'),
  );
  assert.is(await readFile(join(dir, JOURNAL_FILE), 'utf8'), JOURNAL_HEADER);
  assert.is((await readFile(join(dir, EPOCH_FILE), 'utf8')).trim(), '3');
  assert.is((await table.create('d', fs1, [])).epoch, 4);
  const [moved] = await table.replace([change(table, 'a', fs2, [])]);
  assert.is(moved?.placementEpoch, 2);
});

test('prefill writes a big table quickly that loads and goes on issuing epochs', async () => {
  const dir = await freshDir();
  await mkdir(dir, { recursive: true });
  await FileTable.prefill(dir, { files: 20_000, servers: [fs1, fs2, fs3, { id: 'fs4', url: 'ws://127.0.0.1:12004' }], replication: 3 });
  const table = await openTable(dir);
  assert.is(table.size, 20_000);
  assert.is(table.rows, 60_000);
  assert.equal(table.loadOf('fs1'), { files: 15_000, primaries: 5_000 });
  const next = await table.create('one-more', fs1, [fs2]);
  assert.is(next.epoch, 20_001);
});

test.run();
