/**
 * File servers and the client library against real processes: concurrent appends, the
 * version-checked cache, crashes of replicas and primaries, fencing.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { nameKey } from '../servers/file/version-file.js';
import { DfsClient } from '../client/dfs-client.js';
import { DfsError } from '../shared/errors.js';
import type { FileServerStatus, PlacementResult, ReadResult } from '../shared/protocol.js';
import { Cluster } from './helpers/cluster.js';
import { waitFor } from './helpers/wait.js';

const test = suite('replication');
let cluster: Cluster;
const clients: DfsClient[] = [];

async function client(name: string, retryBudgetMs = 20_000): Promise<DfsClient> {
  const c = await cluster.client({ clientName: name, retryBudgetMs });
  clients.push(c);
  return c;
}

async function placement(name: string): Promise<PlacementResult> {
  return (await (await cluster.adminConn()).call('placement', { name })).result as PlacementResult;
}

/** Reads a file straight from one server (bypassing the directory), whole. */
async function readFrom(url: string, name: string): Promise<{ meta: ReadResult; content: Buffer }> {
  const conn = await cluster.connect(url, { as: 'fs-1' });
  try {
    const res = await conn.call('fetch', { name, epoch: (await placement(name)).epoch });
    const content = res.stream ? await res.stream.collect(1 << 30) : (res.body ?? Buffer.alloc(0));
    return { meta: res.result as ReadResult, content };
  } finally {
    conn.close();
  }
}

async function copiesOf(name: string): Promise<Array<{ id: string; meta: ReadResult; content: Buffer }>> {
  const p = await placement(name);
  return Promise.all([p.primary, ...p.replicas].map(async (s) => ({ id: s.id, ...(await readFrom(s.url, name)) })));
}

async function assertIdenticalCopies(name: string): Promise<Buffer> {
  const copies = await copiesOf(name);
  const first = copies[0]!;
  for (const c of copies) {
    assert.is(c.meta.version, first.meta.version, `${c.id} has v${c.meta.version}, ${first.id} v${first.meta.version}`);
    assert.ok(c.content.equals(first.content), `${c.id} differs from ${first.id}`);
    assert.is(createHash('sha256').update(c.content).digest('hex'), c.meta.sha256);
  }
  return first.content;
}

async function serverCounters(): Promise<FileServerStatus['counters'][]> {
  return Promise.all(
    cluster.servers.map(async (s) => {
      const conn = await cluster.connect(s.url);
      try {
        return ((await conn.call('status', {})).result as FileServerStatus).counters;
      } finally {
        conn.close();
      }
    }),
  );
}

test.before(async () => {
  cluster = await Cluster.start({ fileServers: 3, replication: 3, downAfterMs: 1500 });
});

test.after(async () => {
  for (const c of clients) c.close();
  await cluster.stop();
});

test('8 clients append concurrently: every append once, consecutive versions, identical replicas', async () => {
  const writers = await Promise.all(Array.from({ length: 8 }, (_, i) => client(`writer-${i}`)));
  await writers[0]!.create('shared/log.txt');
  const perClient = 5;
  const results = await Promise.all(
    writers.map(async (w, i) => {
      const versions: number[] = [];
      for (let j = 0; j < perClient; j++) versions.push((await w.append('shared/log.txt', `client ${i} line ${j}\n`)).version);
      return versions;
    }),
  );
  const versions = results.flat().sort((a, b) => a - b);
  assert.equal(versions, Array.from({ length: 8 * perClient }, (_, i) => i + 1));
  const content = (await assertIdenticalCopies('shared/log.txt')).toString();
  const lines = content.split('\n').filter(Boolean).sort();
  const expected = Array.from({ length: 8 }, (_, i) => Array.from({ length: perClient }, (_, j) => `client ${i} line ${j}`)).flat().sort();
  assert.equal(lines, expected);
  // and each client's own lines are in its order
  for (let i = 0; i < 8; i++) {
    const mine = content.split('\n').filter((l) => l.startsWith(`client ${i} `));
    assert.equal(mine, Array.from({ length: perClient }, (_, j) => `client ${i} line ${j}`));
  }
});

