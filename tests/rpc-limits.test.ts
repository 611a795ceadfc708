/**
 * The RPC layer's limits, against peers that break them: answers and requests over the frame
 * limits fail at once with TOO_LARGE instead of timing out; a frame refused anyway is answered
 * by its own id; a stream sender that ignores credit is disconnected; a server bounds its
 * connections and drops unfinished handshakes.
 */
import { INSECURE } from '../shared/tls/transport.js';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect as netConnect, type Socket } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { z } from 'zod';
import { MAX_HEADER_BYTES } from '../shared/frame.js';
import { DfsError } from '../shared/errors.js';
import { RpcServer, connect, op, Reply, type RpcConnection } from '../shared/rpc.js';
import { createLogger } from '../shared/log.js';
import { waitFor, within } from './helpers/wait.js';
import { failure, binaryFrame } from './helpers/raw.js';

const test = suite('rpc-limits');

const warnings: string[] = [];
const log = createLogger('test', 'warn', (line) => warnings.push(line));
let server: RpcServer;
let url: string;
const conns: RpcConnection[] = [];
let hashed = 0;

async function client(): Promise<RpcConnection> {
  const conn = await connect(url, { transport: INSECURE, callTimeoutMs: 60_000 });
  conns.push(conn);
  return conn;
}


/** A raw WebSocket to the server, collecting the JSON text frames it is sent. */
async function rawPeer(): Promise<{ ws: WebSocket; replies: Array<{ t: string; id: number; ok?: boolean; bytes?: number; error?: { code: string } }>; closed: Promise<number> }> {
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  const replies: Array<{ t: string; id: number; ok?: boolean; error?: { code: string } }> = [];
  ws.on('message', (data: Buffer, isBinary) => {
    if (isBinary) return;
    replies.push(JSON.parse(data.toString()));
  });
  const closed = new Promise<number>((resolve) => ws.once('close', resolve));
  return { ws, replies, closed };
}


test.before(async () => {
  server = new RpcServer({
    transport: INSECURE,
    host: '127.0.0.1',
    port: 0,
    log,
    maxConnections: 40,
    handshakeTimeoutMs: 300,
    maxPendingHandshakes: 8,
    handlers: {
      names: op(z.object({ count: z.number().int() }).strict(), ({ count }) => ({ names: Array.from({ length: count }, (_, i) => `notes/file-${i}.txt`) })),
      echo: op(z.object({ text: z.string() }).strict(), ({ text }) => ({ text })),
      hash: op(z.object({}).strict(), async (_args, ctx) => {
        let bytes = 0;
        for await (const chunk of ctx.stream!) bytes += chunk.length;
        hashed++;
        return { bytes };
      }),
      /** Takes an upload and never reads it (a busy handler): its sender must keep to its credit. */
      hold: op(z.object({}).strict(), (_args, ctx) => new Promise((_resolve, reject) => ctx.signal.addEventListener('abort', () => reject(new DfsError('CANCELLED', 'gone'))))),
      big: op(z.object({ mib: z.number().int() }).strict(), async ({ mib }, ctx) => {
        await ctx.reserveOutput(mib << 20);
        return new Reply({ mib }, Buffer.alloc(mib << 20, 7));
      }),
    },
  });
  await server.listen();
  url = server.url;
});

test.after(async () => {
  for (const conn of conns) conn.close();
  await server.close();
});

test('an answer over the header limit fails its call at once with TOO_LARGE, logged at warn', async () => {
  const conn = await client();
  const small = (await conn.call('names', { count: 10 })).result as { names: string[] };
  assert.is(small.names.length, 10);
  const err = await failure(conn.call('names', { count: 10_000 }));
  assert.is(err.code, 'TOO_LARGE', err.message);
  assert.match(err.message, /answer to names was not sent/);
  assert.ok(warnings.some((line) => / warn answer too large to send/.test(line)), warnings.join('\n'));
  // the connection goes on serving
  assert.equal((await conn.call('echo', { text: 'still here' })).result, { text: 'still here' });
});

