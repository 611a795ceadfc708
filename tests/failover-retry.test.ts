/**
 * A write applied on every copy whose primary dies before answering is applied once, even when
 * the client's retry (same requestId) lands on the replica promoted in its place: replicas keep
 * the requestId of each version (rep.write carries it), so the promoted one knows the retry.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsClient } from '../client/dfs-client.js';
import { Cluster } from './helpers/cluster.js';

const test = suite('failover-retry');
const FAILOVER_MS = 1500;
let cluster: Cluster;
let writer: DfsClient;
let reader: DfsClient;

test.before(async () => {
  cluster = await Cluster.start({ fileServers: 3, replication: 3, downAfterMs: FAILOVER_MS, directoryArgs: ['--failover-after-ms', String(FAILOVER_MS)] });
  writer = await cluster.client({ clientName: 'writer', retryBudgetMs: 30_000 });
  reader = await cluster.client({ clientName: 'reader', cacheBytes: 0 });
});

test.after(async () => {
  writer?.close();
  reader?.close();
  await cluster?.stop();
});

test('primary dies at write:before-ack; the retry on the promoted replica applies the append once', async () => {
  const name = 'review/dup.txt';
  await writer.create(name);
  await writer.append(name, 'one\n');
  const before = await cluster.placement(name);
  const victim = cluster.server(before.primary.id);
  await cluster.restartWithCrashPoint(victim.id, 'write:before-ack', name);

  const acked = writer.append(name, 'two\n');
  await victim.proc.waitForExit(20_000);
  assert.is(victim.proc.exit?.signal, 'SIGKILL', 'the primary died at write:before-ack');
  const result = await acked; // the client retries with the same requestId; failover makes it land
  const after = await cluster.placement(name);
  assert.is.not(after.primary.id, victim.id, 'a replica was promoted');
  console.log(`  [failover] acknowledged v${result.version} by ${after.primary.id} (pe ${after.placementEpoch})`);
  const content = (await reader.read(name)).content.toString();
  assert.is(content, 'one\ntwo\n', 'the append acknowledged once is in the file once');
});

test.run();
