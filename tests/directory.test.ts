import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'csv-parse/sync';
import { WebSocket } from 'ws';
import { connect, type RpcConnection } from '../shared/rpc.js';
import { DfsError } from '../shared/errors.js';
import { holdingsOf, type BehindResult, type Holding, type ListResult, type LocateResult, type Placement, type PlacementResult, type RegisterResult, type StatusResult, type HoldingsResult, type HeartbeatResult, type InfoResult } from '../shared/protocol.js';
import { freePort, removeDir, startNode, stopAll, tempDir, type ServiceProcess } from './helpers/process.js';
import { waitFor } from './helpers/wait.js';
import { TestPki } from './helpers/tls.js';

const test = suite('directory');

const LOCK_URL = 'wss://127.0.0.1:4999';
const DOWN_AFTER_MS = 600;

interface Directory {
  proc: ServiceProcess;
  url: string;
  dataDir: string;
  port: number;
}

const dirs: string[] = [];
const conns: RpcConnection[] = [];
const fakes: FakeFileServer[] = [];

let pkiMade: Promise<TestPki> | null = null;
/** The CA and certificates of these tests, made once; a fake file server's is issued on demand. */
function testPki(): Promise<TestPki> {
  pkiMade ??= tempDir('dfs-pki-').then((dir) => {
    dirs.push(dir);
    return TestPki.make(dir, [{ role: 'directory', id: 'directory' }]);
  });
  return pkiMade;
}

async function startDirectory(options: { dataDir?: string; port?: number; args?: string[] } = {}): Promise<Directory> {
  const dataDir = options.dataDir ?? (await tempDir('dfs-directory-'));
  if (!dirs.includes(dataDir)) dirs.push(dataDir);
  const port = options.port ?? (await freePort());
  const proc = startNode('directory', 'servers/directory/main.js', [
    ...(await testPki()).flags('directory'), '--host', '127.0.0.1', '--port', String(port), '--data', dataDir, '--lock', LOCK_URL, '--down-after-ms', String(DOWN_AFTER_MS), ...(options.args ?? []),
  ]);
  const match = await proc.waitForLine(/listening url=(wss:\/\/\S+)/);
  return { proc, url: match[1]!, dataDir, port };
}

/** A connection as a user's client, or `as` the file server with that id (its certificate). */
async function client(url: string, as?: string): Promise<RpcConnection> {
  const pki = await testPki();
  if (as) await pki.add({ role: 'file-server', id: as });
  const conn = await connect(url, { transport: as ? await pki.as(as) : pki.client });
  conns.push(conn);
  return conn;
}

async function call<T>(conn: RpcConnection, op: string, args: unknown): Promise<T> {
  return (await conn.call(op, args)).result as T;
}

/** The connection of the fake file server with this id (its certificate's). */
const fakeConn = (id: string): RpcConnection => fakes.find((f) => f.id === id)!.conn;

const codeOf = (p: Promise<unknown>) => p.then(() => 'ok', (e: DfsError) => e.code);

/** Plays a file server towards the directory: registers, heartbeats, reports sync. */
class FakeFileServer {
  private timer: NodeJS.Timeout | null = null;
  markSeq = 0;
  boot = '';
  heartbeatErrors: DfsError[] = [];

  private constructor(
    readonly id: string,
    public url: string,
    readonly conn: RpcConnection,
  ) {}

  static async start(directoryUrl: string, id: string, options: { synced?: boolean } = {}): Promise<FakeFileServer> {
    const fake = new FakeFileServer(id, `wss://127.0.0.1:${await freePort()}`, await client(directoryUrl, id));
    fakes.push(fake);
    await fake.register();
    if (options.synced ?? true) await fake.synced();
    return fake;
  }

