/**
 * A cluster holding 100,000 files with realistic names (some at the 255-byte limit): every
 * listing comes back whole, a restarted file server catches up, and a restarted directory gets
 * every server back in sync. Times are printed for the record, never asserted.
 *
 * DFS_SCALE_FILES sets the number of files (default 100,000).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsClient } from '../../client/dfs-client.js';
import { DfsError } from '../../shared/errors.js';
import type { PlacementResult, ReadResult } from '../../shared/protocol.js';
import { Cluster } from '../helpers/cluster.js';
import { runCli } from '../helpers/cli.js';
import { contentOf, prefillCluster, realisticName } from '../helpers/prefill.js';

const test = suite('scale');
const FILES = Number(process.env.DFS_SCALE_FILES ?? 100_000);
let cluster: Cluster;
let client: DfsClient;

function report(what: string, fields: Record<string, unknown>): void {
  process.stderr.write(`  [scale] ${what}: ${Object.entries(fields).map(([k, v]) => `${k}=${String(v)}`).join(' ')}\n`);
}

async function copyOn(url: string, name: string, epoch: number): Promise<{ meta: ReadResult; content: Buffer } | DfsError> {
  const conn = await cluster.connect(url, { as: 'fs-1' });
  try {
    const res = await conn.call('fetch', { name, epoch });
    const content = res.stream ? await res.stream.collect(1 << 20) : (res.body ?? Buffer.alloc(0));
    return { meta: res.result as ReadResult, content };
  } catch (err) {
    return err as DfsError;
  } finally {
    conn.close();
  }
}

test.before(async () => {
  const started = Date.now();
  cluster = await Cluster.start({
    fileServers: 3,
    replication: 3,
    downAfterMs: 1500,
    // fs-2 stays down past the failover time below; this measures its restart, not a failover.
    directoryArgs: ['--failover-after-ms', '600000'],
    syncTimeoutMs: 180_000,
    prepare: async (layout) => {
      await prefillCluster(layout, FILES);
      report('prefilled', { files: FILES, copies: FILES * 3, ms: Date.now() - started });
    },
  });
  report('cluster up and in sync', { files: FILES, ms: Date.now() - started });
  client = await cluster.client({ clientName: 'scale', retryBudgetMs: 30_000 });
});

test.after(async () => {
  client?.close();
  if (!cluster) return;
  for (const [name, proc] of [['lock', cluster.lock], ['directory', cluster.directory], ...cluster.servers.map((s) => [s.id, s.proc] as const)] as const) {
    if (proc && !proc.exit) report('peak RSS', { service: name, MiB: ((await Cluster.peakRss(proc.pid)) / 2 ** 20).toFixed(0) });
  }
  await cluster?.stop();
});

test('list returns every file, through the library and through dfs ls', async () => {
  const expected = Array.from({ length: FILES }, (_, i) => realisticName(i)).sort();
  let started = Date.now();
  const names = await client.list();
  report('list', { names: names.length, ms: Date.now() - started });
  assert.is(names.length, FILES);
  assert.ok(names.every((name, i) => name === expected[i]), 'the names, in order');
  started = Date.now();
  const ls = await runCli(['--directory', cluster.directoryUrl, 'ls'], { timeoutMs: 120_000, env: cluster.clientEnv });
  report('dfs ls', { ms: Date.now() - started });
  assert.is(ls.code, 0, ls.stderr);
  const lines = ls.stdout.toString('utf8').split('\n').filter(Boolean);
  assert.is(lines.length, FILES);
  const long = await client.list(expected.find((name) => Buffer.byteLength(name) === 255)!.slice(0, 200));
  assert.ok(long.length > 0 && long.every((name) => Buffer.byteLength(name) === 255));
});

test('a file server restarted after missing writes and deletes is back in sync', async () => {
  const fs2 = cluster.server('fs-2');
  await fs2.proc.kill9();
  // Files i with i % 3 != 1 have fs-2 as a replica (i % 3 == 1 are its primaries).
  const spread = (count: number, offset: number) => Array.from({ length: count }, (_, k) => Math.floor(((k + offset / 1000) * FILES) / count)).map((i) => (i % 3 === 1 ? i + 1 : i));
  const written = spread(300, 0);
  const deleted = spread(20, 500).filter((i) => !written.includes(i));
  for (const i of written) await client.write(realisticName(i), contentOf(realisticName(i), 2));
  for (const i of deleted) await client.delete(realisticName(i));
  const started = Date.now();
  await cluster.startFileServer('fs-2');
  await cluster.waitInSync(180_000, ['fs-2']);
  const ms = Date.now() - started;
  report('restart to in-sync', { server: 'fs-2', files: FILES, missedWrites: written.length, missedDeletes: deleted.length, ms });
  for (const i of written.slice(0, 50)) {
    const name = realisticName(i);
    const placement = (await (await cluster.adminConn()).call('placement', { name })).result as PlacementResult;
    const copy = await copyOn(fs2.url, name, placement.epoch);
    assert.ok(!(copy instanceof DfsError), `fs-2 serves ${name}`);
    if (copy instanceof DfsError) continue;
    assert.is(copy.meta.version, 2, name);
    assert.ok(copy.content.equals(contentOf(name, 2)), name);
  }
  for (const i of deleted) {
    const gone = await copyOn(fs2.url, realisticName(i), i + 1);
    assert.ok(gone instanceof DfsError && gone.code === 'NOT_FOUND', `fs-2 dropped ${realisticName(i)}`);
  }
});

test('after a directory restart every server catches up again and creates work', async () => {
  await cluster.directory.stop();
  const started = Date.now();
  await cluster.startDirectory();
  await cluster.waitInSync(180_000);
  report('directory restart to all in sync', { files: FILES, ms: Date.now() - started });
  const placement = await client.create('scale/after-restart.txt');
  assert.is(placement.replicas.length, 2);
  await client.write('scale/after-restart.txt', 'fine');
  assert.is((await client.read('scale/after-restart.txt')).content.toString(), 'fine');
});

test.run();