test('a request over the limits fails before it is sent, and the connection stays', async () => {
  const conn = await client();
  const header = await failure(conn.call('echo', { text: 'x'.repeat(MAX_HEADER_BYTES) }));
  assert.is(header.code, 'TOO_LARGE');
  assert.match(header.message, /echo was not sent/);
  const message = await failure(conn.call('echo', { text: 'x' }, { body: Buffer.alloc(5 << 20) }));
  assert.is(message.code, 'TOO_LARGE');
  assert.match(message.message, /over the peer's \d+-byte limit/);
  assert.equal((await conn.call('echo', { text: 'fine' })).result, { text: 'fine' });
});

test('a frame refused anyway is answered with its own id', async () => {
  const { ws, replies } = await rawPeer();
  ws.send(JSON.stringify({ t: 'req', id: 42, op: 'echo', args: { text: 'y'.repeat(MAX_HEADER_BYTES) } }));
  ws.send(binaryFrame({ t: 'req', id: 43, op: 'echo', args: { text: 'z'.repeat(MAX_HEADER_BYTES) } }, Buffer.from('body')));
  ws.send(JSON.stringify({ t: 'req', id: 44, op: 'echo', args: { text: 'ok' } }));
  await waitFor(() => replies.length >= 3, { what: 'three answers' });
  assert.is(replies.find((r) => r.id === 42)?.error?.code, 'TOO_LARGE');
  assert.is(replies.find((r) => r.id === 43)?.error?.code, 'TOO_LARGE');
  assert.is(replies.find((r) => r.id === 44)?.ok, true);
  ws.close();
});

test('an oversize answer from a peer fails the caller at once', async () => {
  // A peer (not ours) that answers every request with a header over the limit.
  const rogue = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => rogue.once('listening', resolve));
  rogue.on('connection', (ws) =>
    ws.on('message', (data: Buffer) => {
      const { id } = JSON.parse(data.toString()) as { id: number };
      ws.send(JSON.stringify({ t: 'res', id, ok: true, result: { junk: 'j'.repeat(MAX_HEADER_BYTES) } }));
    }),
  );
  const address = rogue.address() as { port: number };
  const conn = await connect(`ws://127.0.0.1:${address.port}`, { transport: INSECURE, callTimeoutMs: 60_000 });
  const err = await failure(conn.call('anything', {}));
  assert.is(err.code, 'TOO_LARGE');
  assert.match(err.message, /answer to anything was refused/);
  conn.close();
  await new Promise((resolve) => rogue.close(resolve));
});

test('a stream sender that ignores its credit is disconnected; one that keeps to it is served', async () => {
  const before = hashed;
  const polite = await client();
  async function* chunks(total: number): AsyncIterable<Buffer> {
    for (let sent = 0; sent < total; sent += 1 << 20) yield Buffer.alloc(Math.min(1 << 20, total - sent), 1);
  }
  assert.equal((await polite.call('hash', {}, { stream: chunks(40 << 20) })).result, { bytes: 40 << 20 });
  // A raw peer that opens an upload nobody is reading yet and pushes 64 MiB without waiting for acks.
  const { ws, closed } = await rawPeer();
  ws.send(JSON.stringify({ t: 'req', id: 1, op: 'hold', args: {}, stream: true }));
  const piece = Buffer.alloc(1 << 20, 2);
  for (let i = 0; i < 64 && ws.readyState === WebSocket.OPEN; i++) ws.send(binaryFrame({ t: 'data', id: 1, up: true }, piece));
  assert.is(await within(closed, 10_000, 'the rude peer to be cut off'), 1008);
  assert.ok(warnings.some((line) => /peer broke flow control/.test(line)));
  assert.is(hashed, before + 1, 'only the polite upload was taken');
  assert.equal((await polite.call('echo', { text: 'after' })).result, { text: 'after' });
});

test('answers wait for room in the send buffer, and past it the server stops reading, instead of piling up', async () => {
  // 64 pipelined 1 MiB answers to a reader that does not read: the server reserves room for
  // each before making it, so it never holds much more than its high-water mark (8 MiB).
  const ws = new WebSocket(url, { maxPayload: 8 << 20 });
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  let received = 0;
  ws.on('message', () => received++);
  for (let id = 1; id <= 64; id++) ws.send(JSON.stringify({ t: 'req', id, op: 'big', args: { mib: 1 } }));
  ws.pause();
  const port = await new Promise<number>((resolve) => resolve((ws as unknown as { _socket: Socket })._socket.localPort!));
  const serverSide = await waitFor(() => [...server.connections].find((c) => c.remote.endsWith(`:${port}`)), { what: 'the server end' });
  await waitFor(() => serverSide.waitingForRoom > 0 || serverSide.readingPaused, { what: 'answers to wait for room, or reading to pause' });
  assert.ok(serverSide.outputBacklog <= 9 << 20, `the server holds ${serverSide.outputBacklog} bytes for this reader`);
  ws.resume();
  await waitFor(() => received === 64, { what: 'all 64 answers', timeoutMs: 20_000 });
  ws.close();
});

test('a server keeps to its connection cap and drops unfinished handshakes', async () => {
  const sockets: Socket[] = [];
  const closedSockets = new Set<Socket>();
  for (let i = 0; i < 30; i++) {
    const socket = netConnect(server.port, '127.0.0.1');
    socket.on('error', () => {});
    socket.on('close', () => closedSockets.add(socket));
    socket.on('connect', () => socket.write('GET / HTTP/1.1\r\nHost: x\r\n')); // never finished
    sockets.push(socket);
  }
  // An ordinary client still gets in: the oldest unfinished handshakes are evicted, the rest time out.
  const conn = await waitFor(() => connect(url, { transport: INSECURE, connectTimeoutMs: 2000 }).catch(() => null), { what: 'a real client to connect', timeoutMs: 10_000 });
  conns.push(conn);
  assert.equal((await conn.call('echo', { text: 'in' })).result, { text: 'in' });
  await waitFor(() => closedSockets.size === sockets.length, { what: 'every half-open socket to be dropped', timeoutMs: 10_000 });
  assert.ok(warnings.some((line) => /did not finish its handshake|too many unfinished handshakes/.test(line)));
});

test.run();
