/**
 * Failover with real processes: a file's primary dies (kill -9) or freezes (SIGSTOP) and an
 * in-sync replica takes over, fenced by the placement epoch. docs/PROTOCOL.md ("Failover") argues
 * why no acknowledged write is lost and why the old primary can accept nothing afterwards.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsClient } from '../client/dfs-client.js';
import { DfsError } from '../shared/errors.js';
import type { ReadResult, StatusResult } from '../shared/protocol.js';
import { choosePrimary } from '../servers/directory/failover.js';
import { nextVersion } from '../servers/file/primary-writes.js';
import { Cluster } from './helpers/cluster.js';
import { failure } from './helpers/raw.js';
import { waitFor } from './helpers/wait.js';

const test = suite('failover');
const FAILOVER_MS = 1500;
let cluster: Cluster;
const clients: DfsClient[] = [];

async function client(name: string, options: { cacheBytes?: number } = {}): Promise<DfsClient> {
  const c = await cluster.client({ clientName: name, retryBudgetMs: 30_000, ...options });
  clients.push(c);
  return c;
}

async function copyOn(url: string, name: string, epoch: number): Promise<{ version: number; content: string }> {
  const conn = await cluster.connect(url, { as: 'fs-1' });
  try {
    const res = await conn.call('fetch', { name, epoch });
    const content = res.stream ? await res.stream.collect(64 << 20) : (res.body ?? Buffer.alloc(0));
    return { version: (res.result as ReadResult).version, content: content.toString() };
  } finally {
    conn.close();
  }
}

/** Waits until every copy of `name` holds the same version and content; returns the content. */
async function identicalCopies(name: string, timeoutMs = 30_000): Promise<string> {
  let last = '';
  await waitFor(
    async () => {
      const p = await cluster.placement(name);
      const copies = await Promise.all([p.primary, ...p.replicas].map((s) => copyOn(s.url, name, p.epoch).catch(() => null)));
      if (copies.some((c) => c === null)) return false;
      last = copies.map((c) => `${c!.version}:${c!.content.length}`).join(' ');
      return copies.every((c) => c!.version === copies[0]!.version && c!.content === copies[0]!.content) ? copies[0]!.content : false;
    },
    { timeoutMs, what: `identical copies of ${name} (last seen: ${last})` },
  );
  const p = await cluster.placement(name);
  return (await copyOn(p.primary.url, name, p.epoch)).content;
}

async function waitForFailoverOf(server: string, since: number): Promise<StatusResult> {
  return waitFor(
    async () => {
      const status = await cluster.status();
      const f = status.lastFailover;
      return f && f.server === server && f.at >= since && f.promoted > 0 ? status : null;
    },
    { timeoutMs: 20_000, what: `a failover of ${server}'s files` },
  );
}

test.before(async () => {
  cluster = await Cluster.start({ fileServers: 3, replication: 3, downAfterMs: FAILOVER_MS, directoryArgs: ['--failover-after-ms', String(FAILOVER_MS)] });
});

test.after(async () => {
  for (const c of clients) c.close();
  await cluster.stop();
});

test('the replica to promote is the one with the highest version; ties spread primaries', () => {
  const primaries: Record<string, number> = { a: 5, b: 1, c: 1 };
  const of = (id: string) => primaries[id] ?? 0;
  assert.is(choosePrimary([], of), null);
  assert.is(choosePrimary([{ id: 'a', version: 3 }, { id: 'b', version: 2 }], of), 'a');
  assert.is(choosePrimary([{ id: 'a', version: 3 }, { id: 'c', version: 3 }, { id: 'b', version: 3 }], of), 'b');
});

test('a new primary skips a version number per placement epoch since its copy was written; an old one never does', () => {
  const at = (version: number, placementEpoch: number) => ({ name: 'x', epoch: 1, version, size: 0, sha256: '', mtime: 0, token: 0, requestId: '', placementEpoch });
  assert.is(nextVersion(at(0, 1), 0, 1), 1, 'a new file starts at 1');
  assert.is(nextVersion(at(4, 1), 0, 1), 5);
  assert.is(nextVersion(at(4, 1), 0, 2), 6, 'the old primary may have committed v5 unacknowledged');
  assert.is(nextVersion(at(6, 2), 0, 2), 7);
  assert.is(nextVersion(at(4, 1), 0, 3), 7, 'two primaries since: each may have committed one (v5, then v6 after its own skip)');
  assert.is(nextVersion(at(4, 0), 0, 3), 8, 'a copy fetched from a peer (epoch unknown) skips one per epoch');
  assert.is(nextVersion(at(4, 1), 9, 1), 10, 'above a version lost with a damaged copy');
});

