/** A large file written, replicated and read back, with every process's memory bounded. */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { Cluster } from './helpers/cluster.js';
import { startNode } from './helpers/process.js';

const test = suite('large files');
let cluster: Cluster;
const SIZE_MIB = Number(process.env.DFS_LARGE_TEST_MIB ?? 200);
const MEMORY_LIMIT = 150 * 1024 * 1024;

test.before(async () => {
  cluster = await Cluster.start({ fileServers: 3, replication: 3 });
});

test.after(async () => {
  await cluster.stop();
});

test(`a ${SIZE_MIB} MiB file round-trips byte-identical with every process under 150 MB resident`, async () => {
  const transfer = startNode('transfer', 'tests/helpers/transfer.js', [cluster.directoryUrl, 'large/blob.bin', String(SIZE_MIB)], cluster.clientEnv);
  const exit = await transfer.waitForExit(240_000);
  assert.is(exit.code, 0, transfer.output());
  const line = transfer.lines.find((l) => l.startsWith('{'));
  assert.ok(line, transfer.output());
  const report = JSON.parse(line!) as { size: number; readBytes: number; writeSha: string; readSha: string; peakRss: number };
  assert.is(report.readBytes, report.size);
  assert.is(report.readSha, report.writeSha);
  assert.ok(report.peakRss < MEMORY_LIMIT, `client peak RSS ${(report.peakRss / 2 ** 20).toFixed(0)} MiB`);
  for (const s of cluster.servers) {
    const peak = await Cluster.peakRss(s.proc.pid);
    assert.ok(peak < MEMORY_LIMIT, `${s.id} peak RSS ${(peak / 2 ** 20).toFixed(0)} MiB`);
  }
  // every copy holds it whole
  const status = await cluster.status();
  assert.ok(status.servers.every((s) => s.sync === 'in-sync'));
});

test.run();
