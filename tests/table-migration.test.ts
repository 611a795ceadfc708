/**
 * A data folder written by the previous version loads in a real directory process, including the
 * rows it left for names with lone surrogates: it stored "x\ud800" and "x\udc00" both as
 * "x\ufffd", one name with rows of two epochs, which used to stop the directory from starting;
 * and a folder of the version before placement epochs is rewritten in the new format.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'csv-parse/sync';
import { connect, type RpcConnection } from '../shared/rpc.js';
import type { ListResult, Placement, PlacementResult, RegisterResult, StatusResult } from '../shared/protocol.js';
import { EPOCH_FILE, JOURNAL_FILE, JOURNAL_HEADER, REJECTED_FILE, SNAPSHOT_FILE, SNAPSHOT_HEADER } from '../servers/directory/table-format.js';
import { sharedPki } from './helpers/tls.js';
import { freePort, removeDir, startNode, stopAll, tempDir, type ServiceProcess } from './helpers/process.js';

const test = suite('table-migration');

const dirs: string[] = [];
const conns: RpcConnection[] = [];

async function startDirectory(dataDir: string): Promise<{ proc: ServiceProcess; conn: RpcConnection; url: string }> {
  const proc = startNode('directory', 'servers/directory/main.js', [
    ...(await sharedPki()).flags('directory'), '--port', String(await freePort()), '--data', dataDir, '--lock', 'wss://127.0.0.1:4999', '--down-after-ms', '60000',
  ]);
  const url = (await proc.waitForLine(/listening url=(wss:\/\/\S+)/))[1]!;
  const conn = await connect(url, { transport: (await sharedPki()).client });
  conns.push(conn);
  return { proc, conn, url };
}

async function call<T>(conn: RpcConnection, op: string, args: unknown): Promise<T> {
  return (await conn.call(op, args)).result as T;
}

async function rejectedRows(dir: string): Promise<Array<Record<string, string>>> {
  return parse(await readFile(join(dir, REJECTED_FILE), 'utf8'), { columns: true }) as Array<Record<string, string>>;
}

/** The snapshot the previous version wrote at a clean stop: names in code-unit order, written as UTF-8. */
const OLD_ROWS = [
  'b.txt,fs1,ws://127.0.0.1:12001,primary,4',
  'b.txt,fs2,ws://127.0.0.1:12002,replica,4',
  'notes/a.txt,fs2,ws://127.0.0.1:12002,primary,1',
  'notes/a.txt,fs3,ws://127.0.0.1:12003,replica,1',
  'x\ud800,fs3,ws://127.0.0.1:12003,primary,2',
  'x\ud800,fs1,ws://127.0.0.1:12001,replica,2',
  'x\udc00,fs1,ws://127.0.0.1:12001,primary,3',
  'x\udc00,fs2,ws://127.0.0.1:12002,replica,3',
];

test.after(async () => {
  for (const conn of conns) conn.close();
  await stopAll();
  for (const dir of dirs) await removeDir(dir);
});

test('the previous version’s table with collapsed U+FFFD rows: starts, serves, logs and keeps the bad rows', async () => {
  const dir = await tempDir('dfs-migration-');
  dirs.push(dir);
  // writeFile encodes a lone surrogate as U+FFFD, as the previous version did.
  await writeFile(join(dir, SNAPSHOT_FILE), ['name,server_id,server_url,role,epoch', ...OLD_ROWS, ''].join('\n'));
  await writeFile(join(dir, JOURNAL_FILE), 'op,name,server_id,server_url,role,epoch\n');
  await writeFile(join(dir, EPOCH_FILE), '4\n');
  assert.ok((await readFile(join(dir, SNAPSHOT_FILE), 'utf8')).includes('x\ufffd,fs3'));

  const { proc, conn, url } = await startDirectory(dir);
  // The rows of epoch 2 (lines 6 and 7) lose to the newer ones of epoch 3.
  for (const line of [6, 7]) {
    const logged = proc.lines.find((l) => l.includes(' error set aside a table row') && l.includes(`line=${line} `));
    assert.ok(logged, `a log line for line ${line}:\n${proc.output()}`);
    assert.match(logged!, /file=file_table\.csv/);
    assert.match(logged!, /rows with epochs 2 and 3/);
  }
  assert.ok(proc.lines.some((l) => l.includes('table rows set aside') && l.includes(`to=${join(dir, REJECTED_FILE)}`)), proc.output());

  const status = await call<StatusResult>(conn, 'status', {});
  assert.is(status.rejectedRows, 2);
  assert.is(status.files, 3);
  assert.equal((await call<ListResult>(conn, 'list', {})).names, ['b.txt', 'notes/a.txt', 'x\ufffd']);
  const collapsed = await call<PlacementResult>(conn, 'placement', { name: 'x\ufffd' });
  assert.equal([collapsed.epoch, collapsed.primary.id, collapsed.replicas.map((r) => r.id)], [3, 'fs1', ['fs2']]);
  assert.is((await call<PlacementResult>(conn, 'placement', { name: 'notes/a.txt' })).primary.id, 'fs2');

  const kept = await rejectedRows(dir);
  assert.equal(
    kept.map((r) => [r.file, r.line, r.row]),
    [
      [SNAPSHOT_FILE, '6', 'x\ufffd,fs3,ws://127.0.0.1:12003,primary,2'],
      [SNAPSHOT_FILE, '7', 'x\ufffd,fs1,ws://127.0.0.1:12001,replica,2'],
    ],
  );
  assert.ok(kept.every((r) => !Number.isNaN(Date.parse(r.rejected_at!))));

  // A new file gets an epoch above every epoch the old table held: a file server comes up for it.
  const pki = await sharedPki();
  await pki.add({ role: 'file-server', id: 'fs1' });
  const fake = await connect(url, { transport: await pki.as('fs1') });
  conns.push(fake);
  const registered = await call<RegisterResult>(fake, 'register', { id: 'fs1', url: 'wss://127.0.0.1:12001' });
  await call(fake, 'synced', { id: 'fs1', upTo: registered.markSeq, boot: registered.boot });
  assert.is((await call<Placement>(conn, 'create', { name: 'c.txt' })).epoch, 5);

  // Stopped cleanly and started again: the table is clean now, and nothing is set aside twice.
  proc.signal('SIGTERM');
  assert.equal(await proc.waitForExit(), { code: 0, signal: null });
  const again = await startDirectory(dir);
  assert.is((await call<StatusResult>(again.conn, 'status', {})).rejectedRows, 0);
  assert.not.ok(again.proc.lines.some((l) => l.includes('set aside')));
  assert.equal((await call<ListResult>(again.conn, 'list', {})).names, ['b.txt', 'c.txt', 'notes/a.txt', 'x\ufffd']);
  assert.is((await rejectedRows(dir)).length, 2);
});