test('a second read of an unchanged file moves no content; a change is seen on the next read', async () => {
  const alice = await client('alice');
  const bob = await client('bob');
  await alice.create('cache/a.txt');
  await alice.write('cache/a.txt', 'first version');
  const first = await bob.read('cache/a.txt');
  assert.is(first.content.toString(), 'first version');
  assert.is(first.source, 'server');
  const before = await serverCounters();
  const second = await bob.read('cache/a.txt');
  const after = await serverCounters();
  assert.is(second.source, 'cache');
  assert.is(second.content.toString(), 'first version');
  const sum = (cs: FileServerStatus['counters'][], k: keyof FileServerStatus['counters']) => cs.reduce((n, c) => n + c[k], 0);
  assert.is(sum(after, 'contentBytesSent'), sum(before, 'contentBytesSent'), 'no content crossed the network');
  assert.is(sum(after, 'notModified'), sum(before, 'notModified') + 1);
  // the writer reads its own write from the cache too
  assert.is((await alice.read('cache/a.txt')).source, 'cache');
  await alice.write('cache/a.txt', 'second version');
  const third = await bob.read('cache/a.txt');
  assert.is(third.source, 'server');
  assert.is(third.content.toString(), 'second version');
  assert.is(third.version, 2);
});

test('a write with a stale or forged token changes nothing', async () => {
  const alice = await client('alice-fence');
  await alice.create('fence.txt');
  await alice.write('fence.txt', 'original');
  const p = await placement('fence.txt');
  const lock = await alice.lock('fence.txt');
  await alice.write('fence.txt', 'with the lock');
  await lock.release();
  const conn = await cluster.connect(p.primary.url);
  const attempt = (token: number) =>
    conn
      .call('write', { name: 'fence.txt', epoch: p.epoch, token, mode: 'replace', size: 6, requestId: `forged-${token}-x` }, { body: Buffer.from('forged') })
      .then(() => 'ok', (e: DfsError) => e.code);
  assert.is(await attempt(lock.token), 'STALE_TOKEN', 'a released token');
  assert.is(await attempt(lock.token + 1000), 'STALE_TOKEN', 'a forged token');
  const other = await alice.lock('fence.txt');
  assert.is(await attempt(lock.token), 'STALE_TOKEN', 'an older token while another is granted');
  await other.release();
  conn.close();
  const copies = await copiesOf('fence.txt');
  for (const c of copies) {
    assert.is(c.content.toString(), 'with the lock');
    assert.is(c.meta.version, 2);
  }
});

test('a retried append whose first attempt landed is not applied twice', async () => {
  const alice = await client('alice-retry');
  await alice.create('retry.txt');
  await alice.write('retry.txt', 'base\n');
  const p = await placement('retry.txt');
  const lock = await alice.lock('retry.txt');
  const conn = await cluster.connect(p.primary.url);
  const args = { name: 'retry.txt', epoch: p.epoch, token: lock.token, mode: 'append', size: 5, requestId: 'append-once-1234' };
  const first = (await conn.call('write', args, { body: Buffer.from('once\n') })).result as { version: number };
  // the answer "was lost": the client sends the very same write again
  const again = (await conn.call('write', args, { body: Buffer.from('once\n') })).result as { version: number };
  assert.is(again.version, first.version);
  await lock.release();
  conn.close();
  const copies = await copiesOf('retry.txt');
  for (const c of copies) assert.is(c.content.toString(), 'base\nonce\n');
});

