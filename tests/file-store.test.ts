import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readdir, writeFile, readFile, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { FileStore, ORPHAN_FOLDER, ORPHAN_KEEP_MS } from '../servers/file/store.js';
import { nameKey } from '../servers/file/version-file.js';
import { silentLogger } from '../shared/log.js';
import { DfsError } from '../shared/errors.js';
import { removeDir, tempDir } from './helpers/process.js';

const test = suite('file store');

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts);
}

async function put(store: FileStore, name: string, epoch: number, version: number, content: string, mode: 'replace' | 'append' = 'replace') {
  const staged = await store.stage(name, epoch, version, mode);
  await staged.write(Buffer.from(content));
  const header = await staged.seal({ mtime: 1, token: 1, requestId: `r${version}`, placementEpoch: 1 });
  return store.commit(staged, header);
}

test('versions commit, append builds on the current content, and survive reopening', async () => {
  const dir = await tempDir();
  let store = await FileStore.open(dir, silentLogger);
  await put(store, 'notes/a.txt', 1, 1, 'hello ');
  await put(store, 'notes/a.txt', 1, 2, 'world', 'append');
  assert.is((await store.readAll(store.get('notes/a.txt')!)).toString(), 'hello world');
  assert.is(store.metaFor('notes/a.txt', 1).version, 2);
  assert.is(store.metaFor('notes/a.txt', 2).version, 0, 'another epoch is a different file');
  await store.close();
  store = await FileStore.open(dir, silentLogger);
  const meta = store.get('notes/a.txt')!;
  assert.is(meta.version, 2);
  assert.is(meta.requestId, 'r2');
  assert.is((await collect(store.readContent(meta))).toString(), 'hello world');
  assert.is((await readdir(join(dir, 'store'))).length, 1, 'old versions are unlinked');
  await store.close();
  await removeDir(dir);
});

test('a staged version that never commits leaves the old one current; leftovers are swept', async () => {
  const dir = await tempDir();
  let store = await FileStore.open(dir, silentLogger);
  await put(store, 'f', 1, 1, 'old');
  const staged = await store.stage('f', 1, 2, 'replace');
  await staged.write(Buffer.from('new but never committed'));
  await staged.seal({ mtime: 2, token: 2, requestId: 'x', placementEpoch: 1 });
  // A crash here: the temp file is on disk, the rename never happened.
  await store.close();
  store = await FileStore.open(dir, silentLogger);
  assert.is((await store.readAll(store.get('f')!)).toString(), 'old');
  assert.equal(await readdir(join(dir, 'store')), [`${nameKey('f')}.1.1`]);
  await store.close();
  await removeDir(dir);
});

test('an older version left by a crash loses to the newest at start', async () => {
  const dir = await tempDir();
  let store = await FileStore.open(dir, silentLogger);
  await put(store, 'f', 1, 1, 'one');
  const v1 = await readFile(store.get('f')!.path);
  await put(store, 'f', 1, 2, 'two');
  await writeFile(join(dir, 'store', `${nameKey('f')}.1.1`), v1); // unlink of v1 "lost" in a crash
  await store.close();
  store = await FileStore.open(dir, silentLogger);
  assert.is((await store.readAll(store.get('f')!)).toString(), 'two');
  await store.close();
  await removeDir(dir);
});

test('a damaged copy is detected on read and set aside at start', async () => {
  const dir = await tempDir();
  let store = await FileStore.open(dir, silentLogger);
  const stored = await put(store, 'f', 1, 1, 'precious content');
  const raw = await readFile(stored.path);
  raw[raw.length - 1] ^= 0xff;
  await writeFile(stored.path, raw);
  const err = await store.readAll(store.get('f')!).catch((e: unknown) => e);
  assert.instance(err, DfsError);
  assert.is((err as DfsError).code, 'CHECKSUM');
  // a truncated file (size mismatch with its header) is set aside when the store opens
  await writeFile(stored.path, raw.subarray(0, raw.length - 3));
  await store.close();
  store = await FileStore.open(dir, silentLogger);
  assert.is(store.get('f'), undefined);
  await store.close();
  await removeDir(dir);
});

test('binary content of every byte value round-trips', async () => {
  const dir = await tempDir();
  const store = await FileStore.open(dir, silentLogger);
  const bytes = Buffer.from(Array.from({ length: 256 * 4 }, (_, i) => i % 256));
  const staged = await store.stage('bin', 1, 1, 'replace');
  await staged.write(bytes);
  const header = await staged.seal({ mtime: 1, token: 1, requestId: 'b', placementEpoch: 1 });
  await store.commit(staged, header);
  assert.ok((await store.readAll(store.get('bin')!)).equals(bytes));
  await store.close();
  await removeDir(dir);
});

test('an orphaned copy leaves the store but is kept, until its keeping time has passed', async () => {
  const dir = await tempDir();
  let store = await FileStore.open(dir, silentLogger);
  await put(store, 'kept.txt', 1, 3, 'precious');
  await put(store, 'old.txt', 2, 1, 'stale');
  assert.is(await store.orphan('kept.txt'), true);
  assert.is(await store.orphan('old.txt'), true);
  assert.is(await store.orphan('never.txt'), false);
  assert.is(store.get('kept.txt'), undefined);
  const orphans = await readdir(join(dir, ORPHAN_FOLDER));
  assert.equal(orphans.sort(), [`${nameKey('kept.txt')}.1.3`, `${nameKey('old.txt')}.2.1`].sort());
  assert.match((await readFile(join(dir, ORPHAN_FOLDER, `${nameKey('kept.txt')}.1.3`))).toString(), /precious$/);
  await store.close();
  // one of them has been kept past its time
  const longAgo = new Date(Date.now() - ORPHAN_KEEP_MS - 60_000);
  await utimes(join(dir, ORPHAN_FOLDER, `${nameKey('old.txt')}.2.1`), longAgo, longAgo);
  store = await FileStore.open(dir, silentLogger);
  assert.equal(await readdir(join(dir, ORPHAN_FOLDER)), [`${nameKey('kept.txt')}.1.3`]);
  assert.is(store.count, 0, 'orphans are not loaded as copies');
  await store.close();
  await removeDir(dir);
});

test.run();
