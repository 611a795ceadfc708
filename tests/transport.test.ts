/**
 * TLS between processes (shared/tls/transport.ts, shared/rpc/server.ts): a plain ws:// client
 * cannot talk to a TLS service, a client checks whose certificate answers, and a service knows
 * its peers by their certificates, never by what they say.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { WebSocket } from 'ws';
import { RpcServer, connect, op, type RpcConnection } from '../shared/rpc.js';
import { INSECURE } from '../shared/tls/transport.js';
import { z } from 'zod';
import { sharedPki } from './helpers/tls.js';
import { failure } from './helpers/raw.js';

const test = suite('transport');

let server: RpcServer;
const seen: RpcConnection[] = [];

test.before(async () => {
  const pki = await sharedPki();
  server = new RpcServer({
    transport: { ...(await pki.as('directory')), identity: { role: 'directory', id: 'directory' } },
    host: '127.0.0.1',
    port: 0,
    onConnection: (conn) => seen.push(conn),
    handlers: { whoami: op(z.object({}).strict(), (_args, ctx) => ctx.conn.service) },
  });
  await server.listen();
});

test.after(async () => {
  await server.close();
});

test('a plain ws:// client cannot talk to a TLS service, nor a client that does not trust its CA', async () => {
  const port = server.port;
  const plain = await failure(connect(`ws://127.0.0.1:${port}`, { transport: INSECURE, connectTimeoutMs: 2000 }));
  assert.is(plain.code, 'UNAVAILABLE');
  const raw = new WebSocket(`ws://127.0.0.1:${port}`);
  const outcome = await new Promise<string>((resolve) => {
    raw.once('open', () => resolve('open'));
    raw.once('error', () => resolve('error'));
    raw.once('close', () => resolve('closed'));
  });
  assert.not.equal(outcome, 'open');
  raw.terminate();
  const untrusting = new WebSocket(`wss://127.0.0.1:${port}`);
  const refused = await new Promise<string>((resolve) => {
    untrusting.once('open', () => resolve('open'));
    untrusting.once('error', (err: Error & { code?: string }) => resolve(err.code ?? err.message));
  });
  assert.ok(/SELF_SIGNED|UNABLE_TO_VERIFY|CERT/.test(refused), refused);
  untrusting.terminate();
  // A TLS client refuses a ws:// URL before it sends anything.
  const pki = await sharedPki();
  const mixed = await failure(connect(`ws://127.0.0.1:${port}`, { transport: pki.client }));
  assert.is(mixed.code, 'BAD_REQUEST');
  assert.match(mixed.message, /plain ws:\/\//);
});

test('a service knows its peer by its certificate; a client checks whose certificate answers', async () => {
  const pki = await sharedPki();
  const url = `wss://127.0.0.1:${server.port}`;
  const anonymous = await connect(url, { transport: pki.client }, { role: 'directory' });
  assert.is(anonymous.service?.id, 'directory', 'the client saw the directory certificate');
  assert.is((await anonymous.call('whoami', {})).result, null, 'a user client has no service identity');
  const fs1 = await connect(url, { transport: await pki.as('fs-1') });
  assert.equal((await fs1.call('whoami', {})).result, { role: 'file-server', id: 'fs-1' });
  const wrong = await failure(connect(url, { transport: pki.client }, { role: 'file-server', id: 'fs-2' }));
  assert.is(wrong.code, 'UNAVAILABLE');
  assert.match(wrong.message, /directory directory, not file-server fs-2/);
  anonymous.close();
  fs1.close();
  assert.ok(seen.length >= 2);
});

test.run();