test('the same collapse interrupted by a crash, the second name still in the journal, also loads', async () => {
  const dir = await tempDir('dfs-migration-');
  dirs.push(dir);
  await writeFile(join(dir, SNAPSHOT_FILE), ['name,server_id,server_url,role,epoch', ...OLD_ROWS.slice(2, 6), ''].join('\n'));
  await writeFile(join(dir, JOURNAL_FILE), ['op,name,server_id,server_url,role,epoch', ...OLD_ROWS.slice(6).reverse().map((row) => `add,${row}`), ''].join('\n'));
  const { proc, conn } = await startDirectory(dir);
  assert.is((await call<StatusResult>(conn, 'status', {})).rejectedRows, 2);
  assert.is((await call<PlacementResult>(conn, 'placement', { name: 'x\ufffd' })).epoch, 3);
  assert.equal((await rejectedRows(dir)).map((r) => r.line), ['4', '5']);
  assert.ok(proc.lines.some((l) => / error set aside a table row .*created again \(epoch 3\) without being removed/.test(l)), proc.output());
});

test('a folder without placement epochs (5-column snapshot, 6-column journal) loads at placement epoch 1 and is rewritten', async () => {
  const dir = await tempDir('dfs-migration-');
  dirs.push(dir);
  await writeFile(join(dir, SNAPSHOT_FILE), ['name,server_id,server_url,role,epoch', ...OLD_ROWS.slice(0, 4), ''].join('\n'));
  await writeFile(
    join(dir, JOURNAL_FILE),
    ['op,name,server_id,server_url,role,epoch', 'add,c.txt,fs3,ws://127.0.0.1:12003,replica,5', 'add,c.txt,fs1,ws://127.0.0.1:12001,primary,5', 'remove,b.txt,,,,4', ''].join('\n'),
  );
  await writeFile(join(dir, EPOCH_FILE), '4\n');
  const { proc, conn } = await startDirectory(dir);
  assert.not.ok(proc.lines.some((l) => / (error|warn) /.test(l)), proc.output());
  assert.equal((await call<ListResult>(conn, 'list', {})).names, ['c.txt', 'notes/a.txt']);
  const c = await call<PlacementResult>(conn, 'placement', { name: 'c.txt' });
  assert.equal([c.epoch, c.primary.id, c.replicas.map((r) => r.id)], [5, 'fs1', ['fs3']]);
  // Rewritten by the load's compaction, before the first request is answered.
  assert.is(
    await readFile(join(dir, SNAPSHOT_FILE), 'utf8'),
    SNAPSHOT_HEADER +
      ['c.txt,fs1,ws://127.0.0.1:12001,primary,5,1', 'c.txt,fs3,ws://127.0.0.1:12003,replica,5,1', 'notes/a.txt,fs2,ws://127.0.0.1:12002,primary,1,1', 'notes/a.txt,fs3,ws://127.0.0.1:12003,replica,1,1', ''].join('\n'),
  );
  assert.is(await readFile(join(dir, JOURNAL_FILE), 'utf8'), JOURNAL_HEADER);
  proc.signal('SIGTERM');
  assert.equal(await proc.waitForExit(), { code: 0, signal: null });
});

test.run();