test('a corrupted replica copy is detected, avoided, and repaired from the primary', async () => {
  const alice = await client('alice-corrupt');
  await alice.create('corrupt.txt');
  await alice.write('corrupt.txt', 'the true content');
  const p = await placement('corrupt.txt');
  const victim = cluster.server(p.replicas[0]!.id);
  const storeDir = join(victim.data, 'store');
  const file = (await readdir(storeDir)).find((f) => f.startsWith(nameKey('corrupt.txt')))!;
  const raw = await readFile(join(storeDir, file));
  raw[raw.length - 2] ^= 0x55;
  await writeFile(join(storeDir, file), raw);
  // every read returns the true content, whichever copy the directory picks
  for (let i = 0; i < 6; i++) {
    const reader = await client(`reader-corrupt-${i}`);
    assert.is((await reader.read('corrupt.txt')).content.toString(), 'the true content');
  }
  await waitFor(async () => {
    const { content } = await readFrom(victim.url, 'corrupt.txt');
    return content.toString() === 'the true content';
  }, { what: 'the damaged copy to be fetched again' });
  await cluster.waitInSync();
});

test('a corrupted primary copy is detected, taken out of service, and repaired from a replica; writes go on above the lost version', async () => {
  const alice = await client('alice-corrupt-primary');
  await alice.create('corrupt-primary.txt');
  await alice.write('corrupt-primary.txt', 'the true content');
  const p = await placement('corrupt-primary.txt');
  const primary = cluster.server(p.primary.id);
  const storeDir = join(primary.data, 'store');
  const file = (await readdir(storeDir)).find((f) => f.startsWith(nameKey('corrupt-primary.txt')))!;
  const raw = await readFile(join(storeDir, file));
  raw[raw.length - 2] ^= 0x55;
  await writeFile(join(storeDir, file), raw);
  // A read from the primary itself finds the damage: it refuses, never serving the bad bytes.
  const conn = await cluster.connect(primary.url);
  try {
    const refused = await conn.call('read', { name: 'corrupt-primary.txt' }).then(
      () => null,
      (e: DfsError) => e.code,
    );
    assert.is(refused, 'UNAVAILABLE');
  } finally {
    conn.close();
  }
  await waitFor(
    async () => {
      const { content } = await readFrom(primary.url, 'corrupt-primary.txt').catch(() => ({ content: Buffer.alloc(0) }));
      return content.toString() === 'the true content';
    },
    { what: 'the primary copy recovered from a replica' },
  );
  assert.ok((await readdir(storeDir)).some((f) => f.startsWith(nameKey('corrupt-primary.txt')) && f.endsWith('.damaged')), 'the damaged file is kept aside');
  const written = await alice.append('corrupt-primary.txt', ', and more');
  assert.ok(written.version > 1, 'the next version is numbered above the one set aside');
  assert.is((await assertIdenticalCopies('corrupt-primary.txt')).toString(), 'the true content, and more');
});

test('delete removes every copy under the lock; a name created again starts empty', async () => {
  const alice = await client('alice-rm');
  const bob = await client('bob-rm');
  await alice.create('rm/me.txt');
  await alice.write('rm/me.txt', 'doomed');
  assert.is((await bob.read('rm/me.txt')).content.toString(), 'doomed');
  const before = await placement('rm/me.txt');
  await alice.delete('rm/me.txt');
  const gone = await bob.read('rm/me.txt').catch((e: DfsError) => e.code);
  assert.is(gone, 'NOT_FOUND');
  for (const s of [before.primary, ...before.replicas]) {
    const server = cluster.server(s.id);
    const files = await readdir(join(server.data, 'store'));
    assert.not.ok(files.some((f) => f.startsWith(nameKey('rm/me.txt'))), `${s.id} still has a copy`);
  }
  await alice.create('rm/me.txt');
  const again = await bob.read('rm/me.txt');
  assert.is(again.content.length, 0);
  assert.is(again.version, 0);
  assert.ok((await placement('rm/me.txt')).epoch > before.epoch);
});

