/**
 * File names with unpaired UTF-16 surrogates, against real processes. JSON.stringify sends a
 * lone surrogate as a `\ud800` escape, so these calls really put one on the wire; each service
 * must refuse it (BAD_REQUEST), create nothing, and go on serving.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsClient } from '../client/dfs-client.js';
import { DfsError } from '../shared/errors.js';
import { nameProblem } from '../shared/names.js';
import type { HelloResult, ListResult, LockStatusResult, Placement } from '../shared/protocol.js';
import type { RpcConnection } from '../shared/rpc.js';
import { Cluster } from './helpers/cluster.js';

const test = suite('names');

/** Lone high, lone low, reversed pair, high at the end after a segment. */
const ILL_FORMED = ['x\ud800', '\udc00y', 'notes/\udc00\ud800.txt', 'notes/today\ud83d'];

let cluster: Cluster;
const conns: RpcConnection[] = [];
let client: DfsClient | null = null;

async function open(url: string): Promise<RpcConnection> {
  const conn = await cluster.connect(url);
  conns.push(conn);
  return conn;
}

const codeOf = (p: Promise<unknown>) => p.then(() => 'ok', (e: DfsError) => e.code);

test.before(async () => {
  cluster = await Cluster.start({ fileServers: 2, replication: 2 });
});

test.after(async () => {
  client?.close();
  for (const conn of conns) conn.close();
  await cluster?.stop();
});

test('nameProblem refuses unpaired surrogates and accepts real pairs', () => {
  for (const name of ILL_FORMED) assert.match(nameProblem(name) ?? '', /unpaired UTF-16 surrogate/, JSON.stringify(name));
  assert.is(nameProblem('notes/\ud83d\ude00.txt'), null); // 😀, a well-formed pair
  assert.is(nameProblem('x\ufffd'), null); // U+FFFD itself is an ordinary character
});

test('every service answers BAD_REQUEST to an ill-formed name and creates nothing', async () => {
  const directory = await open(cluster.directoryUrl);
  const lock = await open(cluster.lockUrl);
  await lock.call('hello', { client: 'names-test' });
  const fileServer = await open(cluster.servers[0]!.url);
  for (const name of ILL_FORMED) {
    const what = JSON.stringify(name);
    assert.is(await codeOf(directory.call('create', { name })), 'BAD_REQUEST', `create ${what}`);
    assert.is(await codeOf(directory.call('locate', { name, for: 'read' })), 'BAD_REQUEST', `locate ${what}`);
    assert.is(await codeOf(directory.call('delete', { name })), 'BAD_REQUEST', `delete ${what}`);
    assert.is(await codeOf(directory.call('list', { prefix: name })), 'BAD_REQUEST', `list prefix ${what}`);
    assert.is(await codeOf(directory.call('list', { after: name })), 'BAD_REQUEST', `list after ${what}`);
    assert.is(await codeOf(lock.call('acquire', { name, timeoutMs: 0 })), 'BAD_REQUEST', `acquire ${what}`);
    const write = { name, epoch: 1, token: 1, mode: 'replace', size: 4, requestId: 'names-test-1' };
    assert.is(await codeOf(fileServer.call('write', write, { body: Buffer.from('evil') })), 'BAD_REQUEST', `write ${what}`);
  }
  const listed = (await directory.call('list', {})).result as ListResult;
  assert.equal(listed.names, []);
  assert.is((await cluster.status()).files, 0);
  assert.equal(((await lock.call('status', {})).result as LockStatusResult).locks, []);
  for (const s of cluster.servers) assert.is(s.proc.exit, null, `${s.id} still running`);
  assert.is(cluster.directory.exit, null);
  assert.is(cluster.lock.exit, null);
});

test('the same connections, and new clients, go on working', async () => {
  const directory = await open(cluster.directoryUrl);
  assert.is(await codeOf(directory.call('create', { name: 'x\ud800' })), 'BAD_REQUEST');
  const created = (await directory.call('create', { name: 'x\ufffd' })).result as Placement;
  assert.is(created.name, 'x\ufffd');
  const lock = await open(cluster.lockUrl);
  const session = ((await lock.call('hello', { client: 'names-test-2' })).result as HelloResult).session;
  assert.ok(session);
  assert.is(await codeOf(lock.call('acquire', { name: '\udc00y', timeoutMs: 0 })), 'BAD_REQUEST');
  assert.is(await codeOf(lock.call('acquire', { name: 'x\ufffd', timeoutMs: 0 })), 'ok');
  await lock.call('release', { name: 'x\ufffd' });
  client = await cluster.client({ clientName: 'names-test-3' });
  await client.write('x\ufffd', 'still serving\n');
  assert.is((await client.read('x\ufffd')).content.toString(), 'still serving\n');
  assert.equal(await client.list(), ['x\ufffd']);
});

test.run();
