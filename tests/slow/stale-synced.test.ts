/**
 * A full catch-up that straddles a directory restart cannot clear marks with the sequence numbers
 * of the previous run: `synced` and `caughtUp` carry the run (`boot`) their numbers came from, and
 * one from an earlier run is refused (register again); the catch-up then runs again for the new
 * registration. Otherwise a copy lacking an acknowledged write would be cleared, readable and
 * promotable while its primary is down.
 *
 * F: primary fs-1, replica fs-3. G: primary fs-2, replica fs-3, large (a slow fetch keeps fs-3's
 * catch-up running). Copy rate 1 MiB/s. Slow by design (about 40 s).
 */
import { writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsClient } from '../../client/dfs-client.js';
import type { PlacementResult, VersionsResult } from '../../shared/protocol.js';
import { Cluster } from '../helpers/cluster.js';
import { waitFor } from '../helpers/wait.js';

const test = suite('stale-synced');
let cluster: Cluster;
let client: DfsClient;
const F = 'rv/f.txt';
const G = 'rv/g.bin';
const H = 'rv/h.txt';

async function placement(name: string): Promise<PlacementResult> {
  return (await (await cluster.adminConn()).call('placement', { name })).result as PlacementResult;
}

async function versionOn(url: string, name: string): Promise<number | null> {
  const conn = await cluster.connect(url, { as: 'fs-1' });
  try {
    const { files } = (await conn.call('versions', { names: [name] })).result as VersionsResult;
    return files[0]?.version ?? null;
  } finally {
    conn.close();
  }
}

test.before(async () => {
  cluster = await Cluster.start({
    fileServers: 3,
    replication: 2,
    fileServerArgs: ['--copy-rate-mb-s', '1'],
    directoryArgs: ['--failover-after-ms', '600000', '--replace-after-ms', '600000'],
    prepare: async ({ directoryData, servers }) => {
      const url = (id: string) => servers.find((s) => s.id === id)!.url;
      await mkdir(directoryData, { recursive: true });
      // Marks in force on a server that is gone (here: names it held; nobody clears them), as on
      // any cluster with a dead server awaiting replacement: both incarnations count them.
      await writeFile(join(directoryData, 'behind_marks.csv'), 'op,server_id,name\n' + Array.from({ length: 5 }, (_, i) => `mark,fs-9,rv/gone-${i}\n`).join(''));
      // fs-2's and fs-3's folders are not fresh (they have finished a catch-up before): fs-2's
      // copy of H, whose replica is gone, is not taken for a lost one.
      for (const id of ['fs-2', 'fs-3']) {
        const folder = servers.find((s) => s.id === id)!.data;
        await mkdir(folder, { recursive: true });
        await writeFile(join(folder, 'server.json'), `{"id":"${id}"}\n`);
      }
      await writeFile(
        join(directoryData, 'file_table.csv'),
        'name,server_id,server_url,role,epoch,placement_epoch\n' +
          `${F},fs-1,${url('fs-1')},primary,1,1\n${F},fs-3,${url('fs-3')},replica,1,1\n` +
          `${G},fs-2,${url('fs-2')},primary,2,1\n${G},fs-3,${url('fs-3')},replica,2,1\n` +
          // H: a replica on fs-4, a server that is gone: every write to H marks it behind again.
          `${H},fs-2,${url('fs-2')},primary,3,1\n${H},fs-4,ws://127.0.0.1:1,replica,3,1\n`,
      );
    },
  });
  client = await cluster.client({ clientName: 'rv', retryBudgetMs: 30_000, cacheBytes: 0 });
});

test.after(async () => {
  client?.close();
  await cluster?.stop();
});

test('a catch-up begun before a directory restart cannot clear marks made after it checked a copy', async () => {
  await client.write(F, 'v1\n');
  await client.write(G, 'g1');
  const fs3 = cluster.server('fs-3');
  await waitFor(async () => (await versionOn(fs3.url, F)) === 1 && (await versionOn(fs3.url, G)) === 1, { what: 'fs-3 to hold v1 of both' });
  await cluster.waitInSync();
  // Start the scenario from a settled directory incarnation (its mark sequence = the 5 marks in force).
  await cluster.directory.kill9();
  await cluster.startDirectory();
  await cluster.waitInSync();
  assert.is((await cluster.status()).servers.find((s) => s.id === 'fs-3')!.behindFiles, 0);
  await fs3.proc.kill9();
  // fs-3 misses F v2 and G v2: marks F@fs-3, G@fs-3 (on disk, in that order).
  await client.write(F, 'v1\nv2\n');
  await client.write(G, Buffer.alloc(10 << 20, 7));
  await cluster.startFileServer('fs-3');
  // Its full catch-up (upTo = 2) fetches F at once and G slowly (10 MiB at 1 MiB/s).
  await waitFor(async () => (await versionOn(fs3.url, F)) === 2, { timeoutMs: 10_000, what: 'fs-3 to fetch F v2' });
  assert.is(await versionOn(fs3.url, G), 1, 'G still being fetched');

  // F v3 misses fs-3 (frozen): its mark is renewed past the catch-up's upTo; acknowledged.
  fs3.proc.freeze();
  await client.append(F, 'v3\n');
  // F's primary dies; the directory restarts (marks reloaded and renumbered 1, 2).
  await cluster.server('fs-1').proc.kill9();
  await cluster.directory.kill9();
  fs3.proc.thaw();
  const from = fs3.proc.lines.length;
  await cluster.startDirectory();
  // Ordinary traffic in the new incarnation (writes that miss the gone fs-4) advances its mark
  // sequence past the stale upTo while fs-3's old catch-up is still fetching G.
  for (let i = 0; i < 20; i++) await client.write(H, `h${i}`);
  assert.is(await versionOn(fs3.url, G), 1, 'G still being fetched after the traffic');
  await fs3.proc.waitForLine(/caught up files=/, 30_000, from);
  await new Promise((r) => setTimeout(r, 500));

  const p = await placement(F);
  const copy = p.copies.find((c) => c.id === 'fs-3')!;
  const v = await versionOn(fs3.url, F);
  let read = '(not read)';
  try {
    read = (await client.read(F)).content.toString();
  } catch (err) {
    read = `(read failed: ${(err as Error).message})`;
  }
  assert.ok(!(copy.inSync && v !== 3), `fs-3 holds F v${v}, lacks acknowledged v3, yet inSync=${copy.inSync}; a read now returns ${JSON.stringify(read)}`);
});

test.run();
