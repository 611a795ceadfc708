import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ContentCache, type CachedFile } from '../client/cache.js';

const test = suite('client cache');

const entry = (name: string, version: number, bytes: number, epoch = 1): CachedFile => ({
  name,
  epoch,
  version,
  size: bytes,
  sha256: 'x'.repeat(64),
  mtime: 0,
  content: Buffer.alloc(bytes, version),
});

test('bounded by bytes, least recently used goes first', () => {
  const cache = new ContentCache(10_000);
  cache.set(entry('a', 1, 2000));
  cache.set(entry('b', 1, 2000));
  cache.set(entry('c', 1, 2000));
  cache.get('a'); // a is now the most recently used
  cache.set(entry('d', 1, 2000));
  cache.set(entry('e', 1, 2000));
  assert.ok(cache.bytes <= 10_000);
  assert.ok(cache.get('a'), 'recently used entry kept');
  assert.is(cache.get('b'), undefined, 'least recently used entry evicted');
});

test('an entry over a quarter of the cache is not cached, and drops an older copy', () => {
  const cache = new ContentCache(10_000);
  cache.set(entry('big', 1, 100));
  cache.set(entry('big', 2, 3000));
  assert.is(cache.get('big'), undefined);
});

test('never goes back to an older version of the same epoch; a new epoch replaces', () => {
  const cache = new ContentCache(10_000);
  cache.set(entry('f', 5, 10));
  cache.set(entry('f', 4, 10));
  assert.is(cache.get('f')?.version, 5);
  cache.set(entry('f', 1, 10, 2));
  assert.is(cache.get('f')?.epoch, 2);
});

test.run();
