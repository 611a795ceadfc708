/**
 * Re-replication and rebalancing with real processes: a drained server's copies move to other
 * servers (never leaving a file with fewer in-sync copies), a server that stays down has its
 * copies made again elsewhere, and `dfs rebalance` spreads primaries. Every copy is compared
 * byte for byte at the end. docs/PROTOCOL.md ("Re-replication") has the argument.
 */
import { createHash } from 'node:crypto';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsClient } from '../client/dfs-client.js';
import { pickTarget } from '../servers/directory/rereplication.js';
import { planRebalance } from '../servers/directory/rebalance.js';
import type { ReadResult, StatusResult } from '../shared/protocol.js';
import { runCli } from './helpers/cli.js';
import { Cluster } from './helpers/cluster.js';
import { waitFor } from './helpers/wait.js';

const test = suite('rereplication');
const REPLACE_MS = 3000;
let cluster: Cluster;
let client: DfsClient;
const FILES = Array.from({ length: 24 }, (_, i) => `rr/file-${i}.txt`);

async function shaOn(url: string, name: string, epoch: number): Promise<string | null> {
  const conn = await cluster.connect(url, { as: 'fs-1' });
  try {
    const res = await conn.call('fetch', { name, epoch });
    const content = res.stream ? await res.stream.collect(64 << 20) : (res.body ?? Buffer.alloc(0));
    const meta = res.result as ReadResult;
    return `${meta.version}:${createHash('sha256').update(content).digest('hex')}`;
  } catch {
    return null;
  } finally {
    conn.close();
  }
}

/** Waits until every file has `copies` copies, all up and in sync, none on `without`, identical. */
async function fullyReplicated(copies: number, without: string[] = [], timeoutMs = 60_000): Promise<void> {
  let problem = '';
  await waitFor(
    async () => {
      for (const name of FILES) {
        const p = await cluster.placement(name);
        const bad = p.copies.find((c) => !c.up || !c.inSync || without.includes(c.id));
        if (p.copies.length !== copies || bad) {
          problem = `${name}: ${p.copies.map((c) => `${c.id}${c.up ? '' : ' down'}${c.inSync ? '' : ' behind'}`).join(', ')}`;
          return false;
        }
        const shas = await Promise.all(p.copies.map((c) => shaOn(c.url, name, p.epoch)));
        if (shas.some((s) => s === null || s !== shas[0])) {
          problem = `${name}: copies differ (${shas.join(' ')})`;
          return false;
        }
      }
      return true;
    },
    { timeoutMs, what: `every file with ${copies} identical in-sync copies${without.length ? ` off ${without.join(',')}` : ''} (last: ${problem})` },
  ).catch((err: Error) => {
    throw new Error(`${err.message}; last problem: ${problem}`);
  });
}

test.before(async () => {
  cluster = await Cluster.start({
    fileServers: 4,
    replication: 3,
    downAfterMs: 1500,
    directoryArgs: ['--failover-after-ms', '1500', '--replace-after-ms', String(REPLACE_MS)],
  });
  client = await cluster.client({ clientName: 'rr', retryBudgetMs: 30_000 });
  for (const [i, name] of FILES.entries()) {
    await client.create(name);
    await client.write(name, `${name} v1 ${'x'.repeat(i * 100)}\n`);
  }
});

test.after(async () => {
  client?.close();
  await cluster?.stop();
});

test('a new copy goes to the least-loaded server without one; rebalancing moves from the most to the fewest', () => {
  const files: Record<string, number> = { a: 3, b: 1, c: 1, d: 0 };
  assert.is(pickTarget(['a', 'b'], ['a', 'b', 'c', 'd'], (id) => files[id]!), 'd');
  assert.is(pickTarget(['a', 'b', 'c', 'd'], ['a', 'b', 'c', 'd'], (id) => files[id]!), null);
  const entries = Array.from({ length: 6 }, (_, i) => [`f${i}`, { epoch: 1, placementEpoch: 1, primary: 'a', replicas: ['b', 'c'] }] as [string, { epoch: number; placementEpoch: number; primary: string; replicas: string[] }]);
  const plan = planRebalance(entries, ['a', 'b', 'c'], () => true);
  const moved = [...(plan.get('a')?.values() ?? [])];
  assert.is(moved.length, 4, 'a keeps 2 of 6');
  assert.equal([moved.filter((x) => x === 'b').length, moved.filter((x) => x === 'c').length], [2, 2]);
});