test('a binary file with all 256 byte values round-trips', async () => {
  const alice = await client('alice-bin');
  const bob = await client('bob-bin');
  const bytes = Buffer.alloc(256 * 64);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >> 8)) % 256;
  await alice.create('bin/all-bytes.bin');
  await alice.write('bin/all-bytes.bin', bytes);
  const back = await bob.read('bin/all-bytes.bin');
  assert.ok(back.content.equals(bytes));
  await assertIdenticalCopies('bin/all-bytes.bin');
});

test('kill -9 a replica during a stream of writes: writes and reads go on; it catches up on restart', async () => {
  const writer = await client('stream-writer');
  const reader = await client('stream-reader');
  await writer.create('stream.txt');
  await writer.write('stream.txt', 'v1\n');
  const p = await placement('stream.txt');
  const victim = cluster.server(p.replicas[0]!.id);
  let written = 1;
  const writes = (async () => {
    for (let i = 0; i < 40; i++) {
      await writer.append('stream.txt', `line ${i}\n`);
      written++;
    }
  })();
  await waitFor(() => written >= 5, { what: 'some writes' });
  await victim.proc.kill9();
  // reads keep working while the replica is gone
  for (let i = 0; i < 5; i++) assert.ok((await reader.read('stream.txt')).content.toString().startsWith('v1\n'));
  await writes;
  const latest = await reader.read('stream.txt');
  assert.is(latest.version, 41);
  await cluster.startFileServer(victim.id);
  await cluster.waitInSync(20_000);
  const content = await assertIdenticalCopies('stream.txt');
  assert.is(content.toString().split('\n').filter(Boolean).length, 41);
});

test('a replica that was down catches up on files deleted and created meanwhile', async () => {
  const alice = await client('alice-away');
  await alice.create('away/old.txt');
  await alice.write('away/old.txt', 'to be deleted');
  const p = await placement('away/old.txt');
  const victim = cluster.server(p.replicas[1]!.id);
  await victim.proc.kill9();
  await cluster.waitDown(victim.id);
  await alice.delete('away/old.txt');
  await alice.create('away/new.txt');
  await alice.write('away/new.txt', 'born while you were away');
  await cluster.startFileServer(victim.id);
  await cluster.waitInSync(20_000);
  const files = await readdir(join(victim.data, 'store'));
  assert.not.ok(files.some((f) => f.startsWith(nameKey('away/old.txt'))), 'the deleted file is gone from the returning replica');
  const content = await assertIdenticalCopies('away/new.txt');
  assert.is(content.toString(), 'born while you were away');
});

test('the directory and the lock service restart under running servers and clients', async () => {
  const alice = await client('alice-restart');
  await alice.create('restart.txt');
  await alice.write('restart.txt', 'before');
  await cluster.directory.stop();
  await cluster.startDirectory();
  await cluster.lock.stop();
  await cluster.startLock();
  await cluster.waitInSync(20_000);
  await alice.append('restart.txt', ' and after');
  const bob = await client('bob-restart');
  assert.is((await bob.read('restart.txt')).content.toString(), 'before and after');
  await assertIdenticalCopies('restart.txt');
});

