import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readFile, writeFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { FencingCounter, FENCING_FILE } from '../servers/lock/fencing.js';
import { DfsError } from '../shared/errors.js';
import { tempDir, removeDir } from './helpers/process.js';
import { waitFor } from './helpers/wait.js';

const test = suite('lock-fencing');

let dir: string;

test.before.each(async () => {
  dir = await tempDir('dfs-fencing-');
});

test.after.each(async () => {
  await removeDir(dir);
});

async function storedCeiling(): Promise<number> {
  return (JSON.parse(await readFile(join(dir, FENCING_FILE), 'utf8')) as { ceiling: number }).ceiling;
}

function issueAll(counter: FencingCounter, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const token = counter.issue();
    if (token === null) throw new Error(`no token after ${i}`);
    out.push(token);
  }
  return out;
}

test('a new counter starts at 1 with its first block durable', async () => {
  const counter = await FencingCounter.open(dir, { blockSize: 100 });
  assert.is(await storedCeiling(), 100);
  assert.is(counter.issue(), 1);
  assert.is(counter.issue(), 2);
  assert.is(counter.lastIssued, 2);
  await counter.close();
});

test('tokens keep growing across a clean reopen and across a crash (no close)', async () => {
  let counter = await FencingCounter.open(dir, { blockSize: 10 });
  const first = issueAll(counter, 3);
  await counter.close();
  counter = await FencingCounter.open(dir, { blockSize: 10 });
  const second = issueAll(counter, 3);
  assert.ok(second[0]! > first[2]!, `${second} after ${first}`);
  // "crash": abandon the instance without closing it, open another on the same folder
  const third = await FencingCounter.open(dir, { blockSize: 10 });
  const after = issueAll(third, 3);
  assert.ok(after[0]! > second[2]!, `${after} after ${second}`);
  const all = [...first, ...second, ...after];
  for (let i = 1; i < all.length; i++) assert.ok(all[i]! > all[i - 1]!);
  await counter.close();
  await third.close();
});

test('a block is reserved ahead once half is used; when it runs out, tokens wait for the disk', async () => {
  const counter = await FencingCounter.open(dir, { blockSize: 10 });
  let available = 0;
  counter.onAvailable(() => available++);
  const tokens = issueAll(counter, 10);
  assert.equal(tokens, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  // the reservation started at half a block is still being written: no token can be issued yet
  assert.is(counter.issue(), null);
  await waitFor(() => available > 0, { what: 'tokens to become available' });
  assert.is(counter.issue(), 11);
  assert.ok((await storedCeiling()) >= 20, 'the next block is durable before its tokens are issued');
  assert.is(available, 1);
  await counter.close();
});

test('issuing far into the future stays ahead of the stored ceiling', async () => {
  const counter = await FencingCounter.open(dir, { blockSize: 50 });
  let last = 0;
  for (let round = 0; round < 20; round++) {
    for (;;) {
      const token = counter.issue();
      if (token === null) break;
      assert.ok(token > last);
      last = token;
      assert.ok(token <= counter.ceiling);
    }
    await new Promise<void>((resolve) => counter.onAvailable(resolve));
  }
  assert.ok(last >= 20 * 50);
  await counter.close();
  const reopened = await FencingCounter.open(dir, { blockSize: 50 });
  assert.ok(reopened.issue()! > last);
  await reopened.close();
});

test('a corrupt counter file refuses to start rather than reissue tokens', async () => {
  await writeFile(join(dir, FENCING_FILE), '{"ceiling": "lots"}');
  const err = await FencingCounter.open(dir).catch((e: unknown) => e);
  assert.instance(err, DfsError);
  assert.match((err as DfsError).message, 'refusing to start');
  await writeFile(join(dir, FENCING_FILE), 'garbage');
  assert.instance(await FencingCounter.open(dir).catch((e: unknown) => e), DfsError);
});

test('temp files left by a crash mid-write are cleaned up; the stored ceiling wins', async () => {
  await writeFile(join(dir, FENCING_FILE), JSON.stringify({ ceiling: 5000 }));
  await writeFile(join(dir, `.${FENCING_FILE}.deadbeef.tmp`), '{"ceil');
  const counter = await FencingCounter.open(dir, { blockSize: 10 });
  assert.is(counter.issue(), 5001);
  assert.equal((await readdir(dir)).sort(), [FENCING_FILE]);
  await counter.close();
});

test.run();