test('drain and remove a server: every file is back to 3 copies off it, byte-identical, with writes going on', async () => {
  const status = await cluster.status();
  const victim = status.servers.filter((s) => s.files > 0).sort((a, b) => b.primaries - a.primaries)[0]!.id;
  const early = await runCli(['--directory', cluster.directoryUrl, 'server', 'remove', victim], { env: cluster.clientEnv });
  assert.is(early.code, 1, 'a server that holds copies cannot be removed');
  assert.match(early.stderr, /drain it first/);
  const drained = await runCli(['--directory', cluster.directoryUrl, 'server', 'drain', victim], { env: cluster.clientEnv });
  assert.is(drained.code, 0, drained.stderr);
  assert.match(drained.stdout.toString(), new RegExp(`draining ${victim}`));
  // Writes go on while its copies move.
  for (const name of FILES.slice(0, 8)) await client.append(name, 'during the drain\n');
  await waitFor(async () => (await cluster.status()).servers.find((s) => s.id === victim)?.files === 0, { timeoutMs: 60_000, what: `${victim} to hold nothing` });
  await fullyReplicated(3, [victim]);
  for (const name of FILES.slice(0, 8)) assert.match((await client.read(name)).content.toString(), /during the drain\n$/);
  const newFile = 'rr/after-drain.txt';
  await client.create(newFile);
  assert.ok(!(await cluster.placement(newFile)).copies.some((c) => c.id === victim), 'a drained server takes no new files');
  await client.delete(newFile);
  const removed = await runCli(['--directory', cluster.directoryUrl, 'server', 'remove', victim], { env: cluster.clientEnv });
  assert.is(removed.code, 0, removed.stderr);
  const after: StatusResult = await cluster.status();
  assert.ok(!after.servers.some((s) => s.id === victim), `${victim} is gone from status`);
  assert.ok((after.rereplication?.copied ?? 0) > 0);
  // It goes: a removed server is no part of the cluster.
  await cluster.server(victim).proc.stop();
});

test('a server killed for good: after the replace time, every file has 3 copies again', async () => {
  const live = (await cluster.status()).servers.filter((s) => s.state === 'up');
  assert.is(live.length, 3);
  // With 3 servers left and R = 3 there is no spare; start the removed one again as a new, empty server.
  const spare = cluster.servers.find((s) => !live.some((l) => l.id === s.id))!;
  await cluster.startFileServer(spare.id);
  await cluster.waitInSync(20_000, [spare.id]);
  const victim = live.sort((a, b) => b.files - a.files)[0]!.id;
  await cluster.server(victim).proc.kill9();
  for (const name of FILES.slice(8, 16)) await client.append(name, 'while it was down\n');
  await fullyReplicated(3, [victim], 60_000);
  const status = await cluster.status();
  assert.is(status.underReplicated, 0);
  assert.ok(status.lastFailover?.server === victim || (await cluster.status()).servers.find((s) => s.id === victim)?.primaries === 0);
  for (const name of FILES.slice(8, 16)) assert.match((await client.read(name)).content.toString(), /while it was down\n$/);
  const text = await runCli(['--directory', cluster.directoryUrl, 'status'], { env: cluster.clientEnv });
  assert.match(text.stdout.toString(), /re-replication: \d+ cop(y|ies) being made, \d+ made; last round: /);
});

test('dfs rebalance spreads primaries over the live servers', async () => {
  const before = await cluster.status();
  const up = before.servers.filter((s) => s.state === 'up' && s.sync === 'in-sync');
  const result = await runCli(['--directory', cluster.directoryUrl, 'rebalance'], { timeoutMs: 60_000, env: cluster.clientEnv });
  assert.is(result.code, 0, result.stderr);
  assert.match(result.stdout.toString(), /moved \d+ primar/);
  const after = await cluster.status();
  const counts = after.servers.filter((s) => up.some((u) => u.id === s.id)).map((s) => s.primaries);
  assert.ok(Math.max(...counts) - Math.min(...counts) <= 1, `primaries spread evenly: ${counts.join(', ')}`);
  for (const name of FILES.slice(0, 4)) await client.append(name, 'after the rebalance\n');
  await fullyReplicated(3);
});

test.run();