test('file servers refuse bad input with typed errors and change nothing', async () => {
  const alice = await client('alice-bad');
  await alice.create('bad/input.txt');
  await alice.write('bad/input.txt', 'intact');
  const p = await placement('bad/input.txt');
  const lock = await alice.lock('bad/input.txt');
  const primary = await cluster.connect(p.primary.url);
  const replica = await cluster.connect(p.replicas[0]!.url);
  const code = (promise: Promise<unknown>) => promise.then(() => 'ok', (e: DfsError) => e.code);
  const write = { name: 'bad/input.txt', epoch: p.epoch, token: lock.token, mode: 'replace', size: 4, requestId: 'bad-input-0001' };
  assert.is(await code(primary.call('read', { name: '../../etc/passwd' })), 'BAD_REQUEST');
  assert.is(await code(primary.call('read', { name: 'bad/input.txt', ifVersion: -1 })), 'BAD_REQUEST');
  assert.is(await code(primary.call('format-disk', {})), 'BAD_REQUEST');
  assert.is(await code(primary.call('write', { ...write, mode: 'truncate' }, { body: Buffer.from('evil') })), 'BAD_REQUEST');
  assert.is(await code(primary.call('write', { ...write, size: 9 }, { body: Buffer.from('evil') })), 'BAD_REQUEST');
  assert.is(await code(primary.call('write', { ...write, sha256: '0'.repeat(64) }, { body: Buffer.from('evil') })), 'CHECKSUM');
  assert.is(await code(replica.call('write', write, { body: Buffer.from('evil') })), 'NOT_PRIMARY');
  const forged = { name: 'bad/input.txt', epoch: p.epoch, version: 99, baseVersion: 98, mode: 'replace', size: 4, from: p.replicas[1]!.id, placementEpoch: p.placementEpoch, mtime: 0 };
  // Replication needs a file server's certificate, one whose id is `from`, and that server the primary.
  assert.is(await code(replica.call('rep.write', forged, { body: Buffer.from('evil') })), 'UNAUTHENTICATED');
  const otherReplica = await cluster.connect(p.replicas[0]!.url, { as: p.replicas[1]!.id });
  const asPrimary = await cluster.connect(p.replicas[0]!.url, { as: p.primary.id });
  assert.is(await code(otherReplica.call('rep.write', forged, { body: Buffer.from('evil') })), 'NOT_PRIMARY');
  assert.is(await code(otherReplica.call('rep.write', { ...forged, from: p.primary.id }, { body: Buffer.from('evil') })), 'FORBIDDEN');
  assert.is(await code(otherReplica.call('rep.fence', { copies: [{ name: 'bad/input.txt', epoch: p.epoch, placementEpoch: p.placementEpoch + 1 }] })), 'FORBIDDEN');
  assert.is(await code(asPrimary.call('rep.write', { ...forged, from: p.primary.id }, { body: Buffer.from('evil') })), 'OUT_OF_ORDER');
  otherReplica.close();
  asPrimary.close();
  await lock.release();
  primary.close();
  replica.close();
  for (const c of await copiesOf('bad/input.txt')) {
    assert.is(c.content.toString(), 'intact');
    assert.is(c.meta.version, 1);
  }
  assert.is((await alice.read('bad/input.txt')).content.toString(), 'intact');
});

test('kill -9 the primary in the middle of a write: old or new version, whole, on every copy', async () => {
  const writer = await client('crash-writer', 1000);
  await writer.create('crash/big.bin');
  const oldContent = Buffer.alloc(3 << 20, 'o');
  await writer.write('crash/big.bin', oldContent);
  const p = await placement('crash/big.bin');
  const primary = cluster.server(p.primary.id);
  const newContent = Buffer.alloc(48 << 20, 'n');
  let sent = 0;
  const outcome = writer
    .writeStream(
      'crash/big.bin',
      newContent.length,
      async function* () {
        for (let off = 0; off < newContent.length; off += 1 << 20) {
          sent += 1 << 20;
          yield newContent.subarray(off, off + (1 << 20));
        }
      },
      { lockTimeoutMs: 5000 },
    )
    .then(
      () => 'acknowledged',
      (e: DfsError) => e.code,
    );
  await waitFor(() => sent >= 16 << 20, { what: 'half the write sent' });
  await primary.proc.kill9();
  const result = await outcome;
  await cluster.startFileServer(primary.id);
  await cluster.waitInSync(20_000);
  const content = await assertIdenticalCopies('crash/big.bin');
  assert.ok(content.equals(oldContent) || content.equals(newContent), `content is neither old nor new (${content.length} bytes, result ${result})`);
  if (result === 'acknowledged') assert.ok(content.equals(newContent), 'an acknowledged write was lost');
});

test.run();
