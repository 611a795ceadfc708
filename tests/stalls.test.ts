/**
 * No writer, token or peer can stall a file: a forged token never takes the file's turn, a
 * stalled or dribbling write stream is aborted and leaves nothing staged, and a frozen replica
 * is dropped from writes (marked behind) instead of slowing them to dead-peer detection.
 * Latencies are printed for the record, never asserted.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { DfsClient } from '../client/dfs-client.js';
import type { RpcConnection } from '../shared/rpc.js';
import type { PlacementResult, ReadResult } from '../shared/protocol.js';
import { Cluster } from './helpers/cluster.js';
import { waitFor } from './helpers/wait.js';
import { failure } from './helpers/raw.js';

const test = suite('stalls');
let cluster: Cluster;
let client: DfsClient;
let reader: DfsClient;
const conns: RpcConnection[] = [];

async function placement(name: string): Promise<PlacementResult> {
  return (await (await cluster.adminConn()).call('placement', { name })).result as PlacementResult;
}

async function raw(url: string): Promise<RpcConnection> {
  const conn = await cluster.connect(url);
  conns.push(conn);
  return conn;
}


/** Yields `first`, then waits for ever (a writer that stopped). */
async function* stalled(first: Buffer): AsyncIterable<Buffer> {
  yield first;
  await new Promise(() => {});
}

/** One byte every `ms` for ever (a writer that dribbles). */
async function* dribbling(ms: number): AsyncIterable<Buffer> {
  for (;;) {
    yield Buffer.from('x');
    await new Promise((resolve) => setTimeout(resolve, ms));
  }
}

async function tempFilesOf(): Promise<string[]> {
  const found: string[] = [];
  for (const s of cluster.servers) for (const f of await readdir(join(s.data, 'store'))) if (f.endsWith('.tmp')) found.push(`${s.id}/${f}`);
  return found;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

test.before(async () => {
  cluster = await Cluster.start({ fileServers: 3, replication: 3, downAfterMs: 1500, fileServerArgs: ['--stall-timeout-ms', '1000', '--replica-timeout-ms', '500'] });
  client = await cluster.client({ clientName: 'staller', retryBudgetMs: 20_000 });
  reader = await cluster.client({ clientName: 'reader', cacheBytes: 0 });
});

test.after(async () => {
  for (const conn of conns) conn.close();
  client?.close();
  reader?.close();
  await cluster?.stop();
});

test('a streamed write with a token never issued is refused before it takes the file, and holds nothing', async () => {
  const name = 'stall/forged.txt';
  await client.create(name);
  await client.write(name, 'v1');
  const p = await placement(name);
  const conn = await raw(p.primary.url);
  const forged = await failure(
    conn.call('write', { name, epoch: p.epoch, token: 999_999_999, mode: 'replace', size: 100, requestId: 'forged-write-1' }, { stream: stalled(Buffer.alloc(0)) }),
  );
  assert.is(forged.code, 'STALE_TOKEN');
  assert.is((await client.write(name, 'v2')).version, 2, 'the file is free for the rightful writer');
});

test('a writer that stalls or dribbles with a valid lock is aborted; its staged files go and the file is free', async () => {
  for (const [label, source] of [
    ['stalled', () => stalled(Buffer.from('first byte'))],
    ['dribbling', () => dribbling(200)],
  ] as const) {
    const name = `stall/${label}.txt`;
    await client.create(name);
    const p = await placement(name);
    const lock = await client.lock(name);
    const conn = await raw(p.primary.url);
    const err = await failure(conn.call('write', { name, epoch: p.epoch, token: lock.token, mode: 'replace', size: 2_000_000, requestId: `${label}-write-1` }, { stream: source(), timeoutMs: 60_000 }));
    assert.is(err.code, 'TIMEOUT', `${label}: ${err.message}`);
    assert.match(err.message, /stalled/);
    await waitFor(async () => (await tempFilesOf()).length === 0, { what: `${label}: no staged files left`, timeoutMs: 10_000 });
    assert.is((await client.write(name, 'after')).version, 1, `${label}: the mutex is free`);
    await lock.release();
    assert.is((await reader.read(name)).content.toString(), 'after');
  }
});

test('a frozen replica is dropped from writes and marked behind; writes go on; it catches up when thawed', async () => {
  const name = 'stall/frozen.txt';
  await client.create(name);
  await client.write(name, 'v1\n');
  const p = await placement(name);
  const frozen = cluster.server(p.replicas[0]!.id);
  frozen.proc.freeze();
  const latencies: number[] = [];
  let expected = 'v1\n';
  try {
    for (let i = 2; i <= 41; i++) {
      const started = performance.now();
      const result = await client.append(name, `v${i}\n`);
      latencies.push(performance.now() - started);
      expected += `v${i}\n`;
      assert.is(result.version, i);
      assert.ok(result.skipped.includes(frozen.id), `write ${i} went on without ${frozen.id}`);
      if (i % 10 === 0) assert.is((await reader.read(name)).content.toString(), expected, 'reads never see an older version');
    }
  } finally {
    frozen.proc.thaw();
  }
  const sorted = [...latencies].sort((a, b) => a - b);
  process.stderr.write(`  [stalls] write latency with ${frozen.id} frozen: p50=${percentile(sorted, 50).toFixed(1)} ms p99=${percentile(sorted, 99).toFixed(1)} ms max=${sorted.at(-1)!.toFixed(1)} ms (${sorted.length} appends)\n`);
  await cluster.waitInSync(20_000);
  await waitFor(
    async () => {
      const conn = await cluster.connect(frozen.url, { as: 'fs-1' });
      const res = await conn.call('fetch', { name, epoch: p.epoch }).catch(() => null);
      conn.close();
      const content = res?.body?.toString() ?? '';
      return res !== null && (res.result as ReadResult).version === 41 && content === expected;
    },
    { what: `${frozen.id} caught up to v41`, timeoutMs: 20_000 },
  );
});

test.run();
