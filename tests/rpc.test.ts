import { INSECURE } from '../shared/tls/transport.js';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { WebSocket } from 'ws';
import { z } from 'zod';
import { RpcServer, connect, op, Reply, type RpcConnection } from '../shared/rpc.js';
import { DfsError } from '../shared/errors.js';
import { waitFor } from './helpers/wait.js';

const test = suite('rpc');

let server: RpcServer;
let url: string;
let closedSessions = 0;

async function* chunksOf(total: number, size: number, seed: Buffer): AsyncIterable<Buffer> {
  for (let sent = 0; sent < total; sent += size) {
    const n = Math.min(size, total - sent);
    const chunk = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) chunk[i] = seed[(sent + i) % seed.length]!;
    yield chunk;
  }
}

test.before(async () => {
  server = new RpcServer({
    transport: INSECURE,
    host: '127.0.0.1',
    port: 0,
    maxMessageBytes: 1 << 20,
    chunkBytes: 64 * 1024,
    windowBytes: 256 * 1024,
    onConnection: (conn) => conn.onClose(() => closedSessions++),
    handlers: {
      echo: op(z.object({ text: z.string() }).strict(), (args, ctx) => new Reply({ text: args.text, bodyBytes: ctx.body?.length ?? 0 }, ctx.body)),
      fail: op(z.object({}), () => {
        throw new DfsError('NOT_FOUND', 'nothing here');
      }),
      boom: op(z.object({}), () => {
        throw new Error('bug');
      }),
      hash: op(z.object({}), async (_args, ctx) => {
        const hash = createHash('sha256');
        let bytes = 0;
        for await (const chunk of ctx.stream!) {
          hash.update(chunk);
          bytes += chunk.length;
        }
        return { bytes, sha256: hash.digest('hex') };
      }),
      produce: op(z.object({ bytes: z.number().int() }), (args) => new Reply({ bytes: args.bytes }, undefined, chunksOf(args.bytes, 100_000, Buffer.from('abcdefg')))),
      wait: op(z.object({}), (_args, ctx) => {
        ctx.event('waiting', { position: 1 });
        return new Promise((_resolve, reject) => ctx.signal.addEventListener('abort', () => reject(new DfsError('CANCELLED', 'gave up'))));
      }),
    },
  });
  await server.listen();
  url = server.url;
});

test.after(async () => {
  await server.close();
});

test('request and response, with a binary body of every byte value', async () => {
  const conn = await connect(url, { transport: INSECURE });
  const body = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const res = await conn.call('echo', { text: 'hi' }, { body });
  assert.equal(res.result, { text: 'hi', bodyBytes: 256 });
  assert.ok(res.body?.equals(body));
  conn.close();
});

test('typed errors: unknown op, bad arguments, handler errors', async () => {
  const conn = await connect(url, { transport: INSECURE });
  const codeOf = (p: Promise<unknown>) => p.then(() => 'ok', (e: DfsError) => e.code);
  assert.is(await codeOf(conn.call('nope', {})), 'BAD_REQUEST');
  assert.is(await codeOf(conn.call('echo', { text: 5 })), 'BAD_REQUEST');
  assert.is(await codeOf(conn.call('echo', { text: 'x', extra: 1 })), 'BAD_REQUEST');
  assert.is(await codeOf(conn.call('fail', {})), 'NOT_FOUND');
  assert.is(await codeOf(conn.call('boom', {})), 'INTERNAL');
  // the connection still serves
  assert.equal((await conn.call('echo', { text: 'still here' })).result, { text: 'still here', bodyBytes: 0 });
  conn.close();
});

test('malformed frames get BAD_REQUEST and the connection keeps serving', async () => {
  const ws = new WebSocket(url);
  await new Promise((resolve) => ws.once('open', resolve));
  const replies: unknown[] = [];
  ws.on('message', (data) => replies.push(JSON.parse(data.toString())));
  ws.send('not json');
  ws.send('[1,2]');
  ws.send(JSON.stringify({ t: 'req', id: 7, op: 'echo' }));
  ws.send(JSON.stringify({ t: 'zzz', id: 8 }));
  ws.send(Buffer.from([0, 0]));
  ws.send(JSON.stringify({ t: 'req', id: 9, op: 'echo', args: { text: 'ok' } }));
  await waitFor(() => replies.length >= 6, { what: 'six replies' });
  const byId = (id: number) => replies.filter((r) => (r as { id: number }).id === id) as Array<{ ok: boolean; error?: { code: string } }>;
  assert.is(byId(0).length, 3);
  for (const r of byId(0)) assert.is(r.error?.code, 'BAD_REQUEST');
  assert.is(byId(7)[0]?.error?.code, 'BAD_REQUEST');
  assert.is(byId(8)[0]?.error?.code, 'BAD_REQUEST');
  assert.is(byId(9)[0]?.ok, true);
  ws.close();
});

test('an oversize message is refused before it is sent, with TOO_LARGE, and nothing else changes', async () => {
  const big = await connect(url, { transport: INSECURE, maxMessageBytes: 4 << 20 });
  const other = await connect(url, { transport: INSECURE });
  const err = await big.call('echo', { text: 'x' }, { body: Buffer.alloc(2 << 20) }).catch((e: DfsError) => e);
  assert.instance(err, DfsError);
  assert.is((err as DfsError).code, 'TOO_LARGE');
  assert.equal((await other.call('echo', { text: 'fine' })).result, { text: 'fine', bodyBytes: 0 });
  other.close();
});

test('streams flow both ways with bounded windows', async () => {
  const conn: RpcConnection = await connect(url, { transport: INSECURE, chunkBytes: 64 * 1024, windowBytes: 256 * 1024 });
  const total = 5_000_003;
  const seed = randomBytes(997);
  const expected = createHash('sha256');
  for await (const c of chunksOf(total, 300_000, seed)) expected.update(c);
  const up = await conn.call('hash', {}, { stream: chunksOf(total, 300_000, seed) });
  assert.equal(up.result, { bytes: total, sha256: expected.digest('hex') });

  const down = await conn.call('produce', { bytes: 3_000_000 });
  assert.ok(down.stream);
  let received = 0;
  for await (const chunk of down.stream!) received += chunk.length;
  assert.is(received, 3_000_000);
  conn.close();
});

test('events reach the caller; cancel aborts the handler; close hooks run', async () => {
  const before = closedSessions;
  const conn = await connect(url, { transport: INSECURE });
  const controller = new AbortController();
  const events: unknown[] = [];
  const call = conn.call('wait', {}, { signal: controller.signal, onEvent: (ev, data) => events.push([ev, data]) });
  await waitFor(() => events.length > 0, { what: 'an event' });
  assert.equal(events[0], ['waiting', { position: 1 }]);
  controller.abort();
  const err = await call.catch((e: DfsError) => e);
  assert.is((err as DfsError).code, 'CANCELLED');
  conn.close();
  await waitFor(() => closedSessions > before, { what: 'server close hook' });
});

test('calls fail with CLOSED when the peer goes away, UNAVAILABLE when nobody listens', async () => {
  const conn = await connect(url, { transport: INSECURE });
  const pending = conn.call('wait', {});
  conn.terminate();
  assert.is(((await pending.catch((e) => e)) as DfsError).code, 'CLOSED');
  const refused = await connect('ws://127.0.0.1:1', { transport: INSECURE }).catch((e: DfsError) => e);
  assert.is((refused as DfsError).code, 'UNAVAILABLE');
});

test.run();
