/**
 * The owners and modes on disk (servers/directory/attribute-store.ts): sets durable across a
 * reopen, the latest row winning, incarnations kept apart by epoch, orphans dropped on open, a
 * torn last line, compaction, and the defaults for files that have no row.
 */
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ATTRIBUTES_FILE, AttributeStore, replayAttributes } from '../servers/directory/attribute-store.js';
import { DfsError } from '../shared/errors.js';
import { DEFAULT_MODE, PRIVATE_MODE } from '../shared/permissions.js';
import { removeDir, tempDir } from './helpers/process.js';

const test = suite('attribute-store');

const HEADER = 'op,name,epoch,owner,mode\n';

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await tempDir();
  try {
    await fn(dir);
  } finally {
    await removeDir(dir);
  }
}

const keepAll = () => undefined;

test('replay: the latest row of a (name, epoch) wins, drops remove one incarnation, bad lines are skipped', () => {
  const text = [
    'op,name,epoch,owner,mode',
    'set,a.txt,1,alice,rw-------',
    'set,a.txt,1,alice,rw-r--r--',
    'set,"b, with a comma.txt",2,"bob, jr",rw-r-----',
    'set,c.txt,3,carol,rw-------',
    'drop,c.txt,3,,',
    'set,c.txt,4,dave,rw-------',
    'drop,c.txt,3,,', // an old incarnation's drop does not touch the new one
    'set,d.txt,5,eve,rwxr-xr-x', // no execute bits
    'set,d.txt,0,eve,rw-------', // epochs start at 1
    'set,/abs,6,eve,rw-------',
    'what,e.txt,7,eve,rw-------',
    'set,e.txt,8,,rw-------',
    'set,e.txt,9,eve',
    'set,torn.txt,10,eve,rw-',
  ].join('\n');
  const { rows, badLines } = replayAttributes(text);
  assert.equal(rows, [
    { name: 'a.txt', epoch: 1, owner: 'alice', mode: DEFAULT_MODE },
    { name: 'b, with a comma.txt', epoch: 2, owner: 'bob, jr', mode: 0o640 },
    { name: 'c.txt', epoch: 4, owner: 'dave', mode: PRIVATE_MODE },
  ]);
  assert.equal(badLines, [9, 10, 11, 12, 13, 14]);
});

test('a set is durable once it resolves, and seen only then; a reopen keeps the latest row', async () => {
  await withDir(async (dir) => {
    const first = await AttributeStore.open(dir, { live: keepAll });
    assert.is(first.get('a.txt', 1), undefined);
    const making = first.set('a.txt', 1, 'alice', PRIVATE_MODE);
    assert.is(first.get('a.txt', 1), undefined, 'not seen before it is durable');
    await making;
    assert.equal(first.get('a.txt', 1), { epoch: 1, owner: 'alice', mode: PRIVATE_MODE });
    const opening = first.set('a.txt', 1, 'alice', DEFAULT_MODE);
    assert.is(first.get('a.txt', 1)!.mode, PRIVATE_MODE, 'the old mode until the new one is durable');
    await opening;
    assert.is(first.get('a.txt', 1)!.mode, DEFAULT_MODE);
    await first.set('b.txt', 2, 'bob', 0o640);
    // No close: what a crash would leave.
    const second = await AttributeStore.open(dir, { live: keepAll });
    assert.equal(second.attributesOf('a.txt', 1, 'admin'), { epoch: 1, owner: 'alice', mode: DEFAULT_MODE });
    assert.equal(second.attributesOf('b.txt', 2, 'admin'), { epoch: 2, owner: 'bob', mode: 0o640 });
    assert.is(second.size, 2);
    await first.close();
    await second.close();
    assert.is(await readFile(join(dir, ATTRIBUTES_FILE), 'utf8'), HEADER + 'set,a.txt,1,alice,rw-r--r--\nset,b.txt,2,bob,rw-r-----\n');
  });
});

test('files without a row belong to the fallback owner with rw-r--r--', async () => {
  await withDir(async (dir) => {
    const store = await AttributeStore.open(dir, { live: () => [['old.txt', 7]] });
    assert.is(store.get('old.txt', 7), undefined);
    assert.equal(store.attributesOf('old.txt', 7, 'admin'), { owner: 'admin', mode: DEFAULT_MODE });
    await store.close();
    assert.is(await readFile(join(dir, ATTRIBUTES_FILE), 'utf8'), HEADER, 'nothing is written for them');
  });
});

test('epochs keep incarnations apart: a re-created file gets none of the old attributes', async () => {
  await withDir(async (dir) => {
    const store = await AttributeStore.open(dir, { live: keepAll });
    await store.set('n.txt', 1, 'alice', PRIVATE_MODE);
    store.drop('n.txt');
    assert.is(store.get('n.txt', 1), undefined);
    assert.is(store.get('n.txt', 2), undefined);
    await store.set('n.txt', 2, 'bob', DEFAULT_MODE);
    assert.is(store.get('n.txt', 1), undefined);
    assert.is(store.get('n.txt', 2)!.owner, 'bob');

    // Two creates of one name racing: each keeps its own until the loser drops its epoch.
    await Promise.all([store.set('r.txt', 3, 'alice', PRIVATE_MODE), store.set('r.txt', 4, 'bob', DEFAULT_MODE)]);
    assert.equal(store.get('r.txt', 3), { epoch: 3, owner: 'alice', mode: PRIVATE_MODE });
    assert.equal(store.get('r.txt', 4), { epoch: 4, owner: 'bob', mode: DEFAULT_MODE });
    store.drop('r.txt', 4);
    assert.is(store.get('r.txt', 4), undefined);
    assert.is(store.get('r.txt', 3)!.owner, 'alice');
    await store.close();

    const again = await AttributeStore.open(dir, { live: keepAll });
    assert.is(again.get('n.txt', 1), undefined);
    assert.is(again.get('n.txt', 2)!.owner, 'bob');
    assert.is(again.get('r.txt', 3)!.owner, 'alice');
    assert.is(again.get('r.txt', 4), undefined);
    await again.close();
  });
});

