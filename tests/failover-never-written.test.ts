/**
 * A file created after its replicas registered and never written or read since is unknown to the
 * replicas' holdings; the fence looks it up first, so the file fails over like any other instead
 * of staying unwritable while its primary is down.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsClient } from '../client/dfs-client.js';
import type { StatusResult } from '../shared/protocol.js';
import { Cluster } from './helpers/cluster.js';
import { waitFor } from './helpers/wait.js';

const test = suite('failover-never-written');
const FAILOVER_MS = 1500;
let cluster: Cluster;
let writer: DfsClient;

test.before(async () => {
  cluster = await Cluster.start({ fileServers: 3, replication: 3, downAfterMs: FAILOVER_MS, directoryArgs: ['--failover-after-ms', String(FAILOVER_MS)] });
  writer = await cluster.client({ clientName: 'writer', retryBudgetMs: 12_000 });
});

test.after(async () => {
  writer?.close();
  await cluster?.stop();
});

test('a created, never-written file fails over when its primary dies', async () => {
  const name = 'review/empty.txt';
  await writer.create(name);
  const before = await cluster.placement(name);
  assert.ok(before.copies.every((c) => c.up && c.inSync), 'every copy in sync at version 0');
  const victim = cluster.server(before.primary.id);
  const since = Date.now();
  await victim.proc.kill9();
  await waitFor(
    async () => {
      const f = ((await cluster.status()) as StatusResult).lastFailover;
      return f && f.server === victim.id && f.at >= since;
    },
    { timeoutMs: 20_000, what: 'a failover round' },
  );
  const status = await cluster.status();
  console.log(`  [failover] last failover: ${JSON.stringify(status.lastFailover)}`);
  const write = await writer.append(name, 'x\n').then(
    (r) => `ok v${r.version}`,
    (e: Error) => `failed: ${e.message}`,
  );
  console.log(`  [failover] append after the primary died: ${write}`);
  assert.is(status.lastFailover?.stuck, 0, 'no file left stuck');
  assert.ok(write.startsWith('ok'), write);
});

test.run();
