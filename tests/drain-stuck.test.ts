/**
 * A drain whose server is the primary of a file with no in-sync replica still finishes: the file
 * gets a new copy elsewhere first, and once that is in sync the primary is handed to it.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsClient } from '../client/dfs-client.js';
import type { PlacementResult } from '../shared/protocol.js';
import { Cluster } from './helpers/cluster.js';
import { waitFor } from './helpers/wait.js';

const test = suite('drain-stuck');
let cluster: Cluster;
let client: DfsClient;

async function placement(name: string): Promise<PlacementResult> {
  return (await (await cluster.adminConn()).call('placement', { name })).result as PlacementResult;
}

test.before(async () => {
  cluster = await Cluster.start({ fileServers: 2, replication: 1 });
  client = await cluster.client({ clientName: 'rv', retryBudgetMs: 30_000 });
});

test.after(async () => {
  client?.close();
  await cluster?.stop();
});

test('draining the only holder of a file (R = 1, a spare server up) moves the file off it', async () => {
  const name = 'rv/only.txt';
  await client.create(name);
  await client.write(name, 'data\n');
  const victim = (await placement(name)).primary.id;
  await (await cluster.adminConn()).call('drain', { id: victim });
  let last = '';
  await waitFor(
    async () => {
      const s = (await cluster.status()).servers.find((x) => x.id === victim)!;
      last = `files=${s.files} primaries=${s.primaries}`;
      return s.files === 0;
    },
    { timeoutMs: 20_000, what: 'the drained server to hold nothing' },
  ).catch((err: Error) => assert.unreachable(`${err.message}; ${victim}: ${last}; log: ${cluster.directory.lines.filter((l) => /drain/.test(l)).slice(-2).join(' | ')}`));
  assert.is((await client.read(name)).content.toString(), 'data\n');
});

test.run();