test('kill -9 the primary while 4 clients append: appends resume on a promoted replica, each acknowledged line once, copies identical', async () => {
  const name = 'failover/log.txt';
  const writers = await Promise.all([1, 2, 3, 4].map((k) => client(`appender-${k}`)));
  await writers[0]!.create(name);
  const before = await cluster.placement(name);
  const victim = cluster.server(before.primary.id);
  const acked: string[][] = writers.map(() => []);
  let killedAt = 0;
  const ackedAfterKill = () => acked.reduce((n, lines) => n + lines.filter((l) => Number(l.split(' ')[1]) > killedAt).length, 0);
  let stop = false;
  const failures: string[] = [];
  const loops = writers.map(async (w, k) => {
    for (let i = 0; !stop; i++) {
      const line = `c${k}-${i} `;
      try {
        await w.append(name, `${line}\n`);
        acked[k]!.push(`${line}${Date.now()}`);
      } catch (err) {
        failures.push(`${line}${(err as DfsError).code}`);
      }
    }
  });
  await waitFor(() => acked.every((lines) => lines.length >= 5), { what: 'appends before the kill' });
  killedAt = Date.now();
  await victim.proc.kill9();
  await waitFor(() => ackedAfterKill() >= 20, { timeoutMs: 30_000, what: '20 appends acknowledged after the kill' });
  const firstAfter = Math.min(...acked.flat().map((l) => Number(l.split(' ')[1])).filter((t) => t > killedAt));
  stop = true;
  await Promise.all(loops);
  const now = await cluster.placement(name);
  assert.is.not(now.primary.id, victim.id, 'a replica became the primary');
  assert.ok(now.placementEpoch > before.placementEpoch, 'with a newer placement epoch');
  console.log(`  [failover] kill -9 → first acknowledged append ${firstAfter - killedAt} ms (failover after ${FAILOVER_MS} ms); ${failures.length} appends failed`);

  await cluster.startFileServer(victim.id);
  await cluster.waitInSync(30_000);
  const content = await identicalCopies(name);
  const lines = content.split('\n').filter(Boolean).map((l) => l.trim());
  for (const line of acked.flat().map((l) => l.split(' ')[0]!)) {
    assert.is(lines.filter((l) => l === line).length, 1, `${line} is there exactly once`);
  }
  assert.is(new Set(lines).size, lines.length, 'no line twice');
});

test('a primary frozen past the failover time accepts nothing under its old epoch when it wakes', async () => {
  const name = 'failover/frozen.txt';
  const writer = await client('frozen-writer');
  await writer.create(name);
  await writer.write(name, 'a\n');
  const before = await cluster.placement(name);
  const old = cluster.server(before.primary.id);
  const frozenAt = Date.now();
  old.proc.freeze();
  await waitForFailoverOf(old.id, frozenAt);
  await writer.append(name, 'b\n');
  const after = await cluster.placement(name);
  assert.is.not(after.primary.id, old.id);

  // A client that still has the old placement writes to the old primary as it wakes.
  const lock = await writer.lock(name);
  const stale = (async () => {
    const conn = await cluster.connect(old.url);
    try {
      const body = Buffer.from('evil\n');
      return await conn.call(
        'write',
        { name, epoch: before.epoch, placementEpoch: before.placementEpoch, token: lock.token, mode: 'append', size: body.length, requestId: 'stale-write-1' },
        { body, timeoutMs: 20_000 },
      );
    } finally {
      conn.close();
    }
  })();
  old.proc.thaw();
  const refused = await failure(stale);
  assert.is(refused.code, 'NOT_PRIMARY', refused.message);
  await lock.release();

  // And a replica refuses replication stamped with the old epoch outright.
  const replica = after.replicas.find((r) => r.id !== old.id)!;
  const conn = await cluster.connect(replica.url, { as: old.id });
  try {
    const fenced = await failure(
      conn.call('rep.write', { name, epoch: before.epoch, version: 99, baseVersion: 2, mode: 'append', size: 1, from: old.id, placementEpoch: before.placementEpoch, mtime: Date.now() }, { body: Buffer.from('x') }),
    );
    assert.is(fenced.code, 'STALE_EPOCH', fenced.message);
  } finally {
    conn.close();
  }

  await cluster.waitInSync(30_000);
  assert.is(await identicalCopies(name), 'a\nb\n');
  const reader = await client('frozen-reader', { cacheBytes: 0 });
  assert.is((await reader.read(name)).content.toString(), 'a\nb\n');
});