  async register(url = this.url): Promise<RegisterResult> {
    this.url = url;
    const result = await call<RegisterResult>(this.conn, 'register', { id: this.id, url });
    this.markSeq = result.markSeq;
    this.boot = result.boot;
    this.stopHeartbeats();
    this.timer = setInterval(() => {
      this.conn.call('heartbeat', { id: this.id }).catch((err: DfsError) => this.heartbeatErrors.push(err));
    }, result.heartbeatMs);
    return result;
  }

  /** Reports a full catch-up done; `behind` are the copies it could not catch up (marked first). */
  async synced(behind: string[] = [], upTo = this.markSeq): Promise<unknown> {
    if (behind.length > 0) await call(this.conn, 'behind', { id: this.id, by: this.id, names: behind });
    return call(this.conn, 'synced', { id: this.id, upTo, boot: this.boot });
  }

  stopHeartbeats(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}

async function statusOf(conn: RpcConnection, id: string) {
  return (await call<StatusResult>(conn, 'status', {})).servers.find((s) => s.id === id);
}

let main: Directory;
let app: RpcConnection;
let servers: FakeFileServer[];

test.before(async () => {
  main = await startDirectory();
  app = await client(main.url);
  servers = await Promise.all(['fs1', 'fs2', 'fs3'].map((id) => FakeFileServer.start(main.url, id)));
});

test.after(async () => {
  for (const fake of fakes) fake.stopHeartbeats();
  for (const conn of conns) conn.close();
  await stopAll();
  for (const dir of dirs) await removeDir(dir);
});

test('info tells clients where the lock service is', async () => {
  assert.equal(await call<InfoResult>(app, 'info', {}), { lockUrl: LOCK_URL, replication: 3 });
});

test('create, locate, placement, list, delete; EXISTS and NOT_FOUND', async () => {
  const created = await call<Placement>(app, 'create', { name: 'docs/readme.txt' });
  assert.is(created.name, 'docs/readme.txt');
  assert.ok(created.epoch >= 1);
  assert.is(created.replicas.length, 2);
  const ids = [created.primary.id, ...created.replicas.map((r) => r.id)].sort();
  assert.equal(ids, ['fs1', 'fs2', 'fs3']);
  const url = servers.find((s) => s.id === created.primary.id)!.url;
  assert.is(created.primary.url, url);

  assert.is(await codeOf(app.call('create', { name: 'docs/readme.txt' })), 'EXISTS');
  const write = await call<LocateResult>(app, 'locate', { name: 'docs/readme.txt', for: 'write' });
  assert.equal(write, { name: 'docs/readme.txt', epoch: created.epoch, placementEpoch: 1, server: created.primary, role: 'primary' });
  const placement = await call<PlacementResult>(app, 'placement', { name: 'docs/readme.txt' });
  assert.equal(placement.copies.map((c) => [c.id, c.role, c.up, c.inSync]), [
    [created.primary.id, 'primary', true, true],
    ...created.replicas.map((r) => [r.id, 'replica', true, true]),
  ]);

  await call(app, 'create', { name: 'docs/a.txt' });
  await call(app, 'create', { name: 'docs/b.txt' });
  const page1 = await call<ListResult>(app, 'list', { prefix: 'docs/', limit: 2 });
  assert.equal(page1, { names: ['docs/a.txt', 'docs/b.txt'], more: true });
  assert.equal(await call<ListResult>(app, 'list', { prefix: 'docs/', after: 'docs/b.txt' }), { names: ['docs/readme.txt'], more: false });

  const deleted = await call<Placement>(app, 'delete', { name: 'docs/a.txt' });
  assert.is(deleted.name, 'docs/a.txt');
  assert.is(await codeOf(app.call('delete', { name: 'docs/a.txt' })), 'NOT_FOUND');
  assert.is(await codeOf(app.call('locate', { name: 'docs/a.txt', for: 'read' })), 'NOT_FOUND');
  assert.is(await codeOf(app.call('placement', { name: 'nope' })), 'NOT_FOUND');
  assert.equal((await call<ListResult>(app, 'list', { prefix: 'docs/' })).names, ['docs/b.txt', 'docs/readme.txt']);

  // A re-created name gets a newer epoch.
  const again = await call<Placement>(app, 'create', { name: 'docs/a.txt' });
  assert.ok(again.epoch > created.epoch);
});

test('bad names and bad arguments get BAD_REQUEST and change nothing', async () => {
  const before = await call<ListResult>(app, 'list', {});
  const files = (await call<StatusResult>(app, 'status', {})).files;
  const badNames = ['../x', '/abs', 'a//b', 'a/./b', 'tab\there', 'nul\u0000', 'bell\u0007', 'x'.repeat(300), 'trailing/', '', 'back\\slash'];
  for (const name of badNames) {
    const err = (await app.call('create', { name }).catch((e) => e)) as DfsError;
    assert.instance(err, DfsError, JSON.stringify(name));
    assert.is(err.code, 'BAD_REQUEST', JSON.stringify(name));
    assert.match(err.message, /name/);
  }
  for (const args of [{}, { name: 5 }, { name: 'ok.txt', extra: true }, null, 'text']) {
    assert.is(await codeOf(app.call('create', args)), 'BAD_REQUEST', JSON.stringify(args));
  }
  assert.is(await codeOf(app.call('locate', { name: 'docs/b.txt', for: 'delete' })), 'BAD_REQUEST');
  assert.is(await codeOf(app.call('list', { limit: 0 })), 'BAD_REQUEST');
  assert.is(await codeOf(app.call('register', { id: '../evil', url: 'ws://127.0.0.1:1' })), 'BAD_REQUEST');
  assert.is(await codeOf(app.call('register', { id: 'fsx', url: 'http://127.0.0.1:1' })), 'BAD_REQUEST');
  const boot = fakes.find((f) => f.id === 'fs1')!.boot;
  assert.is(await codeOf(fakeConn('fs1').call('synced', { id: 'fs1', upTo: 1e12, boot })), 'BAD_REQUEST');
  assert.is(await codeOf(fakeConn('fs1').call('caughtUp', { id: 'fs1', upTo: 0, boot, names: [] })), 'BAD_REQUEST');
  // Sequence numbers of an earlier run of the directory are refused: register again.
  assert.is(await codeOf(fakeConn('fs1').call('synced', { id: 'fs1', upTo: 0, boot: 'an-earlier-run' })), 'NOT_FOUND');
  assert.is(await codeOf(fakeConn('fs1').call('behind', { id: 'fs1', by: 'fs1', names: ['ok.txt', '../bad'] })), 'BAD_REQUEST');
  assert.equal(await call<ListResult>(app, 'list', {}), before);
  assert.is((await call<StatusResult>(app, 'status', {})).files, files);
  assert.is(await statusOf(app, 'fsx'), undefined);
});

test('a server that stops heartbeating is marked down; it comes back by registering again', async () => {
  const fake = await FakeFileServer.start(main.url, 'fs-quiet');
  assert.match(main.proc.output(), /server registered id=fs-quiet/);
  assert.is((await statusOf(app, 'fs-quiet'))?.state, 'up');
  await waitFor(async () => (await statusOf(app, 'fs-quiet'))?.lastHeartbeat, { what: 'a first heartbeat' });
  fake.stopHeartbeats();
  await waitFor(async () => (await statusOf(app, 'fs-quiet'))?.state === 'down', { timeoutMs: 3000, what: 'fs-quiet to be marked down' });
  await main.proc.waitForLine(/server down id=fs-quiet/, 2000);
  const err = (await fake.conn.call('heartbeat', { id: 'fs-quiet' }).catch((e) => e)) as DfsError;
  assert.is(err.code, 'NOT_FOUND');
  assert.is(err.message, 'server fs-quiet is not registered; register again');
  // A server's certificate names it: it cannot heartbeat (or register) as another.
  assert.is(await codeOf(fake.conn.call('heartbeat', { id: 'never-seen' })), 'FORBIDDEN');
  assert.is(await codeOf(fake.conn.call('register', { id: 'fs1', url: fake.url })), 'FORBIDDEN');
  assert.is(await codeOf(app.call('heartbeat', { id: 'fs-quiet' })), 'UNAUTHENTICATED');

  await fake.register();
  const back = await statusOf(app, 'fs-quiet');
  assert.is(back?.state, 'up');
  assert.is(back?.sync, 'syncing');
  await fake.synced();
  assert.is((await statusOf(app, 'fs-quiet'))?.sync, 'in-sync');
  await main.proc.waitForLine(/server rejoined id=fs-quiet/, 1000);
  fake.stopHeartbeats();
});

test('reads go round-robin over replicas, skip unusable ones, fall back to the primary', async () => {
  const file = await call<Placement>(app, 'create', { name: 'rr/file.txt' });
  const readers = async (n: number) => {
    const out: string[] = [];
    for (let i = 0; i < n; i++) out.push((await call<LocateResult>(app, 'locate', { name: 'rr/file.txt', for: 'read' })).server.id);
    return out;
  };
  const [r1, r2] = file.replicas.map((r) => r.id) as [string, string];
  const seen = await readers(4);
  assert.equal(seen, seen[0] === r1 ? [r1, r2, r1, r2] : [r2, r1, r2, r1]);

  // A replica marked behind is skipped until it reports that it caught up.
  const behind = await call<BehindResult>(fakeConn(file.primary.id), 'behind', { names: ['rr/file.txt'], id: r1, by: file.primary.id });
  assert.equal(behind, { markSeq: behind.markSeq, marked: 1, ignored: 0, refused: 0 });
  // A server that is not the file's primary cannot mark another's copy: a deposed primary's
  // report is refused, so the write it was for is not acknowledged.
  const forged = await call<BehindResult>(fakeConn(r1), 'behind', { names: ['rr/file.txt'], id: r2, by: r1 });
  assert.equal([forged.marked, forged.refused], [0, 1]);
  assert.equal(await readers(3), [r2, r2, r2]);
  const replica = fakes.find((f) => f.id === r1)!;
  const beat = await call<HeartbeatResult>(replica.conn, 'heartbeat', { id: r1 });
  assert.ok(beat.behind.includes('rr/file.txt'));
  assert.is(beat.markSeq, behind.markSeq);
  assert.is((await statusOf(app, r1))?.sync, 'behind');
  const placement = await call<PlacementResult>(app, 'placement', { name: 'rr/file.txt' });
  assert.is(placement.copies.find((c) => c.id === r1)?.inSync, false);

  // Both replicas behind: the primary serves reads.
  await call(fakeConn(file.primary.id), 'behind', { names: ['rr/file.txt'], id: r2, by: file.primary.id });
  assert.equal(await call<LocateResult>(app, 'locate', { name: 'rr/file.txt', for: 'read' }), {
    name: 'rr/file.txt',
    epoch: file.epoch,
    placementEpoch: 1,
    server: file.primary,
    role: 'primary',
  });

  // r1 catches up that copy (a partial catch-up); r2 reports it is still behind.
  await call(replica.conn, 'caughtUp', { id: r1, upTo: behind.markSeq, boot: replica.boot, names: ['rr/file.txt'] });
  const other = fakes.find((f) => f.id === r2)!;
  await other.synced(['rr/file.txt'], beat.markSeq);
  assert.equal(await readers(2), [r1, r1]);
  await other.synced([], (await call<HeartbeatResult>(other.conn, 'heartbeat', { id: r2 })).markSeq);
  assert.equal((await readers(2)).sort(), [r1, r2].sort());

  // Only replica copies can be behind: a primary, a stranger or a missing file is ignored.
  for (const [name, id] of [['rr/file.txt', file.primary.id], ['rr/file.txt', 'fs-stranger'], ['rr/none.txt', r1]] as const) {
    const conn = id === 'fs-stranger' ? await client(main.url, id) : fakeConn(id);
    const result = await call<BehindResult>(conn, 'behind', { names: [name], id, by: id });
    assert.equal([result.marked, result.ignored], [0, 1], `${name} on ${id}`);
  }
  assert.equal((await readers(2)).sort(), [r1, r2].sort());
});

test('holdings lists a server\'s copies, paginated, with where the other copies are', async () => {
  const fs1 = servers[0]!;
  const all: Holding[] = [];
  let after: string | undefined;
  for (;;) {
    const page = await call<HoldingsResult>(fs1.conn, 'holdings', { id: 'fs1', limit: 2, ...(after ? { after } : {}) });
    all.push(...holdingsOf(page));
    if (!page.more) break;
    after = page.copies[page.copies.length - 1]!.name;
  }
  const names = all.map((c) => c.name);
  assert.equal(names, [...names].sort());
  assert.equal((await call<StatusResult>(app, 'status', {})).servers.find((s) => s.id === 'fs1')?.files, all.length);
  for (const copy of all) {
    const placement = await call<PlacementResult>(app, 'placement', { name: copy.name });
    assert.equal(copy, { name: copy.name, epoch: placement.epoch, placementEpoch: 1, role: placement.primary.id === 'fs1' ? 'primary' : 'replica', primary: placement.primary, replicas: placement.replicas });
  }
  assert.is(await codeOf(fs1.conn.call('holdings', { id: 'fs2' })), 'FORBIDDEN', "a server cannot ask for another's holdings");
});

test('malformed frames, unknown ops and oversize messages get errors; others are still served', async () => {
  const ws = new WebSocket(main.url, { ca: (await testPki()).caPem });
  await new Promise((resolve) => ws.once('open', resolve));
  const replies: Array<{ id: number; ok: boolean; error?: { code: string } }> = [];
  ws.on('message', (data) => replies.push(JSON.parse(data.toString())));
  ws.send('{not json');
  ws.send(JSON.stringify({ t: 'req', id: 5, op: 'frobnicate', args: {} }));
  ws.send(JSON.stringify({ t: 'req', id: 6, op: 'create', args: { name: '../up' } }));
  ws.send(JSON.stringify({ t: 'req', id: 7, op: 'info', args: {} }));
  await waitFor(() => replies.length >= 4, { what: 'four replies' });
  assert.is(replies.find((r) => r.id === 0)?.error?.code, 'BAD_REQUEST');
  assert.is(replies.find((r) => r.id === 5)?.error?.code, 'BAD_REQUEST');
  assert.is(replies.find((r) => r.id === 6)?.error?.code, 'BAD_REQUEST');
  assert.is(replies.find((r) => r.id === 7)?.ok, true);
  ws.close();

  const big = await connect(main.url, { transport: (await testPki()).client, maxMessageBytes: 16 << 20 });
  const err = (await big.call('list', { prefix: 'x'.repeat(5 << 20) }).catch((e) => e)) as DfsError;
  assert.is(err.code, 'TOO_LARGE');
  assert.ok((await call<ListResult>(app, 'list', { limit: 1 })).names.length === 1);
  big.close();
});

test('primaries spread evenly over 6 servers with R=3', async () => {
  const dir = await startDirectory();
  const conn = await client(dir.url);
  const ids = ['s1', 's2', 's3', 's4', 's5', 's6'];
  await Promise.all(ids.map((id) => FakeFileServer.start(dir.url, id)));
  for (let i = 0; i < 60; i++) await call(conn, 'create', { name: `spread/${i}` });
  const status = await call<StatusResult>(conn, 'status', {});
  assert.is(status.files, 60);
  for (const server of status.servers) {
    assert.is(server.primaries, 10, `${server.id} primaries`);
    assert.is(server.files, 30, `${server.id} files`);
  }
  await dir.proc.stop();
});

test('the table survives SIGTERM and kill -9 right after a burst of creates', async () => {
  let dir = await startDirectory();
  let conn = await client(dir.url);
  const fakesHere = await Promise.all(['k1', 'k2', 'k3'].map((id) => FakeFileServer.start(dir.url, id)));
  const first = await Promise.all(Array.from({ length: 50 }, (_, i) => call<Placement>(conn, 'create', { name: `calm/${i}` })));
  await call(conn, 'delete', { name: 'calm/7' });
  // A server moves: its rows follow it.
  await fakesHere[0]!.register(`ws://127.0.0.1:${await freePort()}`);
  const movedUrl = fakesHere[0]!.url;
  await dir.proc.stop();
  assert.equal(dir.proc.exit, { code: 0, signal: null });
  assert.match(dir.proc.output(), /file table saved files=49/);

  dir = await startDirectory({ dataDir: dir.dataDir, port: dir.port });
  conn = await client(dir.url);
  const listed = await call<ListResult>(conn, 'list', { prefix: 'calm/' });
  assert.is(listed.names.length, 49);
  const sample = await call<PlacementResult>(conn, 'placement', { name: 'calm/3' });
  assert.is(sample.epoch, first[3]!.epoch);
  const k1 = (await call<StatusResult>(conn, 'status', {})).servers.find((s) => s.id === 'k1');
  assert.is(k1?.url, movedUrl);
  assert.is(k1?.state, 'down', 'not registered with this directory yet');

  // Servers register again; then a burst, and a crash while creates are still in flight.
  for (const fake of fakesHere) fake.stopHeartbeats(); // their connections went with the old process
  await Promise.all(['k1', 'k2', 'k3'].map((id) => FakeFileServer.start(dir.url, id)));
  // Sixteen writers create files back to back; SIGKILL lands at the 200th acknowledgement, with
  // other creates still in flight.
  const acknowledged: string[] = [];
  let issued = 0;
  let killed: Promise<void> | null = null;
  const crashing = dir.proc;
  const writer = async () => {
    while (!killed) {
      const name = `burst/${issued++}`;
      try {
        await conn.call('create', { name });
      } catch {
        return;
      }
      acknowledged.push(name);
      if (acknowledged.length === 200) killed = crashing.kill9();
    }
  };
  await Promise.all(Array.from({ length: 16 }, writer));
  await killed;
  assert.ok(acknowledged.length >= 200 && acknowledged.length < issued, `${acknowledged.length} of ${issued} acknowledged`);

  // What the crash left is readable CSV (a line cut short at the very end aside).
  const snapshot = await readFile(join(dir.dataDir, 'file_table.csv'), 'utf8');
  assert.ok((parse(snapshot, { columns: true }) as unknown[]).length >= 49 * 3);
  const journal = await readFile(join(dir.dataDir, 'file_table.journal.csv'), 'utf8');
  const whole = journal.slice(0, journal.lastIndexOf('\n') + 1);
  const journalRows = parse(whole, { columns: true }) as Array<{ op: string; name: string }>;
  assert.ok(journalRows.filter((r) => r.op === 'add').length >= acknowledged.length);

  dir = await startDirectory({ dataDir: dir.dataDir, port: dir.port });
  conn = await client(dir.url);
  const names = new Set<string>();
  let after: string | undefined;
  for (;;) {
    const page = await call<ListResult>(conn, 'list', { prefix: 'burst/', limit: 100, ...(after ? { after } : {}) });
    for (const name of page.names) names.add(name);
    if (!page.more) break;
    after = page.names[page.names.length - 1];
  }
  const missing = acknowledged.filter((name) => !names.has(name));
  assert.equal(missing, [], 'every acknowledged create survives');
  assert.is((await call<ListResult>(conn, 'list', { prefix: 'calm/' })).names.length, 49);
  await dir.proc.stop();
});

test.run();