test('open drops rows whose (name, epoch) is not in the table', async () => {
  await withDir(async (dir) => {
    const store = await AttributeStore.open(dir, { live: keepAll });
    await store.set('kept.txt', 1, 'alice', PRIVATE_MODE);
    await store.set('orphan.txt', 2, 'bob', PRIVATE_MODE); // its table row never made it
    await store.set('recreated.txt', 3, 'carol', PRIVATE_MODE); // the table has epoch 5 now
    await store.close();
    const live: Array<[string, number]> = [['kept.txt', 1], ['recreated.txt', 5], ['no-row.txt', 4]];
    const again = await AttributeStore.open(dir, { live: () => live });
    assert.is(again.get('kept.txt', 1)!.owner, 'alice');
    assert.is(again.get('orphan.txt', 2), undefined);
    assert.is(again.get('recreated.txt', 3), undefined);
    assert.equal(again.attributesOf('recreated.txt', 5, 'admin'), { owner: 'admin', mode: DEFAULT_MODE });
    assert.is(again.size, 1);
    await again.close();
    assert.is(await readFile(join(dir, ATTRIBUTES_FILE), 'utf8'), HEADER + 'set,kept.txt,1,alice,rw-------\n');
  });
});

test('a torn last line is ignored, and appends after it start on a line of their own', async () => {
  await withDir(async (dir) => {
    const store = await AttributeStore.open(dir, { live: keepAll });
    await store.set('a.txt', 1, 'alice', PRIVATE_MODE);
    await store.close();
    const path = join(dir, ATTRIBUTES_FILE);
    await writeFile(path, (await readFile(path, 'utf8')) + 'set,b.txt,2,bob,rw-r');
    const again = await AttributeStore.open(dir, { live: keepAll });
    assert.is(again.get('b.txt', 2), undefined);
    await again.set('c.txt', 3, 'carol', DEFAULT_MODE);
    await again.close();
    const third = await AttributeStore.open(dir, { live: keepAll });
    assert.is(third.get('a.txt', 1)!.owner, 'alice');
    assert.is(third.get('c.txt', 3)!.owner, 'carol');
    await third.close();
  });
});

test('compaction keeps what is in force, changes made during it included', async () => {
  await withDir(async (dir) => {
    const store = await AttributeStore.open(dir, { live: keepAll });
    await store.set('gone.txt', 1, 'alice', DEFAULT_MODE);
    const sets: Array<Promise<void>> = [];
    // Over 10,000 rows for 3 files: at least one rewrite, with sets and drops queued around it.
    for (let i = 0; i < 12_000; i++) {
      sets.push(store.set('busy.txt', 2, i % 2 === 0 ? 'bob' : 'carol', i % 3 === 0 ? PRIVATE_MODE : DEFAULT_MODE));
      if (i === 11_000) store.drop('gone.txt');
    }
    sets.push(store.set('last.txt', 3, 'dave', 0o640));
    await Promise.all(sets);
    // i = 11,999: carol, DEFAULT_MODE.
    assert.equal(store.get('busy.txt', 2), { epoch: 2, owner: 'carol', mode: DEFAULT_MODE });
    await store.close();
    const lines = (await readFile(join(dir, ATTRIBUTES_FILE), 'utf8')).split('\n').length;
    assert.ok(lines < 10_000, `the file was rewritten (${lines} lines)`);
    assert.equal(
      (await readdir(dir)).filter((f) => f.endsWith('.tmp')),
      [],
    );
    const again = await AttributeStore.open(dir, { live: keepAll });
    assert.equal(again.get('busy.txt', 2), { epoch: 2, owner: 'carol', mode: DEFAULT_MODE });
    assert.is(again.get('gone.txt', 1), undefined);
    assert.equal(again.get('last.txt', 3), { epoch: 3, owner: 'dave', mode: 0o640 });
    assert.is(again.size, 2);
    await again.close();
  });
});

test('bad names, epochs, owners and modes are refused', async () => {
  await withDir(async (dir) => {
    const store = await AttributeStore.open(dir, { live: keepAll });
    await store.set('a', 1, ['al', 'ice'].join(''), DEFAULT_MODE);
    await store.set('b', 2, ['ali', 'ce'].join(''), DEFAULT_MODE);
    assert.is(store.get('a', 1)!.owner, 'alice');
    for (const [name, epoch, owner, mode] of [
      ['/a', 1, 'alice', DEFAULT_MODE],
      ['a', 0, 'alice', DEFAULT_MODE],
      ['a', 1, '', DEFAULT_MODE],
      ['a', 1, 'al\nice', DEFAULT_MODE],
      ['a', 1, 'alice', 0o755],
    ] as const) {
      try {
        await store.set(name, epoch, owner, mode);
        assert.unreachable(`${name} ${epoch} ${owner} ${mode} was accepted`);
      } catch (err) {
        assert.instance(err, DfsError);
        assert.is((err as DfsError).code, 'BAD_REQUEST');
      }
    }
    assert.is(store.get('a', 1)!.mode, DEFAULT_MODE);
    await store.close();
  });
});

test.run();
