/**
 * Failover and re-replication, each on a cluster of its own (they kill and drain servers):
 *
 * - failover: kill -9 of a file's primary, then the time until a write to that file succeeds,
 *   with default settings (down after 3 s, failover after the same) and the client retrying as it
 *   does. The limit beside it is the down-detection time, which no failover can beat.
 * - re-replication: a server holding a share of the files is drained; the figure is the bytes of
 *   the new copies made over the time from the drain until it holds nothing (hand-over of its
 *   primaries, copies, and the drop of its own), beside the bare ws transfer limit. The file
 *   servers run without the default copy-rate cap (128 MiB/s), to show what the protocol does.
 */
import { randomBytes } from 'node:crypto';
import { DEFAULT_DOWN_AFTER_MS } from '../servers/directory/cluster.js';
import type { PlacementResult } from '../shared/protocol.js';
import { Cluster } from '../tests/helpers/cluster.js';
import { waitFor } from '../tests/helpers/wait.js';
import { MiB, mbPerSecond, p50, progress, type Figure } from './measure.js';
import { SECTIONS, type Plan } from './plan.js';

const SECTION = SECTIONS.failover;

async function placement(cluster: Cluster, name: string): Promise<PlacementResult> {
  return (await (await cluster.adminConn()).call('placement', { name })).result as PlacementResult;
}

async function failoverTimes(plan: Plan): Promise<number[]> {
  const trials = plan.quick ? 2 : 5;
  const cluster = await Cluster.start({ fileServers: 3, replication: 3, downAfterMs: DEFAULT_DOWN_AFTER_MS });
  const client = await cluster.client({ clientName: 'bench-failover', retryBudgetMs: 60_000 });
  try {
    const samples: number[] = [];
    for (let t = 0; t < trials; t++) {
      progress(`failover: trial ${t + 1} of ${trials}: kill -9 a primary, then write`);
      const name = `bench/failover-${t}.txt`;
      await client.create(name);
      await client.write(name, 'before\n');
      const victim = cluster.server((await placement(cluster, name)).primary.id);
      const started = performance.now();
      await victim.proc.kill9();
      await client.append(name, 'after\n');
      samples.push(performance.now() - started);
      await cluster.startFileServer(victim.id);
      await cluster.waitInSync(60_000);
    }
    return samples;
  } finally {
    client.close();
    await cluster.stop();
  }
}

async function rereplicationRate(plan: Plan): Promise<{ bytes: number; ms: number; files: number }> {
  const files = plan.quick ? 16 : 64;
  const fileBytes = (plan.quick ? 2 : 4) * MiB;
  const cluster = await Cluster.start({ fileServers: 4, replication: 3, downAfterMs: 1500, fileServerArgs: ['--copy-rate-mb-s', '0'] });
  const client = await cluster.client({ clientName: 'bench-rereplication', retryBudgetMs: 60_000 });
  try {
    progress(`re-replication: ${files} files of ${fileBytes / MiB} MiB, 3 copies on 4 servers`);
    const content = randomBytes(fileBytes);
    for (let i = 0; i < files; i++) {
      await client.create(`bench/rr-${i}`);
      await client.write(`bench/rr-${i}`, content);
    }
    const status = await cluster.status();
    const victim = status.servers.slice().sort((a, b) => b.files - a.files)[0]!;
    progress(`re-replication: draining ${victim.id}, which holds ${victim.files} copies`);
    const admin = await cluster.adminConn();
    const started = performance.now();
    await admin.call('drain', { id: victim.id });
    await waitFor(async () => (await cluster.status()).servers.find((s) => s.id === victim.id)?.files === 0, { timeoutMs: 600_000, intervalMs: 20, what: `${victim.id} drained` });
    return { bytes: victim.files * fileBytes, ms: performance.now() - started, files: victim.files };
  } finally {
    client.close();
    await cluster.stop();
  }
}

export async function failoverFigures(plan: Plan): Promise<Figure[]> {
  const times = await failoverTimes(plan);
  const rr = await rereplicationRate(plan);
  return [
    {
      section: SECTION,
      name: 'failover: kill -9 → next write to its file',
      value: p50(times),
      unit: 'ms',
      limit: () => DEFAULT_DOWN_AFTER_MS,
      limitName: 'down detection (--down-after-ms default)',
      better: 'lower',
      note: `p50 of ${times.length} trials (${times.map((t) => Math.round(t)).join(', ')} ms); default settings, the client retrying as it does`,
    },
    {
      section: SECTION,
      name: 're-replication: drain of one server',
      value: mbPerSecond(rr.bytes, rr.ms),
      unit: 'MB/s',
      limit: (l) => l.upMBps,
      limitName: 'bare ws transfer client→server',
      better: 'higher',
      note: `${rr.files} copies of ${(rr.bytes / rr.files / MiB).toFixed(0)} MiB made in ${Math.round(rr.ms)} ms, hand-over and drop included; copy-rate cap off (default 128 MiB/s)`,
    },
  ];
}
