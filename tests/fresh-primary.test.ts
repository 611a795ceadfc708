/**
 * A primary restarted with a lost data folder (fresh: empty, no server.json) recovers its files
 * from its replicas before it serves or takes writes, even for files whose placement epoch has
 * moved on (a new primary's "never copy from a replica" rule does not apply to a lost copy).
 */
import { rm } from 'node:fs/promises';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsClient } from '../client/dfs-client.js';
import type { PlacementResult } from '../shared/protocol.js';
import { Cluster } from './helpers/cluster.js';
import { waitFor } from './helpers/wait.js';

const test = suite('fresh-primary');
let cluster: Cluster;
let client: DfsClient;

async function placement(name: string): Promise<PlacementResult> {
  return (await (await cluster.adminConn()).call('placement', { name })).result as PlacementResult;
}

test.before(async () => {
  cluster = await Cluster.start({ fileServers: 3, replication: 2, directoryArgs: ['--failover-after-ms', '600000', '--replace-after-ms', '600000'] });
  client = await cluster.client({ clientName: 'rv', retryBudgetMs: 30_000 });
});

test.after(async () => {
  client?.close();
  await cluster?.stop();
});

test('a primary restarted with a lost data folder recovers its files from its replicas', async () => {
  const name = 'rv/f.txt';
  await client.create(name);
  await client.write(name, 'acknowledged v1\n');
  let p = await placement(name);
  const primary = p.primary.id;
  const replica = p.replicas[0]!.id;
  // A drain of the replica moves its copy (placement epoch 1 -> 2 -> 3); the primary stays.
  await (await cluster.adminConn()).call('drain', { id: replica });
  await waitFor(async () => (await cluster.status()).servers.find((s) => s.id === replica)?.files === 0, { timeoutMs: 30_000, what: 'drain done' });
  await (await cluster.adminConn()).call('undrain', { id: replica });
  await client.append(name, 'acknowledged v2\n');
  p = await placement(name);
  assert.is(p.primary.id, primary);
  assert.ok(p.placementEpoch >= 2, `pe ${p.placementEpoch}`);
  await waitFor(async () => (await placement(name)).copies.every((c) => c.inSync), { what: 'all in sync' });

  // The primary's disk is lost; it comes back at once (no failover yet) with an empty folder.
  const s = cluster.server(primary);
  await s.proc.kill9();
  await rm(s.data, { recursive: true, force: true });
  await cluster.startFileServer(primary);
  await cluster.waitInSync(20_000, [primary]);

  // A new reader (no cache of what the writer saw).
  const reader = await cluster.client({ clientName: 'rv-reader', retryBudgetMs: 10_000, cacheBytes: 0 });
  let got: string;
  try {
    got = (await reader.read(name)).content.toString();
  } finally {
    reader.close();
  }
  const after = await placement(name);
  assert.is(got, 'acknowledged v1\nacknowledged v2\n', `read after the fresh restart (copies: ${after.copies.map((c) => `${c.id}:${c.role}:${c.inSync ? 'in-sync' : 'behind'}`).join(' ')})`);
});

test.run();
