/**
 * The behind marks on disk (servers/directory/mark-store.ts): replay, a torn last line, clears,
 * and a reopen that keeps only the marks in force.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { MARKS_FILE, MarkStore, replayMarks, type MarkedCopy } from '../servers/directory/mark-store.js';
import { removeDir, tempDir } from './helpers/process.js';

const test = suite('mark-store');

test('replay: a clear undoes a mark, a torn last line and unreadable lines are skipped', () => {
  const text = ['op,server_id,name', 'mark,fs-1,a.txt', 'mark,fs-2,"b, with a comma.txt"', 'clear,fs-1,a.txt', 'mark,fs-1,c.txt', 'what,is,this', 'mark,fs-3,cut.t'].join('\n');
  const { marks, badLines } = replayMarks(text);
  assert.equal(marks, [
    { server: 'fs-2', name: 'b, with a comma.txt' },
    { server: 'fs-1', name: 'c.txt' },
  ]);
  assert.equal(badLines, [6]);
});

test('marks are durable once mark() resolves; a reopen keeps those in force and rewrites the file', async () => {
  const dir = await tempDir();
  try {
    let current: MarkedCopy[] = [];
    const first = await MarkStore.open(dir, () => current);
    assert.equal(first.marks, []);
    await first.store.mark([{ server: 'fs-1', name: 'x' }, { server: 'fs-2', name: 'y' }]);
    first.store.clear([{ server: 'fs-1', name: 'x' }]);
    current = [{ server: 'fs-2', name: 'y' }];
    await first.store.close();
    // As a crash would leave it: a mark whose call was never answered, cut short.
    await writeFile(join(dir, MARKS_FILE), (await readFile(join(dir, MARKS_FILE), 'utf8')) + 'mark,fs-3,torn');
    const second = await MarkStore.open(dir, () => current);
    assert.equal(second.marks, [{ server: 'fs-2', name: 'y' }]);
    await second.store.close();
    assert.is(await readFile(join(dir, MARKS_FILE), 'utf8'), 'op,server_id,name\nmark,fs-2,y\n');
  } finally {
    await removeDir(dir);
  }
});

test.run();
