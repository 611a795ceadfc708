/**
 * The lock holders on disk (servers/lock/holder-store.ts): a temp folder, no sockets. A crash is
 * an instance abandoned without close, its folder opened again.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readFile, writeFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { HolderStore, JOURNAL_FILE, SNAPSHOT_FILE } from '../servers/lock/holder-store.js';
import { FENCING_FILE } from '../servers/lock/fencing.js';
import { silentLogger } from '../shared/log.js';
import { removeDir, tempDir } from './helpers/process.js';

const test = suite('lock-store');
const HASH = 'b'.repeat(64);
const log = silentLogger;

let dir: string;

test.before.each(async () => {
  dir = await tempDir('dfs-lock-store-');
});

test.after.each(async () => {
  await removeDir(dir);
});

const open = (compactAfter?: number) => HolderStore.open(dir, compactAfter === undefined ? { log } : { log, compactAfter });

test('a data folder from before the journal (only fencing.json) loads with nothing held', async () => {
  await writeFile(join(dir, FENCING_FILE), '{"ceiling":3000}\n');
  const { store, restored } = await open();
  assert.equal(restored, { sessions: [], holders: [] });
  await store.close();
  assert.is(await readFile(join(dir, FENCING_FILE), 'utf8'), '{"ceiling":3000}\n', 'untouched');
});

test('acknowledged grants survive a crash; releases and ends written after them too', async () => {
  const first = await open();
  first.store.session({ id: 'aaaaaaaa', label: 'alice', secretHash: HASH });
  first.store.session({ id: 'bbbbbbbb', label: 'bob', secretHash: HASH });
  // Concurrent grants share fsyncs (group commit); each resolves once durable.
  await Promise.all(Array.from({ length: 200 }, (_, i) => first.store.grant([{ name: `f${i}.txt`, session: i % 2 ? 'aaaaaaaa' : 'bbbbbbbb', token: i + 1, since: 1 }])));
  first.store.release('f0.txt', 1);
  first.store.end('bbbbbbbb');
  await first.store.grant([{ name: 'late.txt', session: 'aaaaaaaa', token: 500, since: 2 }]);
  // crash: no close
  const { store, restored } = await open();
  assert.equal(restored.sessions.map((s) => s.id), ['aaaaaaaa']);
  assert.is(restored.holders.length, 101);
  assert.ok(restored.holders.every((h) => h.session === 'aaaaaaaa'));
  assert.ok(restored.holders.some((h) => h.name === 'late.txt' && h.token === 500));
  await store.close();
  await first.store.close(); // only now, so that it cannot help the restart
});

test('sessions that hold nothing are not restored', async () => {
  const first = await open();
  first.store.session({ id: 'aaaaaaaa', label: 'alice', secretHash: HASH });
  await first.store.grant([{ name: 'x.txt', session: 'aaaaaaaa', token: 1, since: 1 }]);
  first.store.release('x.txt', 1);
  await first.store.close();
  const { store, restored } = await open();
  assert.equal(restored, { sessions: [], holders: [] });
  await store.close();
});

test('the journal is compacted into the snapshot as it grows, and at start', async () => {
  const first = await open(50);
  first.store.session({ id: 'aaaaaaaa', label: 'alice', secretHash: HASH });
  for (let i = 1; i <= 400; i++) {
    await first.store.grant([{ name: 'churn.txt', session: 'aaaaaaaa', token: i, since: i }]);
    first.store.release('churn.txt', i);
  }
  await first.store.grant([{ name: 'kept.txt', session: 'aaaaaaaa', token: 1000, since: 1 }]);
  const journal = (await readFile(join(dir, JOURNAL_FILE), 'utf8')).split('\n').filter(Boolean).length;
  assert.ok(journal <= 120, `journal holds ${journal} records after 801 appends`);
  const { store, restored } = await open(50);
  assert.equal(restored.holders, [{ name: 'kept.txt', session: 'aaaaaaaa', token: 1000, since: 1 }]);
  assert.is((await stat(join(dir, JOURNAL_FILE))).size, 0, 'compacted at start');
  await store.close();
});

test('a crash between writing the snapshot and emptying the journal restores the same holders', async () => {
  const first = await open();
  first.store.session({ id: 'aaaaaaaa', label: 'alice', secretHash: HASH });
  await first.store.grant([{ name: 'x.txt', session: 'aaaaaaaa', token: 7, since: 1 }]);
  await first.store.grant([{ name: 'y.txt', session: 'aaaaaaaa', token: 8, since: 1 }]);
  first.store.release('y.txt', 8);
  await first.store.grant([{ name: 'z.txt', session: 'aaaaaaaa', token: 9, since: 1 }]);
  const journal = await readFile(join(dir, JOURNAL_FILE), 'utf8');
  await first.store.close(); // writes the snapshot and empties the journal
  await writeFile(join(dir, JOURNAL_FILE), journal); // as if the crash came before the emptying
  const { store, restored } = await open();
  assert.equal(restored.holders.map((h) => `${h.name}:${h.token}`).sort(), ['x.txt:7', 'z.txt:9']);
  await store.close();
  assert.ok(JSON.parse(await readFile(join(dir, SNAPSHOT_FILE), 'utf8')).holders.length === 2);
});

test.run();
