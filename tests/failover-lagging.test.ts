/**
 * The primary dies between its replicas' commits (write:after-replica-commit), so one replica has
 * v2 and the other v1, neither marked. While the primary is down, reads stay on the first usable
 * replica and see v2. Failover promotes the one with v2 and marks behind every copy that did not
 * answer the fence with that very version, so v2 never vanishes from reads, and a client that
 * cached v2 can still read the file.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsClient } from '../client/dfs-client.js';
import type { ReadResult, StatusResult } from '../shared/protocol.js';
import { Cluster } from './helpers/cluster.js';
import { failure } from './helpers/raw.js';
import { waitFor } from './helpers/wait.js';

const test = suite('failover-lagging');
const DOWN_MS = 1500;
const FAILOVER_MS = 4000;
let cluster: Cluster;
let writer: DfsClient;
let reader: DfsClient;
let cachedReader: DfsClient;
let monotonicReader: DfsClient;

async function versionOn(url: string, name: string, epoch: number): Promise<number> {
  const conn = await cluster.connect(url, { as: 'fs-1' });
  try {
    return ((await conn.call('fetch', { name, epoch })).result as ReadResult).version;
  } finally {
    conn.close();
  }
}

test.before(async () => {
  cluster = await Cluster.start({ fileServers: 3, replication: 3, downAfterMs: DOWN_MS, directoryArgs: ['--failover-after-ms', String(FAILOVER_MS)] });
  writer = await cluster.client({ clientName: 'writer', retryBudgetMs: 30_000 });
  reader = await cluster.client({ clientName: 'reader', cacheBytes: 0 });
  cachedReader = await cluster.client({ clientName: 'cached-reader', retryBudgetMs: 3000 });
  monotonicReader = await cluster.client({ clientName: 'monotonic-reader', cacheBytes: 0, retryBudgetMs: 30_000 });
});

test.after(async () => {
  writer?.close();
  reader?.close();
  cachedReader?.close();
  monotonicReader?.close();
  await cluster?.stop();
});

test('a version readers saw before failover is still what they read after it', async () => {
  const name = 'review/lagging.txt';
  await writer.create(name);
  await writer.write(name, 'one\n');
  const before = await cluster.placement(name);
  const victim = cluster.server(before.primary.id);
  await cluster.restartWithCrashPoint(victim.id, 'write:after-replica-commit', name);

  // One write by hand, without retries: the primary dies after the first replica's commit.
  const lock = await writer.lock(name);
  const conn = await cluster.connect(victim.url);
  const body = Buffer.from('two\n');
  const died = failure(conn.call('write', { name, epoch: before.epoch, placementEpoch: before.placementEpoch, token: lock.token, mode: 'append', size: body.length, requestId: 'by-hand-1' }, { body }));
  await victim.proc.waitForExit(20_000);
  assert.is(victim.proc.exit?.signal, 'SIGKILL');
  console.log(`  [failover] write failed: ${(await died).code}`);
  conn.close();
  await lock.release();
  const versions = await Promise.all(before.replicas.map((r) => versionOn(r.url, name, before.epoch)));
  console.log(`  [failover] replica versions after the crash: ${before.replicas.map((r, i) => `${r.id}=v${versions[i]}`).join(' ')}`);

  // Before the primary is even known to be down, reads go round-robin over replicas that differ
  // (v2 on one, v1 on the other): one client's reads never go back once it has seen v2.
  const early: string[] = [];
  for (let i = 0; i < 6; i++) early.push((await monotonicReader.read(name)).content.toString());
  const firstNew = early.indexOf('one\ntwo\n');
  assert.ok(firstNew === -1 || early.slice(firstNew).every((r) => r === 'one\ntwo\n'), `reads went back: ${JSON.stringify(early)}`);

  // The primary is down, failover not yet: reads stay on the first usable replica.
  await cluster.waitDown(victim.id);
  const seen = (await cachedReader.read(name)).content.toString();
  console.log(`  [failover] read while the primary is down: ${JSON.stringify(seen)}`);
  assert.is(seen, 'one\ntwo\n', 'reads saw the half-replicated v2 (expected with stay-on-first-replica)');

  await waitFor(
    async () => {
      const f = ((await cluster.status()) as StatusResult).lastFailover;
      return f && f.server === victim.id && f.promoted > 0;
    },
    { timeoutMs: 20_000, what: 'the failover' },
  );
  const after = await cluster.placement(name);
  console.log(`  [failover] promoted ${after.primary.id}; copies: ${after.copies.map((c) => `${c.id}:${c.role}:${c.inSync ? 'in-sync' : 'not'}`).join(' ')}`);
  const reads: string[] = [];
  for (let i = 0; i < 4; i++) reads.push((await reader.read(name)).content.toString());
  console.log(`  [failover] reads after failover: ${JSON.stringify(reads)}`);
  const cached = await cachedReader.read(name).then(
    (r) => `ok ${JSON.stringify(r.content.toString())}`,
    (e: Error) => `failed: ${e.message}`,
  );
  console.log(`  [failover] the client that cached v2 reads: ${cached}`);
  for (const r of reads) assert.is(r, seen, 'a version that was read does not vanish');
  assert.ok(cached.startsWith('ok'), `a client with v2 cached can read the file (${cached})`);
});

test.run();