test('two faults in a row: the primary dies, then the promoted one dies too', async () => {
  const name = 'failover/twice.txt';
  const writer = await client('twice-writer');
  await writer.create(name);
  await writer.append(name, 'one\n');
  const first = cluster.server((await cluster.placement(name)).primary.id);
  let since = Date.now();
  await first.proc.kill9();
  await writer.append(name, 'two\n');
  await waitForFailoverOf(first.id, since);
  const second = cluster.server((await cluster.placement(name)).primary.id);
  assert.is.not(second.id, first.id);
  since = Date.now();
  await second.proc.kill9();
  await writer.append(name, 'three\n');
  const third = (await cluster.placement(name)).primary.id;
  assert.ok(third !== first.id && third !== second.id, `a third server (${third}) took over`);
  const reader = await client('twice-reader', { cacheBytes: 0 });
  assert.is((await reader.read(name)).content.toString(), 'one\ntwo\nthree\n');

  await cluster.startFileServer(first.id);
  await cluster.startFileServer(second.id);
  await cluster.waitInSync(30_000);
  await writer.append(name, 'four\n');
  assert.is(await identicalCopies(name), 'one\ntwo\nthree\nfour\n');
});

test('behind marks survive a directory restart: a stale replica is never promoted, an in-sync one is', async () => {
  const name = 'failover/after-restart.txt';
  const writer = await client('restart-writer');
  await writer.create(name);
  await writer.write(name, 'v1\n');
  const p = await cluster.placement(name);
  const [a, b, c] = [cluster.server(p.primary.id), cluster.server(p.replicas[0]!.id), cluster.server(p.replicas[1]!.id)];
  // c misses v2: it is down, so the primary marks it behind (on disk) before acknowledging.
  await c.proc.kill9();
  await writer.write(name, 'v1\nv2\n');
  // Then the primary and the in-sync replica die, and the directory restarts: it knows c is
  // stale only from its marks on disk.
  await Promise.all([a.proc.kill9(), b.proc.kill9(), cluster.directory.stop()]);
  await cluster.startDirectory();
  await cluster.startFileServer(c.id);
  await waitFor(async () => (await cluster.status()).servers.some((s) => s.id === c.id && s.state === 'up' && s.sync !== 'syncing'), { timeoutMs: 30_000, what: `${c.id} done catching up` });
  assert.is((await cluster.status()).servers.find((s) => s.id === c.id)?.sync, 'behind', 'it still has its mark');
  const reader = await client('restart-reader', { cacheBytes: 0 });
  const stale = await reader.read(name).then(
    (r) => r.content.toString(),
    (e: DfsError) => e.code,
  );
  assert.is(stale, 'UNAVAILABLE', 'the only copy up is stale: it is not read from');
  const stuck = (await cluster.status()).lastFailover;
  assert.ok(stuck === null || stuck === undefined || stuck.promoted === 0, 'nor promoted');
  // The in-sync replica comes back (its primary still down): it is promoted, with v2.
  const since = Date.now();
  await cluster.startFileServer(b.id);
  await waitForFailoverOf(a.id, since);
  assert.is((await cluster.placement(name)).primary.id, b.id);
  assert.is((await reader.read(name)).content.toString(), 'v1\nv2\n');
  await writer.append(name, 'v3\n');
  await cluster.startFileServer(a.id);
  await cluster.waitInSync(30_000);
  assert.is(await identicalCopies(name), 'v1\nv2\nv3\n');
});

test.run();
