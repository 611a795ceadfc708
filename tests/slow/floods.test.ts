/**
 * Floods against real services, each from a peer that breaks the rules: reads pipelined and
 * never taken, uploads that ignore their credit, and half-open connections past the open-file
 * limit. Each service's memory stays bounded and ordinary clients keep being served. Peak RSS is
 * printed for the record; the bounds asserted are loose (a service that held the flood would be
 * hundreds of MiB over them).
 */
import { sharedPki } from '../helpers/tls.js';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { DfsClient } from '../../client/dfs-client.js';
import { connect, type RpcConnection } from '../../shared/rpc.js';
import type { FileServerStatus, PlacementResult } from '../../shared/protocol.js';
import { Cluster } from '../helpers/cluster.js';
import { DIST, ServiceProcess, freePort, removeDir, tempDir } from '../helpers/process.js';
import { waitFor } from '../helpers/wait.js';
import { binaryFrame } from '../helpers/raw.js';

const test = suite('floods');
let cluster: Cluster;
let client: DfsClient;

const MiB = 2 ** 20;

async function rss(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(text)![1]) * 1024;
}

/** The highest RSS of `pid` over `samples` looks, `everyMs` apart: a measurement, not a wait. */
async function highestRss(pid: number, samples = 10, everyMs = 100): Promise<number> {
  let highest = 0;
  for (let i = 0; i < samples; i++) {
    highest = Math.max(highest, await rss(pid));
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
  return highest;
}

function report(what: string, fields: Record<string, unknown>): void {
  process.stderr.write(`  [floods] ${what}: ${Object.entries(fields).map(([k, v]) => `${k}=${String(v)}`).join(' ')}\n`);
}


async function rawSocket(url: string): Promise<WebSocket> {
  const ws = new WebSocket(url, { ca: cluster.pki.caPem, maxPayload: 64 * MiB });
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  ws.on('error', () => {});
  return ws;
}

test.before(async () => {
  cluster = await Cluster.start({ fileServers: 3, replication: 3 });
  client = await cluster.client({ clientName: 'flood-victim' });
});

test.after(async () => {
  client?.close();
  await cluster?.stop();
});

test('400 pipelined 1 MiB reads that are never taken: the file server holds about its high-water mark', async () => {
  const name = 'flood/big.bin';
  await client.create(name);
  await client.write(name, Buffer.alloc(MiB, 7));
  const p = (await (await cluster.adminConn()).call('placement', { name })).result as PlacementResult;
  const server = cluster.server(p.primary.id);
  const statusConn: RpcConnection = await cluster.connect(server.url);
  const readsBefore = ((await statusConn.call('status', {})).result as FileServerStatus).counters.reads;
  const before = await rss(server.proc.pid);
  const ws = await rawSocket(server.url);
  let answers = 0;
  ws.on('message', () => answers++);
  for (let id = 1; id <= 400; id++) ws.send(JSON.stringify({ t: 'req', id, op: 'read', args: { name } }));
  ws.pause();
  await waitFor(async () => ((await statusConn.call('status', {})).result as FileServerStatus).counters.reads >= readsBefore + 400, { what: 'all 400 reads to be taken in' });
  const during = await highestRss(server.proc.pid);
  report('pipelined reads', { server: server.id, rssBeforeMiB: (before / MiB).toFixed(0), rssDuringMiB: (during / MiB).toFixed(0) });
  assert.ok(during - before < 120 * MiB, `the file server grew by ${((during - before) / MiB).toFixed(0)} MiB`);
  assert.is((await client.read(name)).size, MiB, 'others are still served');
  ws.resume();
  await waitFor(() => answers === 400, { what: 'every answer once the reader reads', timeoutMs: 30_000 });
  ws.close();
  statusConn.close();
});

test('uploads that ignore their credit are cut off; the lock service and a file server stay small', async () => {
  const holder = await cluster.connect(cluster.lockUrl);
  await holder.call('acquire', { name: 'flood/held', timeoutMs: 0 });
  const targets = [
    { service: 'lock', url: cluster.lockUrl, proc: cluster.lock, req: { t: 'req', id: 1, op: 'acquire', args: { name: 'flood/held', timeoutMs: 60_000 }, stream: true } },
    { service: 'fs-1', url: cluster.server('fs-1').url, proc: cluster.server('fs-1').proc, req: { t: 'req', id: 1, op: 'write', args: { name: 'flood/none', epoch: 1, token: 1, mode: 'replace', size: 300 * MiB, requestId: 'flood-upload-1' }, stream: true } },
  ];
  const piece = Buffer.alloc(MiB, 3);
  for (const target of targets) {
    const before = await rss(target.proc.pid);
    const ws = await rawSocket(target.url);
    const closed = new Promise<number>((resolve) => ws.once('close', resolve));
    ws.send(JSON.stringify(target.req));
    let sent = 0;
    for (; sent < 300 && ws.readyState === WebSocket.OPEN; sent++) {
      ws.send(binaryFrame({ t: 'data', id: 1, up: true }, piece));
      if (ws.bufferedAmount > 32 * MiB) await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const code = await Promise.race([closed, new Promise<number>((resolve) => setTimeout(() => resolve(-1), 10_000))]);
    const peak = await highestRss(target.proc.pid, 5);
    report('credit-ignoring upload', { service: target.service, sentMiB: sent, closeCode: code, rssBeforeMiB: (before / MiB).toFixed(0), rssAfterMiB: (peak / MiB).toFixed(0) });
    assert.ok(peak - before < 64 * MiB, `${target.service} grew by ${((peak - before) / MiB).toFixed(0)} MiB`);
    ws.terminate();
  }
  holder.close();
  assert.ok((await client.lock('flood/after')).token > 0, 'the lock service still grants');
  await client.unlock('flood/after');
});

test('1,100 half-open connections to a lock service under ulimit -n 1024: ordinary clients still get in', async () => {
  const dir = await tempDir('dfs-flood-lock-');
  const port = await freePort();
  const url = `wss://127.0.0.1:${port}`;
  const script = join(DIST, 'servers/lock/main.js');
  const pki = await sharedPki();
  const proc = new ServiceProcess(
    'lock-ulimit',
    spawn('/bin/sh', ['-c', 'ulimit -n 1024 && exec "$0" "$@"', process.execPath, script, ...pki.flags('lock'), '--port', String(port), '--data', dir, '--handshake-timeout-ms', '2000'], { stdio: ['ignore', 'pipe', 'pipe'] }),
  );
  const sockets: Socket[] = [];
  try {
    await proc.waitForLine(/listening/);
    for (let i = 0; i < 1100; i++) {
      const socket = netConnect(port, '127.0.0.1');
      socket.on('error', () => {});
      // Connected and silent: a TLS handshake that never starts, holding a socket until it times out.
      sockets.push(socket);
    }
    const started = Date.now();
    const conn = await waitFor(async () => connect(url, { transport: (await sharedPki()).client, connectTimeoutMs: 1000 }).catch(() => null), { what: 'an ordinary client to connect', timeoutMs: 20_000 });
    const token = ((await conn.call('acquire', { name: 'after-flood', timeoutMs: 0 })).result as { token: number }).token;
    report('half-open flood', { sockets: sockets.length, clientInAfterMs: Date.now() - started, rssMiB: ((await rss(proc.pid)) / MiB).toFixed(0) });
    assert.ok(token > 0);
    assert.match(proc.output(), /connection cap|unfinished handshakes|did not finish its handshake/);
    conn.close();
  } finally {
    for (const socket of sockets) socket.destroy();
    await proc.stop();
    await removeDir(dir);
  }
});

test.run();
